//! Compiles every `proto/*.proto` with the vendored protoc, so a fresh machine needs no system
//! protoc. New schema files are picked up without editing this script.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of set_var: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let dir = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    // Host data travels as `bytes::Bytes`: decoding slices the received buffer instead of
    // copying each MiB once more into a Vec, and a read's reply takes the array's buffer as is.
    tonic_prost_build::configure()
        .bytes(".stillpoint.array.WriteRequest.data")
        .bytes(".stillpoint.array.ReadReply.data")
        .compile_protos(&files, &[dir])?;
    Ok(())
}
