//! Single decisions after hand-made histories: worn-out steps, takeovers, rounds, and
//! outcomes recorded out of order.

use super::*;

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
