//! What one schedule found ([`Report`]) and the table over many ([`Summary`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::check::Violation;
use super::schedule::{FaultKind, Shape};
use super::volumes::VolumeCounts;

/// The properties judged, in the order the table prints them; `NOT CHECKED` ones are listed
/// so the table never implies they hold.
pub const PROPS: [(&str, &str); 8] = [
    (
        "S1",
        "no RV I/O the array accepted while its access forbade it (audit)",
    ),
    (
        "S1/S2",
        "RV mounted while the array copied onto it (mount looks + audit)",
    ),
    (
        "S3",
        "verifier on every RV of a copy labelled consistent; its copies of one instant (every MV write around the separates, audit); with real file systems, each cut from a frozen one (its superblock as the array cut it, audit); every pair separated when a job ended done (audit)",
    ),
    (
        "S4",
        "MV write stall <= quiesce limit + slack (array audit)",
    ),
    (
        "S5",
        "no job acted on a pair or volume after another job had (pairs: array audit, tokens; volumes: agents' step journals)",
    ),
    (
        "S6",
        "no pair operation accepted under a token below one accepted before (audit); no volume step begun under a term below one begun before, or a token executed twice (agents' step journals)",
    ),
    ("S7", "every accepted job ended after heal"),
    (
        "heal",
        "a leader, no job open, no MV quiesced within the heal bound; a pair left in fault only by an RV LD failure, and a backup then takes it out",
    ),
];

/// One schedule's outcome.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub shape: Option<Shape>,
    /// The faults as planned ([`super::schedule::Schedule::plan`]).
    pub plan: String,
    pub elapsed_ms: u64,
    pub faults: BTreeMap<FaultKind, u64>,
    pub faults_skipped: u64,
    /// "done consistent", "done crash-consistent", "failed", ... → count.
    pub jobs: BTreeMap<String, u64>,
    pub submissions_refused: u64,
    pub submissions_unknown: u64,
    pub s3_judged: u64,
    pub s3_unjudged: u64,
    /// Consistent copies judged for one instant from the audit log ([`super::instant`]).
    pub s3_one_instant_judged: u64,
    /// RVs of consistent copies on real file systems whose head at the cut was judged
    /// ([`super::fs_cut`]).
    pub s3_cuts_judged: u64,
    /// Damaged copies of an MV a fault may have damaged itself (see `check::S3Counts`).
    pub s3_excused: Vec<String>,
    pub s4_longest_ms: u64,
    pub s4_excused: u64,
    pub heal_ms: u64,
    /// Pairs left in failure separation after the heal that the recovery backup took out.
    pub pairs_recovered: u64,
    /// RV I/O by the backup node the array refused (counted, not judged).
    pub rv_io_refused: u64,
    /// Looks at the backup node's mounts that got an answer.
    pub mount_looks: u64,
    /// Pair operations the array accepted (and refused) under a job's token: what S5/S6 judged.
    pub fenced_ops: u64,
    pub fenced_refused: u64,
    /// Host steps on volumes in the agents' journals: what S5/S6 judged on volumes.
    pub volume_steps: VolumeCounts,
    pub violations: Vec<Violation>,
    /// The harness could not do its part (site did not start, records unreadable): the
    /// schedule proves nothing and counts as failed.
    pub errors: Vec<String>,
    pub timeline: Vec<String>,
    /// Where the data dirs and logs were kept (failing runs, or `--keep`).
    pub kept: Option<PathBuf>,
}

impl Report {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty() || !self.errors.is_empty()
    }

    /// One line for the run's progress output.
    pub fn line(&self) -> String {
        let shape = self
            .shape
            .as_ref()
            .map(|s| {
                format!(
                    "{} voters, {} pairs{}",
                    s.voters,
                    s.pairs,
                    if s.rdr { " (p1 RDR on A2)" } else { "" }
                )
            })
            .unwrap_or_default();
        let faults: u64 = self.faults.values().sum();
        let jobs: u64 = self.jobs.values().sum();
        format!(
            "seed {}: {shape}, {faults} faults, {jobs} jobs accepted, heal {:.1} s, S5/S6: {} pair operations and {} volume steps judged, {} violations{}, {:.1} s",
            self.seed,
            self.heal_ms as f64 / 1000.0,
            self.fenced_ops,
            self.volume_steps.steps,
            self.violations.len(),
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(", HARNESS ERROR: {}", self.errors.join("; "))
            },
            self.elapsed_ms as f64 / 1000.0
        )
    }
}

/// Totals over schedules.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub schedules: u64,
    pub failed: Vec<u64>,
    pub faults: BTreeMap<FaultKind, u64>,
    pub faults_skipped: u64,
    pub jobs: BTreeMap<String, u64>,
    pub submissions_refused: u64,
    pub submissions_unknown: u64,
    pub s3_judged: u64,
    pub s3_unjudged: u64,
    pub s3_one_instant_judged: u64,
    pub s3_cuts_judged: u64,
    pub s3_excused: u64,
    pub s4_longest_ms: u64,
    pub s4_excused: u64,
    pub heal_ms_max: u64,
    pub pairs_recovered: u64,
    pub rv_io_refused: u64,
    pub mount_looks: u64,
    pub fenced_ops: u64,
    pub fenced_refused: u64,
    pub volume_steps: u64,
    pub volumes: u64,
    pub volume_steps_failed: u64,
    pub volume_steps_no_outcome: u64,
    pub violations: BTreeMap<&'static str, u64>,
    pub errors: u64,
}

impl Summary {
    pub fn add(&mut self, r: &Report) {
        self.schedules += 1;
        if r.failed() {
            self.failed.push(r.seed);
        }
        for (k, n) in &r.faults {
            *self.faults.entry(*k).or_default() += n;
        }
        self.faults_skipped += r.faults_skipped;
        for (k, n) in &r.jobs {
            *self.jobs.entry(k.clone()).or_default() += n;
        }
        self.submissions_refused += r.submissions_refused;
        self.submissions_unknown += r.submissions_unknown;
        self.s3_judged += r.s3_judged;
        self.s3_unjudged += r.s3_unjudged;
        self.s3_one_instant_judged += r.s3_one_instant_judged;
        self.s3_cuts_judged += r.s3_cuts_judged;
        self.s3_excused += r.s3_excused.len() as u64;
        self.s4_longest_ms = self.s4_longest_ms.max(r.s4_longest_ms);
        self.s4_excused += r.s4_excused;
        self.heal_ms_max = self.heal_ms_max.max(r.heal_ms);
        self.pairs_recovered += r.pairs_recovered;
        self.rv_io_refused += r.rv_io_refused;
        self.mount_looks += r.mount_looks;
        self.fenced_ops += r.fenced_ops;
        self.fenced_refused += r.fenced_refused;
        self.volume_steps += r.volume_steps.steps;
        self.volumes += r.volume_steps.volumes;
        self.volume_steps_failed += r.volume_steps.failed;
        self.volume_steps_no_outcome += r.volume_steps.no_outcome;
        for v in &r.violations {
            *self.violations.entry(v.prop).or_default() += 1;
        }
        self.errors += r.errors.len() as u64;
    }

    pub fn violations_total(&self) -> u64 {
        self.violations.values().sum::<u64>() + self.errors
    }

    pub fn table(&self) -> String {
        let mut t = format!(
            "schedules: {} ({} failed{})\n",
            self.schedules,
            self.failed.len(),
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(
                    ": seeds {}",
                    self.failed
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        t += "faults by kind:\n";
        for k in FaultKind::ALL {
            t += &format!(
                "  {:<16} {:>6}\n",
                k.name(),
                self.faults.get(&k).copied().unwrap_or(0)
            );
        }
        t += &format!(
            "  {:<16} {:>6}  (planned but nothing to strike)\n",
            "skipped", self.faults_skipped
        );
        t += "jobs by outcome:\n";
        for (k, n) in &self.jobs {
            t += &format!("  {k:<22} {n:>6}\n");
        }
        t += &format!(
            "  submissions refused {} (group busy, no_queue), outcome unknown {}\n",
            self.submissions_refused, self.submissions_unknown
        );
        t += &format!(
            "S1/S2 looks at backup1's mounts {}; RV I/O by backup1 the array refused {} (counted, not judged)\n",
            self.mount_looks, self.rv_io_refused
        );
        t += &format!(
            "S3 RVs verified {}, not judged {} (changed before read, or unreadable), damaged with the MV itself (its host crashed or its writes failed, and no copy since showed its application started again) {} (counted, not judged)\n",
            self.s3_judged, self.s3_unjudged, self.s3_excused
        );
        t += &format!(
            "S3 consistent copies judged of one instant (every MV's writes around the separates, audit) {}\n",
            self.s3_one_instant_judged
        );
        if self.s3_cuts_judged > 0 {
            t += &format!(
                "S3 RVs of consistent copies cut from a frozen file system (the superblock the array cut, audit) {}\n",
                self.s3_cuts_judged
            );
        }
        t += &format!(
            "S4 longest judged write stall {} ms; stalls excused (fault on the writer's host or the array) {}\n",
            self.s4_longest_ms, self.s4_excused
        );
        t += &format!(
            "S5/S6 pair operations under a job's token: accepted {}, refused {}\n",
            self.fenced_ops, self.fenced_refused
        );
        t += &format!(
            "S5/S6: {} volume steps judged (host steps in the agents' own journals, on {} volumes over all schedules; failed {}, no outcome recorded {})\n",
            self.volume_steps, self.volumes, self.volume_steps_failed, self.volume_steps_no_outcome
        );
        t += &format!(
            "heal: longest {} ms; pairs left in fault and taken out by a backup after the heal {}\n",
            self.heal_ms_max, self.pairs_recovered
        );
        t += "violations by property:\n";
        for (p, what) in PROPS {
            let n = self.violations.get(p).copied().unwrap_or(0);
            if what.starts_with("NOT CHECKED") {
                t += &format!("  {p:<6}      -  {what}\n");
            } else {
                t += &format!("  {p:<6} {n:>6}  {what}\n");
            }
        }
        t += &format!("  harness errors {}\n", self.errors);
        t
    }
}
