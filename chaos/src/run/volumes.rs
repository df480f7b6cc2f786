//! S5 and S6 on volumes, from the agents' step journals, read by the harness once the agents
//! have stopped.
//!
//! The host steps of a job (free and mount an RV on the backup node, quiesce and release an
//! MV on a business node) leave no line in the array's audit log. What records them is the
//! step executor's journal in each agent's data dir (`data-NAME`, one sled database):
//! every step begun, under which fencing token (term, job, step, attempt), on which resource
//! (`volume:NODE:VOLUME`), when it began and how it ended. A token the executor refuses
//! (fenced, stale, deposed leader) writes no record, so every record is a step that began
//! acting on its volume.
//!
//! **This is the product's own record**, not an independent one: the same journal the
//! executor consults to refuse stale tokens. Issue 12 allows the host journals as the source
//! for volumes (the array's audit log, which judges the pairs in [`super::fencing`], is the
//! independent one). What judging it still catches: an executor that accepted a token its
//! own floors should have refused (floors lost over a restart, a check skipped on some path),
//! and a driver that sent a job's steps to a volume another job owned. What it cannot catch:
//! an effect the executor had without recording it. And the records of the steps begun
//! without waiting for a flush (a release's begin; a quiesce's, a separate's and a release's
//! outcome) may be lost when an agent is killed: a lost record is a step not judged.
//!
//! Per volume, the records ordered by the instant they were begun (the executor runs the
//! steps of one resource one at a time, in the order they were begun; all of a volume's
//! steps run on its own node, so one agent's clock orders them):
//!
//! - **S5** (a job owns its volumes from acceptance to end; the driver sends a job's first
//!   step only once the job before it on the group has ended, and an ended job sends
//!   nothing): the jobs acting on a volume form runs ([`OwnerRuns`], the rule the pair check
//!   uses): once job B began a step on it after job A's, no step of A begins on it again.
//!   Every record counts, whatever its outcome: a failed step, or one whose outcome was never
//!   recorded, was begun on the volume under its job's token all the same. A job's re-run
//!   rounds, and a failed or cancelled job followed by another, are runs of one job each.
//! - **S6** (a stale token never acts): no step begins under a term lower than one a step
//!   already began in on the volume, by any job; no attempt of a step begins after an attempt
//!   with a higher (term, attempt) of the same step began; and no token (job, step, attempt)
//!   has two records in the site's journals (a step executed twice, on two agents — within one
//!   journal the token is the record's key).
//!
//! The order steps began in is the journal's own sequence (`StepRecord::begun_seq`, sled's
//! monotonic id taken in the transaction that began the step), not their begin times: an
//! agent's wall clock may be stepped (`clock-step`), and its stamps then lie about order.
//! Records written without a sequence fall back to their times; records begun in the same
//! millisecond then have no order the journal can tell: S6 compares a record only with those
//! begun strictly earlier, and S5 sorts one millisecond's records by job, so both give ties
//! the benefit of the doubt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stillpoint_storage::journal::{StepOutcome, StepRecord};

use super::check::Violation;
use super::fencing::{Floor, OwnerRuns};

/// A step record read from an agent's journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalStep {
    /// The agent whose journal holds it.
    pub agent: String,
    pub record: StepRecord,
}

/// What the volume checkers judged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeCounts {
    /// Step records on volumes.
    pub steps: u64,
    /// Distinct volumes they acted on.
    pub volumes: u64,
    /// Of those, records that ended failed, and records with no outcome (interrupted, or the
    /// outcome lost).
    pub failed: u64,
    pub no_outcome: u64,
}

/// Reads every step record of every agent's journal (`(name, data dir)`), after the agents
/// stopped: sled locks its database, so this fails for a dir an agent still holds. Opening
/// the database may replay its log (what the agent's next start would do); nothing else is
/// written. Blocking: run it off the async runtime. Returns the records and, per journal
/// that could not be read, why.
pub fn read_journals(data_dirs: &[(String, PathBuf)]) -> (Vec<JournalStep>, Vec<String>) {
    let mut steps = Vec::new();
    let mut errors = Vec::new();
    for (agent, dir) in data_dirs {
        match read_journal(dir) {
            Ok(records) => steps.extend(records.into_iter().map(|record| JournalStep {
                agent: agent.clone(),
                record,
            })),
            Err(e) => errors.push(format!("the journal of {agent}: {e}")),
        }
    }
    (steps, errors)
}

fn read_journal(dir: &Path) -> Result<Vec<StepRecord>, String> {
    // `Store::open` would create a missing dir: an agent that never started has no journal,
    // and saying so beats judging an empty one.
    if !dir.is_dir() {
        return Err(format!("no data dir at {}", dir.display()));
    }
    let store = stillpoint_storage::Store::open(dir)
        .map_err(|e| format!("opening {}: {e}", dir.display()))?;
    let journal = store
        .journal()
        .map_err(|e| format!("opening the journal in {}: {e}", dir.display()))?;
    journal
        .all_step_records()
        .map_err(|e| format!("reading the step records in {}: {e}", dir.display()))
}

fn describe(s: &JournalStep) -> String {
    let t = &s.record.token;
    let outcome = match &s.record.outcome {
        StepOutcome::Started => "no outcome recorded".to_string(),
        StepOutcome::Done { .. } => "done".to_string(),
        StepOutcome::Failed { reason } => format!("failed: {reason}"),
    };
    format!(
        "job {} step {} attempt {} term {} begun at {} on {} ({outcome})",
        t.job_id, t.step_index, t.attempt, t.term, s.record.started_at_unix_ms, s.agent
    )
}

/// Per (job, step): the newest (term, attempt) begun of it, and by which record.
type StepFloor<'a> = Floor<(u64, u32), &'a JournalStep>;

fn violation(prop: &'static str, at_ms: u64, what: String) -> Violation {
    Violation { prop, at_ms, what }
}

/// S5 and S6 over the step records on volumes (records of pairs and of steps with no
/// resource are left to the audit log's check).
pub fn s5_s6(steps: &[JournalStep]) -> (Vec<Violation>, VolumeCounts) {
    let mut out = Vec::new();
    let mut counts = VolumeCounts::default();
    let mut by_volume: BTreeMap<&str, Vec<&JournalStep>> = BTreeMap::new();
    for s in steps {
        let Some(resource) = s.record.resource.as_deref() else {
            continue;
        };
        if !resource.starts_with("volume:") {
            continue;
        }
        counts.steps += 1;
        match s.record.outcome {
            StepOutcome::Failed { .. } => counts.failed += 1,
            StepOutcome::Started => counts.no_outcome += 1,
            StepOutcome::Done { .. } => {}
        }
        by_volume.entry(resource).or_default().push(s);
    }
    counts.volumes = by_volume.len() as u64;

    // A token with two records, on any agents.
    let mut tokens: BTreeMap<(u64, u32, u32), Vec<&JournalStep>> = BTreeMap::new();
    for s in by_volume.values().flatten() {
        let t = &s.record.token;
        tokens
            .entry((t.job_id, t.step_index, t.attempt))
            .or_default()
            .push(s);
    }
    for twice in tokens.values().filter(|v| v.len() > 1) {
        out.push(violation(
            "S6",
            twice[1].record.started_at_unix_ms,
            format!(
                "one token executed more than once: {}",
                twice
                    .iter()
                    .map(|s| describe(s))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }

    for (volume, mut records) in by_volume {
        // The order the steps began in: the journal's sequence when every record has one (a
        // volume's records are all in its own node's journal), else their begin times.
        let by_seq = records.iter().all(|s| s.record.begun_seq != 0);
        let began = |s: &JournalStep| {
            if by_seq {
                s.record.begun_seq
            } else {
                s.record.started_at_unix_ms
            }
        };
        records.sort_by_key(|s| {
            let t = &s.record.token;
            (began(s), t.job_id, t.step_index, t.attempt)
        });
        let mut runs: OwnerRuns<&JournalStep> = OwnerRuns::default();
        // Floors over the records begun strictly before the current millisecond.
        let mut term_floor: Floor<u64, &JournalStep> = Floor::default();
        let mut step_floors: BTreeMap<(u64, u32), StepFloor> = BTreeMap::new();
        let mut this_ms: Vec<&JournalStep> = Vec::new();
        for s in records {
            let (t, at) = (&s.record.token, s.record.started_at_unix_ms);
            if this_ms.first().is_some_and(|f| began(f) != began(s)) {
                for e in this_ms.drain(..) {
                    let te = &e.record.token;
                    term_floor.raise(&te.term, &e);
                    step_floors
                        .entry((te.job_id, te.step_index))
                        .or_default()
                        .raise(&(te.term, te.attempt), &e);
                }
            }
            if let Some((term, by)) = term_floor.above(&t.term) {
                out.push(violation(
                    "S6",
                    at,
                    format!(
                        "{volume}: {} under term {}, lower than term {term} a step already began in on the volume ({})",
                        describe(s),
                        t.term,
                        describe(by)
                    ),
                ));
            }
            if let Some((_, by)) = step_floors
                .get(&(t.job_id, t.step_index))
                .and_then(|f| f.above(&(t.term, t.attempt)))
            {
                out.push(violation(
                    "S6",
                    at,
                    format!(
                        "{volume}: {} after a newer attempt of the same step began ({})",
                        describe(s),
                        describe(by)
                    ),
                ));
            }
            if let Some(ended) = runs.act(t.job_id, s) {
                out.push(violation(
                    "S5",
                    at,
                    format!(
                        "{volume}: job {} acted again ({}) after another job acted on the volume (its own run ended with {})",
                        t.job_id,
                        describe(s),
                        describe(ended)
                    ),
                ));
            }
            this_ms.push(s);
        }
    }
    (out, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stillpoint_storage::journal::FencingToken;

    fn step(
        agent: &str,
        volume: &str,
        at_ms: u64,
        (term, job_id, step_index, attempt): (u64, u64, u32, u32),
        outcome: StepOutcome,
    ) -> JournalStep {
        JournalStep {
            agent: agent.into(),
            record: StepRecord {
                token: FencingToken {
                    term,
                    job_id,
                    step_index,
                    attempt,
                },
                outcome,
                started_at_unix_ms: at_ms,
                finished_at_unix_ms: Some(at_ms + 5),
                resource: Some(volume.into()),
                begun_seq: at_ms,
            },
        }
    }

    fn done() -> StepOutcome {
        StepOutcome::Done {
            detail: "{}".into(),
        }
    }

    const MV: &str = "volume:db1:mv0";
    const RV: &str = "volume:backup1:rv0";

    #[test]
    fn a_clean_history_passes_and_counts_what_it_judged() {
        let steps = vec![
            // Job 1: free the RV, quiesce and release the MV, mount the RV.
            step("backup1", RV, 100, (3, 1, 0, 1), done()),
            step("db1", MV, 200, (3, 1, 2, 1), done()),
            step("db1", MV, 210, (3, 1, 4, 1), done()),
            // A new round of job 1 (same steps, next attempts), taken over in term 4.
            step("db1", MV, 300, (4, 1, 2, 2), done()),
            step("db1", MV, 310, (4, 1, 4, 2), StepOutcome::Started),
            step("backup1", RV, 400, (4, 1, 6, 1), done()),
            // Job 1 failed at its release; job 2 then owns both volumes.
            step("backup1", RV, 500, (4, 2, 0, 1), done()),
            step(
                "db1",
                MV,
                600,
                (4, 2, 2, 1),
                StepOutcome::Failed {
                    reason: "stop hook failed".into(),
                },
            ),
            // Another volume has its own history and floor.
            step("db2", "volume:db2:mv1", 50, (2, 7, 2, 1), done()),
            // Two steps of one job in the same millisecond, in any order.
            step("db2", "volume:db2:mv1", 60, (2, 7, 4, 1), done()),
            step("db2", "volume:db2:mv1", 60, (2, 7, 2, 2), done()),
        ];
        let (v, c) = s5_s6(&steps);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(
            c,
            VolumeCounts {
                steps: 11,
                volumes: 3,
                failed: 1,
                no_outcome: 1
            }
        );
        // Records of pairs and of steps with no resource are not judged here.
        let pair = step("A1", "pair:p0", 1, (1, 9, 1, 1), done());
        let mut none = step("db1", MV, 1, (1, 9, 3, 1), done());
        none.record.resource = None;
        let mut more = steps.clone();
        more.push(pair);
        more.push(none);
        assert_eq!(s5_s6(&more).1.steps, 11);
    }

    /// The agent's clock was stepped back between two jobs: the journal's sequence, not the
    /// stamps, orders the steps, so a clean history stays clean and a late step stays late.
    #[test]
    fn the_journal_sequence_orders_steps_whatever_the_clock_said() {
        let stepped = |at_ms, seq, token| {
            let mut s = step("db1", MV, at_ms, token, done());
            s.record.begun_seq = seq;
            s
        };
        // Job 1 under term 3, then job 2 under term 4 stamped a minute "earlier".
        let clean = vec![
            stepped(100_000, 1, (3, 1, 2, 1)),
            stepped(100_010, 2, (3, 1, 4, 1)),
            stepped(40_000, 3, (4, 2, 2, 1)),
            stepped(40_010, 4, (4, 2, 4, 1)),
        ];
        let (v, c) = s5_s6(&clean);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(c.steps, 4);
        // Job 1's late step under term 3 after job 2's under term 4, stamped "before" it.
        let mut late = clean.clone();
        late.push(stepped(39_000, 5, (3, 1, 6, 1)));
        let (v, _) = s5_s6(&late);
        assert!(v.iter().any(|v| v.prop == "S6"), "{v:?}");
        assert!(v.iter().any(|v| v.prop == "S5"), "{v:?}");
    }

    #[test]
    fn a_job_acting_again_after_another_job_acted_is_s5() {
        let steps = vec![
            step("db1", MV, 100, (3, 1, 2, 1), done()),
            step("db1", MV, 200, (3, 2, 2, 1), done()),
            // Job 1's release after job 2's quiesce, under a newer term (S6 holds).
            step("db1", MV, 300, (4, 1, 4, 1), done()),
            // The same jobs on another volume in turn: fine.
            step("backup1", RV, 100, (3, 1, 0, 1), done()),
            step("backup1", RV, 200, (3, 2, 0, 1), done()),
        ];
        let (v, c) = s5_s6(&steps);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].prop, "S5");
        assert_eq!(v[0].at_ms, 300);
        assert!(
            v[0].what.contains("volume:db1:mv0: job 1 acted again"),
            "{}",
            v[0].what
        );
        assert!(v[0].what.contains("begun at 100"), "{}", v[0].what);
        assert_eq!(c.steps, 5);
    }

    #[test]
    fn a_step_begun_under_a_stale_token_is_s6() {
        let steps = vec![
            step("db1", MV, 100, (5, 3, 2, 1), done()),
            // A deposed leader's step of another job (term 4) begins afterwards: S6, and S5
            // holds (job 4 never acted before).
            step("db1", MV, 200, (4, 4, 2, 1), done()),
        ];
        let (v, _) = s5_s6(&steps);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].prop, "S6");
        assert!(v[0].what.contains("lower than term 5"), "{}", v[0].what);
        // An older attempt of a step begun after a newer one: S6.
        let steps = vec![
            step("db1", MV, 100, (5, 3, 2, 2), done()),
            step("db1", MV, 200, (5, 3, 2, 1), done()),
        ];
        let (v, _) = s5_s6(&steps);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].what.contains("newer attempt"), "{}", v[0].what);
        // In the same millisecond the journal cannot tell which came first: not judged.
        let steps = vec![
            step("db1", MV, 100, (5, 3, 2, 1), done()),
            step("db1", MV, 100, (4, 3, 2, 2), done()),
        ];
        assert!(s5_s6(&steps).0.is_empty());
    }

    #[test]
    fn one_token_recorded_by_two_agents_is_s6() {
        let steps = vec![
            step("db1", MV, 100, (5, 3, 2, 1), done()),
            step("db2", "volume:db1:mv0", 100, (5, 3, 2, 1), done()),
        ];
        let (v, _) = s5_s6(&steps);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].what.contains("more than once"), "{}", v[0].what);
    }

    #[test]
    fn a_journal_written_by_the_storage_crate_is_read_back_after_the_agent_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data-db1");
        {
            let store = stillpoint_storage::Store::open(&data).unwrap();
            let j = store.journal().unwrap();
            let token = FencingToken {
                term: 2,
                job_id: 1,
                step_index: 2,
                attempt: 1,
            };
            j.begin_step(token, Some(MV), 10).unwrap();
        }
        let dirs = vec![
            ("db1".to_string(), data),
            ("db2".to_string(), dir.path().join("data-db2")),
        ];
        let (steps, errors) = read_journals(&dirs);
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(steps[0].agent, "db1");
        assert_eq!(steps[0].record.resource.as_deref(), Some(MV));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("db2") && errors[0].contains("no data dir"));
    }
}
