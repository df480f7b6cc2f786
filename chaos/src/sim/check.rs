//! The checkers. They read the world's records (the array's log, the hosts' quiesce
//! intervals and mounts, the effects steps had, the executors' logs) and the site; from the
//! jobs they take only what a user is shown: which jobs were accepted and how each ended.
//! S1 and S2 are judged where they happen (`world.rs`); the rest here, after the run.

use std::collections::{BTreeMap, BTreeSet};

use stillpoint_coordinator::job::{CopyLabel, JobEnd, JobState};

use super::engine::Sim;
use super::executor::{ExecKind, order};
use super::world::{ArrayOp, Prop, Violation, tok};

/// Added to an MV's quiesce limit before S4 calls it a violation: the host's deadline fires at
/// the limit exactly in the simulator, so any excess is the system's, not the timer's. One
/// second covers a real host's timer and thaw.
pub const QUIESCE_SLACK_MS: u64 = 1_000;

pub(super) fn judge(sim: &mut Sim) {
    let mut found = Vec::new();
    s3(sim, &mut found);
    s4(sim, &mut found);
    s5(sim, &mut found);
    s6(sim, &mut found);
    s7(sim, &mut found);
    sim.world.violations.extend(found);
    tally_jobs(sim);
}

fn v(found: &mut Vec<Violation>, prop: Prop, at_ms: u64, what: String) {
    found.push(Violation { prop, at_ms, what });
}

/// S3: every copy labelled consistent was separated, pair by pair, inside one quiesce of every
/// MV of its group, and was not replicated over afterwards.
fn s3(sim: &Sim, found: &mut Vec<Violation>) {
    for id in &sim.accepted {
        let Some(job) = sim.applied.jobs.get(id) else {
            continue;
        };
        let JobState::Ended {
            end: JobEnd::Done {
                label: CopyLabel::Consistent,
            },
            at_ms: end_ms,
        } = &job.state
        else {
            continue;
        };
        let Some(group) = sim.site.group(job.kind.group()) else {
            continue;
        };
        // The separate that made each pair's copy: the last this job had accepted.
        let mut seps = Vec::new();
        for m in &group.members {
            let last = sim.world.array_log.iter().rev().find(|r| {
                r.pair == m.pair
                    && r.op == ArrayOp::SeparateAccepted
                    && r.token.is_some_and(|t| t.job_id == *id)
            });
            let Some(sep) = last else {
                v(
                    found,
                    Prop::S3,
                    *end_ms,
                    format!(
                        "job {id} labelled consistent, but the array never separated {} for it",
                        m.pair
                    ),
                );
                continue;
            };
            let later = sim.world.array_log.iter().find(|r| {
                r.pair == m.pair
                    && r.seq > sep.seq
                    && r.at_ms <= *end_ms
                    && matches!(r.op, ArrayOp::ReplicateStarted | ArrayOp::CopyFault)
            });
            if let Some(r) = later {
                v(
                    found,
                    Prop::S3,
                    r.at_ms,
                    format!(
                        "job {id} labelled consistent, but {} had {:?} after its separate",
                        m.pair, r.op
                    ),
                );
            }
            seps.push(sep);
        }
        if seps.is_empty() {
            continue;
        }
        let first = seps.iter().map(|r| r.seq).min().unwrap_or(0);
        let last = seps.iter().map(|r| r.seq).max().unwrap_or(0);
        let at = seps.iter().map(|r| r.at_ms).max().unwrap_or(0);
        for m in &group.members {
            let held = sim.world.intervals.iter().any(|iv| {
                iv.volume == m.mv && iv.start_seq < first && iv.end_seq.is_none_or(|e| e > last)
            });
            if !held {
                let pairs: Vec<String> = seps
                    .iter()
                    .map(|r| format!("{} at {} ms", r.pair, r.at_ms))
                    .collect();
                v(
                    found,
                    Prop::S3,
                    at,
                    format!(
                        "job {id} labelled consistent, but MV {} was not held quiesced across the separates ({})",
                        m.mv,
                        pairs.join(", ")
                    ),
                );
            }
        }
    }
}

/// S4: no quiesce lasted longer than its limit plus the slack.
fn s4(sim: &Sim, found: &mut Vec<Violation>) {
    for iv in &sim.world.intervals {
        let end = iv.end_ms.unwrap_or(sim.now);
        if end - iv.start_ms > iv.limit_ms + QUIESCE_SLACK_MS {
            v(
                found,
                Prop::S4,
                end,
                format!(
                    "MV {} quiesced {} ms (limit {} ms) by {}",
                    iv.volume,
                    end - iv.start_ms,
                    iv.limit_ms,
                    tok(&iv.owner)
                ),
            );
        }
    }
}

/// S5: no two jobs' steps interleave on one pair or volume (A … B … A).
fn s5(sim: &Sim, found: &mut Vec<Violation>) {
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    let mut left: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for e in &sim.world.effects {
        let Some(t) = e.token else { continue };
        let r = e.resource.as_str();
        if let Some(prev) = last.get(r).copied().filter(|p| *p != t.job_id) {
            left.entry(r).or_default().insert(prev);
            if left[r].contains(&t.job_id) {
                v(
                    found,
                    Prop::S5,
                    e.at_ms,
                    format!(
                        "{} ({}) by job {} after job {prev} acted on {r} in between",
                        e.call,
                        tok(&t),
                        t.job_id
                    ),
                );
            }
        }
        last.insert(r, t.job_id);
    }
}

/// S6: no stale token took effect, none began after a probe fenced it, and no step changed its
/// resource twice without something else changing it in between.
fn s6(sim: &Sim, found: &mut Vec<Violation>) {
    // From the effects.
    let mut newest_step: BTreeMap<(u64, u32), (u64, u32)> = BTreeMap::new();
    let mut newest_term: BTreeMap<&str, u64> = BTreeMap::new();
    // Per resource: (job, step) → changed it, and nothing else changed it since.
    let mut clean: BTreeMap<&str, BTreeMap<(u64, u32), bool>> = BTreeMap::new();
    for e in &sim.world.effects {
        let r = e.resource.as_str();
        let Some(t) = e.token else {
            if e.changed {
                for c in clean.entry(r).or_default().values_mut() {
                    *c = false;
                }
            }
            continue;
        };
        let key = (t.job_id, t.step_index);
        if let Some(n) = newest_step.get(&key).filter(|n| order(&t) < **n) {
            v(
                found,
                Prop::S6,
                e.at_ms,
                format!(
                    "{} under stale {} after term {} attempt {} took effect",
                    e.call,
                    tok(&t),
                    n.0,
                    n.1
                ),
            );
        }
        // Only pairs and volumes are owned and fenced (a backup command's node is not).
        let owned = r.starts_with("pair:") || r.starts_with("volume:");
        if let Some(n) = newest_term.get(r).filter(|n| owned && t.term < **n) {
            v(
                found,
                Prop::S6,
                e.at_ms,
                format!(
                    "{} under {} took effect on {r} after term {n} had acted on it",
                    e.call,
                    tok(&t)
                ),
            );
        }
        let n = newest_step.entry(key).or_insert(order(&t));
        *n = (*n).max(order(&t));
        let nt = newest_term.entry(r).or_insert(t.term);
        *nt = (*nt).max(t.term);
        if e.changed {
            let c = clean.entry(r).or_default();
            if c.get(&key) == Some(&true) {
                v(
                    found,
                    Prop::S6,
                    e.at_ms,
                    format!("{} executed twice on {r} (again under {})", e.call, tok(&t)),
                );
            }
            for x in c.values_mut() {
                *x = false;
            }
            c.insert(key, true);
        }
    }
    // From the executors' logs: nothing begins after a probe fenced it.
    for a in &sim.agents {
        let mut fenced: BTreeMap<(u64, u32), (u64, u32)> = BTreeMap::new();
        let mut job_term: BTreeMap<u64, u64> = BTreeMap::new();
        for l in &a.log {
            let key = (l.token.job_id, l.token.step_index);
            match l.kind {
                ExecKind::Probe => {
                    let f = fenced.entry(key).or_insert(order(&l.token));
                    *f = (*f).max(order(&l.token));
                    let j = job_term.entry(l.token.job_id).or_default();
                    *j = (*j).max(l.token.term);
                }
                ExecKind::Begin => {
                    if fenced.get(&key).is_some_and(|f| order(&l.token) <= *f)
                        || job_term
                            .get(&l.token.job_id)
                            .is_some_and(|t| l.token.term < *t)
                    {
                        v(
                            found,
                            Prop::S6,
                            l.at_ms,
                            format!(
                                "{} began {} after a probe had fenced it",
                                a.name,
                                tok(&l.token)
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// S7: within the heal bound, every accepted job ended (a failure with a reason) and no MV is
/// quiesced any more (the run goes on past the last job's end until every quiesce has ended,
/// by its release or its host's deadline: a quiesce a deposed leader took in a round the log
/// lost is known to no job and ends at its deadline).
fn s7(sim: &Sim, found: &mut Vec<Violation>) {
    if !sim.healing {
        v(
            found,
            Prop::S7,
            sim.now,
            "the run ended before its heal phase".into(),
        );
        return;
    }
    for id in &sim.accepted {
        match sim.applied.jobs.get(id).map(|j| &j.state) {
            None => v(
                found,
                Prop::S7,
                sim.now,
                format!("accepted job {id} vanished from the state"),
            ),
            Some(JobState::Ended {
                end: JobEnd::Failed { reason },
                ..
            }) if reason.trim().is_empty() => v(
                found,
                Prop::S7,
                sim.now,
                format!("job {id} failed without a reason"),
            ),
            Some(JobState::Ended { .. }) => {}
            Some(s) => v(
                found,
                Prop::S7,
                sim.now,
                format!(
                    "job {id} still {s:?} {} ms into the heal phase",
                    sim.now - sim.heal_at_ms
                ),
            ),
        }
    }
    for mv in sim.world.still_quiesced() {
        v(
            found,
            Prop::S7,
            sim.now,
            format!("MV {mv} left quiesced after the heal"),
        );
    }
}

fn tally_jobs(sim: &mut Sim) {
    for id in sim.accepted.clone() {
        let kind = match sim.applied.jobs.get(&id).map(|j| &j.state) {
            Some(JobState::Ended { end, .. }) => match end {
                JobEnd::Done {
                    label: CopyLabel::Consistent,
                } => "done, consistent",
                JobEnd::Done {
                    label: CopyLabel::CrashConsistent { .. },
                } => "done, crash-consistent",
                JobEnd::Finished => "finished (prepare)",
                JobEnd::Failed { .. } => "failed",
                JobEnd::Cancelled { .. } => "cancelled",
            },
            _ => "not ended",
        };
        *sim.report.jobs.entry(kind).or_default() += 1;
    }
}
