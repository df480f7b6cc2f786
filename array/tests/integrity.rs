//! Data-integrity regressions of issue 9: what one pair does to the MV must never leave another
//! pair of the same MV believing its RV is equal when it is not; an RDR separate always has a
//! way out; asynchronous RDR writes do not wait for the link.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use stillpoint_array::*;

async fn ddr_array(dir: &std::path::Path, pace: u64) -> SoftwareArray {
    let lds = (0..5).map(|n| ld(n, CAP, "NX")).collect();
    SoftwareArray::open(&config(dir, "A", lds, pace), vec![])
        .await
        .expect("open array")
}

fn restore_opts(wait: bool) -> RestoreOptions {
    RestoreOptions {
        wait_timeout_ms: wait.then_some(WAIT_MS),
        ..Default::default()
    }
}

/// Replicates and separates every pair, then checks each RV equals the MV byte for byte.
async fn assert_every_rv_equals_mv(a: &SoftwareArray, rvs: &[u32], when: &str) {
    let mv = read_all(a, 0, CAP).await;
    for &rv in rvs {
        a.replicate(&pair(0, rv), &sync_opts()).await.unwrap();
        a.separate(&pair(0, rv), &sep_opts()).await.unwrap();
        assert!(
            read_all(a, rv, CAP).await == mv,
            "{when}: RV {rv} differs from MV 0 after replicate + separate"
        );
    }
}

#[tokio::test]
async fn restore_needs_every_other_pair_separated_and_marks_them_different() {
    let dir = tempfile::tempdir().unwrap();
    let a = ddr_array(dir.path(), 0).await;
    a.write("h", 0, 0, &pattern(1, CAP as usize)).await.unwrap();
    for rv in 1..=3 {
        a.pair_set(&pair(0, rv)).await.unwrap();
        a.replicate(&pair(0, rv), &sync_opts()).await.unwrap();
        a.separate(&pair(0, rv), &sep_opts()).await.unwrap();
    }
    // RV 1 gets other content (say, a tape restore onto it) in blocks 3..9.
    a.write("h", 1, 3 * BLOCK, &pattern(2, 6 * BLOCK as usize))
        .await
        .unwrap();

    // A sibling in rpl/sync: the restore would bypass its mirror. Refused, naming the rule.
    a.replicate(&pair(0, 2), &sync_opts()).await.unwrap();
    let e = a
        .restore(&pair(0, 1), &restore_opts(true))
        .await
        .unwrap_err();
    assert_eq!(
        rule_of(&e),
        Some(Rule::RestoreNeedsOtherPairsSeparated),
        "restore with a sibling in rpl/sync: {e}"
    );
    assert!(
        e.to_string()
            .contains("restore-needs-other-pairs-separated"),
        "{e}"
    );
    a.separate(&pair(0, 2), &sep_opts()).await.unwrap();

    // Every sibling separated: accepted, and the restored blocks become their differences.
    let s = a.restore(&pair(0, 1), &restore_opts(true)).await.unwrap();
    assert_eq!(s.state.sync, SyncState::Separated, "{s:?}");
    assert_eq!(read_all(&a, 0, CAP).await, read_all(&a, 1, CAP).await);
    for rv in [2, 3] {
        let p = a.pair_query(&pair(0, rv)).await.unwrap();
        assert!(
            p.separate_diff_blocks >= 6,
            "pair 0-{rv} must count the 6 restored blocks as differences, reports {}",
            p.separate_diff_blocks
        );
    }
    assert_every_rv_equals_mv(&a, &[2, 3], "after a restore from RV 1").await;
}

#[tokio::test]
async fn one_restore_per_mv_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    // Slow copies so the first restore is still in rst/exec when the second is asked for.
    let a = ddr_array(dir.path(), 4 * BLOCK).await;
    for rv in 1..=2 {
        a.pair_set(&pair(0, rv)).await.unwrap();
        a.write("h", rv, 0, &pattern(10 + rv as u64, CAP as usize))
            .await
            .unwrap();
    }
    // Pairs start separated with every block different: a restore copies all 32 blocks.
    let s = a.restore(&pair(0, 1), &restore_opts(false)).await.unwrap();
    assert_eq!(s.state.sync, SyncState::RstExec);
    let e = a
        .restore(&pair(0, 2), &restore_opts(false))
        .await
        .unwrap_err();
    assert_eq!(
        rule_of(&e),
        Some(Rule::RestoreNeedsOtherPairsSeparated),
        "second restore into one MV while the first runs: {e}"
    );
    a.set_copy_pace(0);
    a.wait(&pair(0, 1), WaitCondition::Done, WAIT_MS)
        .await
        .unwrap();
    assert_eq!(read_all(&a, 0, CAP).await, read_all(&a, 1, CAP).await);
    assert_every_rv_equals_mv(&a, &[2], "after the restore").await;
}

#[tokio::test]
async fn copy_pace_is_shared_by_every_copy_of_the_array() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB/s for the whole array; two pairs copy 2 MiB each.
    let pace = 2 * 1024 * 1024;
    let a = ddr_array(dir.path(), pace).await;
    let started = std::time::Instant::now();
    for rv in [1, 2] {
        a.pair_set(&pair(0, rv)).await.unwrap();
        let o = ReplicateOptions::default();
        a.replicate(&pair(0, rv), &o).await.unwrap();
    }
    for rv in [1, 2] {
        a.wait(&pair(0, rv), WaitCondition::Sync, WAIT_MS)
            .await
            .unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    // 4 MiB at 2 MiB/s is 2 s; a per-pair pace would finish in about 1 s.
    assert!(
        took >= 1.6,
        "two pairs copied 4 MiB in {took:.2} s: faster than the array's pace of 2 MiB/s"
    );
}

// ---- RDR --------------------------------------------------------------------------------

fn rdr_lds() -> Vec<LdConfig> {
    (0..2).map(|n| ld(n, CAP, "NX")).collect()
}

async fn open_a(dir: &std::path::Path, b: &SoftwareArray, link: Arc<Link>) -> SoftwareArray {
    let peer = PeerHandle {
        name: "B".into(),
        array: Arc::new(b.clone()),
        link,
    };
    SoftwareArray::open(&config(dir, "A", rdr_lds(), 0), vec![peer])
        .await
        .unwrap()
}

async fn two(dir: &std::path::Path, latency_ms: u64) -> (SoftwareArray, SoftwareArray) {
    let b = SoftwareArray::open(&config(dir, "B", rdr_lds(), 0), vec![])
        .await
        .unwrap();
    let a = open_a(dir, &b, Arc::new(Link::new(latency_ms, 0))).await;
    (a, b)
}

fn background() -> ReplicateOptions {
    ReplicateOptions {
        copy_control: CopyControl::Background,
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    }
}

/// An RDR pair in `sep/exec` with the link down (abnormal suspend); returns the MV image of
/// the separate instant.
async fn suspended_separate(a: &SoftwareArray) -> Vec<u8> {
    let p = rdr(0, 0);
    a.pair_set(&p).await.unwrap();
    a.replicate(&p, &background()).await.unwrap();
    // Background writes while the copy crawls: all 32 blocks are pending at the separate.
    a.set_copy_pace(BLOCK);
    let image = pattern(5, CAP as usize);
    a.write("h", 0, 0, &image).await.unwrap();
    let no_wait = SeparateOptions {
        wait_timeout_ms: None,
        ..Default::default()
    };
    let s = a.separate(&p, &no_wait).await.unwrap();
    assert_eq!(s.state.sync, SyncState::SepExec, "{s:?}");
    a.inject_fault(&Fault::LinkDown { peer: "B".into() })
        .await
        .unwrap();
    let s = a.pair_query(&p).await.unwrap();
    assert!(s.state.abnormal_suspend, "{s:?}");
    assert!(s.copy_diff_blocks > 4, "{s:?}");
    image
}

#[tokio::test]
async fn suspended_rdr_separate_finishes_when_the_link_is_back_and_keeps_its_instant() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two(dir.path(), 0).await;
    let image = suspended_separate(&a).await;
    // A host write to a block not yet copied must not overwrite the separate instant: with
    // the RV unreachable it is refused (nothing changed, retry later).
    let tail = CAP - BLOCK;
    let e = a.write("h", 0, tail, &pattern(6, BLOCK as usize)).await;
    assert!(
        matches!(&e, Err(ArrayError::PeerUnreachable { peer, .. }) if peer == "B"),
        "write to a pending block of a suspended separate: {e:?}"
    );
    a.inject_fault(&Fault::LinkUp { peer: "B".into() })
        .await
        .unwrap();
    a.set_copy_pace(0);
    let s = a
        .wait(&rdr(0, 0), WaitCondition::Sep, WAIT_MS)
        .await
        .expect("the separate finishes once the link is back");
    assert_eq!(s.state.sync, SyncState::Separated, "{s:?}");
    assert!(!s.state.abnormal_suspend, "{s:?}");
    assert!(
        read_all(&b, 0, CAP).await == image,
        "RV holds the separate instant's bytes"
    );
}

#[tokio::test]
async fn suspended_rdr_separate_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two(dir.path(), 0).await;
    let image = suspended_separate(&a).await;
    a.close().await.unwrap();
    drop(a);
    let a = open_a(dir.path(), &b, Arc::new(Link::new(0, 0))).await;
    let s = a
        .wait(&rdr(0, 0), WaitCondition::Sep, WAIT_MS)
        .await
        .expect("the separate finishes after a restart");
    assert_eq!(s.state.sync, SyncState::Separated, "{s:?}");
    assert!(read_all(&b, 0, CAP).await == image);
}

#[tokio::test]
async fn forced_separate_is_a_way_out_of_a_suspended_separate() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two(dir.path(), 0).await;
    suspended_separate(&a).await;
    let s = a
        .forced_separate(&rdr(0, 0))
        .await
        .expect("forced separate from sep/exec + abnormal suspend");
    assert_eq!(s.state.sync, SyncState::Cancel, "{s:?}");
    // The MV is writable again; every block not copied is a difference.
    a.write("h", 0, CAP - BLOCK, &pattern(7, BLOCK as usize))
        .await
        .unwrap();
    a.inject_fault(&Fault::LinkUp { peer: "B".into() })
        .await
        .unwrap();
    a.set_copy_pace(0);
    a.replicate(&rdr(0, 0), &background()).await.unwrap();
    a.separate(&rdr(0, 0), &sep_opts()).await.unwrap();
    assert!(read_all(&b, 0, CAP).await == read_all(&a, 0, CAP).await);
}

#[tokio::test]
async fn asynchronous_rdr_writes_do_not_wait_for_the_link() {
    let dir = tempfile::tempdir().unwrap();
    // Every run the engine sends spends 2 s on the link; the bound below leaves 1 s for four
    // local writes on a loaded machine.
    let latency_ms = 2000;
    let (a, b) = two(dir.path(), latency_ms).await;
    let p = rdr(0, 0);
    a.pair_set(&p).await.unwrap();
    for cc in [CopyControl::Background, CopyControl::SemiSync] {
        let o = ReplicateOptions {
            copy_control: cc,
            wait_timeout_ms: Some(WAIT_MS),
            ..Default::default()
        };
        a.replicate(&p, &o).await.unwrap();
        // The first write starts a run over the link; the next ones (3 blocks, within the
        // semi-sync backlog of 4) land while it crosses, one of them on the run's own block.
        let t = Instant::now();
        for (i, blk) in [0u64, 1, 0, 2].into_iter().enumerate() {
            a.write("h", 0, blk * BLOCK, &pattern(20 + i as u64, BLOCK as usize))
                .await
                .unwrap();
        }
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(latency_ms / 2),
            "{cc:?}: 4 writes took {took:?} with a {latency_ms} ms link: they waited for it"
        );
        a.separate(&p, &sep_opts()).await.unwrap();
        assert!(
            read_all(&b, 0, CAP).await == read_all(&a, 0, CAP).await,
            "{cc:?}: the write racing a run was sent again"
        );
    }
}
