//! The step executor over gRPC: three in-process agents (mgmt1, db1 with MV `data`, backup1
//! with RV `rv`) on the demo's software array, driven step by step through
//! `stillpoint_node::executor::client` as the leader's driver does.

mod executor_site;

use executor_site::*;
use stillpoint_array::{Array, RemoteArray};
use stillpoint_coordinator::inventory::QuiesceMethod;
use stillpoint_coordinator::job::wire::quiesce_owner;
use stillpoint_coordinator::job::{
    FencingToken, Finding, Observed, PairSync, StepCall, StepResult,
};
use stillpoint_host::{Host, QuiesceMode, QuiesceRequest};
use stillpoint_node::NodeError;
use stillpoint_node::executor::client::{execute, probe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_runs_step_by_step_through_the_executors_and_answers_resends_from_the_journal() {
    let site = Site::start().await;
    site.run_business().await;
    let array = RemoteArray::connect(&site.array_address()).await.unwrap();
    let id = stillpoint_node::executor::array_steps::pair_id(&pair());
    let (db1, backup1) = (site.addr(1), site.addr(2));
    let term = site.term();
    let t = |step| tok(term, 1, step, 1);

    // Replicate before the pair exists: a failure saying what to do.
    let early = order(t(0), StepCall::Replicate { pair: "p0".into() });
    match execute(&site.addr(0), &early).await.unwrap() {
        Finding::Finished {
            outcome: Err(reason),
            ..
        } => assert!(reason.contains("stillpoint group prepare"), "{reason}"),
        other => panic!("replicate of an unset pair: {other:?}"),
    }
    array.pair_set(&id).await.unwrap();

    let rv = vol("backup1", "rv");
    let mv = vol("db1", "data");
    assert_eq!(
        done(
            &backup1,
            &order(t(1), StepCall::FreeRv { volume: rv.clone() })
        )
        .await,
        StepResult::RvFreed
    );
    // Array steps run on any agent with the array in its [[arrays]]: here mgmt1.
    let replicate = order(t(2), StepCall::Replicate { pair: "p0".into() });
    assert_eq!(done(&site.addr(0), &replicate).await, StepResult::InSync);
    assert_eq!(
        array.pair_query(&id).await.unwrap().state.sync,
        stillpoint_array::SyncState::RplSync
    );

    let quiesce = order(
        t(3),
        StepCall::Quiesce {
            volume: mv.clone(),
            method: QuiesceMethod::Unmount,
            limit_ms: 30_000,
        },
    );
    let StepResult::Quiesced { quiesce_id } = done(&db1, &quiesce).await else {
        panic!("quiesce did not report a quiesce id")
    };
    // The same token again: answered from the journal, not quiesced twice.
    assert_eq!(
        done(&db1, &quiesce).await,
        StepResult::Quiesced { quiesce_id }
    );
    let held = site.host(1).quiesces().await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].quiesce_id, quiesce_id);

    let separate = order(t(4), StepCall::Separate { pair: "p0".into() });
    assert_eq!(done(&db1, &separate).await, StepResult::SeparateAccepted);
    // A later attempt of an accepted separate reports it (the array is not asked again).
    let separate_again = order(tok(term, 1, 4, 2), StepCall::Separate { pair: "p0".into() });
    assert_eq!(
        done(&site.addr(0), &separate_again).await,
        StepResult::SeparateAccepted
    );
    let mut release = order(
        t(5),
        StepCall::Release {
            volume: mv.clone(),
            quiesce_step: 3,
        },
    );
    release.dispatch.quiesce_id = Some(quiesce_id);
    assert_eq!(
        done(&db1, &release).await,
        StepResult::Released {
            held_throughout: true,
            backup_label: None,
        }
    );
    assert!(site.host(1).quiesces().await.unwrap().is_empty());
    let await_separated = order(t(6), StepCall::AwaitSeparated { pair: "p0".into() });
    assert_eq!(
        done(&backup1, &await_separated).await,
        StepResult::Separated
    );
    let mount = order(t(7), StepCall::MountRv { volume: rv.clone() });
    assert_eq!(
        done(&backup1, &mount).await,
        StepResult::RvMounted { repaired: false }
    );
    let info = site.host(2).volume("rv").await.unwrap();
    assert!(info.mounted_at.is_some(), "{info:?}");

    // A probe of a finished step reports its outcome (and fences the token).
    match probe(&db1, &probe_order(&quiesce, t(3))).await.unwrap() {
        Finding::Finished {
            token,
            outcome: Ok(StepResult::Quiesced { quiesce_id: q }),
        } => assert_eq!((token, q), (t(3), quiesce_id)),
        other => panic!("probe of the done quiesce: {other:?}"),
    }
    assert_refused(execute(&db1, &quiesce).await, "fenced");

    // The copy on the RV is whole: free it again (a new step) and check it.
    let free_again = order(t(8), StepCall::FreeRv { volume: rv.clone() });
    assert_eq!(done(&backup1, &free_again).await, StepResult::RvFreed);
    let check = site.host(2).check("rv", false).await.unwrap();
    assert!(
        check.clean,
        "the RV copy is not consistent: {}",
        check.output
    );
    // Mounted again through a check-first mount: clean, so nothing to repair.
    let mut checked_mount = order(t(9), StepCall::MountRv { volume: rv.clone() });
    checked_mount.dispatch.check_first = true;
    assert_eq!(
        done(&backup1, &checked_mount).await,
        StepResult::RvMounted { repaired: false }
    );
    let info = site.host(2).volume("rv").await.unwrap();
    assert!(info.mounted_at.is_some(), "{info:?}");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fenced_and_out_of_term_tokens_are_refused_and_a_probe_reports_what_ran() {
    let site = Site::start().await;
    let backup1 = site.addr(2);
    let term = site.term();
    let rv = vol("backup1", "rv");
    let free = |t| order(t, StepCall::FreeRv { volume: rv.clone() });
    let backup = |t, command: &[&str], timeout_ms| {
        order(
            t,
            StepCall::RunBackup {
                command: command.iter().map(|s| s.to_string()).collect(),
                timeout_ms,
            },
        )
    };

    // Older than the agent's own raft term: a deposed leader's send.
    if term > 0 {
        assert_refused(
            execute(&backup1, &free(tok(term - 1, 5, 0, 1))).await,
            "deposed",
        );
    }
    // Job 7 accepted in term+2: the same job's other step from term+1 is refused.
    done(&backup1, &free(tok(term + 2, 7, 0, 1))).await;
    assert_refused(
        execute(&backup1, &backup(tok(term + 1, 7, 1, 1), &["true"], 10_000)).await,
        "job 7",
    );
    // Another job on the same volume from term+1: refused for the resource.
    assert_refused(
        execute(&backup1, &free(tok(term + 1, 8, 0, 1))).await,
        "volume:backup1:rv",
    );
    // A job from term+1 that touches no resource of a newer term goes ahead.
    assert_eq!(
        done(&backup1, &backup(tok(term + 1, 9, 0, 1), &["true"], 10_000)).await,
        StepResult::BackupRan { exit_code: 0 }
    );

    // A re-sent token runs once: the command appends a line each time it runs.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ran");
    let script = format!("echo ran >> {}", file.display());
    let once = backup(tok(term + 2, 10, 0, 1), &["sh", "-c", &script], 10_000);
    done(&backup1, &once).await;
    done(&backup1, &once).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "ran\n");

    // A long step answers Running, then the outcome when asked again with the same order.
    let mut slow = backup(tok(term + 2, 11, 0, 1), &["sleep", "1"], 30_000);
    slow.reply_within_ms = 50;
    assert!(matches!(
        execute(&backup1, &slow).await.unwrap(),
        Finding::Running { .. }
    ));
    slow.reply_within_ms = 30_000;
    done(&backup1, &slow).await;
    // A failing command fails with its exit code and stderr.
    match execute(
        &backup1,
        &backup(
            tok(term + 2, 12, 0, 1),
            &["sh", "-c", "echo disk full >&2; exit 3"],
            10_000,
        ),
    )
    .await
    .unwrap()
    {
        Finding::Finished {
            outcome: Err(reason),
            ..
        } => assert!(
            reason.contains("code 3") && reason.contains("disk full"),
            "{reason}"
        ),
        other => panic!("a failing backup command: {other:?}"),
    }

    // A probe of a token never sent: not recorded, and fenced from then on.
    let job = 13;
    let first = free(tok(term + 2, job, 0, 1));
    assert_eq!(
        probe(&backup1, &probe_order(&first, tok(term + 2, job, 0, 1)))
            .await
            .unwrap(),
        Finding::NotRecorded
    );
    assert_refused(execute(&backup1, &first).await, "fenced");
    // The asker's next attempt runs; a probe of the first attempt now reports the later one.
    let second = free(tok(term + 2, job, 0, 2));
    done(&backup1, &second).await;
    match probe(&backup1, &probe_order(&first, tok(term + 2, job, 0, 1)))
        .await
        .unwrap()
    {
        Finding::Finished {
            token,
            outcome: Ok(StepResult::RvFreed),
        } => assert_eq!(token, tok(term + 2, job, 0, 2)),
        other => panic!("probe after the later attempt: {other:?}"),
    }
    // The probe raised the job's floor: a late term+1 send for another of its steps is refused.
    assert_refused(
        execute(
            &backup1,
            &backup(tok(term + 1, job, 1, 1), &["true"], 10_000),
        )
        .await,
        &format!("job {job}"),
    );
    // A step for another node is refused, naming it.
    assert_refused(
        execute(&site.addr(1), &free(tok(term + 2, 14, 0, 1))).await,
        "backup1",
    );
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_after_the_quiesce_expired_reports_it_did_not_hold() {
    let site = Site::start().await;
    site.run_business().await;
    let db1 = site.addr(1);
    let term = site.term();
    let mv = vol("db1", "data");
    let quiesce = order(
        tok(term, 20, 0, 1),
        StepCall::Quiesce {
            volume: mv.clone(),
            method: QuiesceMethod::Freeze,
            limit_ms: 300,
        },
    );
    let StepResult::Quiesced { quiesce_id } = done(&db1, &quiesce).await else {
        panic!("no quiesce id")
    };
    let host = site.host(1);
    poll("the host to resume the volume by itself", || async {
        host.quiesces().await.unwrap().is_empty().then_some(())
    })
    .await;
    let mut release = order(
        tok(term, 20, 1, 1),
        StepCall::Release {
            volume: mv,
            quiesce_step: 0,
        },
    );
    release.dispatch.quiesce_id = Some(quiesce_id);
    assert_eq!(
        done(&db1, &release).await,
        StepResult::Released {
            held_throughout: false,
            backup_label: None,
        }
    );
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_cut_short_by_an_agent_restart_is_reported_interrupted_not_run_again() {
    let mut site = Site::start().await;
    // Above any term an election during the restart may reach on a quiet loopback cluster.
    let term = site.term() + 5;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("started");
    let script = format!("echo started >> {}; sleep 30", file.display());
    let token = tok(term, 30, 0, 1);
    let mut long = order(
        token,
        StepCall::RunBackup {
            command: vec!["sh".into(), "-c".into(), script],
            timeout_ms: 60_000,
        },
    );
    long.reply_within_ms = 50;
    assert_eq!(
        execute(&site.addr(2), &long).await.unwrap(),
        Finding::Running { token }
    );
    poll("the backup command to start", || async {
        file.exists().then_some(())
    })
    .await;
    site.restart(2).await;
    let backup1 = site.addr(2);
    // The same order again: begun, no outcome, nobody runs it now. Not run a second time.
    long.reply_within_ms = 30_000;
    let again = poll("the restarted agent to answer", || async {
        execute(&backup1, &long).await.ok()
    })
    .await;
    assert_eq!(
        again,
        Finding::Interrupted {
            token,
            observed: None
        }
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "started\n");
    // A probe says the same (and fences the token).
    let p = probe_order(&long, token);
    assert_eq!(
        probe(&backup1, &p).await.unwrap(),
        Finding::Interrupted {
            token,
            observed: None
        }
    );
    assert_refused(execute(&backup1, &long).await, "fenced");
    site.stop().await;
}

/// What a crash between the journal's "begun" and the step's outcome leaves behind, recreated
/// on a live agent: the record says begun, no task runs it, and the target shows (or not) the
/// step's effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_quiesce_or_separate_is_reported_with_what_the_target_shows() {
    let site = Site::start().await;
    site.run_business().await;
    let array = RemoteArray::connect(&site.array_address()).await.unwrap();
    let id = stillpoint_node::executor::array_steps::pair_id(&pair());
    array.pair_set(&id).await.unwrap();
    // A new pair starts separated: bring it to sync, as the job's replicate does.
    let synced = array
        .replicate(
            &id,
            &stillpoint_array::ReplicateOptions {
                wait_timeout_ms: Some(WAIT.as_millis() as u64),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(synced.state.sync, stillpoint_array::SyncState::RplSync);
    let term = site.term() + 1;
    let db1 = site.addr(1);
    let mv = vol("db1", "data");
    let begun = |i: usize, t: FencingToken, resource: &str| {
        let journal = site.agents[i].executor.journal();
        assert!(matches!(
            journal.begin_step(t, Some(resource), 1).unwrap(),
            stillpoint_storage::journal::StepBegin::Started(_)
        ));
    };

    // A quiesce begun whose host holds the quiesce under that attempt's owner.
    let q = tok(term, 40, 0, 1);
    begun(1, q, "volume:db1:data");
    let held = site
        .host(1)
        .quiesce(&QuiesceRequest {
            volume: "data".into(),
            mode: QuiesceMode::Unmount,
            limit_ms: Some(30_000),
            owner: quiesce_owner(&q),
        })
        .await
        .unwrap();
    let quiesce = |t| {
        order(
            t,
            StepCall::Quiesce {
                volume: mv.clone(),
                method: QuiesceMethod::Unmount,
                limit_ms: 30_000,
            },
        )
    };
    let seen = Finding::Interrupted {
        token: q,
        observed: Some(Observed::Volume {
            quiesce_id: Some(held.quiesce_id),
        }),
    };
    assert_eq!(execute(&db1, &quiesce(q)).await.unwrap(), seen);
    assert_eq!(
        probe(&db1, &probe_order(&quiesce(q), q)).await.unwrap(),
        seen
    );
    // Another attempt begun that took nothing: the host holds no quiesce of its owner.
    let q2 = tok(term, 41, 0, 1);
    begun(1, q2, "volume:db1:data");
    assert_eq!(
        probe(&db1, &probe_order(&quiesce(q2), q2)).await.unwrap(),
        Finding::Interrupted {
            token: q2,
            observed: Some(Observed::Volume { quiesce_id: None })
        }
    );
    site.host(1)
        .release("data", Some(held.quiesce_id))
        .await
        .unwrap();

    // A separate begun: whether it reached the array is what the pair shows.
    let s = tok(term, 40, 1, 1);
    let separate = order(s, StepCall::Separate { pair: "p0".into() });
    begun(0, s, "pair:p0");
    let before = probe(&site.addr(0), &probe_order(&separate, s))
        .await
        .unwrap();
    assert!(
        matches!(
            before,
            Finding::Interrupted {
                observed: Some(Observed::Pair {
                    sync: PairSync::Replicating | PairSync::InSync
                }),
                ..
            }
        ),
        "{before:?}"
    );
    // The separate reaches the array under the step's token, as the executor sends it.
    array
        .fenced(
            &id,
            &stillpoint_node::executor::array_steps::fence_of(&s, 1),
            &stillpoint_array::FencedOp::Separate(stillpoint_array::SeparateOptions::default()),
        )
        .await
        .unwrap();
    let after = probe(&site.addr(0), &probe_order(&separate, s))
        .await
        .unwrap();
    assert!(
        matches!(
            after,
            Finding::Interrupted {
                observed: Some(Observed::Pair {
                    sync: PairSync::Separating | PairSync::Separated
                }),
                ..
            }
        ),
        "{after:?}"
    );
    site.stop().await;
}

/// Issue 11 item 4: once a new leader is elected, a step sent under the old leader's term is
/// refused by every agent that has seen the new term, naming both terms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_late_step_is_refused_after_an_election() {
    let mut site = Site::start().await;
    let old_term = site.term();
    let leader = poll("a leader", || async {
        site.agents[0]
            .context
            .raft
            .metrics()
            .borrow()
            .current_leader
    })
    .await;
    let slot = site
        .agents
        .iter()
        .position(|a| a.node_id() == leader)
        .unwrap();
    site.agents.remove(slot).shutdown().await.unwrap();
    let new_term = poll("a new leader in a newer term", || async {
        let m = site.agents[0].context.raft.metrics().borrow().clone();
        (m.current_leader.is_some_and(|l| l != leader) && m.current_term > old_term)
            .then_some(m.current_term)
    })
    .await;
    // A surviving agent with a host half, and its volume.
    let (i, node, volume) = site
        .agents
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.context.config.name.as_str() {
            "db1" => Some((i, "db1", "data")),
            "backup1" => Some((i, "backup1", "rv")),
            _ => None,
        })
        .unwrap();
    let addr = site.agents[i].local_addr.to_string();
    poll("the survivor to see the new term", || async {
        (site.agents[i].context.raft.metrics().borrow().current_term >= new_term).then_some(())
    })
    .await;
    let free = |t| {
        order(
            t,
            StepCall::FreeRv {
                volume: vol(node, volume),
            },
        )
    };
    match execute(&addr, &free(tok(old_term, 50, 0, 1))).await {
        Err(NodeError::Refused(m)) => {
            assert!(
                m.contains(&format!("term {old_term}")) && m.contains("deposed"),
                "{m}"
            )
        }
        other => panic!("a deposed leader's step was not refused: {other:?}"),
    }
    // The new leader's attempt of the same step goes ahead.
    assert_eq!(
        done(&addr, &free(tok(new_term, 50, 0, 2))).await,
        StepResult::RvFreed
    );
    site.stop().await;
}

/// An array that cannot be reached makes the step's outcome unknown (an error reply the driver
/// answers with a probe), never a failure; asked again, the begun token is reported
/// interrupted, with nothing observed while the array stays unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_array_makes_the_outcome_unknown_not_failed() {
    let mut site = Site::start().await;
    site.array.take().unwrap().stop().await.unwrap();
    // Above any term an election on a loaded machine may reach while the test runs.
    let term = site.term() + 5;
    let token = tok(term, 60, 0, 1);
    let separate = order(token, StepCall::Separate { pair: "p0".into() });
    let mgmt1 = site.addr(0);
    match execute(&mgmt1, &separate).await {
        Err(NodeError::OutcomeUnknown(m)) => assert!(m.contains("outcome unknown"), "{m}"),
        other => panic!("a separate on an unreachable array: {other:?}"),
    }
    let interrupted = Finding::Interrupted {
        token,
        observed: None,
    };
    assert_eq!(execute(&mgmt1, &separate).await.unwrap(), interrupted);
    assert_eq!(
        probe(&mgmt1, &probe_order(&separate, token)).await.unwrap(),
        interrupted
    );
    site.stop().await;
}

/// A business host that is still booting (its agent answers, fstab has not mounted the MV yet)
/// gets the job's quiesce: the step waits, bounded, for the MV to be mounted and then quiesces
/// it, instead of failing the round and leaving the copy crash-consistent. (Seen in CI: the
/// agent of db1 restarted mid-job and the new round's quiesce arrived before the boot mounted
/// its MV.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiesce_sent_while_the_host_is_still_mounting_its_mv_waits_for_the_mount() {
    let site = Site::start().await;
    let db1 = site.addr(1);
    let token = tok(site.term(), 40, 0, 1);
    let mut quiesce = order(
        token,
        StepCall::Quiesce {
            volume: vol("db1", "data"),
            method: QuiesceMethod::Freeze,
            limit_ms: 10_000,
        },
    );
    quiesce.reply_within_ms = 50;
    let first = execute(&db1, &quiesce).await.unwrap();
    assert_eq!(
        first,
        Finding::Running { token },
        "a quiesce of an MV not yet mounted must wait for the mount, not end"
    );
    site.run_business().await;
    quiesce.reply_within_ms = 30_000;
    let StepResult::Quiesced { quiesce_id } = done(&db1, &quiesce).await else {
        panic!("no quiesce id")
    };
    let held = site.host(1).quiesces().await.unwrap();
    assert!(
        held.iter()
            .any(|q| q.quiesce_id == quiesce_id && q.volume == "data"),
        "{held:?}"
    );
    site.stop().await;
}
