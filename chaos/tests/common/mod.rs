//! What the process-level tests share: the `stillpoint` binary of this test's profile.
//!
//! Finding the binary: `CARGO_BIN_EXE_stillpoint` exists only inside the node package, and a
//! dev-dependency builds a package's library, not its binaries. So the test runs the cargo
//! that built it (`env!("CARGO")`) to build `stillpoint` into the same target dir and profile
//! as this test binary (`target/<profile>/deps/<test>-<hash>` → `target/<profile>/stillpoint`),
//! with `--features fault-injection`.
//!
//! That build is never quite the workspace's test build (cargo's `dev` profile rather than
//! `test`, the feature, and dependencies whose features the test build unifies with every
//! crate's dev-dependencies), so it compiles the workspace's own crates again and cargo
//! replaces `target/<profile>/stillpoint` with it: it removes the file, then hard-links the
//! new one. Another test starting the binary inside that window of microseconds would find no
//! file; processes already running are not touched. Not seen in any CI run; building into a
//! target dir of its own would close the window at the cost of building every dependency a
//! second time (about 4 minutes on 2 cores), which is not paid.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Builds (if needed) and returns the `stillpoint` binary of this test's profile, a test
/// build (`--features fault-injection`).
pub fn stillpoint() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("no profile dir in {}", exe.display()),
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let started = Instant::now();
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--bin",
            "stillpoint",
            "-p",
            "stillpoint-node",
            // A test build: the harness steps its agents' clocks (`clock-step`).
            "--features",
            "fault-injection",
            "--profile",
            profile,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build --bin stillpoint failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "stillpoint binary ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let bin = profile_dir.join("stillpoint");
    assert!(bin.is_file(), "no {} after the build", bin.display());
    bin
}

/// Runs `stillpoint-chaos run ARGS` against the workspace's `stillpoint` binary, with its
/// schedules' dirs under a temporary dir; asserts it exits 0 and returns its stdout (also
/// printed, for a failing test's log).
pub fn run_harness(args: &[&str]) -> String {
    let bin = stillpoint();
    let dir = tempfile::tempdir().expect("temporary dir");
    let out = Command::new(env!("CARGO_BIN_EXE_stillpoint-chaos"))
        .arg("run")
        .args(args)
        .arg("--stillpoint")
        .arg(&bin)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run stillpoint-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    stdout
}

/// How many times the run's summary table says `kind` was struck.
pub fn struck(stdout: &str, kind: &str) -> Option<u64> {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{kind} ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

/// Moves the calling thread into a namespace of a test network.
#[allow(unused_imports)]
pub use stillpoint_chaos::net::enter;

/// Sends `count` UDP datagrams from `from`'s namespace to `to`'s (port `port`), each made by
/// `make(i)` just before it is sent, pausing `pause` after every `every` of them; returns what
/// `to` received, in arrival order, each with the instant it arrived, once `quiet` passed
/// without one. Each end runs on a thread of its own that entered its namespace; every wait is
/// bounded (a receive timeout).
#[allow(clippy::too_many_arguments)]
pub fn udp_through(
    from: &stillpoint_chaos::net::NetNode,
    to: &stillpoint_chaos::net::NetNode,
    port: u16,
    count: u32,
    every: u32,
    pause: std::time::Duration,
    quiet: std::time::Duration,
    make: impl Fn(u32) -> Vec<u8> + Send + 'static,
) -> Vec<(Vec<u8>, Instant)> {
    use std::net::UdpSocket;
    let (to_ns, to_ip) = (to.netns.clone(), to.ip.clone());
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || -> Result<Vec<(Vec<u8>, Instant)>, String> {
        enter(&to_ns)?;
        let socket =
            UdpSocket::bind((to_ip.as_str(), port)).map_err(|e| format!("bind {to_ip}: {e}"))?;
        socket
            .set_read_timeout(Some(quiet))
            .map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        // Bounded: every datagram is taken once, and the loop ends at the first quiet spell.
        while let Ok(n) = socket.recv(&mut buf) {
            got.push((buf[..n].to_vec(), Instant::now()));
        }
        Ok(got)
    });
    ready
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the receiver is up");
    let (from_ns, to_ip) = (from.netns.clone(), to.ip.clone());
    std::thread::spawn(move || -> Result<(), String> {
        enter(&from_ns)?;
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        for i in 0..count {
            socket
                .send_to(&make(i), (to_ip.as_str(), port))
                .map_err(|e| format!("send: {e}"))?;
            if i % every == every - 1 {
                std::thread::sleep(pause);
            }
        }
        Ok(())
    })
    .join()
    .expect("the sender thread")
    .expect("the sender");
    receiver
        .join()
        .expect("the receiver thread")
        .expect("the receiver")
}

/// A runtime like an agent's: two worker threads, timers and I/O.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Writes an agent's fault switches file whole (a temporary file renamed over it, so the
/// agent never reads half of it).
pub fn write_switches(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the switches");
    std::fs::rename(&tmp, path).expect("rename the switches into place");
}
