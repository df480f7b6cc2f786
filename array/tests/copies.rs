//! Point-in-time business copies on the software array: instant images, attach/detach/delete,
//! copy to parent, copy writes, the rules, restarts, and the same through a served array.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use stillpoint_array::*;

fn lds() -> Vec<LdConfig> {
    let mut v: Vec<LdConfig> = (0..6).map(|n| ld(n, CAP, "NX")).collect();
    v.push(ld(6, CAP * 2, "NX"));
    v.push(ld(7, CAP, "WN"));
    v
}

async fn array(dir: &std::path::Path, pace: u64) -> SoftwareArray {
    SoftwareArray::open(&config(dir, "A", lds(), pace), vec![])
        .await
        .expect("open array")
}

async fn copy_of(a: &dyn Array, copy: u32) -> CopyInfo {
    a.copy_list()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.copy.ld == copy)
        .expect("copy listed")
}

fn copy_state_of(e: &ArrayError) -> Option<&str> {
    match e {
        ArrayError::CopyWrongState { state, .. } => Some(state),
        _ => None,
    }
}

/// 2 MiB at 256 KiB/s: a full background fill takes about 8 s, long enough to act mid-copy.
const SLOW: u64 = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_attached_gives_the_instant_image_while_the_parent_keeps_changing() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(array(dir.path(), SLOW).await);
    let image = pattern(1, CAP as usize);
    a.write("h", 0, 0, &image).await.unwrap();

    let t = Instant::now();
    let c = a.copy_create(0, 1, true).await.expect("create attached");
    let took = t.elapsed();
    assert_eq!(c.state, CopyState::Attached);
    assert!(c.point_in_time_unix_ms.is_some());
    assert!(
        c.parent_ref_blocks > 16,
        "nothing much copied yet, the copy points at the parent: {c:?}"
    );
    assert!(took < Duration::from_secs(5), "create took {took:?}");
    assert_eq!(crc(&read_all(&*a, 1, CAP).await), crc(&image));

    // The parent keeps changing, in partial blocks too, while the copy is read over and over.
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..64u64 {
                let off = (i * 7919 * 13) % (CAP - 5000);
                a.write("h", 0, off, &pattern(100 + i, 5000)).await.unwrap();
            }
        })
    };
    while !writer.is_finished() {
        assert_eq!(crc(&read_all(&*a, 1, CAP).await), crc(&image));
    }
    writer.await.unwrap();
    assert_ne!(crc(&read_all(&*a, 0, CAP).await), crc(&image));
    eventually("background fill to finish", || async {
        let c = copy_of(&*a, 1).await;
        c.parent_ref_blocks == 0 && c.last_op.is_some_and(|l| l.ended_unix_ms.is_some())
    })
    .await;
    let c = copy_of(&*a, 1).await;
    assert!(c.differ_blocks > 0, "{c:?}");
    assert!(c.last_op.unwrap().ended_unix_ms.is_some());
    assert_eq!(crc(&read_all(&*a, 1, CAP).await), crc(&image));

    // Creation does not depend on the LD's size: 1 GiB, nothing moves at create time.
    let big = tempfile::tempdir().unwrap();
    let cfg = config(
        big.path(),
        "A",
        vec![ld(0, 1 << 30, "NX"), ld(1, 1 << 30, "NX")],
        SLOW,
    );
    let b = SoftwareArray::open(&cfg, vec![]).await.unwrap();
    b.write("h", 0, (1 << 30) - 4, b"tail").await.unwrap();
    let t = Instant::now();
    let c = b.copy_create(0, 1, true).await.unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "1 GiB create took {took:?}");
    assert!(c.parent_ref_blocks > 16_000, "{c:?}");
    assert_eq!(b.read("h", 1, (1 << 30) - 4, 4).await.unwrap(), b"tail");
    b.close().await.unwrap();
    a.close().await.unwrap();
}

#[tokio::test]
async fn copy_writes_are_independent_of_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), SLOW).await;
    let image = pattern(2, CAP as usize);
    a.write("h", 0, 0, &image).await.unwrap();
    a.copy_create(0, 1, true).await.unwrap();

    // A partial write to a block still on the parent pulls the rest of the block in.
    let off = BLOCK * 20 + 100;
    a.write("h", 1, off, b"copy side").await.unwrap();
    let mut expect = image.clone();
    expect[off as usize..off as usize + 9].copy_from_slice(b"copy side");
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&expect));
    assert_eq!(
        crc(&read_all(&a, 0, CAP).await),
        crc(&image),
        "the parent does not see copy writes"
    );
    // And the parent's writes do not reach the copy.
    a.write("h", 0, off, b"parent side").await.unwrap();
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&expect));
    let c = copy_of(&a, 1).await;
    assert_eq!(c.differ_blocks, 1, "{c:?}");
    eventually("fill to finish", || async {
        copy_of(&a, 1).await.parent_ref_blocks == 0
    })
    .await;
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&expect));
    a.close().await.unwrap();
}

#[tokio::test]
async fn detach_attach_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), 0).await;
    a.write("h", 1, 0, b"old plain data").await.unwrap();
    let image = pattern(3, CAP as usize);
    a.write("h", 0, 0, &image).await.unwrap();

    // Created detached: the LD keeps its number, holds nothing and refuses I/O.
    let c = a.copy_create(0, 1, false).await.unwrap();
    assert_eq!(c.state, CopyState::Detached);
    assert_eq!(c.point_in_time_unix_ms, None);
    let e = a.read("h", 1, 0, 10).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::CopyAccess), "{e}");
    assert!(e.to_string().contains("detached"), "{e}");
    let e = a.write("h", 1, 0, b"x").await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::CopyAccess), "{e}");
    let lds = a.ld_list().await.unwrap();
    assert_eq!(lds[0].copy_role, CopyRole::Parent { copies: 1 });
    assert_eq!(
        lds[1].copy_role,
        CopyRole::Copy {
            parent: 0,
            state: CopyState::Detached
        }
    );

    // Attach makes the copy; attaching again re-snapshots the parent of that instant.
    let c = a.copy_attach(1).await.unwrap();
    assert_eq!(c.state, CopyState::Attached);
    let first_pit = c.point_in_time_unix_ms.unwrap();
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&image));
    let second = pattern(4, CAP as usize);
    a.write("h", 0, 0, &second).await.unwrap();
    a.write("h", 1, 0, b"scribble").await.unwrap();
    assert_eq!(crc(&read_all(&a, 1, CAP).await[8..]), crc(&image[8..]));
    let c = a.copy_attach(1).await.unwrap();
    assert!(c.point_in_time_unix_ms.unwrap() >= first_pit);
    assert_eq!(c.differ_blocks, 0);
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&second));

    // Detach discards; the state is named when an operation needs another.
    let c = a.copy_detach(1).await.unwrap();
    assert_eq!(c.state, CopyState::Detached);
    let e = a.read("h", 1, 0, 10).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::CopyAccess), "{e}");
    let e = a.copy_detach(1).await.unwrap_err();
    assert_eq!(copy_state_of(&e), Some("detached"), "{e}");
    assert!(e.to_string().contains("A:1 is detached"), "{e}");
    let e = a.copy_to_parent(1, None).await.unwrap_err();
    assert_eq!(copy_state_of(&e), Some("detached"), "{e}");
    // The parent is untouched by all of it.
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&second));

    // Delete ends the relationship: a plain, empty LD again.
    a.copy_delete(1).await.unwrap();
    assert!(a.copy_list().await.unwrap().is_empty());
    assert_eq!(read_all(&a, 1, CAP).await, vec![0u8; CAP as usize]);
    a.write("h", 1, 0, b"plain again").await.unwrap();
    let lds = a.ld_list().await.unwrap();
    assert_eq!(lds[0].copy_role, CopyRole::None);
    assert_eq!(lds[1].copy_role, CopyRole::None);
    let e = a.copy_attach(1).await.unwrap_err();
    assert!(matches!(e, ArrayError::NotFound { .. }), "{e}");
    // Create attached + delete: the seed's first way to make and discard copies.
    a.copy_create(0, 1, true).await.unwrap();
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&second));
    a.copy_delete(1).await.unwrap();
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_parent_shows_the_copy_at_once_and_ends_equal() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), SLOW).await;
    let image = pattern(5, CAP as usize);
    a.write("h", 0, 0, &image).await.unwrap();
    // The parent is also the MV of a separated pair: the restore must count as its difference.
    a.pair_set(&pair(0, 2)).await.unwrap();
    a.replicate(&pair(0, 2), &sync_opts()).await.unwrap();
    a.separate(&pair(0, 2), &sep_opts()).await.unwrap();

    a.copy_create(0, 1, true).await.unwrap();
    // The copy is changed on its side; the parent is damaged on its own.
    let fix = pattern(6, (BLOCK * 3) as usize);
    a.write("h", 1, BLOCK * 4 + 10, &fix).await.unwrap();
    let copy_image = read_all(&a, 1, CAP).await;
    a.write("h", 0, 0, &vec![0xEE; (BLOCK * 10) as usize])
        .await
        .unwrap();
    assert_ne!(crc(&read_all(&a, 0, CAP).await), crc(&copy_image));

    let c = a.copy_to_parent(1, None).await.unwrap();
    assert_eq!(c.state, CopyState::CopyingToParent);
    assert!(c.to_parent_blocks >= 10, "{c:?}");
    // Parent reads already see the copy's content.
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&copy_image));
    // The copy is frozen meanwhile; operations that need another state name this one.
    let e = a.read("h", 1, 0, 10).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::CopyAccess), "{e}");
    assert!(e.to_string().contains("copying-to-parent"), "{e}");
    for e in [
        a.copy_attach(1).await.unwrap_err(),
        a.copy_detach(1).await.unwrap_err(),
        a.copy_delete(1).await.unwrap_err(),
        a.copy_to_parent(1, None).await.unwrap_err(),
        a.replicate(&pair(0, 2), &sync_opts()).await.unwrap_err(),
    ] {
        assert_eq!(copy_state_of(&e), Some("copying-to-parent"), "{e}");
    }
    // A parent write during the copy lands on the restored content.
    a.write("h", 0, BLOCK * 30 + 5, b"after restore")
        .await
        .unwrap();
    let mut expect = copy_image.clone();
    expect[(BLOCK * 30 + 5) as usize..(BLOCK * 30 + 18) as usize].copy_from_slice(b"after restore");
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&expect));

    eventually("copy to parent to finish", || async {
        copy_of(&a, 1).await.state == CopyState::Attached
    })
    .await;
    let c = copy_of(&a, 1).await;
    assert_eq!(c.to_parent_blocks, 0);
    assert!(c.last_op.unwrap().ended_unix_ms.is_some());
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&expect));
    assert_eq!(
        crc(&read_all(&a, 1, CAP).await),
        crc(&copy_image),
        "the copy keeps its content"
    );
    // The pair's next differential replicate carries the restore to its RV.
    a.replicate(&pair(0, 2), &sync_opts()).await.unwrap();
    a.separate(&pair(0, 2), &sep_opts()).await.unwrap();
    assert_eq!(crc(&read_all(&a, 2, CAP).await), crc(&expect));

    // With a wait, the call returns once the parent holds the copy's content.
    a.write("h", 0, 0, b"damage again").await.unwrap();
    let c = a.copy_to_parent(1, Some(WAIT_MS)).await.unwrap();
    assert_eq!(c.state, CopyState::Attached);
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&copy_image));
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&copy_image));
    a.close().await.unwrap();
}

#[tokio::test]
async fn a_second_copy_keeps_its_image_while_a_sibling_is_copied_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), SLOW).await;
    let monday = pattern(7, CAP as usize);
    a.write("h", 0, 0, &monday).await.unwrap();
    a.copy_create(0, 1, true).await.unwrap();
    let tuesday = pattern(8, CAP as usize);
    a.write("h", 0, 0, &tuesday).await.unwrap();
    a.copy_create(0, 3, true).await.unwrap();
    a.copy_to_parent(1, None).await.unwrap();
    // Copy 3 cannot be remade while its parent is half restored.
    let e = a.copy_attach(3).await.unwrap_err();
    assert_eq!(copy_state_of(&e), Some("copying-to-parent"), "{e}");
    assert_eq!(crc(&read_all(&a, 3, CAP).await), crc(&tuesday));
    eventually("copy back to finish", || async {
        copy_of(&a, 1).await.state == CopyState::Attached
    })
    .await;
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&monday));
    assert_eq!(crc(&read_all(&a, 3, CAP).await), crc(&tuesday));
    a.close().await.unwrap();
}

#[tokio::test]
async fn every_refusal_names_its_rule() {
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), 0).await;
    let refused = |r: Result<CopyInfo>, rule: Rule| {
        let e = r.unwrap_err();
        assert_eq!(rule_of(&e), Some(rule), "{e}");
        assert!(e.to_string().contains(&rule.to_string()), "{e}");
    };
    refused(a.copy_create(0, 6, true).await, Rule::SameCapacity);
    refused(a.copy_create(0, 7, true).await, Rule::SameFormat);
    refused(a.copy_create(0, 0, true).await, Rule::OneRolePerLd);
    let e = a.copy_create(0, 99, true).await.unwrap_err();
    assert!(matches!(e, ArrayError::NotFound { .. }), "{e}");

    a.copy_create(0, 1, true).await.unwrap();
    // A copy belongs to one parent and is never a parent itself.
    refused(a.copy_create(2, 1, true).await, Rule::OneRolePerLd);
    refused(a.copy_create(1, 2, true).await, Rule::NoCopyOfCopy);
    // A copy has no pair role; a parent is never an RV.
    for p in [pair(1, 2), pair(2, 1)] {
        let e = a.pair_set(&p).await.unwrap_err();
        assert_eq!(rule_of(&e), Some(Rule::OneRolePerLd), "{e}");
    }
    let e = a.pair_set(&pair(2, 0)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::CopyParentNotRv), "{e}");
    // ... and the other way round: pair roles first, then copies.
    a.pair_set(&pair(2, 3)).await.unwrap();
    refused(a.copy_create(3, 4, true).await, Rule::CopyParentNotRv);
    refused(a.copy_create(4, 3, true).await, Rule::OneRolePerLd);
    refused(a.copy_create(4, 2, true).await, Rule::OneRolePerLd);
    // The parent may be an MV; then a pair that is not separated blocks a copy to the parent,
    // and an attached copy blocks a pair restore.
    a.pair_set(&pair(0, 4)).await.unwrap();
    a.replicate(&pair(0, 4), &sync_opts()).await.unwrap();
    refused(
        a.copy_to_parent(1, None).await,
        Rule::CopyToParentNeedsSeparatedPairs,
    );
    a.separate(&pair(0, 4), &sep_opts()).await.unwrap();
    let e = a
        .restore(&pair(0, 4), &RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        rule_of(&e),
        Some(Rule::PairRestoreNeedsDetachedCopies),
        "{e}"
    );
    a.copy_detach(1).await.unwrap();
    let o = RestoreOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    a.restore(&pair(0, 4), &o)
        .await
        .expect("detached copies allow it");
    a.close().await.unwrap();
}

#[tokio::test]
async fn restart_mid_fill_and_mid_copy_back_resumes_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let slow = config(dir.path(), "A", lds(), SLOW);
    let image = pattern(9, CAP as usize);
    let copy_image;
    let pit;
    {
        let a = SoftwareArray::open(&slow, vec![]).await.unwrap();
        a.write("h", 0, 0, &image).await.unwrap();
        pit = a
            .copy_create(0, 1, true)
            .await
            .unwrap()
            .point_in_time_unix_ms;
        a.write("h", 1, BLOCK * 31 + 3, b"copy write")
            .await
            .unwrap();
        eventually("fill underway", || async {
            let c = copy_of(&a, 1).await;
            c.parent_ref_blocks < 28
        })
        .await;
        // Parent writes after some blocks were filled lazily: block 0 is filled, block 30 not.
        a.write("h", 0, 10, b"parent after fill").await.unwrap();
        a.write("h", 0, BLOCK * 30, b"parent before fill")
            .await
            .unwrap();
        copy_image = read_all(&a, 1, CAP).await;
        let mut expect = image.clone();
        expect[(BLOCK * 31 + 3) as usize..(BLOCK * 31 + 13) as usize]
            .copy_from_slice(b"copy write");
        assert_eq!(crc(&copy_image), crc(&expect));
        assert!(copy_of(&a, 1).await.parent_ref_blocks > 0);
        a.close().await.unwrap();
    }
    {
        let a = SoftwareArray::open(&slow, vec![]).await.expect("reopen");
        let c = copy_of(&a, 1).await;
        assert_eq!(c.state, CopyState::Attached);
        assert_eq!(c.point_in_time_unix_ms, pit);
        assert!(c.parent_ref_blocks > 0, "{c:?}");
        assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&copy_image));
        // Interrupt a copy back too.
        a.copy_to_parent(1, None).await.unwrap();
        a.close().await.unwrap();
    }
    let fast = config(dir.path(), "A", lds(), 0);
    let a = SoftwareArray::open(&fast, vec![])
        .await
        .expect("reopen fast");
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&copy_image));
    eventually("copy back and fill to finish after restart", || async {
        let c = copy_of(&a, 1).await;
        c.state == CopyState::Attached && c.parent_ref_blocks == 0
    })
    .await;
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&copy_image));
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&copy_image));
    a.close().await.unwrap();
    drop(a);

    // A damaged copy record stops the array instead of forgetting the copy.
    {
        let db = sled::open(fast.data_dir.join("meta")).unwrap();
        let t = db.open_tree("copies").unwrap();
        t.insert("1", &b"{\"parent\": 0, \"cop"[..]).unwrap();
        db.flush().unwrap();
    }
    let e = SoftwareArray::open(&fast, vec![])
        .await
        .err()
        .expect("must refuse to start");
    assert!(matches!(e, ArrayError::CorruptMetadata { .. }), "{e}");
    assert!(e.to_string().contains("copies/1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_copies_through_a_served_array() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        config(dir.path(), "A", lds(), SLOW),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let a: Arc<dyn Array> = Arc::new(RemoteArray::connect(&addr).await.expect("connect"));
    let image = pattern(10, CAP as usize);
    a.write("h", 0, 0, &image).await.unwrap();
    let c = a.copy_create(0, 1, true).await.unwrap();
    assert_eq!(c.copy.to_string(), "A:1");
    a.write("h", 0, 0, &pattern(11, CAP as usize))
        .await
        .unwrap();
    assert_eq!(crc(&read_all(&*a, 1, CAP).await), crc(&image));
    let e = a.copy_create(0, 6, true).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::SameCapacity), "{e}");
    let c = a.copy_to_parent(1, Some(WAIT_MS)).await.unwrap();
    assert_eq!(c.state, CopyState::Attached);
    assert_eq!(crc(&read_all(&*a, 0, CAP).await), crc(&image));
    a.copy_detach(1).await.unwrap();
    let e = a.copy_detach(1).await.unwrap_err();
    assert_eq!(copy_state_of(&e), Some("detached"), "{e}");
    let e = a.read("h", 1, 0, 1).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::CopyAccess), "{e}");
    a.copy_attach(1).await.unwrap();
    assert_eq!(
        a.ld_list().await.unwrap()[1].copy_role,
        CopyRole::Copy {
            parent: 0,
            state: CopyState::Attached
        }
    );
    a.copy_delete(1).await.unwrap();
    assert!(a.copy_list().await.unwrap().is_empty());
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn every_copy_state_change_is_on_the_event_stream() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let a = array(dir.path(), 0).await;
    let mut events = a.events().await.unwrap();
    a.copy_create(0, 2, false).await.unwrap();
    a.copy_attach(2).await.unwrap();
    a.copy_detach(2).await.unwrap();
    a.copy_delete(2).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(30), events.next())
            .await
            .expect("an event within 30 s")
            .expect("stream open");
        // The background fill may also report the copy becoming independent of its parent.
        if let Some(c) = ev
            .copy()
            .filter(|c| c.reason != "copy fully independent of its parent")
        {
            assert_eq!((c.array.as_str(), c.copy, c.parent), ("A", 2, 0));
            seen.push((c.reason.clone(), c.state));
        }
    }
    assert_eq!(
        seen,
        vec![
            ("created".to_string(), Some(CopyState::Detached)),
            ("attached".to_string(), Some(CopyState::Attached)),
            ("detached".to_string(), Some(CopyState::Detached)),
            ("deleted".to_string(), None),
        ]
    );
}
