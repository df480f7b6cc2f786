//! Whole jobs driven through the simulator: the plan's order, labels, cancels, and seeds of
//! lost replies and leader changes.

use super::*;
use crate::{ClusterState, Command, NodeRecord, Role};

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

#[test]
fn the_freeze_window_is_the_final_rounds_and_the_quiesced_span_covers_every_round() {
    let g = group(2, 2);
    let mut world = World::default();
    // The first round's quiesce of db1:mv0 fails; the second round makes the copy.
    world.failing_quiesces.insert(vol("db1", "mv0"), 1);
    let no_faults = Faults {
        lost_reply_pct: 0,
        leader_change_pct: 0,
        quiesce_lost_pct: 0,
    };
    let done = drive(&g, &mut world, 5, &no_faults);
    assert!(
        matches!(
            &done.state,
            JobState::Ended {
                end: JobEnd::Done {
                    label: CopyLabel::Consistent
                },
                ..
            }
        ),
        "{:?}",
        done.state
    );
    assert_eq!(done.round, 2);
    let p = done.freeze_phases().expect("a freeze window");
    assert!(p.quiesce.0 <= p.quiesce.1, "{p:?}");
    assert!(p.quiesce.1 <= p.separate.0, "{p:?}");
    assert!(p.separate.1 <= p.release.0, "{p:?}");
    assert!(p.release.0 <= p.release.1, "{p:?}");
    let (from, to) = done.quiesced_span_ms().expect("quiesces were sent");
    assert!(
        from < p.quiesce.0,
        "the first round's quiesce ({from}) came before the final round's ({p:?})"
    );
    assert_eq!(to, p.release.1);
    assert_eq!(p.window_ms(), (p.quiesce.0, p.release.1));
    // A job that never reached its static point has no window.
    assert_eq!(job(&g).freeze_phases(), None);
    assert_eq!(job(&g).quiesced_span_ms(), None);
}

#[test]
fn the_freeze_window_nears_at_the_first_replicate_sent_opens_at_the_first_quiesce_sent_and_closes_at_the_last_release_done()
 {
    let g = group(3, 2);
    let mut world = World::default();
    let mut rng = Rng(7);
    let mut current = job(&g);
    let (mut saw_open, mut saw_nearing, mut now_ms) = (false, false, 0);
    let check = |job: &Job| {
        let quiesce_sent = job.steps.iter().any(|s| {
            matches!(s.call, StepCall::Quiesce { .. }) && !matches!(s.state, StepState::Pending)
        });
        let releases_done = job
            .steps
            .iter()
            .filter(|s| matches!(s.call, StepCall::Release { .. }))
            .all(|s| s.is_settled());
        let replicate_sent = job.steps.iter().any(|s| {
            matches!(s.call, StepCall::Replicate { .. }) && !matches!(s.state, StepState::Pending)
        });
        assert_eq!(
            job.nearing_freeze_window(),
            replicate_sent && !quiesce_sent && !job.is_ended(),
            "nearing: {:?}",
            job.steps
                .iter()
                .map(|s| (&s.call, s.state.name()))
                .collect::<Vec<_>>()
        );
        assert!(!(job.nearing_freeze_window() && job.in_freeze_window()));
        assert_eq!(
            job.in_freeze_window(),
            quiesce_sent && !releases_done && !job.is_ended(),
            "{:?}",
            job.steps
                .iter()
                .map(|s| (&s.call, s.state.name()))
                .collect::<Vec<_>>()
        );
        quiesce_sent && !releases_done
    };
    for _ in 0..200 {
        if current.is_ended() {
            break;
        }
        for action in decide(&current, 1, now_ms) {
            match action {
                Action::Record(e) => current.record(&e, now_ms).unwrap(),
                Action::Dispatch(d) => {
                    if matches!(d.call, StepCall::Quiesce { .. }) && !saw_open {
                        // The first quiesce goes out while the window is about to open.
                        assert!(current.nearing_freeze_window());
                        saw_nearing = true;
                    }
                    let e = JobEvent::Dispatched {
                        step: d.step,
                        token: d.token,
                    };
                    current.record(&e, now_ms).unwrap();
                    saw_open |= check(&current);
                    let result = world.exec(&g, &d, &mut rng).expect("no faults");
                    let e = JobEvent::Completed {
                        step: d.step,
                        token: d.token,
                        result,
                    };
                    current.record(&e, now_ms).unwrap();
                }
                Action::Probe { .. } => {}
            }
            saw_open |= check(&current);
        }
        now_ms += 1_000;
    }
    assert!(
        current.is_ended() && saw_open && saw_nearing,
        "{:?}",
        current.state
    );
    assert!(!current.in_freeze_window() && !current.nearing_freeze_window());
}
