//! The step executor's ordering and retake rules, each shown on a live in-process site (mgmt1,
//! db1 with MV `data`, backup1 with RV `rv`) by a test that fails without the rule:
//!
//! - steps on one volume run one at a time, in the order they began;
//! - a later attempt of a quiesce never adopts the quiesce an earlier attempt took;
//! - an RV mount waits (bounded) for the RV's LD to become visible to its host.

mod executor_site;

use executor_site::*;
use stillpoint_array::{Array, RemoteArray};
use stillpoint_coordinator::inventory::QuiesceMethod;
use stillpoint_coordinator::job::wire::quiesce_owner;
use stillpoint_coordinator::job::{Finding, StepCall, StepResult};
use stillpoint_host::Host;
use stillpoint_node::executor::client::execute;

/// A quiesce waiting for its MV to be mounted is under way on `volume:db1:data`; a second
/// step on the same volume, sent meanwhile, waits behind it instead of running beside it, and
/// runs once the first has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_on_one_volume_run_one_at_a_time_in_the_order_they_began() {
    let site = Site::start().await;
    let db1 = site.addr(1);
    let term = site.term();
    let data = vol("db1", "data");
    let first_token = tok(term, 70, 0, 1);
    let mut first = order(
        first_token,
        StepCall::Quiesce {
            volume: data.clone(),
            method: QuiesceMethod::Unmount,
            limit_ms: 30_000,
        },
    );
    first.reply_within_ms = 50;
    assert_eq!(
        execute(&db1, &first).await.unwrap(),
        Finding::Running { token: first_token },
        "the quiesce waits for its MV to be mounted"
    );
    // Alone, this step would end at once (nothing is mounted, so nothing to free).
    let second_token = tok(term, 71, 0, 1);
    let mut second = order(second_token, StepCall::FreeRv { volume: data });
    second.reply_within_ms = 50;
    assert_eq!(
        execute(&db1, &second).await.unwrap(),
        Finding::Running {
            token: second_token
        },
        "a step on a volume another step is working on must wait for it"
    );
    site.mount_mv().await;
    first.reply_within_ms = 30_000;
    let StepResult::Quiesced { .. } = done(&db1, &first).await else {
        panic!("the first step did not quiesce")
    };
    second.reply_within_ms = 30_000;
    assert_eq!(done(&db1, &second).await, StepResult::RvFreed);
    site.stop().await;
}

/// Attempt 1 of a quiesce took the MV (its reply was lost, say); attempt 2 of the same step
/// must not vouch for a quiesce nobody can say held throughout: it ends attempt 1's and takes
/// its own, under its own owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_attempt_of_a_quiesce_ends_the_earlier_attempts_quiesce_and_takes_its_own() {
    let site = Site::start().await;
    site.run_business().await;
    let db1 = site.addr(1);
    let term = site.term();
    let quiesce = |attempt| {
        order(
            tok(term, 80, 0, attempt),
            StepCall::Quiesce {
                volume: vol("db1", "data"),
                method: QuiesceMethod::Freeze,
                limit_ms: 10_000,
            },
        )
    };
    let StepResult::Quiesced { quiesce_id: first } = done(&db1, &quiesce(1)).await else {
        panic!("attempt 1 did not quiesce")
    };
    let StepResult::Quiesced { quiesce_id: second } = done(&db1, &quiesce(2)).await else {
        panic!("attempt 2 did not quiesce")
    };
    assert_ne!(first, second, "attempt 2 adopted attempt 1's quiesce");
    let held = site.host(1).quiesces().await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].quiesce_id, second);
    assert_eq!(held[0].owner, quiesce_owner(&tok(term, 80, 0, 2)));
    site.stop().await;
}

/// The backup host sees an RV only once its pair has separated (before that the array answers
/// its I/O "not ready"). An RV mount that arrives first waits for it instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rv_mount_sent_before_the_rv_is_visible_waits_for_it() {
    let site = Site::start().await;
    let array = RemoteArray::connect(&site.array_address()).await.unwrap();
    let id = stillpoint_node::executor::array_steps::pair_id(&pair());
    array.pair_set(&id).await.unwrap();
    let term = site.term();
    let (mgmt1, backup1) = (site.addr(0), site.addr(2));
    let rv = vol("backup1", "rv");
    assert_eq!(
        done(
            &backup1,
            &order(tok(term, 90, 0, 1), StepCall::FreeRv { volume: rv.clone() })
        )
        .await,
        StepResult::RvFreed
    );
    let replicate = order(
        tok(term, 90, 1, 1),
        StepCall::Replicate { pair: "p0".into() },
    );
    assert_eq!(done(&mgmt1, &replicate).await, StepResult::InSync);
    let mount_token = tok(term, 90, 2, 1);
    let mut mount = order(mount_token, StepCall::MountRv { volume: rv });
    mount.reply_within_ms = 50;
    assert_eq!(
        execute(&backup1, &mount).await.unwrap(),
        Finding::Running { token: mount_token },
        "the RV of a replicating pair is not visible: the mount must wait, not fail"
    );
    let separate = order(
        tok(term, 91, 0, 1),
        StepCall::Separate { pair: "p0".into() },
    );
    assert_eq!(done(&mgmt1, &separate).await, StepResult::SeparateAccepted);
    mount.reply_within_ms = 30_000;
    assert_eq!(
        done(&backup1, &mount).await,
        StepResult::RvMounted { repaired: false }
    );
    site.stop().await;
}

/// A deposed leader separated the pair (its dispatch never reached the log) before this
/// round's quiesce; the new leader's separate of the same step finds the pair already
/// separated. That separation is not this round's static point: the step fails (and the job
/// takes the static point again) instead of reporting the separate accepted, and a probe of
/// an interrupted attempt does not count it either. (Found by the chaos simulator, seed 237,
/// once it modelled journal writes lost in a crash.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_separated_by_an_older_leader_is_not_this_rounds_separate() {
    use stillpoint_array::{FenceToken, FencedOp, SeparateOptions};
    use stillpoint_coordinator::job::{Observed, PairSync};
    use stillpoint_node::executor::client::probe;
    let site = Site::start().await;
    let array = RemoteArray::connect(&site.array_address()).await.unwrap();
    let id = stillpoint_node::executor::array_steps::pair_id(&pair());
    array.pair_set(&id).await.unwrap();
    let mgmt1 = site.addr(0);
    let old_term = site.term();
    let term = old_term + 1;
    let replicate = order(
        tok(term, 95, 1, 1),
        StepCall::Replicate { pair: "p0".into() },
    );
    assert_eq!(done(&mgmt1, &replicate).await, StepResult::InSync);
    // The deposed leader's separate of step 3, straight to the array under its old term.
    let old = FenceToken {
        term: old_term,
        job: 95,
        round: 1,
        step: 3,
        attempt: 2,
    };
    array
        .fenced(&id, &old, &FencedOp::Separate(SeparateOptions::default()))
        .await
        .expect_err("the replicate under the newer term fences the older leader");
    // An operator's separate (no token) meanwhile.
    array
        .separate(&id, &SeparateOptions::default())
        .await
        .unwrap();
    let separate = order(
        tok(term, 95, 3, 1),
        StepCall::Separate { pair: "p0".into() },
    );
    match execute(&mgmt1, &separate).await.unwrap() {
        Finding::Finished {
            outcome: Err(reason),
            ..
        } => assert!(reason.contains("not by this round's separate"), "{reason}"),
        other => panic!("a separation nobody of this round did was taken as the step's: {other:?}"),
    }
    // Attempt 2, begun in the journal by an executor that then died before reaching the
    // array: asked about, the separated pair is not reported as its doing.
    let next = tok(term, 95, 3, 2);
    let journal = site.agents[0].executor.journal();
    assert!(matches!(
        journal.begin_step(next, Some("pair:p0"), 1).unwrap(),
        stillpoint_storage::journal::StepBegin::Started(_)
    ));
    let again = order(next, StepCall::Separate { pair: "p0".into() });
    match probe(&mgmt1, &probe_order(&again, next)).await.unwrap() {
        Finding::Interrupted {
            observed:
                Some(Observed::Pair {
                    sync: PairSync::Other(why),
                }),
            ..
        } => assert!(why.contains("not by this step"), "{why}"),
        other => panic!("an interrupted separate took a separation it did not do: {other:?}"),
    }
    site.stop().await;
}

/// The first attempt of a separate acted on the array, but its executor's journal lost the
/// record (begun without a flush inside the freeze window, then a crash): the second attempt
/// finds the pair already separating or separated by this very step and reports the separate
/// accepted, without separating twice. The array's refusal (the pair's state) is what makes
/// the executor ask who separated it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_sent_again_after_its_lost_first_attempt_acted_is_accepted() {
    use stillpoint_array::{FencedOp, SeparateOptions};
    use stillpoint_node::executor::array_steps::fence_of;
    let site = Site::start().await;
    let array = RemoteArray::connect(&site.array_address()).await.unwrap();
    let id = stillpoint_node::executor::array_steps::pair_id(&pair());
    array.pair_set(&id).await.unwrap();
    let mgmt1 = site.addr(0);
    let term = site.term() + 1;
    let replicate = order(
        tok(term, 96, 1, 1),
        StepCall::Replicate { pair: "p0".into() },
    );
    assert_eq!(done(&mgmt1, &replicate).await, StepResult::InSync);
    // Attempt 1 reached the array; nothing of it is in the executor's journal.
    let first = order(
        tok(term, 96, 3, 1),
        StepCall::Separate { pair: "p0".into() },
    );
    array
        .fenced(
            &id,
            &fence_of(&first.dispatch.token, first.dispatch.round),
            &FencedOp::Separate(SeparateOptions::default()),
        )
        .await
        .unwrap();
    let second = order(
        tok(term, 96, 3, 2),
        StepCall::Separate { pair: "p0".into() },
    );
    assert_eq!(done(&mgmt1, &second).await, StepResult::SeparateAccepted);
    // And an attempt of another step is not taken for this one's.
    let other = order(
        tok(term, 96, 4, 1),
        StepCall::Separate { pair: "p0".into() },
    );
    match execute(&mgmt1, &other).await.unwrap() {
        Finding::Finished {
            outcome: Err(reason),
            ..
        } => assert!(reason.contains("not by this round's separate"), "{reason}"),
        other => panic!("another step's separation was taken as this one's: {other:?}"),
    }
    site.stop().await;
}
