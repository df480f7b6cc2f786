//! The job core driven by a small deterministic simulator of hosts and arrays: what the plan
//! orders, how rounds and labels come out, and — over many seeds with lost replies, leader
//! changes that lose the log's uncommitted tail, and quiesces that end by themselves — that S1,
//! S2 and S3 hold and no step takes effect twice.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::inventory::{BackupCommand, Group, GroupMember, LdRef, QuiesceMethod, VolumeRef};
use crate::{ClusterState, Command, NodeRecord, Role};

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

#[test]
fn the_plan_orders_the_freeze_window_and_mounts_after_separated() {
    let g = group(3, 2);
    let steps = plan_backup(&g, &StepLimits::default());
    let of = |pred: &dyn Fn(&StepCall) -> bool| -> Vec<&Step> {
        steps.iter().filter(|s| pred(&s.call)).collect()
    };
    let quiesces = of(&|c| matches!(c, StepCall::Quiesce { .. }));
    let separates = of(&|c| matches!(c, StepCall::Separate { .. }));
    let releases = of(&|c| matches!(c, StepCall::Release { .. }));
    let replicates = of(&|c| matches!(c, StepCall::Replicate { .. }));
    assert_eq!((quiesces.len(), separates.len(), releases.len()), (3, 3, 3));
    for q in &quiesces {
        assert_eq!(q.after, replicates.iter().map(|s| s.id).collect::<Vec<_>>());
    }
    for s in &separates {
        let want: Vec<StepId> = replicates.iter().chain(&quiesces).map(|s| s.id).collect();
        assert_eq!(
            s.after, want,
            "a separate waits for every replicate and quiesce"
        );
        assert!(matches!(s.target, StepTarget::Array(ref a) if a == "A1"));
    }
    for r in &releases {
        assert_eq!(r.after, separates.iter().map(|s| s.id).collect::<Vec<_>>());
    }
    assert!(
        quiesces
            .iter()
            .any(|q| q.target == StepTarget::Node("db2".into()))
    );
    for s in &steps {
        assert!(s.after.iter().all(|&d| d < s.id), "deps come first");
    }
}

#[test]
fn a_clean_run_is_consistent_and_keeps_the_freeze_window_in_order() {
    let g = group(3, 2);
    let mut world = World::default();
    let no_faults = Faults {
        lost_reply_pct: 0,
        leader_change_pct: 0,
        quiesce_lost_pct: 0,
    };
    let done = drive(&g, &mut world, 3, &no_faults);
    let end = match &done.state {
        JobState::Ended { end, .. } => end.clone(),
        s => panic!("{s:?}"),
    };
    assert_eq!(
        end,
        JobEnd::Done {
            label: CopyLabel::Consistent
        },
        "trace: {:?}",
        world.trace
    );
    let last = |p: &str| world.trace.iter().rposition(|t| t.starts_with(p)).unwrap();
    let first = |p: &str| world.trace.iter().position(|t| t.starts_with(p)).unwrap();
    assert!(last("quiesce") < first("separate"));
    assert!(last("separate") < first("release"));
    assert_eq!(world.rv_mounted.len(), 3);
}

#[test]
fn a_quiesce_that_keeps_failing_gives_a_crash_consistent_copy_checked_before_mounting() {
    let g = group(2, 2);
    let mut world = World::default();
    world.failing_quiesces.insert(vol("db1", "mv0"), ROUNDS_MAX);
    let done = drive(
        &g,
        &mut world,
        11,
        &Faults {
            lost_reply_pct: 0,
            leader_change_pct: 0,
            quiesce_lost_pct: 0,
        },
    );
    match &done.state {
        JobState::Ended {
            end:
                JobEnd::Done {
                    label: CopyLabel::CrashConsistent { why },
                },
            ..
        } => assert!(why.contains("db1:mv0 is busy"), "{why}"),
        s => panic!("{s:?}"),
    }
    assert_eq!(done.round, ROUNDS_MAX + 1);
    let mounts: Vec<_> = done
        .steps
        .iter()
        .filter_map(|s| match s.result() {
            Some(StepResult::RvMounted { repaired }) => Some(*repaired),
            _ => None,
        })
        .collect();
    assert_eq!(
        mounts,
        vec![true, true],
        "a crash-consistent RV is checked first"
    );
    assert!(world.quiesced.is_empty(), "nothing left quiesced");
}

#[test]
fn a_cancel_inside_the_freeze_window_releases_the_held_quiesce_at_once() {
    let g = group(2, 2);
    let mut j = job(&g);
    let mut world = World::default();
    let mut rng = Rng(1);
    // Run until the first quiesce is done and the second is still out.
    let quiesce_steps: Vec<StepId> = j
        .steps
        .iter()
        .filter(|s| matches!(s.call, StepCall::Quiesce { .. }))
        .map(|s| s.id)
        .collect();
    for _ in 0..10 {
        for a in decide(&j, 1, 0) {
            if let Action::Dispatch(d) = a {
                j.record(
                    &JobEvent::Dispatched {
                        step: d.step,
                        token: d.token,
                    },
                    0,
                )
                .unwrap();
                if d.step == quiesce_steps[1] {
                    continue; // still out
                }
                let result = world.exec(&g, &d, &mut rng).unwrap();
                j.record(
                    &JobEvent::Completed {
                        step: d.step,
                        token: d.token,
                        result,
                    },
                    0,
                )
                .unwrap();
            }
        }
    }
    assert!(j.steps[quiesce_steps[0] as usize].result().is_some());
    j.record(&JobEvent::CancelRequested { by: "ops".into() }, 1)
        .unwrap();
    let actions = decide(&j, 1, 1);
    let released: Vec<StepId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch(d) if matches!(d.call, StepCall::Release { .. }) => Some(d.step),
            _ => None,
        })
        .collect();
    assert_eq!(released.len(), 1, "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Record(JobEvent::Ended { .. }))),
        "not ended while a quiesce is out and one is held"
    );
    assert!(
        !actions.iter().any(
            |a| matches!(a, Action::Dispatch(d) if matches!(d.call, StepCall::Separate { .. }))
        )
    );
}

#[test]
fn a_stale_or_repeated_outcome_is_refused_and_changes_nothing() {
    let g = group(1, 1);
    let mut j = job(&g);
    let t1 = j.steps[0].next_token(1, j.id);
    j.record(&JobEvent::Dispatched { step: 0, token: t1 }, 0)
        .unwrap();
    j.record(
        &JobEvent::LostTrack {
            step: 0,
            token: t1,
            why: "timeout".into(),
        },
        1,
    )
    .unwrap();
    j.record(&JobEvent::NotExecuted { step: 0, token: t1 }, 2)
        .unwrap();
    let t2 = j.steps[0].next_token(2, j.id);
    assert_eq!(t2.attempt, 2);
    j.record(&JobEvent::Dispatched { step: 0, token: t2 }, 3)
        .unwrap();
    let before = j.clone();
    let late = JobEvent::Completed {
        step: 0,
        token: t1,
        result: StepResult::RvFreed,
    };
    let err = j.record(&late, 4).unwrap_err();
    assert!(err.to_string().contains("stale token"), "{err}");
    assert_eq!(j, before);
    let again = JobEvent::Dispatched { step: 0, token: t2 };
    assert!(j.record(&again, 5).is_err());
    assert_eq!(j, before);
}

#[test]
fn an_interrupted_quiesce_or_separate_stays_unknown_until_the_target_is_read() {
    let g = group(1, 1);
    let j = job(&g);
    let mut s = j
        .steps
        .iter()
        .find(|s| matches!(s.call, StepCall::Separate { .. }))
        .unwrap()
        .clone();
    let t = s.next_token(1, j.id);
    s.dispatch(t, 0).unwrap();
    s.lose_track(t, "agent restarted".into(), 1).unwrap();
    let blind = Finding::Interrupted {
        token: t,
        observed: None,
    };
    assert_eq!(resolve(&s, &blind), None);
    let seen = Finding::Interrupted {
        token: t,
        observed: Some(Observed::Pair {
            sync: PairSync::Separating,
        }),
    };
    assert!(matches!(
        resolve(&s, &seen),
        Some(JobEvent::Completed { .. })
    ));
    let not = Finding::Interrupted {
        token: t,
        observed: Some(Observed::Pair {
            sync: PairSync::InSync,
        }),
    };
    assert!(matches!(
        resolve(&s, &not),
        Some(JobEvent::NotExecuted { .. })
    ));
}

#[test]
fn under_lost_replies_and_leader_changes_no_copy_is_wrongly_consistent() {
    let seeds = 400;
    let g = group(3, 2);
    let mut labels = BTreeMap::new();
    for seed in 0..seeds {
        let mut world = World::default();
        let done = drive(
            &g,
            &mut world,
            seed,
            &Faults {
                lost_reply_pct: 15,
                leader_change_pct: 10,
                quiesce_lost_pct: 10,
            },
        );
        let JobState::Ended { end, .. } = &done.state else {
            unreachable!()
        };
        match end {
            JobEnd::Done {
                label: CopyLabel::Consistent,
            } => {
                for m in &g.members {
                    assert_eq!(
                        world.separated_in_static_point.get(&m.pair),
                        Some(&true),
                        "seed {seed}: {} labelled consistent but separated outside the static point",
                        m.pair
                    );
                }
                *labels.entry("consistent").or_insert(0) += 1;
            }
            JobEnd::Done {
                label: CopyLabel::CrashConsistent { .. },
            } => *labels.entry("crash-consistent").or_insert(0) += 1,
            other => panic!("seed {seed}: ended {other:?}"),
        }
        assert!(
            world.quiesced.is_empty(),
            "seed {seed}: an MV left quiesced"
        );
        assert_eq!(world.rv_mounted.len(), 3, "seed {seed}");
    }
    // Both outcomes occur, so the check above is exercised.
    assert!(
        labels.get("consistent").copied().unwrap_or(0) > seeds / 4,
        "{labels:?}"
    );
    assert!(
        labels.get("crash-consistent").copied().unwrap_or(0) > 0,
        "{labels:?}"
    );
}

#[test]
fn a_group_names_every_broken_rule_with_its_path() {
    let mut registry = ClusterState::default();
    for (id, name, role) in [(1, "db1", Role::Business), (2, "backup1", Role::Backup)] {
        registry.apply(
            &[
                (1, "127.0.0.1:7001".to_string()),
                (2, "127.0.0.1:7002".to_string()),
            ]
            .into(),
            &Command::RegisterNode(NodeRecord {
                node_id: id,
                name: name.into(),
                address: format!("127.0.0.1:{}", 7000 + id),
                roles: [role].into(),
                version: "0.1.0".into(),
                registered_at_ms: 0,
                deregistered_at_ms: None,
            }),
        );
    }
    let mut g = group(2, 1);
    g.members[1].rv = vol("db1", "rv1");
    g.members[1].mv = vol("db9", "mv1");
    g.members[0].quiesce_ms_max = 0;
    let errors: Vec<String> = g
        .validate(&registry)
        .iter()
        .map(|e| e.to_string())
        .collect();
    let want = [
        "groups.payroll.members[0].quiesce_ms_max: a quiesce needs a deadline above 0 ms",
        "groups.payroll.members[1].mv: no node named \"db9\" is registered",
        "groups.payroll.members[1].rv: node \"db1\" does not have the backup role (it has: business)",
    ];
    assert_eq!(errors, want);
    assert!(group(2, 1).validate(&registry).is_empty());
}

#[test]
fn preparing_a_group_sets_every_pair_and_replicates_it_once_whatever_the_faults() {
    let g = group(3, 2);
    let faults = Faults {
        lost_reply_pct: 15,
        leader_change_pct: 10,
        quiesce_lost_pct: 0,
    };
    for seed in 0..200 {
        let plan = Job::new(
            9,
            JobKind::Prepare {
                group: g.name.clone(),
            },
            "test".into(),
            0,
            plan_prepare(&g, &StepLimits::default()),
        );
        assert!(plan.steps.iter().all(|s| s.phase == Phase::Prepare));
        let mut world = World::default();
        let done = drive_job(&g, plan, &mut world, seed, &faults);
        assert!(
            matches!(
                done.state,
                JobState::Ended {
                    end: JobEnd::Finished,
                    ..
                }
            ),
            "seed {seed}: {:?}",
            done.state
        );
        for m in &g.members {
            assert_eq!(
                world.pairs.get(&m.pair),
                Some(&PairSync::InSync),
                "seed {seed}"
            );
        }
        assert!(world.quiesced.is_empty(), "a prepare quiesces nothing");
    }
}

/// Found by the chaos simulator (stillpoint-chaos, seed 0 of `sim`): a step that had used up
/// its attempts ended the job in the same decision that sent another ready step, so the job
/// ended (and gave up its locks) with an order out, and the order's reply was refused.
#[test]
fn a_job_that_fails_on_a_worn_out_step_sends_nothing_else_in_the_same_decision() {
    let g = group(2, 1);
    let mut j = job(&g);
    let (free0, free1, rep0, rep1) = (0, 1, 2, 3);
    assert!(matches!(j.steps[rep0].call, StepCall::Replicate { .. }));
    assert!(matches!(j.steps[rep1].call, StepCall::Replicate { .. }));
    for s in [free0, free1] {
        let t = j.steps[s].next_token(1, j.id);
        j.record(
            &JobEvent::Dispatched {
                step: s as StepId,
                token: t,
            },
            0,
        )
        .unwrap();
        j.record(
            &JobEvent::Completed {
                step: s as StepId,
                token: t,
                result: StepResult::RvFreed,
            },
            0,
        )
        .unwrap();
    }
    // The second pair's replicate is sent and found not executed until it is worn out.
    for _ in 0..STEP_ATTEMPTS_MAX {
        let t = j.steps[rep1].next_token(1, j.id);
        let step = rep1 as StepId;
        j.record(&JobEvent::Dispatched { step, token: t }, 0)
            .unwrap();
        j.record(
            &JobEvent::LostTrack {
                step,
                token: t,
                why: "timeout".into(),
            },
            0,
        )
        .unwrap();
        j.record(&JobEvent::NotExecuted { step, token: t }, 0)
            .unwrap();
    }
    let actions = decide(&j, 1, 0);
    let sends = actions.iter().any(|a| matches!(a, Action::Dispatch(_)));
    let ends = actions
        .iter()
        .any(|a| matches!(a, Action::Record(JobEvent::Ended { .. })));
    assert!(ends, "{actions:?}");
    assert!(
        !sends,
        "the job ends while one of its steps is being sent: {actions:?}"
    );
    // Performing them in order leaves no step out with an executor.
    for a in actions {
        if let Action::Record(e) = a {
            j.record(&e, 1).unwrap();
        }
    }
    assert!(j.is_ended());
    assert!(
        j.steps
            .iter()
            .all(|s| !matches!(s.state, StepState::Dispatched { .. }))
    );
}

/// Records every `Record` action of `decide` and completes every dispatch at once (releases
/// report the quiesce held); returns the steps it dispatched.
fn settle_decisions(j: &mut Job, now_ms: u64) -> Vec<StepId> {
    let mut sent = Vec::new();
    for _ in 0..10 {
        let actions = decide(j, 1, now_ms);
        if actions.is_empty() {
            break;
        }
        for a in actions {
            match a {
                Action::Record(e) => j.record(&e, now_ms).unwrap(),
                Action::Dispatch(d) => {
                    sent.push(d.step);
                    j.record(
                        &JobEvent::Dispatched {
                            step: d.step,
                            token: d.token,
                        },
                        now_ms,
                    )
                    .unwrap();
                    let result = match d.call {
                        StepCall::Release { .. } => StepResult::Released {
                            held_throughout: true,
                            backup_label: None,
                        },
                        other => panic!("only releases are sent after a cancel, not {other:?}"),
                    };
                    j.record(
                        &JobEvent::Completed {
                            step: d.step,
                            token: d.token,
                            result,
                        },
                        now_ms,
                    )
                    .unwrap();
                }
                Action::Probe { .. } => {}
            }
        }
        if j.is_ended() {
            break;
        }
    }
    sent
}

/// Found by the chaos simulator (stillpoint-chaos `sim`, seed 846): a cancel skipped the
/// release of a quiesce whose outcome was still unknown; the quiesce then turned out to have
/// been taken, and the job ended cancelled with the MV left quiesced until its deadline.
#[test]
fn a_cancel_keeps_the_release_of_a_quiesce_still_unknown_and_sends_it_if_it_was_taken() {
    let g = group(2, 1);
    let mut j = job(&g);
    let id_of = |j: &Job, pred: &dyn Fn(&StepCall) -> bool| -> Vec<usize> {
        j.steps
            .iter()
            .filter(|s| pred(&s.call))
            .map(|s| s.id as usize)
            .collect()
    };
    let prepare = id_of(&j, &|c| {
        matches!(c, StepCall::FreeRv { .. } | StepCall::Replicate { .. })
    });
    let quiesces = id_of(&j, &|c| matches!(c, StepCall::Quiesce { .. }));
    let releases = id_of(&j, &|c| matches!(c, StepCall::Release { .. }));
    let done = |j: &mut Job, s: usize, result: StepResult| {
        let t = j.steps[s].next_token(1, j.id);
        let step = s as StepId;
        j.record(&JobEvent::Dispatched { step, token: t }, 0)
            .unwrap();
        j.record(
            &JobEvent::Completed {
                step,
                token: t,
                result,
            },
            0,
        )
        .unwrap();
    };
    for &s in &prepare {
        let result = match j.steps[s].call {
            StepCall::FreeRv { .. } => StepResult::RvFreed,
            _ => StepResult::InSync,
        };
        done(&mut j, s, result);
    }
    done(&mut j, quiesces[0], StepResult::Quiesced { quiesce_id: 1 });
    // The second quiesce was sent; its outcome is unknown.
    let t = j.steps[quiesces[1]].next_token(1, j.id);
    let q1 = quiesces[1] as StepId;
    j.record(&JobEvent::Dispatched { step: q1, token: t }, 0)
        .unwrap();
    j.record(
        &JobEvent::LostTrack {
            step: q1,
            token: t,
            why: "no answer".into(),
        },
        0,
    )
    .unwrap();
    j.record(&JobEvent::CancelRequested { by: "ops".into() }, 1)
        .unwrap();
    let sent = settle_decisions(&mut j, 1);
    assert_eq!(
        sent,
        vec![releases[0] as StepId],
        "the held one is released"
    );
    assert!(!j.is_ended(), "not ended while a quiesce is unknown");
    // Asking the host finds the quiesce was taken.
    let found = Finding::Finished {
        token: t,
        outcome: Ok(StepResult::Quiesced { quiesce_id: 2 }),
    };
    let e = resolve(&j.steps[q1 as usize], &found).unwrap();
    j.record(&e, 2).unwrap();
    let sent = settle_decisions(&mut j, 2);
    assert_eq!(
        sent,
        vec![releases[1] as StepId],
        "the quiesce found taken is released before the job ends: {:?}",
        j.steps[releases[1]].state
    );
    assert!(j.is_ended());
}

/// Completes step `s` of `j` under the next token of `term`.
fn complete_step(j: &mut Job, s: usize, term: u64, result: StepResult) {
    let t = j.steps[s].next_token(term, j.id);
    let step = s as StepId;
    j.record(&JobEvent::Dispatched { step, token: t }, 0)
        .unwrap();
    j.record(
        &JobEvent::Completed {
            step,
            token: t,
            result,
        },
        0,
    )
    .unwrap();
}

fn ends(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Record(JobEvent::Ended { .. })))
}

fn probed(actions: &[Action]) -> Vec<StepId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Probe { step, .. } => Some(*step),
            _ => None,
        })
        .collect()
}

/// Found by the chaos simulator (stillpoint-chaos `sim`, seed 567): a new leader ended a job
/// (failed on a worn-out step) while another ready step might have been sent by its
/// predecessor and was never asked about; the job's locks went to the next job, and the
/// predecessor's replicate then took effect on a pair the next job owned (S5).
#[test]
fn after_a_takeover_a_job_does_not_fail_before_asking_about_steps_its_predecessor_may_have_sent() {
    let g = group(2, 1);
    let mut j = job(&g);
    complete_step(&mut j, 0, 1, StepResult::RvFreed);
    complete_step(&mut j, 1, 1, StepResult::RvFreed);
    // Step 3 (replicate p1) is worn out in term 1.
    for _ in 0..STEP_ATTEMPTS_MAX {
        let t = j.steps[3].next_token(1, j.id);
        j.record(&JobEvent::Dispatched { step: 3, token: t }, 0)
            .unwrap();
        j.record(
            &JobEvent::LostTrack {
                step: 3,
                token: t,
                why: "timeout".into(),
            },
            0,
        )
        .unwrap();
        j.record(&JobEvent::NotExecuted { step: 3, token: t }, 0)
            .unwrap();
    }
    // Term 2 takes over; step 2 (replicate p0) is ready and may be out with the array.
    for e in j.takeover_events(2) {
        j.record(&e, 1).unwrap();
    }
    let actions = decide(&j, 2, 1);
    assert!(!ends(&actions), "ended without asking: {actions:?}");
    assert!(probed(&actions).contains(&2), "{actions:?}");
}

/// The same for a cancel: a step the predecessor may have sent is asked about, not skipped.
#[test]
fn after_a_takeover_a_cancel_asks_about_steps_its_predecessor_may_have_sent_before_ending() {
    let g = group(2, 1);
    let mut j = job(&g);
    complete_step(&mut j, 0, 1, StepResult::RvFreed);
    complete_step(&mut j, 1, 1, StepResult::RvFreed);
    for e in j.takeover_events(2) {
        j.record(&e, 1).unwrap();
    }
    j.record(&JobEvent::CancelRequested { by: "ops".into() }, 1)
        .unwrap();
    let actions = decide(&j, 2, 1);
    assert!(!ends(&actions), "ended without asking: {actions:?}");
    assert_eq!(probed(&actions), vec![2, 3], "{actions:?}");
}

/// Found by the chaos simulator (stillpoint-chaos `sim`, seed 437): a static-point step failed
/// in the last round and the job ended failed while a step of its publish phase (asked about
/// after a takeover) was still unknown.
#[test]
fn a_job_failing_in_its_last_round_waits_for_its_unknown_publish_steps() {
    let g = group(2, 1);
    let mut j = job(&g);
    let at = |call: fn(&StepCall) -> bool| -> Vec<usize> {
        j.steps
            .iter()
            .filter(|s| call(&s.call))
            .map(|s| s.id as usize)
            .collect()
    };
    let frees = at(|c| matches!(c, StepCall::FreeRv { .. }));
    let reps = at(|c| matches!(c, StepCall::Replicate { .. }));
    let quiesces = at(|c| matches!(c, StepCall::Quiesce { .. }));
    let seps = at(|c| matches!(c, StepCall::Separate { .. }));
    let releases = at(|c| matches!(c, StepCall::Release { .. }));
    let awaits = at(|c| matches!(c, StepCall::AwaitSeparated { .. }));
    for &s in &frees {
        complete_step(&mut j, s, 1, StepResult::RvFreed);
    }
    for &s in &reps {
        complete_step(&mut j, s, 1, StepResult::InSync);
    }
    for (i, &s) in quiesces.iter().enumerate() {
        complete_step(
            &mut j,
            s,
            1,
            StepResult::Quiesced {
                quiesce_id: i as u64 + 1,
            },
        );
    }
    complete_step(&mut j, seps[0], 1, StepResult::SeparateAccepted);
    let t = j.steps[seps[1]].next_token(1, j.id);
    let failed = seps[1] as StepId;
    j.record(
        &JobEvent::Dispatched {
            step: failed,
            token: t,
        },
        0,
    )
    .unwrap();
    j.record(
        &JobEvent::Failed {
            step: failed,
            token: t,
            reason: "abnormal suspend".into(),
        },
        0,
    )
    .unwrap();
    for &s in &releases {
        complete_step(
            &mut j,
            s,
            1,
            StepResult::Released {
                held_throughout: true,
                backup_label: None,
            },
        );
    }
    j.round = ROUNDS_MAX;
    // The first pair's wait for separated is out, outcome unknown.
    let t = j.steps[awaits[0]].next_token(1, j.id);
    let step = awaits[0] as StepId;
    j.record(&JobEvent::Dispatched { step, token: t }, 0)
        .unwrap();
    j.record(
        &JobEvent::LostTrack {
            step,
            token: t,
            why: "no answer".into(),
        },
        0,
    )
    .unwrap();
    let actions = decide(&j, 1, 1);
    assert!(
        !ends(&actions),
        "ended with step {step} unknown: {actions:?}"
    );
    assert_eq!(probed(&actions), vec![step]);
}

/// Found by the chaos simulator (stillpoint-chaos `sim`, seed 620): in a round without a
/// static point the quiesces are skipped, and the separates, which waited for the replicates
/// only through the quiesces, were sent alongside the round's replicate; the replicate then
/// ran on a pair whose RV had been mounted (S1, S2).
#[test]
fn a_round_without_a_static_point_still_separates_only_after_the_replicate() {
    let g = group(2, 1);
    let mut j = job(&g);
    for s in 0..2 {
        complete_step(&mut j, s, 1, StepResult::RvFreed);
    }
    for s in 2..4 {
        complete_step(&mut j, s, 1, StepResult::InSync);
    }
    j.record(
        &JobEvent::NewRound {
            why: "a quiesce kept failing".into(),
            without_static_point: true,
        },
        1,
    )
    .unwrap();
    let sent: Vec<StepCall> = decide(&j, 1, 1)
        .into_iter()
        .filter_map(|a| match a {
            Action::Dispatch(d) => Some(d.call),
            _ => None,
        })
        .collect();
    assert!(
        sent.iter().any(|c| matches!(c, StepCall::FreeRv { .. })),
        "{sent:?}"
    );
    assert!(
        !sent.iter().any(|c| matches!(c, StepCall::Separate { .. })),
        "a separate is sent while its pair's replicate is not done: {sent:?}"
    );
}

/// Found by the chaos simulator (stillpoint-chaos `sim`, seed 141): a deposed leader ran a
/// round the log never heard of and separated a pair under attempt 1; the next leaders re-ran
/// the round from the log (a fresh replicate), and asking about the separate's attempt 1
/// found the deposed leader's, from before that replicate. The job took it for this round's
/// separate and mounted the RV of a pair in sync (S1).
#[test]
fn an_outcome_recorded_before_the_round_was_armed_is_not_this_rounds() {
    let g = group(1, 1);
    let mut j = job(&g);
    j.record(&JobEvent::TakenOver { term: 7 }, 0).unwrap();
    j.record(
        &JobEvent::NewRound {
            why: "a quiesce failed".into(),
            without_static_point: false,
        },
        0,
    )
    .unwrap();
    j.record(&JobEvent::TakenOver { term: 8 }, 0).unwrap();
    let sep = j
        .steps
        .iter()
        .find(|s| matches!(s.call, StepCall::Separate { .. }))
        .unwrap()
        .id;
    let asked = j.steps[sep as usize].next_token(8, j.id);
    j.record(
        &JobEvent::LostTrack {
            step: sep,
            token: asked,
            why: "its predecessor may have sent it".into(),
        },
        1,
    )
    .unwrap();
    // The executor's record: attempt 1, sent in term 5, before this round was armed in term 7.
    let old = FencingToken { term: 5, ..asked };
    let found = Finding::Finished {
        token: old,
        outcome: Ok(StepResult::SeparateAccepted),
    };
    assert_eq!(
        resolve(&j.steps[sep as usize], &found),
        Some(JobEvent::NotExecuted {
            step: sep,
            token: asked
        })
    );
    // The same record from this round's leaders is this round's outcome.
    let now = FencingToken { term: 7, ..asked };
    let found = Finding::Finished {
        token: now,
        outcome: Ok(StepResult::SeparateAccepted),
    };
    assert!(matches!(
        resolve(&j.steps[sep as usize], &found),
        Some(JobEvent::Completed { .. })
    ));
}

/// Found by the chaos simulator (stillpoint-chaos `sim`, seed 567): attempts counted over every
/// round and every takeover's question, so a replicate that had taken effect in round 1 was
/// "sent 5 times without taking effect" as soon as round 2 began, and the job failed.
#[test]
fn a_step_is_worn_out_by_its_sends_in_this_round_not_by_earlier_rounds_or_questions() {
    let g = group(1, 1);
    let mut j = job(&g);
    complete_step(&mut j, 0, 1, StepResult::RvFreed);
    // Round 1: the replicate is asked about after takeovers (tokens used, nothing sent), then
    // sent and done.
    for term in 2..6 {
        j.record(&JobEvent::TakenOver { term }, 0).unwrap();
        let t = j.steps[1].next_token(term, j.id);
        j.record(
            &JobEvent::LostTrack {
                step: 1,
                token: t,
                why: "its predecessor may have sent it".into(),
            },
            0,
        )
        .unwrap();
        j.record(&JobEvent::NotExecuted { step: 1, token: t }, 0)
            .unwrap();
    }
    complete_step(&mut j, 1, 5, StepResult::InSync);
    assert!(j.steps[1].attempts >= STEP_ATTEMPTS_MAX);
    j.record(
        &JobEvent::NewRound {
            why: "a quiesce failed".into(),
            without_static_point: false,
        },
        1,
    )
    .unwrap();
    complete_step(&mut j, 0, 5, StepResult::RvFreed);
    let actions = decide(&j, 5, 1);
    assert!(
        !ends(&actions),
        "failed on a step it sent once: {actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Dispatch(d) if d.step == 1)),
        "{actions:?}"
    );
}

/// Found by the chaos simulator (stillpoint-chaos `sim`, seed 1011): a deposed leader ran a
/// whole round the log lost, up to mounting the RV; the next leader re-ran the round from its
/// replicate and replicated onto the mounted RV (S2). A round now starts by freeing the RVs.
#[test]
fn a_new_round_frees_the_rvs_again_before_it_replicates() {
    let g = group(1, 1);
    let mut j = job(&g);
    complete_step(&mut j, 0, 1, StepResult::RvFreed);
    complete_step(&mut j, 1, 1, StepResult::InSync);
    j.record(
        &JobEvent::NewRound {
            why: "a quiesce failed".into(),
            without_static_point: false,
        },
        1,
    )
    .unwrap();
    let sent: Vec<StepCall> = decide(&j, 1, 1)
        .into_iter()
        .filter_map(|a| match a {
            Action::Dispatch(d) => Some(d.call),
            _ => None,
        })
        .collect();
    assert!(
        matches!(sent.as_slice(), [StepCall::FreeRv { .. }]),
        "the round starts by freeing the RV, not by replicating: {sent:?}"
    );
}

/// Found by the chaos simulator (stillpoint-chaos `sim`, seed 303029 of the 1,000,000-seed
/// run): a deposed leader released an MV (abandoning its round) before any separate; the new
/// leader separated the pairs, then asked about the release and took the deposed leader's
/// "released, held throughout" as its own. The copy was labelled consistent though the MV had
/// been writable when the pairs were separated (S3).
#[test]
fn an_outcome_recorded_before_a_step_it_waits_for_completed_is_not_its_own() {
    let g = group(2, 1);
    let mut j = job(&g);
    let at = |j: &Job, call: fn(&StepCall) -> bool| -> Vec<usize> {
        j.steps
            .iter()
            .filter(|s| call(&s.call))
            .map(|s| s.id as usize)
            .collect()
    };
    let frees = at(&j, |c| matches!(c, StepCall::FreeRv { .. }));
    let reps = at(&j, |c| matches!(c, StepCall::Replicate { .. }));
    let quiesces = at(&j, |c| matches!(c, StepCall::Quiesce { .. }));
    let seps = at(&j, |c| matches!(c, StepCall::Separate { .. }));
    let releases = at(&j, |c| matches!(c, StepCall::Release { .. }));
    for &s in &frees {
        complete_step(&mut j, s, 3, StepResult::RvFreed);
    }
    for &s in &reps {
        complete_step(&mut j, s, 3, StepResult::InSync);
    }
    for (i, &s) in quiesces.iter().enumerate() {
        complete_step(
            &mut j,
            s,
            3,
            StepResult::Quiesced {
                quiesce_id: i as u64 + 1,
            },
        );
    }
    // Term 6 takes over and separates both pairs.
    j.record(&JobEvent::TakenOver { term: 6 }, 0).unwrap();
    for &s in &seps {
        complete_step(&mut j, s, 6, StepResult::SeparateAccepted);
    }
    let rel = releases[0];
    let asked = j.steps[rel].next_token(6, j.id);
    let step = rel as StepId;
    j.record(
        &JobEvent::LostTrack {
            step,
            token: asked,
            why: "its predecessor may have sent it".into(),
        },
        0,
    )
    .unwrap();
    // The executor's record: the deposed leader of term 4 released the MV, before term 6
    // separated anything.
    let found = Finding::Finished {
        token: FencingToken { term: 4, ..asked },
        outcome: Ok(StepResult::Released {
            held_throughout: true,
            backup_label: None,
        }),
    };
    assert_eq!(
        resolve(&j.steps[rel], &found),
        Some(JobEvent::NotExecuted { step, token: asked }),
        "a release from before the separates is not this release"
    );
    // A release recorded in term 6, after the separates, is.
    let found = Finding::Finished {
        token: FencingToken { term: 6, ..asked },
        outcome: Ok(StepResult::Released {
            held_throughout: true,
            backup_label: None,
        }),
    };
    assert!(matches!(
        resolve(&j.steps[rel], &found),
        Some(JobEvent::Completed { .. })
    ));
}

/// Seen in the 1,000,000-seed run of stillpoint-chaos `sim` (seed 25904) after the rule above:
/// a new leader remounted an RV its predecessor had mounted (a no-op) and then took the
/// predecessor's backup command for one that came before its mounts, and ran it again.
#[test]
fn a_backup_command_its_predecessor_ran_is_not_run_again_after_a_no_op_remount() {
    let g = group(1, 1);
    let mut j = job(&g);
    let backup = j
        .steps
        .iter()
        .find(|s| matches!(s.call, StepCall::RunBackup { .. }))
        .unwrap()
        .id;
    let mount = j
        .steps
        .iter()
        .find(|s| matches!(s.call, StepCall::MountRv { .. }))
        .unwrap()
        .id as usize;
    j.record(&JobEvent::TakenOver { term: 4 }, 0).unwrap();
    complete_step(&mut j, mount, 4, StepResult::RvMounted { repaired: false });
    let asked = j.steps[backup as usize].next_token(4, j.id);
    j.record(
        &JobEvent::LostTrack {
            step: backup,
            token: asked,
            why: "its predecessor may have sent it".into(),
        },
        0,
    )
    .unwrap();
    let found = Finding::Finished {
        token: FencingToken { term: 2, ..asked },
        outcome: Ok(StepResult::BackupRan { exit_code: 0 }),
    };
    assert!(matches!(
        resolve(&j.steps[backup as usize], &found),
        Some(JobEvent::Completed { .. })
    ));
}
