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

use std::os::fd::AsRawFd;
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

/// Moves the calling thread into the network namespace `netns` (made by `ip netns add`).
pub fn enter(netns: &str) -> Result<(), String> {
    let path = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
    // SAFETY: setns on a valid open descriptor of a network namespace; it changes only this
    // thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
