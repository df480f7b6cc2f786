//! The end-to-end check of issue 13, through the binary: `stillpoint demo --postgres` runs a
//! live PostgreSQL on ext4 on a software-array LD of a business node (linux hosts: LDs as loop
//! devices over the agents' FUSE files), pgbench writing throughout, a cluster backup job of its
//! group, and a second PostgreSQL started on the RV on the backup node. Each test reads the
//! run's JSON report and judges it: the copy is labelled consistent, its server recovered,
//! pgbench's invariant and row counts hold on it, `pg_amcheck` finds nothing, its history lies
//! between production's when the job was submitted and when it ended, pgbench saw no error,
//! and nothing stays mounted afterwards. Three ways: online backup mode, freeze, and freeze
//! with the WAL on a second LD of the same group.
//!
//! Root, /dev/fuse, loop devices and PostgreSQL 15+ are needed: without them the demo exits
//! 14 saying what is missing, and the test prints that it SKIPPED and why.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stillpoint");
/// `exit::MISSING_PREREQUISITE`.
const MISSING_PREREQUISITE: i32 = 14;

/// Runs the demo; `None` when this machine lacks what it needs (printed as a skip).
fn run_demo(test: &str, args: &[&str]) -> Option<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--postgres", "--output", "json", "--dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(MISSING_PREREQUISITE) {
        eprintln!("SKIPPED {test}: {}", stderr.trim());
        return None;
    }
    let logs = || {
        ["mgmt1", "db1", "backup1", "array"]
            .iter()
            .map(|n| {
                let t = std::fs::read_to_string(dir.path().join(format!("{n}.log")))
                    .unwrap_or_default();
                format!("--- {n}.log (end)\n{}", &t[t.len().saturating_sub(3000)..])
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stderr}\nstdout: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        logs()
    );
    assert_nothing_mounted_under(dir.path());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON: {e}\n{stderr}"));
    eprintln!("{stderr}\n{report:#}");
    Some(report)
}

/// The demo stops its agents gracefully: no file system, loop or FUSE mount is left under its
/// dir.
fn assert_nothing_mounted_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "still mounted after the demo: {left:?}");
}

/// What every method must give.
fn judge(report: &serde_json::Value) {
    let n = |path: &[&str]| -> i64 {
        let mut v = report;
        for p in path {
            v = &v[*p];
        }
        v.as_i64()
            .unwrap_or_else(|| panic!("{path:?} is not a number in {report:#}"))
    };
    assert_eq!(report["label"], "consistent", "{report:#}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report:#}");
    // pgbench's invariant, on the copy's recovered server.
    let delta = n(&["copy", "sum_delta"]);
    for sum in ["sum_abalance", "sum_tbalance", "sum_bbalance"] {
        assert_eq!(n(&["copy", sum]), delta, "{sum} on the copy: {report:#}");
    }
    assert_eq!(n(&["copy", "branches"]), 2);
    assert_eq!(n(&["copy", "tellers"]), 20);
    assert_eq!(n(&["copy", "accounts"]), 200_000);
    // The copy is of this backup: its history lies within the job's span on production.
    let history = n(&["copy", "history"]);
    assert!(
        n(&["production_history_before"]) <= history && history <= n(&["production_history_after"]),
        "{report:#}"
    );
    assert!(history > 0, "the copy holds no pgbench transaction");
    match report["amcheck"].as_str() {
        Some("clean") => {}
        Some("not installed") => eprintln!("pg_amcheck is not installed: that check was skipped"),
        other => panic!("pg_amcheck on the copy: {other:?}"),
    }
    // pgbench wrote through the whole window without an error.
    assert_eq!(
        report["pgbench_errors"],
        serde_json::json!([]),
        "{report:#}"
    );
    assert!(n(&["pgbench_transactions_in_window"]) > 0, "{report:#}");
    eprintln!(
        "freeze window {} ms; longest pgbench transaction in it {} ms (whole run {} ms)",
        report["window_ms"],
        report["pgbench_max_latency_in_window_ms"],
        report["pgbench_max_latency_whole_run_ms"]
    );
}

#[test]
fn a_live_postgresql_in_online_backup_mode_is_backed_up_by_a_job_and_opens_on_the_backup_node() {
    let Some(report) = run_demo("online backup", &["--quiesce", "postgresql"]) else {
        return;
    };
    assert_eq!(report["quiesce"], "postgresql");
    judge(&report);
}

#[test]
fn a_live_postgresql_frozen_for_its_static_point_is_backed_up_by_a_job_and_recovers_from_its_wal() {
    let Some(report) = run_demo("freeze", &["--quiesce", "freeze"]) else {
        return;
    };
    assert_eq!(report["quiesce"], "freeze");
    judge(&report);
}

#[test]
fn a_live_postgresql_with_its_wal_on_a_second_ld_is_copied_at_one_static_point_across_both() {
    let Some(report) = run_demo(
        "WAL on a second LD",
        &["--quiesce", "freeze", "--wal-on-second-ld"],
    ) else {
        return;
    };
    assert_eq!(report["wal_on_second_ld"], true);
    assert_eq!(report["rv_mounts"].as_array().map(Vec::len), Some(2));
    judge(&report);
}
