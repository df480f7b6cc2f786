//! The views over jobs driven to their end by `decide` with an executor that answers at once,
//! as the leader's runtime will drive them: summaries, the copy catalogue with consistent and
//! crash-consistent copies, and the timeline of step changes.

use super::*;
use crate::inventory::{Group, GroupMember, QuiesceMethod};
use crate::job::{Action, JobEvent, StepLimits, decide, plan_backup, plan_prepare};

fn vol(node: &str, volume: &str) -> VolumeRef {
    VolumeRef {
        node: node.into(),
        volume: volume.into(),
    }
}

fn ld(ld: u32) -> LdRef {
    LdRef {
        array: "A1".into(),
        ld,
    }
}

/// Two pairs on two business nodes, RVs on backup1.
fn group(name: &str) -> Group {
    Group {
        name: name.into(),
        members: (0..2)
            .map(|i| GroupMember {
                pair: format!("p{i}"),
                mv_ld: ld(2 * i),
                rv_ld: ld(2 * i + 1),
                mv: vol(&format!("db{}", i + 1), "data"),
                rv: vol("backup1", &format!("rv{i}")),
                quiesce: QuiesceMethod::Unmount,
                quiesce_ms_max: 30_000,
            })
            .collect(),
        backup_command: None,
    }
}

fn new_job(id: JobId, g: &Group, at_ms: u64) -> Job {
    let mut job = Job::new(
        id,
        JobKind::Backup {
            group: g.name.clone(),
        },
        "alice@host1".into(),
        at_ms,
        plan_backup(g, &StepLimits::default()),
    );
    job.pairs = g.members.clone();
    job
}

/// Drives `job` to its end through `decide`; every release reports `held` (a quiesce that did
/// not hold in every round gives a crash-consistent copy). Every event is stamped 10 ms later.
fn drive(mut job: Job, held: bool, mut now_ms: u64) -> Job {
    for _ in 0..100 {
        if job.is_ended() {
            return job;
        }
        for action in decide(&job, 1, now_ms) {
            let events = match action {
                Action::Record(e) => vec![e],
                Action::Dispatch(d) => {
                    let result = match &d.call {
                        StepCall::FreeRv { .. } => StepResult::RvFreed,
                        StepCall::SetPair { .. } => StepResult::PairSet,
                        StepCall::Replicate { .. } => StepResult::InSync,
                        StepCall::Quiesce { .. } => StepResult::Quiesced {
                            quiesce_id: 17 + d.step as u64,
                        },
                        StepCall::Separate { .. } => StepResult::SeparateAccepted,
                        StepCall::Release { .. } => StepResult::Released {
                            held_throughout: held,
                            backup_label: None,
                        },
                        StepCall::AwaitSeparated { .. } => StepResult::Separated,
                        StepCall::MountRv { .. } => StepResult::RvMounted { repaired: !held },
                        StepCall::RunBackup { .. } => StepResult::BackupRan { exit_code: 0 },
                    };
                    vec![
                        JobEvent::Dispatched {
                            step: d.step,
                            token: d.token,
                        },
                        JobEvent::Completed {
                            step: d.step,
                            token: d.token,
                            result,
                        },
                    ]
                }
                Action::Probe { .. } => panic!("nothing is unknown here"),
            };
            for e in events {
                now_ms += 10;
                job.record(&e, now_ms)
                    .unwrap_or_else(|err| panic!("{e:?} refused: {err}"));
            }
        }
    }
    panic!("job {} did not end", job.id);
}

/// Jobs 1 (consistent copy of `payroll`), 2 (crash-consistent copy of `ledger`), 3 (queued
/// behind 4, then cancelled), 4 (running), 5 (consistent copy of `ledger`), 6 (prepare of
/// `ledger`, finished: no copy), ended in that order.
fn table() -> JobTable {
    let mut t = JobTable::default();
    let mut put = |job: Job| {
        if job.is_ended() {
            t.ended.push_back(job.id);
        }
        t.insert(job);
    };
    put(drive(new_job(1, &group("payroll"), 1_000), true, 1_000));
    put(drive(new_job(2, &group("ledger"), 2_000), false, 2_000));
    let mut queued = new_job(3, &group("payroll"), 3_000);
    queued.state = JobState::Queued { waiting_for: 4 };
    queued
        .record(&JobEvent::CancelRequested { by: "bob".into() }, 3_500)
        .unwrap();
    put(queued);
    put(new_job(4, &group("payroll"), 4_000));
    put(drive(new_job(5, &group("ledger"), 5_000), true, 5_000));
    let ledger = group("ledger");
    let mut prepare = Job::new(
        6,
        JobKind::Prepare {
            group: "ledger".into(),
        },
        "alice@host1".into(),
        6_000,
        plan_prepare(&ledger, &StepLimits::default()),
    );
    prepare.pairs = ledger.members;
    put(drive(prepare, true, 6_000));
    t
}

#[test]
fn the_catalogue_lists_done_backups_with_their_label_and_every_pair() {
    let t = table();
    let copies = catalogue(&t, None);
    assert_eq!(
        copies.iter().map(|c| c.job_id).collect::<Vec<_>>(),
        [1, 2, 5],
        "only backups that ended done, in the order they ended"
    );
    assert_eq!(copies[0].label, CopyLabel::Consistent);
    assert_eq!(copies[0].group, "payroll");
    match &copies[1].label {
        CopyLabel::CrashConsistent { why } => {
            assert!(why.contains("did not hold"), "{why}")
        }
        other => panic!("job 2's copy is {other:?}"),
    }
    assert_eq!(
        copies[0].pairs[1],
        CopyPair {
            pair: "p1".into(),
            mv: vol("db2", "data"),
            mv_ld: ld(2),
            rv: vol("backup1", "rv1"),
            rv_ld: ld(3),
            quiesce: "unmount".into(),
        }
    );
    assert_eq!(
        copies[1].ended_at_ms,
        match t.jobs[&2].state {
            JobState::Ended { at_ms, .. } => at_ms,
            _ => unreachable!(),
        }
    );
    let ledger = catalogue(&t, Some("ledger"));
    assert_eq!(ledger.iter().map(|c| c.job_id).collect::<Vec<_>>(), [2, 5]);
    assert!(catalogue(&t, Some("nothing")).is_empty());
    assert!(catalogue(&JobTable::default(), None).is_empty());
    // It is what `copies --output json` carries: it survives a round trip.
    let json = serde_json::to_string(&copies).unwrap();
    assert_eq!(
        serde_json::from_str::<Vec<CopyEntry>>(&json).unwrap(),
        copies
    );
}

#[test]
fn summaries_say_state_end_and_progress_without_step_histories() {
    let t = table();
    let s = job_summaries(&t);
    assert_eq!(s.len(), 6);
    assert_eq!(s[5].end, Some(JobEnd::Finished), "a prepare makes no copy");
    assert_eq!(job_text(&s[5].kind), "prepare ledger");
    let by_id = |id: JobId| s.iter().find(|x| x.id == id).unwrap();
    assert_eq!(by_id(1).state, "ended");
    assert_eq!(
        by_id(1).end,
        Some(JobEnd::Done {
            label: CopyLabel::Consistent
        })
    );
    assert_eq!(by_id(1).steps_settled, by_id(1).steps_total);
    assert_eq!(
        by_id(2).round,
        2,
        "the crash-consistent copy took two rounds"
    );
    assert_eq!(by_id(3).end, Some(JobEnd::Cancelled { by: "bob".into() }));
    assert_eq!(by_id(3).ended_at_ms, Some(3_500));
    assert_eq!(by_id(4).state, "running");
    assert_eq!(by_id(4).steps_settled, 0);
    assert_eq!(by_id(4).ended_at_ms, None);
    assert_eq!(by_id(4).submitted_by, "alice@host1");
    assert_eq!(by_id(4).group, "payroll");
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("history"), "no step histories in summaries");
    assert_eq!(serde_json::from_str::<Vec<JobSummary>>(&json).unwrap(), s);
}

#[test]
fn the_timeline_shows_each_change_once_in_time_order() {
    let g = group("payroll");
    let start = new_job(1, &g, 0);
    let done = drive(start.clone(), true, 0);
    let all = step_changes(None, &done);
    let entries: usize = done.steps.iter().map(|s| s.history.len()).sum();
    assert_eq!(all.len(), entries);
    assert!(all.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    let quiesce = all
        .iter()
        .find(|c| c.what == "quiesce db1:data" && c.to == "done")
        .expect("the quiesce of db1:data is done");
    assert_eq!(quiesce.from, "dispatched");
    assert_eq!(quiesce.detail.as_deref(), Some("quiesce 21"));
    assert_eq!(all[0].from, "pending");
    assert_eq!(all[0].detail.as_deref(), Some("attempt 1, term 1"));

    // Read part-way, then at the end: the second reading adds only what is new.
    let mut half = start;
    let mut now_ms = 0;
    for action in decide(&half, 1, now_ms) {
        if let Action::Dispatch(d) = action {
            now_ms += 10;
            half.record(
                &JobEvent::Dispatched {
                    step: d.step,
                    token: d.token,
                },
                now_ms,
            )
            .unwrap();
        }
    }
    let first = step_changes(None, &half);
    assert_eq!(first.len(), 2, "two RVs freed at once: {first:?}");
    let rest = step_changes(Some(&half), &done);
    assert_eq!(first.len() + rest.len(), all.len());
    assert!(step_changes(Some(&done), &done).is_empty());
}

#[test]
fn end_texts_name_the_label_and_why() {
    assert_eq!(
        end_text(&JobEnd::Done {
            label: CopyLabel::Consistent
        }),
        "done, consistent"
    );
    assert_eq!(
        end_text(&JobEnd::Done {
            label: CopyLabel::CrashConsistent { why: "x".into() }
        }),
        "done, crash-consistent: x"
    );
    assert_eq!(
        end_text(&JobEnd::Cancelled { by: "bob".into() }),
        "cancelled by bob"
    );
}

#[test]
fn the_unfinished_jobs_are_indexed_and_the_index_is_rebuilt_when_the_table_is_read_back() {
    let t = table();
    let ids = |t: &JobTable| t.unfinished().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(&t), vec![4]);
    let text = serde_json::to_string(&t).unwrap();
    assert!(!text.contains("unfinished"), "the index is not written");
    let back: JobTable = serde_json::from_str(&text).unwrap();
    assert_eq!(ids(&back), vec![4]);
    assert_eq!(back, t);
}

#[test]
fn a_batch_of_job_changes_applies_in_order_and_stops_at_the_first_refused() {
    use crate::{ClusterState, Command, JobChange, Response};
    let mut state = ClusterState {
        jobs: table(),
        ..ClusterState::default()
    };
    let cancel = |job_id| JobChange {
        job_id,
        event: JobEvent::CancelRequested { by: "ops".into() },
        at_ms: 9_000,
    };
    let r = state.apply(
        &std::collections::BTreeMap::new(),
        &Command::Jobs {
            events: vec![cancel(4), cancel(99), cancel(4)],
        },
    );
    match r {
        Response::Refused { rule } => assert!(rule.starts_with("change 2 of 3 (job 99)"), "{rule}"),
        other => panic!("expected the second change refused, got {other:?}"),
    }
    // The first took effect: job 4 is being cancelled.
    assert!(
        !matches!(state.jobs.jobs[&4].state, JobState::Running),
        "{:?}",
        state.jobs.jobs[&4].state
    );
}
