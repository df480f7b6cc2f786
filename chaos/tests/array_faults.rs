//! The array and host-hook faults of the process-level harness against real processes of the
//! `stillpoint` binary: two short seeds drawing only `slow-copy`, `rv-ld-failure`,
//! `rv-hook-fails` and `rv-hook-hangs` (between them each kind at least once) must end with
//! no violation; each kind must have been struck. Runs with or without root (these faults
//! need no network namespaces). The binary is built by [`common::stillpoint`].

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_harness, struck};

const KINDS: [&str; 4] = [
    "slow-copy",
    "rv-ld-failure",
    "rv-hook-fails",
    "rv-hook-hangs",
];

#[test]
fn array_and_hook_faults_against_real_processes_end_without_violations() {
    // The binary's build (a real one when the workspace's tests built it with other features)
    // is not the run's time.
    common::stillpoint();
    let started = Instant::now();
    let kinds = KINDS.join(",");
    let stdout = run_harness(&[
        "--start",
        "3",
        "--schedules",
        "2",
        "--fault-time",
        "15s",
        "--heal-time",
        "60s",
        "--time-budget",
        "200s",
        "--faults",
        &kinds,
    ]);
    assert!(stdout.starts_with("seeds 3..5 (2 schedules"), "{stdout}");
    for kind in KINDS {
        assert!(
            struck(&stdout, kind).is_some_and(|n| n > 0),
            "{kind} not struck: {stdout}"
        );
    }
    // Nothing else was drawn.
    for other in ["kill-leader", "kill-array", "isolate-leader", "split"] {
        assert_eq!(struck(&stdout, other), Some(0), "{other}: {stdout}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "took {:?}",
        started.elapsed()
    );
}

/// The RDR link fault: one short seed drawing only `rdr-link-down` runs a site with an RDR
/// pair (its RV on the second array process A2) and strikes the link at least once, with no
/// violation (S1 and S3 judged from both arrays' audit logs and LD files).
#[test]
fn rdr_link_faults_against_real_processes_end_without_violations() {
    common::stillpoint();
    let stdout = run_harness(&[
        "--start",
        "104",
        "--schedules",
        "1",
        "--fault-time",
        "15s",
        "--heal-time",
        "60s",
        "--faults",
        "rdr-link-down",
    ]);
    assert!(stdout.contains("(p1 RDR on A2)"), "{stdout}");
    assert!(
        struck(&stdout, "rdr-link-down").is_some_and(|n| n > 0),
        "rdr-link-down not struck: {stdout}"
    );
    assert_eq!(struck(&stdout, "kill-leader"), Some(0), "{stdout}");
}

#[test]
fn an_unknown_fault_kind_is_refused_naming_it_and_the_known_ones() {
    let out = Command::new(env!("CARGO_BIN_EXE_stillpoint-chaos"))
        .args(["run", "--seed", "1", "--faults", "slow-copy,disk-on-fire"])
        .output()
        .expect("run stillpoint-chaos");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"disk-on-fire\"") && stderr.contains("rv-ld-failure"),
        "{stderr}"
    );
}
