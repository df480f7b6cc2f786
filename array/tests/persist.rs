//! Metadata survives restarts; interrupted copies resume; corrupt metadata stops the array.

mod common;

use common::*;
use stillpoint_array::*;

fn lds() -> Vec<LdConfig> {
    vec![
        ld(0, CAP, "NX"),
        ld(1, CAP, "NX"),
        ld(2, CAP, "NX"),
        ld(3, CAP, "NX"),
    ]
}

#[tokio::test]
async fn restart_keeps_pair_states_differences_and_resumes_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let slow = config(dir.path(), "A", lds(), 128 * 1024);
    let image = pattern(42, CAP as usize);
    {
        let a = SoftwareArray::open(&slow, vec![]).await.unwrap();
        // Pair 0->1: separated with MV and RV differences.
        a.pair_set(&pair(0, 1)).await.unwrap();
        // Pair 2->3: replicate interrupted mid-copy.
        a.pair_set(&pair(2, 3)).await.unwrap();
        a.write("h", 2, 0, &image).await.unwrap();
        a.replicate(&pair(2, 3), &ReplicateOptions::default())
            .await
            .unwrap();
        // Pair 0->1 is interrupted too.
        a.replicate(&pair(0, 1), &ReplicateOptions::default())
            .await
            .unwrap();
        eventually("copy of 2->3 underway", || async {
            let p = a.pair_query(&pair(2, 3)).await.unwrap();
            p.copied_blocks > 0 && p.copy_diff_blocks > 0
        })
        .await;
        a.close().await.unwrap();
    }
    let fast_cfg = config(dir.path(), "A", lds(), 0);
    let a = SoftwareArray::open(&fast_cfg, vec![])
        .await
        .expect("reopen");
    let p = a
        .wait(&pair(2, 3), WaitCondition::Sync, WAIT_MS)
        .await
        .expect("copy resumes");
    assert_eq!(p.state.sync, SyncState::RplSync);
    let o = SeparateOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    a.separate(&pair(2, 3), &o).await.unwrap();
    assert_eq!(
        crc(&read_all(&a, 3, CAP).await),
        crc(&image),
        "RV complete after resume"
    );
    // Separated pair with differences survives a restart with its difference counts.
    a.wait(&pair(0, 1), WaitCondition::Sync, WAIT_MS)
        .await
        .unwrap();
    a.separate(&pair(0, 1), &o).await.unwrap();
    a.write("h", 0, 0, b"mv").await.unwrap();
    a.write("h", 1, BLOCK * 5, b"rv").await.unwrap();
    a.close().await.unwrap();
    drop(a);
    let a = SoftwareArray::open(&fast_cfg, vec![])
        .await
        .expect("reopen again");
    let p = a.pair_query(&pair(0, 1)).await.unwrap();
    assert_eq!(p.state.sync, SyncState::Separated);
    assert_eq!(p.separate_diff_blocks, 1);
    let o = ReplicateOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    let p = a.replicate(&pair(0, 1), &o).await.unwrap();
    assert_eq!(
        p.copied_blocks, 2,
        "MV block 0 and the RV's block 5 survived the restart"
    );
    let roles = a.ld_list().await.unwrap();
    assert!(matches!(
        roles[1].role,
        LdRole::Rv {
            access: RvAccess::Nr,
            ..
        }
    ));
}

#[tokio::test]
async fn corrupt_metadata_stops_the_array_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "A", lds(), 0);
    {
        let a = SoftwareArray::open(&cfg, vec![]).await.unwrap();
        a.pair_set(&pair(0, 1)).await.unwrap();
        a.close().await.unwrap();
    }
    {
        let db = sled::open(cfg.data_dir.join("meta")).unwrap();
        let t = db.open_tree("pairs").unwrap();
        let key = t.iter().next().unwrap().unwrap().0;
        t.insert(key, &b"{\"garbage\": tru"[..]).unwrap();
        db.flush().unwrap();
    }
    let e = SoftwareArray::open(&cfg, vec![])
        .await
        .err()
        .expect("must refuse to start");
    assert!(matches!(e, ArrayError::CorruptMetadata { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("pairs/A:0->A:1") && msg.contains("meta"),
        "{msg}"
    );
}

#[tokio::test]
async fn ld_file_of_the_wrong_size_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "A", lds(), 0);
    drop(SoftwareArray::open(&cfg, vec![]).await.unwrap());
    let mut bigger = cfg.clone();
    bigger.lds[0].capacity_bytes = CAP * 2;
    let e = SoftwareArray::open(&bigger, vec![])
        .await
        .err()
        .expect("size mismatch");
    assert!(
        matches!(e, ArrayError::Config { .. }) && e.to_string().contains("ld-0.img"),
        "{e}"
    );
}
