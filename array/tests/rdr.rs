//! RDR pairs between two in-process software arrays joined by a link.

mod common;

use std::sync::Arc;

use common::*;
use stillpoint_array::*;

fn lds() -> Vec<LdConfig> {
    (0..6).map(|n| ld(n, CAP, "NX")).collect()
}

async fn two(dir: &std::path::Path, latency_ms: u64) -> (SoftwareArray, SoftwareArray) {
    let b = SoftwareArray::open(&config(dir, "B", lds(), 0), vec![])
        .await
        .unwrap();
    let peer = PeerHandle {
        name: "B".into(),
        array: Arc::new(b.clone()),
        link: Arc::new(Link::new(latency_ms, 0)),
    };
    let a = SoftwareArray::open(&config(dir, "A", lds(), 0), vec![peer])
        .await
        .unwrap();
    (a, b)
}

fn replicate_with(cc: CopyControl) -> ReplicateOptions {
    ReplicateOptions {
        copy_control: cc,
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    }
}

fn sep() -> SeparateOptions {
    SeparateOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    }
}

#[tokio::test]
async fn remote_pair_in_each_copy_mode_carries_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two(dir.path(), 1).await;
    for (n, cc) in [
        (0u32, CopyControl::Sync),
        (1, CopyControl::SemiSync),
        (2, CopyControl::Background),
    ] {
        let p = rdr(n, n);
        let s = a.pair_set(&p).await.unwrap();
        assert_eq!(s.kind, PairKind::Rdr);
        let img = pattern(n as u64, CAP as usize);
        a.write("h", n, 0, &img).await.unwrap();
        a.replicate(&p, &replicate_with(cc)).await.unwrap();
        for i in 0..20u64 {
            a.write("h", n, i * 9000, &pattern(100 + i, 700))
                .await
                .unwrap();
        }
        let s = a.separate(&p, &sep()).await.unwrap();
        assert_eq!(s.state.sync, SyncState::Separated, "{cc:?}");
        assert_eq!(
            crc(&read_all(&b, n, CAP).await),
            crc(&read_all(&a, n, CAP).await),
            "{cc:?}: RV on B equals MV on A"
        );
    }
    assert!(matches!(
        b.ld_list().await.unwrap()[0].role,
        LdRole::Rv {
            access: RvAccess::Rw,
            ..
        }
    ));
    // rvuse immediate is DDR-only here; restore works across the link.
    a.replicate(&rdr(0, 0), &replicate_with(CopyControl::Sync))
        .await
        .unwrap();
    let o = SeparateOptions {
        rv_use: RvUse::Immediate,
        ..Default::default()
    };
    let e = a.separate(&rdr(0, 0), &o).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::RvuseImmediateDdrOnly), "{e}");
    a.separate(&rdr(0, 0), &sep()).await.unwrap();
    let img = pattern(77, CAP as usize);
    b.write("h", 0, 0, &img).await.unwrap();
    let o = RestoreOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    let s = a.restore(&rdr(0, 0), &o).await.unwrap();
    assert_eq!(
        s.state.sync,
        SyncState::Separated,
        "protect separates by itself"
    );
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&img));
}

#[tokio::test]
async fn semi_sync_never_exceeds_its_backlog() {
    let dir = tempfile::tempdir().unwrap();
    // 20 ms per crossing keeps the engine behind the writer.
    let (a, b) = two(dir.path(), 20).await;
    let p = rdr(0, 0);
    a.pair_set(&p).await.unwrap();
    a.replicate(&p, &replicate_with(CopyControl::SemiSync))
        .await
        .unwrap();
    let mut max_seen = 0;
    for i in 0..40u64 {
        a.write("h", 0, (i % 30) * BLOCK + 17, &pattern(i, 100))
            .await
            .unwrap();
        let q = a.pair_query(&p).await.unwrap();
        max_seen = max_seen.max(q.copy_diff_blocks);
        assert!(
            q.copy_diff_blocks <= 4,
            "backlog {} > 4",
            q.copy_diff_blocks
        );
    }
    let q = a.pair_query(&p).await.unwrap();
    assert!(q.backlog_high_water_blocks <= 4);
    assert!(max_seen > 0, "the backlog was used at all");
    a.separate(&p, &sep()).await.unwrap();
    assert_eq!(
        crc(&read_all(&b, 0, CAP).await),
        crc(&read_all(&a, 0, CAP).await)
    );
}

#[tokio::test]
async fn link_down_suspends_writes_accumulate_and_replicate_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two(dir.path(), 0).await;
    let p = rdr(0, 0);
    a.pair_set(&p).await.unwrap();
    a.replicate(&p, &replicate_with(CopyControl::Sync))
        .await
        .unwrap();
    a.inject_fault(&Fault::LinkDown { peer: "B".into() })
        .await
        .unwrap();
    let s = a.pair_query(&p).await.unwrap();
    assert!(
        s.state.abnormal_suspend && s.state.sync == SyncState::RplSync,
        "{:?}",
        s.state
    );
    assert!(!a.info().await.unwrap().links[0].up);
    // MV writes go on and accumulate.
    let img = pattern(5, CAP as usize / 2);
    a.write("h", 0, 0, &img).await.unwrap();
    let s = a.pair_query(&p).await.unwrap();
    assert_eq!(s.copy_diff_blocks, CAP / BLOCK / 2);
    let e = a.wait(&p, WaitCondition::Sync, WAIT_MS).await.unwrap_err();
    assert!(
        matches!(e, ArrayError::WrongState { .. }),
        "suspended: sync is unreachable: {e}"
    );
    let e = a
        .replicate(&p, &replicate_with(CopyControl::Sync))
        .await
        .unwrap_err();
    // Typed: the array answered, and names the link, so a caller fails at once instead of
    // taking it for an array it could not reach.
    assert!(
        matches!(
            &e,
            ArrayError::PeerUnreachable { array, peer, .. } if array == "A" && peer == "B"
        ),
        "{e}"
    );
    a.inject_fault(&Fault::LinkUp { peer: "B".into() })
        .await
        .unwrap();
    let s = a
        .replicate(&p, &replicate_with(CopyControl::Sync))
        .await
        .unwrap();
    assert_eq!(
        (s.state.sync, s.state.abnormal_suspend),
        (SyncState::RplSync, false)
    );
    a.separate(&p, &sep()).await.unwrap();
    assert_eq!(
        crc(&read_all(&b, 0, CAP).await),
        crc(&read_all(&a, 0, CAP).await)
    );
    // A link fault during a background copy suspends it too; forced separate still works.
    a.replicate(
        &p,
        &ReplicateOptions {
            range: CopyRange::Whole,
            ..replicate_with(CopyControl::Background)
        },
    )
    .await
    .unwrap();
    a.write("h", 0, 0, b"x").await.unwrap();
    a.inject_fault(&Fault::LinkDown { peer: "B".into() })
        .await
        .unwrap();
    a.write("h", 0, BLOCK * 3, b"y").await.unwrap();
    assert!(a.pair_query(&p).await.unwrap().state.abnormal_suspend);
    assert_eq!(
        a.forced_separate(&p).await.unwrap().state.sync,
        SyncState::Cancel
    );
}

#[tokio::test]
async fn rdr_pairing_rules() {
    let dir = tempfile::tempdir().unwrap();
    let c = SoftwareArray::open(&config(dir.path(), "C", lds(), 0), vec![])
        .await
        .unwrap();
    let b = SoftwareArray::open(&config(dir.path(), "B", lds(), 0), vec![])
        .await
        .unwrap();
    let mut a_lds = lds();
    a_lds.push(ld(9, CAP * 2, "NX"));
    let peers = vec![
        PeerHandle {
            name: "B".into(),
            array: Arc::new(b.clone()),
            link: Arc::new(Link::new(0, 0)),
        },
        PeerHandle {
            name: "C".into(),
            array: Arc::new(c.clone()),
            link: Arc::new(Link::new(0, 0)),
        },
    ];
    let a = SoftwareArray::open(&config(dir.path(), "A", a_lds, 0), peers)
        .await
        .unwrap();
    for rv in 1..=3 {
        a.pair_set(&pair(0, rv)).await.unwrap();
    }
    a.pair_set(&rdr(0, 0)).await.unwrap();
    let e = a.pair_set(&rdr(0, 1)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::MaxRvsPerMv), "{e}");
    a.pair_unset(&pair(0, 3)).await.unwrap();
    let to_c = PairId {
        mv: LdRef {
            array: "A".into(),
            ld: 0,
        },
        rv: LdRef {
            array: "C".into(),
            ld: 0,
        },
    };
    let e = a.pair_set(&to_c).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::MaxArraysPerMv), "{e}");
    let e = a
        .pair_set(&PairId {
            mv: LdRef {
                array: "A".into(),
                ld: 9,
            },
            rv: LdRef {
                array: "B".into(),
                ld: 1,
            },
        })
        .await
        .unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::SameCapacity), "{e}");
    // B:0 is an RV already; it cannot be the RV of another MV.
    let e = a.pair_set(&rdr(4, 0)).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::OneRolePerLd), "{e}");
    let e = a
        .pair_set(&PairId {
            mv: LdRef {
                array: "A".into(),
                ld: 4,
            },
            rv: LdRef {
                array: "Z".into(),
                ld: 0,
            },
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ArrayError::NotFound { .. }), "{e}");
}

/// An RDR pair's RV lives on the peer array: that array records the copy's head when the
/// separate opens the RV to hosts.
#[tokio::test]
async fn a_remote_rv_has_its_head_recorded_on_its_own_array_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let mut b_cfg = config(dir.path(), "B", lds(), 0);
    b_cfg.audit_log = true;
    b_cfg.audit_rv_head_bytes = 1024;
    let b = SoftwareArray::open(&b_cfg, vec![]).await.unwrap();
    let peer = PeerHandle {
        name: "B".into(),
        array: Arc::new(b.clone()),
        link: Arc::new(Link::new(0, 0)),
    };
    let a = SoftwareArray::open(&config(dir.path(), "A", lds(), 0), vec![peer])
        .await
        .unwrap();
    let p = rdr(0, 3);
    a.pair_set(&p).await.unwrap();
    a.write("h", 0, 0, &pattern(9, 4096)).await.unwrap();
    a.replicate(&p, &replicate_with(CopyControl::Sync))
        .await
        .unwrap();
    a.separate(&p, &sep()).await.unwrap();
    a.write("h", 0, 0, &pattern(10, 4096)).await.unwrap();
    drop(a);
    drop(b);
    let text = std::fs::read_to_string(dir.path().join("B").join("audit.log")).expect("B's log");
    let heads: Vec<(u32, Option<Vec<u8>>)> = text
        .lines()
        .map(|l| serde_json::from_str::<AuditLine>(l).expect("line"))
        .filter_map(|l| match &l.event {
            AuditEvent::RvOpened { ld, .. } => Some((*ld, l.event.rv_head())),
            _ => None,
        })
        .collect();
    assert_eq!(heads, vec![(3, Some(pattern(9, 4096)[..1024].to_vec()))]);
}
