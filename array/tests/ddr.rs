//! DDR pairs on one software array: rules, every transition, and the bytes on the volumes.

mod common;

use std::sync::Arc;

use common::*;
use stillpoint_array::*;

async fn array(dir: &std::path::Path, pace: u64) -> SoftwareArray {
    let lds = vec![
        ld(0, CAP, "NX"),
        ld(1, CAP, "NX"),
        ld(2, CAP, "NX"),
        ld(3, CAP, "NX"),
        ld(4, CAP, "NX"),
        ld(5, CAP * 2, "NX"),
        ld(6, CAP, "WN"),
    ];
    SoftwareArray::open(&config(dir, "A", lds, pace), vec![])
        .await
        .expect("open array")
}

#[tokio::test]
async fn pairing_rules_refuse_and_name_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), 0).await;
    let e = a.pair_set(&pair(0, 5)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::SameCapacity), "{e}");
    assert!(e.to_string().contains("same-capacity"), "{e}");
    let e = a.pair_set(&pair(0, 6)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::SameFormat), "{e}");
    let e = a.pair_set(&pair(0, 0)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::OneRolePerLd), "{e}");

    for rv in 1..=3 {
        a.pair_set(&pair(0, rv)).await.expect("set");
    }
    let e = a.pair_set(&pair(0, 4)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::MaxDdrRvsPerMv), "{e}");
    // An RV of MV 0 cannot be an MV (single DDR layer) nor an RV of another MV (one role).
    let e = a.pair_set(&pair(1, 4)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::SingleDdrLayer), "{e}");
    let e = a.pair_set(&pair(4, 1)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::OneRolePerLd), "{e}");
    // An MV cannot become an RV.
    let e = a.pair_set(&pair(4, 0)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::SingleDdrLayer), "{e}");
    // Semi-sync is RDR only.
    let o = ReplicateOptions {
        copy_control: CopyControl::SemiSync,
        ..Default::default()
    };
    let e = a.replicate(&pair(0, 1), &o).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::SemiSyncRdrOnly), "{e}");
    // Replicate keeps the RV nr or ro; separate gives rw or ro.
    let o = ReplicateOptions {
        rv_access: RvAccess::Rw,
        ..Default::default()
    };
    let e = a.replicate(&pair(0, 1), &o).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::AccessForOperation), "{e}");
    a.replicate(&pair(0, 1), &sync_opts())
        .await
        .expect("replicate");
    let o = SeparateOptions {
        rv_access: RvAccess::Nr,
        ..Default::default()
    };
    let e = a.separate(&pair(0, 1), &o).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::AccessForOperation), "{e}");
    // Unset only when separated.
    let e = a.pair_unset(&pair(0, 1)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::UnsetOnlyWhenSeparated), "{e}");
    a.separate(&pair(0, 1), &sep_opts())
        .await
        .expect("separate");
    a.pair_unset(&pair(0, 1))
        .await
        .expect("unset when separated");
    a.pair_set(&pair(0, 4))
        .await
        .expect("a freed DDR slot can be used again");
    let lds = a.ld_list().await.unwrap();
    assert_eq!(lds[0].role, LdRole::Mv { rvs: 3 });
    assert_eq!(lds[1].role, LdRole::None);
}

#[tokio::test]
async fn access_list_and_rv_access_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut lds = vec![ld(0, CAP, "NX"), ld(1, CAP, "NX")];
    lds[0].hosts = vec!["db1".into()];
    let a = SoftwareArray::open(&config(dir.path(), "A", lds, 0), vec![])
        .await
        .unwrap();
    let e = a.write("intruder", 0, 0, b"x").await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::AccessList), "{e}");
    a.write("db1", 0, 0, b"hello")
        .await
        .expect("listed host writes");
    let p = pair(0, 1);
    a.pair_set(&p).await.unwrap();
    a.replicate(&p, &sync_opts()).await.unwrap();
    // nr: no reads, no writes.
    let e = a.read("h", 1, 0, 5).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::RvAccess), "{e}");
    let e = a.write("h", 1, 0, b"x").await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::RvAccess), "{e}");
    // ro after separate: reads only.
    let o = SeparateOptions {
        rv_access: RvAccess::Ro,
        ..sep_opts()
    };
    a.separate(&p, &o).await.unwrap();
    assert_eq!(a.read("h", 1, 0, 5).await.unwrap(), b"hello");
    let e = a.write("h", 1, 0, b"x").await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::RvAccess), "{e}");
    let e = a.read("db1", 0, CAP - 2, 5).await.unwrap_err();
    assert!(matches!(e, ArrayError::InvalidInput { .. }), "{e}");
}

#[tokio::test]
async fn every_transition_and_wrong_state_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), 0).await;
    let p = pair(0, 1);
    let s = a.pair_set(&p).await.unwrap();
    assert_eq!(s.state.sync, SyncState::Separated);
    assert_eq!(
        s.separate_diff_blocks,
        CAP / BLOCK,
        "a new pair differs everywhere"
    );
    let ws = |e: ArrayError| assert!(matches!(e, ArrayError::WrongState { .. }), "{e}");
    ws(a.separate(&p, &sep_opts()).await.unwrap_err());
    ws(a.forced_separate(&p).await.unwrap_err());
    // separated -> rpl/sync
    let s = a.replicate(&p, &sync_opts()).await.unwrap();
    assert_eq!(
        (s.state.sync, s.state.activity, s.state.rv_access),
        (SyncState::RplSync, Activity::Replicate, RvAccess::Nr)
    );
    ws(a.replicate(&p, &sync_opts()).await.unwrap_err());
    ws(a.restore(&p, &RestoreOptions::default()).await.unwrap_err());
    // rpl/sync -> separated
    let s = a.separate(&p, &sep_opts()).await.unwrap();
    assert_eq!(
        (s.state.sync, s.state.rv_access),
        (SyncState::Separated, RvAccess::Rw)
    );
    // separated -> rst/sync (update) -> separated
    let o = RestoreOptions {
        mode: RestoreMode::Update,
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    let s = a.restore(&p, &o).await.unwrap();
    assert_eq!(
        (s.state.sync, s.state.activity),
        (SyncState::RstSync, Activity::RestoreUpdate)
    );
    let s = a.separate(&p, &sep_opts()).await.unwrap();
    assert_eq!(s.state.sync, SyncState::Separated);
    // separated -> restore protect -> separated by itself
    let o = RestoreOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    let s = a.restore(&p, &o).await.unwrap();
    assert_eq!(
        (s.state.sync, s.state.activity),
        (SyncState::Separated, Activity::Separate)
    );
    // rpl/sync -> cancel -> replicate again
    a.replicate(&p, &sync_opts()).await.unwrap();
    let s = a.forced_separate(&p).await.unwrap();
    assert_eq!(
        (s.state.sync, s.state.rv_access),
        (SyncState::Cancel, RvAccess::Rw)
    );
    let s = a.replicate(&p, &sync_opts()).await.unwrap();
    assert_eq!(s.state.sync, SyncState::RplSync);
    // rst/sync -> cancel
    a.separate(&p, &sep_opts()).await.unwrap();
    let o = RestoreOptions {
        mode: RestoreMode::Update,
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    a.restore(&p, &o).await.unwrap();
    assert_eq!(
        a.forced_separate(&p).await.unwrap().state.sync,
        SyncState::Cancel
    );
    // wait for an unreachable condition says so at once
    ws(a.wait(&p, WaitCondition::Sync, WAIT_MS).await.unwrap_err());
    let last = a.pair_query(&p).await.unwrap().last_op.unwrap();
    assert_eq!(last.op, "forced-separate");
    assert!(last.ended_unix_ms.is_some());
}

#[tokio::test]
async fn exec_states_cancel_fault_and_wait_timeout_under_a_slow_copy() {
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB/s: a whole 2 MiB copy takes about 8 s, leaving the exec states observable.
    let a = array(dir.path(), 256 * 1024).await;
    let p = pair(0, 1);
    a.pair_set(&p).await.unwrap();
    let s = a.replicate(&p, &ReplicateOptions::default()).await.unwrap();
    assert_eq!(s.state.sync, SyncState::RplExec);
    let e = a.wait(&p, WaitCondition::Sync, 50).await.unwrap_err();
    assert!(matches!(e, ArrayError::Timeout { .. }), "{e}");
    // rpl/exec -> cancel: the uncopied blocks stay as difference.
    let s = a.forced_separate(&p).await.unwrap();
    assert_eq!(s.state.sync, SyncState::Cancel);
    assert!(s.separate_diff_blocks > 0);
    // cancel -> rpl/exec -> fault when the RV fails during the copy.
    let s = a.replicate(&p, &ReplicateOptions::default()).await.unwrap();
    assert_eq!(s.state.sync, SyncState::RplExec);
    a.inject_fault(&Fault::LdFailure { ld: 1 }).await.unwrap();
    eventually("fault", || async {
        a.pair_query(&p).await.unwrap().state.sync == SyncState::Fault
    })
    .await;
    let s = a.pair_query(&p).await.unwrap();
    assert_eq!(s.state.rv_access, RvAccess::Na);
    // The RV LD's own access follows the pair state by one push (array/src/lib.rs CAVEATS).
    eventually("the RV LD's access to become na", || async {
        matches!(
            a.ld_list().await.unwrap()[1].role,
            LdRole::Rv {
                access: RvAccess::Na,
                ..
            }
        )
    })
    .await;
    a.inject_fault(&Fault::LdRepair { ld: 1 }).await.unwrap();
    // fault -> replicate -> rpl/sync, then rst/exec -> cancel. Nothing is observed while this
    // copy runs, so it runs unpaced; the restore is slow again so rst/exec is observable.
    a.set_copy_pace(0);
    a.replicate(
        &p,
        &ReplicateOptions {
            wait_timeout_ms: Some(WAIT_MS),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    a.separate(&p, &sep_opts()).await.unwrap();
    a.write("h", 1, 0, &pattern(1, CAP as usize)).await.unwrap();
    a.set_copy_pace(256 * 1024);
    let s = a.restore(&p, &RestoreOptions::default()).await.unwrap();
    assert_eq!(s.state.sync, SyncState::RstExec);
    assert_eq!(
        a.forced_separate(&p).await.unwrap().state.sync,
        SyncState::Cancel
    );
}

#[tokio::test]
async fn separate_under_concurrent_writes_freezes_the_separate_instant() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(array(dir.path(), 2 * 1024 * 1024).await);
    let p = pair(0, 1);
    a.pair_set(&p).await.unwrap();
    let shadow = Arc::new(std::sync::Mutex::new(vec![0u8; CAP as usize]));
    let first = pattern(7, CAP as usize);
    a.write("h", 0, 0, &first).await.unwrap();
    shadow.lock().unwrap().copy_from_slice(&first);
    let o = ReplicateOptions {
        copy_control: CopyControl::Background,
        ..Default::default()
    };
    a.replicate(&p, &o).await.unwrap();
    // Writers hold the gate shared; the separate takes it exclusively, so the separate instant
    // is well defined while writes race each other and the copy engine.
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..3u64 {
        let (a, shadow, gate, stop) = (a.clone(), shadow.clone(), gate.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 100_000 {
                let _g = gate.read().await;
                let off = (i * 7919 + w * 104729) % (CAP - 5000);
                let data = pattern(w * 1_000_000 + i, 3000 + (i as usize % 2000));
                a.write("h", 0, off, &data).await.unwrap();
                shadow.lock().unwrap()[off as usize..off as usize + data.len()]
                    .copy_from_slice(&data);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let expected = {
        let _g = gate.write().await;
        let expected = shadow.lock().unwrap().clone();
        let o = SeparateOptions {
            rv_use: RvUse::Immediate,
            ..Default::default()
        };
        let s = a.separate(&p, &o).await.unwrap();
        assert!(matches!(
            s.state.sync,
            SyncState::SepExec | SyncState::Separated
        ));
        expected
    };
    // RV usable at once and showing the separate instant while MV writes go on.
    let rv_now = read_all(&*a, 1, CAP).await;
    assert_eq!(crc(&rv_now), crc(&expected), "rvuse immediate RV image");
    a.wait(&p, WaitCondition::Sep, WAIT_MS).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let rv = read_all(&*a, 1, CAP).await;
    assert_eq!(
        crc(&rv),
        crc(&expected),
        "RV equals MV at the separate instant"
    );
    let mv = read_all(&*a, 0, CAP).await;
    assert_eq!(crc(&mv), crc(&shadow.lock().unwrap()), "MV has every write");
    assert!(a.pair_query(&p).await.unwrap().separate_diff_blocks > 0);
}

#[tokio::test]
async fn rvuse_immediate_shows_point_in_time_while_copy_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Slow pace so the separate has plenty left to copy.
    let a = array(dir.path(), 128 * 1024).await;
    let p = pair(0, 1);
    a.pair_set(&p).await.unwrap();
    let o = ReplicateOptions {
        copy_control: CopyControl::Background,
        ..Default::default()
    };
    a.replicate(&p, &o).await.unwrap();
    let image = pattern(3, CAP as usize);
    a.write("h", 0, 0, &image).await.unwrap();
    let o = SeparateOptions {
        rv_use: RvUse::Immediate,
        ..Default::default()
    };
    let s = a.separate(&p, &o).await.unwrap();
    assert_eq!(
        s.state.sync,
        SyncState::SepExec,
        "copy must still be running"
    );
    assert_eq!(s.state.rv_access, RvAccess::Rw);
    // MV writes after the instant do not leak into the RV.
    a.write("h", 0, 0, &vec![0xEE; CAP as usize / 2])
        .await
        .unwrap();
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&image));
    // An RV write during sep/exec lands on top of the point-in-time image.
    a.write("h", 1, BLOCK * 30 + 10, b"rv-side").await.unwrap();
    let mut expect = image.clone();
    expect[(BLOCK * 30 + 10) as usize..(BLOCK * 30 + 17) as usize].copy_from_slice(b"rv-side");
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&expect));
    assert_eq!(
        a.pair_query(&p).await.unwrap().state.sync,
        SyncState::SepExec,
        "the checks above ran while the copy was still running"
    );
    // Everything during sep/exec is checked: finish the copy at full speed.
    a.set_copy_pace(0);
    let s = a.wait(&p, WaitCondition::Sep, WAIT_MS).await.unwrap();
    assert_eq!(s.state.sync, SyncState::Separated);
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&expect));
}

#[tokio::test]
async fn differential_replicate_copies_only_changed_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), 0).await;
    let p = pair(0, 1);
    a.pair_set(&p).await.unwrap();
    a.write("h", 0, 0, &pattern(1, CAP as usize)).await.unwrap();
    let s = a.replicate(&p, &sync_opts()).await.unwrap();
    assert_eq!(s.copied_blocks, CAP / BLOCK);
    a.separate(&p, &sep_opts()).await.unwrap();
    // MV: blocks 2, 3 (one write spanning both), 10 twice, 20. RV: blocks 20 and 25.
    a.write("h", 0, BLOCK * 3 - 100, &[1u8; 200]).await.unwrap();
    a.write("h", 0, BLOCK * 10, &[2u8; 10]).await.unwrap();
    a.write("h", 0, BLOCK * 10 + 500, &[3u8; 10]).await.unwrap();
    a.write("h", 0, BLOCK * 20, &[4u8; 10]).await.unwrap();
    a.write("h", 1, BLOCK * 20 + 9, &[5u8; 10]).await.unwrap();
    a.write("h", 1, BLOCK * 25, &[6u8; 10]).await.unwrap();
    assert_eq!(
        a.pair_query(&p).await.unwrap().separate_diff_blocks,
        4,
        "MV-side difference"
    );
    let s = a.replicate(&p, &sync_opts()).await.unwrap();
    assert_eq!(s.copy_total_blocks, 5, "blocks 2, 3, 10, 20, 25");
    assert_eq!(s.copied_blocks, 5);
    assert_eq!(
        crc(&read_all(&a, 0, CAP).await),
        {
            a.separate(&p, &sep_opts()).await.unwrap();
            crc(&read_all(&a, 1, CAP).await)
        },
        "RV-side changes were overwritten"
    );
    let s = a
        .replicate(
            &p,
            &ReplicateOptions {
                range: CopyRange::Whole,
                ..sync_opts()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.copied_blocks, CAP / BLOCK, "whole copies everything");
}

#[tokio::test]
async fn restore_shows_rv_at_once_and_protect_separates_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    // The backup copy runs unpaced; the restore is slow so rst/exec is observable.
    let a = array(dir.path(), 0).await;
    let p = pair(0, 1);
    a.pair_set(&p).await.unwrap();
    let mv_img = pattern(11, CAP as usize);
    a.write("h", 0, 0, &mv_img).await.unwrap();
    a.replicate(&p, &sync_opts()).await.unwrap();
    a.separate(&p, &sep_opts()).await.unwrap();
    // The RV is changed (a tape restore onto it), the MV too (damage after backup).
    let rv_img = pattern(12, CAP as usize);
    a.write("h", 1, 0, &rv_img).await.unwrap();
    a.write("h", 0, 0, &[0u8; 4096]).await.unwrap();
    a.set_copy_pace(128 * 1024);
    let s = a.restore(&p, &RestoreOptions::default()).await.unwrap();
    assert_eq!(s.state.sync, SyncState::RstExec);
    assert_eq!(s.state.activity, Activity::RestoreProtect);
    assert_eq!(
        crc(&read_all(&a, 0, CAP).await),
        crc(&rv_img),
        "MV reads see the RV at once"
    );
    // MV writes during a protect restore do not reach the RV.
    a.write("h", 0, BLOCK * 31, b"after").await.unwrap();
    assert_eq!(
        a.pair_query(&p).await.unwrap().state.sync,
        SyncState::RstExec,
        "the checks above ran while the restore was still copying"
    );
    // Everything during rst/exec is checked: finish the restore at full speed.
    a.set_copy_pace(0);
    let s = a.wait(&p, WaitCondition::Sep, WAIT_MS).await.unwrap();
    assert_eq!(
        (s.state.sync, s.state.activity),
        (SyncState::Separated, Activity::Separate)
    );
    let mut expect = rv_img.clone();
    expect[(BLOCK * 31) as usize..(BLOCK * 31 + 5) as usize].copy_from_slice(b"after");
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&expect));
    assert_eq!(
        a.read("h", 1, BLOCK * 31, 5).await.unwrap(),
        rv_img[(BLOCK * 31) as usize..(BLOCK * 31 + 5) as usize].to_vec()
    );
    assert_eq!(a.pair_query(&p).await.unwrap().separate_diff_blocks, 1);
}

#[tokio::test]
async fn restore_update_mirrors_later_mv_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), 0).await;
    let p = pair(0, 1);
    a.pair_set(&p).await.unwrap();
    a.replicate(&p, &sync_opts()).await.unwrap();
    a.separate(&p, &sep_opts()).await.unwrap();
    a.write("h", 1, 0, &pattern(5, CAP as usize)).await.unwrap();
    let o = RestoreOptions {
        mode: RestoreMode::Update,
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    let s = a.restore(&p, &o).await.unwrap();
    assert_eq!(s.state.sync, SyncState::RstSync);
    a.write("h", 0, 100, b"mirrored").await.unwrap();
    a.separate(&p, &sep_opts()).await.unwrap();
    assert_eq!(a.read("h", 1, 100, 8).await.unwrap(), b"mirrored");
    assert_eq!(
        crc(&read_all(&a, 0, CAP).await),
        crc(&read_all(&a, 1, CAP).await)
    );
}

#[tokio::test]
async fn sync_mode_write_is_on_the_rv_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), 0).await;
    let p = pair(0, 1);
    a.pair_set(&p).await.unwrap();
    a.replicate(&p, &sync_opts()).await.unwrap();
    let mut events = a.events().await.unwrap();
    a.write("h", 0, 12345, b"sync write").await.unwrap();
    assert_eq!(
        a.pair_query(&p).await.unwrap().copy_diff_blocks,
        0,
        "nothing left for the engine"
    );
    // Force-separating right away freezes the RV: the write must already be there.
    a.forced_separate(&p).await.unwrap();
    assert_eq!(a.read("h", 1, 12345, 10).await.unwrap(), b"sync write");
    use futures::StreamExt;
    // Earlier events (the replicate's completion) may still be queued; the cancel must follow.
    let mut seen = vec![];
    for _ in 0..10 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(30), events.next())
            .await
            .expect("an event within 30 s")
            .expect("stream open");
        let Some(ev) = ev.pair() else { continue };
        seen.push(ev.state.map(|s| s.sync));
        if ev.state.map(|s| s.sync) == Some(SyncState::Cancel) {
            assert_eq!(ev.pair, p);
            return;
        }
    }
    panic!("no cancel event, saw {seen:?}");
}

/// A paced replicate reaches sync while its MV is written steadily: the copy engine must not
/// chase for ever the one block a sequential writer keeps dirtying. Found by
/// `chaos/tests/partition.rs`: at 128 KiB/s with two MVs written every 50 ms, a replicate with
/// 5 blocks left per pair took 139 s to reach sync — the engine slept out its pace between
/// copying the last dirty block and looking whether any was left, and by then the writer had
/// dirtied it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_replicate_reaches_sync_while_one_block_is_written_steadily() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "A", vec![ld(0, CAP, "NX"), ld(1, CAP, "NX")], 0);
    let a = Arc::new(SoftwareArray::open(&cfg, vec![]).await.unwrap());
    let p = pair(0, 1);
    a.pair_set(&p).await.unwrap();
    a.replicate(&p, &sync_opts()).await.unwrap();
    a.separate(&p, &sep_opts()).await.unwrap();
    a.set_copy_pace(BLOCK);
    // A writer appending 4 KiB records inside block 0 every 20 ms (at most 1,000 of them).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (a, stop) = (a.clone(), stop.clone());
        async move {
            for i in 0..1_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let offset = (i % 16) * 4096;
                a.write("h", 0, offset, &pattern(i, 4096)).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    });
    let o = ReplicateOptions {
        wait_timeout_ms: Some(10_000),
        ..Default::default()
    };
    let replicated = a.replicate(&p, &o).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let info = a.pair_query(&p).await.unwrap();
    assert_eq!(
        info.state.sync,
        SyncState::RplSync,
        "one block a second against a writer of one block: still {} with {} blocks left after 10 s ({replicated:?})",
        info.state,
        info.copy_diff_blocks
    );
}
