//! `ExecuteMany`: orders sent to an agent together are begun in one journal write and each
//! answered as if sent alone — run once, refused for its own reason, answered from the journal
//! when sent again.

mod executor_site;

use executor_site::*;
use stillpoint_coordinator::inventory::QuiesceMethod;
use stillpoint_coordinator::job::wire::StepOrder;
use stillpoint_coordinator::job::{Finding, StepCall, StepResult};
use stillpoint_host::Host;
use stillpoint_node::NodeError;
use stillpoint_node::executor::client::{Batched, execute, execute_many};

/// Sends `orders` to `addr` as one batch; each order's answer, in the orders' order.
async fn batch(addr: &str, orders: &[&StepOrder]) -> Vec<Result<Finding, NodeError>> {
    let mut answers: Vec<Option<Result<Finding, NodeError>>> =
        (0..orders.len()).map(|_| None).collect();
    let served = execute_many(addr, orders, &mut |i, answer| {
        assert!(answers[i].is_none(), "order {i} was answered twice");
        answers[i] = Some(answer);
    })
    .await
    .expect("the batch was answered");
    assert_eq!(served, Batched::Served);
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.unwrap_or_else(|| panic!("order {i} of the batch got no answer")))
        .collect()
}

fn quiesced(answer: &Result<Finding, NodeError>) -> u64 {
    match answer {
        Ok(Finding::Finished {
            outcome: Ok(StepResult::Quiesced { quiesce_id }),
            ..
        }) => *quiesce_id,
        other => panic!("expected a done quiesce, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_sent_together_are_each_answered_as_if_sent_alone() {
    let site = Site::start().await;
    site.run_business().await;
    let db1 = site.addr(1);
    let term = site.term();
    assert!(term >= 1, "the cluster has a leader");
    let mv = vol("db1", "data");
    let quiesce = order(
        tok(term, 1, 3, 1),
        StepCall::Quiesce {
            volume: mv.clone(),
            method: QuiesceMethod::Unmount,
            limit_ms: 30_000,
        },
    );
    // A step of another node, and a deposed leader's step: refused, each for its reason,
    // without holding up the others.
    let not_mine = order(
        tok(term, 1, 7, 1),
        StepCall::MountRv {
            volume: vol("backup1", "rv"),
        },
    );
    let deposed = order(
        tok(term - 1, 2, 3, 1),
        StepCall::Quiesce {
            volume: mv.clone(),
            method: QuiesceMethod::Unmount,
            limit_ms: 30_000,
        },
    );
    // The same order twice in one batch: run once, both answered with its outcome.
    let answers = batch(&db1, &[&quiesce, &not_mine, &quiesce, &deposed]).await;
    let quiesce_id = quiesced(&answers[0]);
    assert_eq!(quiesced(&answers[2]), quiesce_id);
    assert_refused_answer(&answers[1], "the step is for node backup1");
    assert_refused_answer(&answers[3], "stale term");
    let held = site.host(1).quiesces().await.unwrap();
    assert_eq!(held.len(), 1, "quiesced once: {held:?}");
    assert_eq!(held[0].quiesce_id, quiesce_id);

    // Sent again, alone or in a batch, the order is answered from the journal.
    assert_eq!(
        done(&db1, &quiesce).await,
        StepResult::Quiesced { quiesce_id }
    );
    let mut release = order(
        tok(term, 1, 5, 1),
        StepCall::Release {
            volume: mv.clone(),
            quiesce_step: 3,
        },
    );
    release.dispatch.quiesce_id = Some(quiesce_id);
    let answers = batch(&db1, &[&release, &quiesce]).await;
    assert!(
        matches!(
            &answers[0],
            Ok(Finding::Finished {
                outcome: Ok(StepResult::Released {
                    held_throughout: true,
                    ..
                }),
                ..
            })
        ),
        "{:?}",
        answers[0]
    );
    assert_eq!(quiesced(&answers[1]), quiesce_id);
    assert!(site.host(1).quiesces().await.unwrap().is_empty());
    // The journal answers the single path the same way.
    assert!(matches!(
        execute(&db1, &release).await,
        Ok(Finding::Finished {
            outcome: Ok(StepResult::Released { .. }),
            ..
        })
    ));
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_batches_is_told_apart_from_a_failed_batch() {
    let site = Site::start().await;
    let order = order(
        tok(site.term(), 1, 0, 1),
        StepCall::FreeRv {
            volume: vol("backup1", "rv"),
        },
    );
    // The array's gRPC server serves no step executor at all: as an agent of a version
    // without `ExecuteMany` would, it answers "unimplemented", and nothing was begun.
    let served = execute_many(&site.array_address(), &[&order, &order], &mut |i, a| {
        panic!("order {i} answered by a server without batches: {a:?}")
    })
    .await
    .expect("an unimplemented batch is not an error");
    assert_eq!(served, Batched::NotServed);
    site.stop().await;
}

fn assert_refused_answer(answer: &Result<Finding, NodeError>, needle: &str) {
    match answer {
        Err(NodeError::Refused(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
    }
}
