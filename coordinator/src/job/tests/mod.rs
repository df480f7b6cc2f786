//! The job core driven by a small deterministic simulator of hosts and arrays: what the plan
//! orders, how rounds and labels come out, and — over many seeds with lost replies, leader
//! changes that lose the log's uncommitted tail, and quiesces that end by themselves — that S1,
//! S2 and S3 hold and no step takes effect twice.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::inventory::{BackupCommand, Group, GroupMember, LdRef, QuiesceMethod, VolumeRef};

mod decisions;
mod scenarios;

fn vol(node: &str, volume: &str) -> VolumeRef {
    VolumeRef {
        node: node.into(),
        volume: volume.into(),
    }
}

/// `pairs` pairs spread over business nodes db1, db2, ... (`nodes` of them), RVs on backup1.
fn group(pairs: u32, nodes: u32) -> Group {
    Group {
        name: "payroll".into(),
        members: (0..pairs)
            .map(|i| GroupMember {
                pair: format!("p{i}"),
                mv_ld: LdRef {
                    array: "A1".into(),
                    ld: 2 * i,
                },
                rv_ld: LdRef {
                    array: "A1".into(),
                    ld: 2 * i + 1,
                },
                mv: vol(&format!("db{}", i % nodes + 1), &format!("mv{i}")),
                rv: vol("backup1", &format!("rv{i}")),
                quiesce: QuiesceMethod::Unmount,
                quiesce_ms_max: 30_000,
            })
            .collect(),
        backup_command: Some(BackupCommand {
            node: "backup1".into(),
            command: vec!["tar".into(), "cf".into(), "/dev/st0".into()],
            timeout_ms: 60_000,
        }),
    }
}

fn job(g: &Group) -> Job {
    Job::new(
        7,
        JobKind::Backup {
            group: g.name.clone(),
        },
        "test".into(),
        0,
        plan_backup(g, &StepLimits::default()),
    )
}

/// A tiny deterministic random source (xorshift), so a failing seed reproduces.
struct Rng(u64);
impl Rng {
    fn chance(&mut self, percent: u64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 100 < percent
    }
}

/// Hosts and one array: executes steps, journals tokens, and checks the safety properties at
/// the moment each step takes effect.
#[derive(Default)]
struct World {
    pairs: BTreeMap<String, PairSync>,
    rv_mounted: BTreeSet<VolumeRef>,
    /// Held quiesces: volume → (id, still holding). A quiesce that ended by itself stays
    /// listed (not holding) until its release, as a host's resume record does.
    quiesced: BTreeMap<VolumeRef, (u64, bool)>,
    next_quiesce_id: u64,
    /// Per step, the newest token executed and its outcome: the executor's journal.
    journal: BTreeMap<StepId, (FencingToken, Result<StepResult, String>)>,
    /// Per pair, whether every MV was held at its latest separate.
    separated_in_static_point: BTreeMap<String, bool>,
    /// Volumes whose next quiesce fails (e.g. busy), and how many more times.
    failing_quiesces: BTreeMap<VolumeRef, u32>,
    /// Order in which freeze-window steps took effect.
    trace: Vec<String>,
    quiesce_lost_pct: u64,
}

impl World {
    fn exec(&mut self, g: &Group, d: &Dispatch, rng: &mut Rng) -> Result<StepResult, String> {
        if let Some((seen, _)) = self.journal.get(&d.step) {
            // The journal's rule: a token newer in (term, attempt) order than the last one
            // begun (an earlier round's attempt may carry the same number from an older term).
            assert!(
                (seen.term, seen.attempt) < (d.token.term, d.token.attempt),
                "step {} executed twice (term {} attempt {} after term {} attempt {})",
                d.step,
                d.token.term,
                d.token.attempt,
                seen.term,
                seen.attempt
            );
        }
        let member = |pair: &str| g.members.iter().find(|m| m.pair == pair).unwrap();
        let out = match &d.call {
            StepCall::FreeRv { volume } => {
                self.rv_mounted.remove(volume);
                Ok(StepResult::RvFreed)
            }
            StepCall::SetPair { pair } => {
                self.pairs
                    .entry(pair.clone())
                    .or_insert(PairSync::Separated);
                Ok(StepResult::PairSet)
            }
            StepCall::Replicate { pair } => {
                assert!(
                    !self.rv_mounted.contains(&member(pair).rv),
                    "S2: replicate of {pair} while its RV is mounted"
                );
                self.pairs.insert(pair.clone(), PairSync::InSync);
                Ok(StepResult::InSync)
            }
            StepCall::Quiesce { volume, .. } => {
                if let Some(n) = self.failing_quiesces.get_mut(volume).filter(|n| **n > 0) {
                    *n -= 1;
                    Err(format!("{volume} is busy"))
                } else {
                    assert!(
                        !self.quiesced.contains_key(volume),
                        "{volume} quiesced twice"
                    );
                    self.next_quiesce_id += 1;
                    // Sometimes the quiesce ends by itself before its release (deadline).
                    let holds = !rng.chance(self.quiesce_lost_pct);
                    self.quiesced
                        .insert(volume.clone(), (self.next_quiesce_id, holds));
                    self.trace.push(format!("quiesce {volume}"));
                    Ok(StepResult::Quiesced {
                        quiesce_id: self.next_quiesce_id,
                    })
                }
            }
            StepCall::Separate { pair } => {
                let all_held = g
                    .members
                    .iter()
                    .all(|m| self.quiesced.get(&m.mv).is_some_and(|(_, h)| *h));
                self.separated_in_static_point
                    .insert(pair.clone(), all_held);
                self.pairs.insert(pair.clone(), PairSync::Separating);
                self.trace.push(format!("separate {pair}"));
                Ok(StepResult::SeparateAccepted)
            }
            StepCall::Release { volume, .. } => {
                let (id, held) = self.quiesced.remove(volume).expect("release of nothing");
                assert_eq!(d.quiesce_id, Some(id), "release names another quiesce");
                self.trace.push(format!("release {volume}"));
                Ok(StepResult::Released {
                    held_throughout: held,
                    backup_label: None,
                })
            }
            StepCall::AwaitSeparated { pair } => {
                self.pairs.insert(pair.clone(), PairSync::Separated);
                Ok(StepResult::Separated)
            }
            StepCall::MountRv { volume } => {
                let m = g.members.iter().find(|m| &m.rv == volume).unwrap();
                assert_eq!(
                    self.pairs.get(&m.pair),
                    Some(&PairSync::Separated),
                    "S1: {volume} mounted before its pair was separated"
                );
                self.rv_mounted.insert(volume.clone());
                Ok(StepResult::RvMounted {
                    repaired: d.check_first,
                })
            }
            StepCall::RunBackup { .. } => Ok(StepResult::BackupRan { exit_code: 0 }),
        };
        self.journal.insert(d.step, (d.token, out.clone()));
        out
    }

    /// What the executor's journal says about `token` (and it fences that token).
    fn finding(&self, step: StepId, token: &FencingToken) -> Finding {
        match self.journal.get(&step) {
            Some((t, outcome)) if t.attempt >= token.attempt => Finding::Finished {
                token: *t,
                outcome: outcome.clone(),
            },
            _ => Finding::NotRecorded,
        }
    }
}

struct Faults {
    lost_reply_pct: u64,
    leader_change_pct: u64,
    /// Chance that a quiesce ends by itself (its deadline) before its release.
    quiesce_lost_pct: u64,
}

/// Drives `job` to its end the way the leader's runtime will: events are applied to the
/// driver's copy at once and reach the log behind it; a leader change keeps only a committed
/// prefix of them, and the new leader starts from that with its takeover events.
fn drive(g: &Group, world: &mut World, seed: u64, faults: &Faults) -> Job {
    drive_job(g, job(g), world, seed, faults)
}

/// [`drive`] for any planned job.
fn drive_job(g: &Group, plan: Job, world: &mut World, seed: u64, faults: &Faults) -> Job {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    world.quiesce_lost_pct = faults.quiesce_lost_pct;
    let mut log: Vec<(JobEvent, u64)> = Vec::new();
    let mut committed = 0;
    let mut current = plan.clone();
    let (mut term, mut now_ms) = (1, 0);
    for _tick in 0..5_000 {
        if current.is_ended() {
            return current;
        }
        let record = |job: &mut Job, log: &mut Vec<(JobEvent, u64)>, e: JobEvent| {
            job.record(&e, now_ms)
                .unwrap_or_else(|err| panic!("seed {seed}: {e:?} refused: {err}"));
            log.push((e, now_ms));
        };
        for action in decide(&current, term, now_ms) {
            match action {
                Action::Record(e) => record(&mut current, &mut log, e),
                Action::Dispatch(d) => {
                    let e = JobEvent::Dispatched {
                        step: d.step,
                        token: d.token,
                    };
                    record(&mut current, &mut log, e);
                    let out = world.exec(g, &d, &mut rng);
                    if rng.chance(faults.lost_reply_pct) {
                        continue; // executed, but the reply never came back
                    }
                    let e = match out {
                        Ok(result) => JobEvent::Completed {
                            step: d.step,
                            token: d.token,
                            result,
                        },
                        Err(reason) => JobEvent::Failed {
                            step: d.step,
                            token: d.token,
                            reason,
                        },
                    };
                    record(&mut current, &mut log, e);
                }
                Action::Probe { step, token, .. } => {
                    let finding = world.finding(step, &token);
                    if let Some(e) = resolve(&current.steps[step as usize], &finding) {
                        record(&mut current, &mut log, e);
                    }
                }
            }
        }
        now_ms += 60_000;
        // The log commits what the driver recorded, often with a lag of a tick.
        if rng.chance(60) {
            committed = log.len();
        }
        if rng.chance(faults.leader_change_pct) {
            // The old leader's uncommitted events are gone; the new one replays the rest.
            term += 1;
            log.truncate(committed);
            current = plan.clone();
            for (e, at) in &log {
                current.record(e, *at).unwrap();
            }
            for e in current.takeover_events(term) {
                current.record(&e, now_ms).unwrap();
                log.push((e, now_ms));
            }
        }
    }
    panic!("seed {seed}: the job did not end within 5000 ticks");
}
