//! The command line: the seed range comes first, a summary table follows, and the
//! process-level harness says how to build the `stillpoint` binary when it cannot find it.

use std::process::Command;

fn chaos(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stillpoint-chaos"))
        .args(args)
        .output()
        .expect("the stillpoint-chaos binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sim_prints_the_seed_range_first_then_the_summary_and_exits_0_when_clean() {
    let (code, out, err) = chaos(&["sim", "--seeds", "40", "--start", "100"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("seeds 100..140 (40 schedules)\n"), "{out}");
    for want in [
        "schedules/s",
        "faults by kind:",
        "jobs by outcome:",
        "violations by property:",
        "  S7 ",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
}

#[test]
fn one_seed_replays_with_its_timeline() {
    let (code, out, err) = chaos(&["sim", "--seed", "7", "--trace"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("seed 7\n"), "{out}");
    assert!(out.contains("leader of term 1 elected"), "{out}");
    let (_, again, _) = chaos(&["sim", "--seed", "7", "--trace"]);
    assert_eq!(out, again, "the same seed prints the same run");
}

#[test]
fn run_without_the_stillpoint_binary_says_how_to_build_it_and_exits_2() {
    let missing = std::env::temp_dir().join("no-such-dir-stillpoint-chaos/stillpoint");
    let (code, out, err) = chaos(&[
        "run",
        "--seed",
        "1",
        "--stillpoint",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("cargo build --release --bin stillpoint") && err.contains("--stillpoint PATH"),
        "{err}"
    );
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(out.is_empty(), "{out}");
}

#[test]
fn a_bad_time_budget_is_refused_with_its_value() {
    let (code, _, err) = chaos(&["sim", "--seeds", "1", "--time-budget", "5x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("\"5x\""), "{err}");
}
