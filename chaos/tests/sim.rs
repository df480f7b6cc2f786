//! The deterministic layer over a few thousand seeds, its reproducibility, and proof that its
//! checkers can fail: each mutation breaks one rule of the system on purpose and the checkers
//! must catch it.

use std::collections::BTreeMap;

use stillpoint_chaos::sim::{self, Mutations, Prop, RunConfig, Summary};

fn sweep(seeds: std::ops::Range<u64>, cfg: &RunConfig) -> Summary {
    let mut s = Summary::default();
    for seed in seeds {
        s.add(&sim::run(seed, cfg));
    }
    s
}

fn assert_clean(s: &Summary) {
    assert_eq!(s.violations_total(), 0, "violations:\n{}", s.table());
}

// Four slices of 1,000 seeds, so nextest runs them side by side.
#[test]
fn seeds_0_to_1000_hold_s1_to_s7() {
    assert_clean(&sweep(0..1_000, &RunConfig::default()));
}

#[test]
fn seeds_1000_to_2000_hold_s1_to_s7() {
    assert_clean(&sweep(1_000..2_000, &RunConfig::default()));
}

#[test]
fn seeds_2000_to_3000_hold_s1_to_s7() {
    assert_clean(&sweep(2_000..3_000, &RunConfig::default()));
}

#[test]
fn seeds_3000_to_4000_hold_s1_to_s7_and_every_fault_and_outcome_occurs() {
    let s = sweep(3_000..4_000, &RunConfig::default());
    assert_clean(&s);
    for kind in [
        "leader change",
        "agent restart",
        "copy fault",
        "RDR link down",
        "holder refuses unmount",
        "stop hook fails",
        "slow host",
        "commit lag",
        "network storm",
        "message lost",
        "message delayed",
        "cancel (operator)",
    ] {
        assert!(
            s.faults.get(kind).copied().unwrap_or(0) > 0,
            "no {kind}:\n{}",
            s.table()
        );
    }
    for outcome in [
        "done, consistent",
        "done, crash-consistent",
        "failed",
        "cancelled",
        "finished (prepare)",
        "refused (S5, no queue)",
    ] {
        assert!(
            s.jobs.get(outcome).copied().unwrap_or(0) > 0,
            "no job {outcome}:\n{}",
            s.table()
        );
    }
}

#[test]
fn a_seed_replays_byte_for_byte() {
    let cfg = RunConfig {
        trace: true,
        ..RunConfig::default()
    };
    for seed in [3, 141, 567] {
        let a = sim::run(seed, &cfg);
        let b = sim::run(seed, &cfg);
        assert!(
            a.timeline.len() > 20,
            "seed {seed}: a timeline of {} lines",
            a.timeline.len()
        );
        assert_eq!(a.timeline, b.timeline, "seed {seed}");
        assert_eq!((a.events, a.end_ms), (b.events, b.end_ms));
        // Tracing changes nothing but the output.
        let quiet = sim::run(seed, &RunConfig::default());
        assert_eq!(
            (quiet.events, quiet.end_ms, quiet.faults, quiet.jobs),
            (a.events, a.end_ms, a.faults, a.jobs)
        );
    }
}

/// Runs `seeds` with `mutations` and returns violations per property.
fn mutated(mutations: Mutations, seeds: std::ops::Range<u64>) -> BTreeMap<Prop, u64> {
    let cfg = RunConfig {
        mutations,
        ..RunConfig::default()
    };
    let s = sweep(seeds, &cfg);
    println!("{mutations:?}:\n{}", s.table());
    s.violations
}

#[test]
fn a_driver_that_skips_the_takeover_probes_is_caught() {
    let found = mutated(
        Mutations {
            skip_takeover: true,
            ..Mutations::default()
        },
        0..300,
    );
    let total: u64 = found.values().sum();
    assert!(
        total > 0,
        "no checker noticed the missing takeover: {found:?}"
    );
}

#[test]
fn labels_without_the_held_throughout_check_are_caught_by_s3() {
    let found = mutated(
        Mutations {
            host_claims_held: true,
            ..Mutations::default()
        },
        0..300,
    );
    assert!(
        found.get(&Prop::S3).copied().unwrap_or(0) > 0,
        "S3 did not notice: {found:?}"
    );
}

#[test]
fn executors_without_fences_are_caught_by_s6() {
    let found = mutated(
        Mutations {
            no_fencing: true,
            ..Mutations::default()
        },
        0..300,
    );
    assert!(
        found.get(&Prop::S6).copied().unwrap_or(0) > 0,
        "S6 did not notice: {found:?}"
    );
}
