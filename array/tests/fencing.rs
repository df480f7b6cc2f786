//! Fenced pair operations: an operation carrying a stillpoint job's token is refused once a
//! newer token has acted on the pair — the array-side guarantee that lets any of an array's
//! control nodes run a job's array steps (an order stuck on a cut-off node never lands after
//! a newer one). The floor survives a restart and travels over the wire.

mod common;

use common::*;
use stillpoint_array::*;

fn lds() -> Vec<LdConfig> {
    (0..2).map(|n| ld(n, CAP, "NX")).collect()
}

/// A token of round 1.
fn token(term: u64, job: u64, step: u32, attempt: u32) -> FenceToken {
    FenceToken {
        term,
        job,
        round: 1,
        step,
        attempt,
    }
}

fn assert_fenced(r: Result<PairInfo>, what: &str) {
    match r {
        Err(e) => assert_eq!(rule_of(&e), Some(Rule::FencingToken), "{what}: {e}"),
        Ok(info) => panic!("{what} was accepted: {info:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_is_refused_and_the_floor_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "A", lds(), 0);
    let id = pair(0, 1);
    {
        let a = SoftwareArray::open(&cfg, vec![]).await.unwrap();
        a.pair_set(&id).await.unwrap();
        let replicate = FencedOp::Replicate(sync_opts());
        let separate = FencedOp::Separate(sep_opts());
        // Job 1: replicate (step 1), separate (step 3), each accepted in turn.
        a.fenced(&id, &token(2, 1, 1, 1), &replicate).await.unwrap();
        let info = a.fenced(&id, &token(2, 1, 3, 1), &separate).await.unwrap();
        assert_eq!(info.state.sync, SyncState::Separated);
        // The first attempt of the replicate, arriving late from a cut-off control node.
        assert_fenced(
            a.fenced(&id, &token(2, 1, 1, 1), &replicate).await,
            "a late replicate of an earlier step",
        );
        // An older leader's term, whatever its job and step.
        assert_fenced(
            a.fenced(&id, &token(1, 9, 9, 9), &replicate).await,
            "a replicate of an older term",
        );
        assert_eq!(
            a.pair_query(&id).await.unwrap().state.sync,
            SyncState::Separated,
            "a refused operation changed the pair"
        );
        // The job's next round starts again from its replicate (an earlier step, a later
        // round): ahead of everything round 1 did.
        let round_2 = FenceToken {
            round: 2,
            ..token(2, 1, 1, 2)
        };
        a.fenced(&id, &round_2, &replicate)
            .await
            .expect("round 2's replicate");
        assert_fenced(
            a.fenced(&id, &token(2, 1, 3, 2), &separate).await,
            "round 1's separate after round 2 began",
        );
        a.fenced(&id, &FenceToken { step: 3, ..round_2 }, &separate)
            .await
            .expect("round 2's separate");
        // A newer job goes ahead; an operator's unfenced command is not fenced.
        a.fenced(&id, &token(2, 2, 1, 1), &replicate).await.unwrap();
        a.separate(&id, &sep_opts()).await.unwrap();
        a.close().await.unwrap();
    }
    let a = SoftwareArray::open(&cfg, vec![]).await.expect("reopen");
    assert_fenced(
        a.fenced(&id, &token(2, 1, 3, 2), &FencedOp::Separate(sep_opts()))
            .await,
        "an older job's operation after a restart",
    );
    a.fenced(&id, &token(3, 2, 5, 1), &FencedOp::Replicate(sync_opts()))
        .await
        .expect("a newer term after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_travels_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(config(dir.path(), "A", lds(), 0), listener, async {
        let _ = stopped.await;
    }));
    let a = RemoteArray::connect(&addr).await.expect("connect");
    let id = pair(0, 1);
    a.pair_set(&id).await.unwrap();
    a.fenced(&id, &token(4, 7, 2, 2), &FencedOp::Replicate(sync_opts()))
        .await
        .unwrap();
    assert_fenced(
        a.fenced(&id, &token(4, 7, 2, 1), &FencedOp::Separate(sep_opts()))
            .await,
        "an earlier attempt over the wire",
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
