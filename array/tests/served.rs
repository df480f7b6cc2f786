//! The array served over gRPC: same behaviour through RemoteArray, and RDR between served
//! arrays. The array as its own process (`stillpoint array serve`, killed mid-copy) is tested in
//! `node/tests/array_process.rs`, beside the binary.

mod common;

use std::sync::Arc;

use common::*;
use futures::StreamExt;
use stillpoint_array::*;

fn lds() -> Vec<LdConfig> {
    (0..4).map(|n| ld(n, CAP, "NX")).collect()
}

async fn start(
    cfg: ArrayConfig,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(serve(cfg, listener, async {
        let _ = rx.await;
    }));
    (addr, tx, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_array_behaves_like_the_array() {
    let dir = tempfile::tempdir().unwrap();
    let (b_addr, b_stop, b_task) = start(config(dir.path(), "B", lds(), 0)).await;
    let mut a_cfg = config(dir.path(), "A", lds(), 0);
    a_cfg.peers.push(PeerConfig {
        name: "B".into(),
        endpoint: format!("http://{b_addr}"),
        latency_ms: 1,
        bandwidth_bytes_per_s: 0,
    });
    let (a_addr, a_stop, a_task) = start(a_cfg).await;
    let a: Arc<dyn Array> = Arc::new(RemoteArray::connect(&a_addr).await.expect("connect A"));
    let b: Arc<dyn Array> = Arc::new(RemoteArray::connect(&b_addr).await.expect("connect B"));
    assert_eq!(a.info().await.unwrap().name, "A");
    let mut events = a.events().await.unwrap();
    // DDR through the wire, including a refusal with its rule.
    a.pair_set(&pair(0, 1)).await.unwrap();
    let e = a.pair_set(&pair(2, 1)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::OneRolePerLd), "{e}");
    let img = pattern(9, CAP as usize);
    a.write("h", 0, 0, &img).await.unwrap();
    let o = ReplicateOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    assert_eq!(
        a.replicate(&pair(0, 1), &o).await.unwrap().state.sync,
        SyncState::RplSync
    );
    let e = a.read("h", 1, 0, 10).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::RvAccess), "{e}");
    let so = SeparateOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    a.separate(&pair(0, 1), &so).await.unwrap();
    assert_eq!(crc(&read_all(&*a, 1, CAP).await), crc(&img));
    let ev = tokio::time::timeout(std::time::Duration::from_secs(30), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.pair().expect("a pair event").pair, pair(0, 1));
    // RDR between two served arrays, with a link fault injected through the API.
    let p = rdr(2, 2);
    a.pair_set(&p).await.unwrap();
    a.write("h", 2, 0, &img).await.unwrap();
    a.replicate(&p, &o).await.unwrap();
    a.inject_fault(&Fault::LinkDown { peer: "B".into() })
        .await
        .unwrap();
    a.write("h", 2, 0, b"during outage").await.unwrap();
    assert!(a.pair_query(&p).await.unwrap().state.abnormal_suspend);
    a.inject_fault(&Fault::LinkUp { peer: "B".into() })
        .await
        .unwrap();
    a.replicate(&p, &o).await.unwrap();
    a.separate(&p, &so).await.unwrap();
    assert_eq!(
        crc(&read_all(&*b, 2, CAP).await),
        crc(&read_all(&*a, 2, CAP).await)
    );
    a_stop.send(()).unwrap();
    a_task.await.unwrap().unwrap();
    b_stop.send(()).unwrap();
    b_task.await.unwrap().unwrap();
    // The stopped array is unreachable, not an unknown outcome, for a read-only call.
    let e = a.pair_list().await.unwrap_err();
    assert!(matches!(e, ArrayError::Unreachable { .. }), "{e}");
}

/// A copy pace set through the fault API holds copies back (a 2 MiB replicate cannot reach
/// sync in half a second at one block a second) until it is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_pace_fault_slows_copies_until_it_is_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, task) = start(config(dir.path(), "A", lds(), 0)).await;
    let a = RemoteArray::connect(&addr).await.expect("connect");
    a.pair_set(&pair(0, 1)).await.unwrap();
    a.write("h", 0, 0, &pattern(3, CAP as usize)).await.unwrap();
    a.inject_fault(&Fault::CopyPace { bytes_per_s: BLOCK })
        .await
        .unwrap();
    let o = ReplicateOptions {
        wait_timeout_ms: Some(500),
        ..Default::default()
    };
    let held = a.replicate(&pair(0, 1), &o).await;
    let info = a.pair_query(&pair(0, 1)).await.unwrap();
    assert_eq!(
        info.state.sync,
        SyncState::RplExec,
        "at one block a second the copy must still run: {held:?}"
    );
    a.inject_fault(&Fault::CopyPace { bytes_per_s: 0 })
        .await
        .unwrap();
    let info = a
        .wait(&pair(0, 1), WaitCondition::Sync, WAIT_MS)
        .await
        .unwrap();
    assert_eq!(info.state.sync, SyncState::RplSync);
    let _ = stop.send(());
    let _ = task.await;
}

/// A separate delay set through the fault API holds every separate back that long before the
/// array admits it (the pair stays in sync meanwhile: its MV's writes still reach the RV),
/// and separates are admitted at once again when it is set back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_delay_fault_holds_separates_back_until_it_is_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, task) = start(config(dir.path(), "A", lds(), 0)).await;
    let a = RemoteArray::connect(&addr).await.expect("connect");
    for rv in [1, 2] {
        a.pair_set(&pair(0, rv)).await.unwrap();
        a.replicate(
            &pair(0, rv),
            &ReplicateOptions {
                wait_timeout_ms: Some(WAIT_MS),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    const DELAY_MS: u64 = 2_000;
    a.inject_fault(&Fault::SeparateDelay { ms: DELAY_MS })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let separating = {
        let a = a.clone();
        tokio::spawn(async move { a.separate(&pair(0, 1), &SeparateOptions::default()).await })
    };
    // Held back: the pair is still mirrored while the separate waits.
    tokio::time::sleep(std::time::Duration::from_millis(DELAY_MS / 4)).await;
    let info = a.pair_query(&pair(0, 1)).await.unwrap();
    assert_eq!(
        info.state.sync,
        SyncState::RplSync,
        "admitted early: {info:?}"
    );
    let info = separating.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(DELAY_MS),
        "answered after {:?}",
        started.elapsed()
    );
    assert_ne!(info.state.sync, SyncState::RplSync, "{info:?}");
    a.inject_fault(&Fault::SeparateDelay { ms: 0 })
        .await
        .unwrap();
    let info = a
        .separate(&pair(0, 2), &SeparateOptions::default())
        .await
        .unwrap();
    assert_ne!(info.state.sync, SyncState::RplSync, "{info:?}");
    let _ = stop.send(());
    let _ = task.await;
}
