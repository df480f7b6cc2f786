//! A restarted agent finds exactly what it stored: reopen the data dir and compare.
//! Damaged bytes surface as errors naming the record, never as a panic or an empty store.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Kv, KvResponse, TestConfig, blank, log_id, set};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{Entry, Membership, RaftLogReader, RaftSnapshotBuilder, StoredMembership, Vote};
use stillpoint_storage::{Error, LogStore, StateMachineStore, Store};

fn log_store(store: &Store) -> LogStore<TestConfig> {
    store.log_store().expect("open the log store")
}

fn state_machine(store: &Store) -> StateMachineStore<TestConfig, Kv> {
    store
        .state_machine_store()
        .expect("open the state machine store")
}

fn indexes(entries: &[Entry<TestConfig>]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

fn membership_entry(term: u64, index: u64, voters: &[u64]) -> Entry<TestConfig> {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(term, index),
        payload: openraft::EntryPayload::Membership(Membership::new(vec![voters], None)),
    }
}

/// Writes `value` under `key` in one of the store's trees, as a damaged disk would.
fn damage(dir: &Path, tree: &str, key: &[u8], value: &[u8]) {
    let store = Store::open(dir).expect("open to damage");
    let tree = store.db().open_tree(tree).expect("open tree");
    tree.insert(key, value).expect("write damage");
    store.db().flush().expect("flush damage");
}

#[tokio::test]
async fn reopened_log_store_has_vote_entries_committed_and_purge_point() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut log = log_store(&store);
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        log.blocking_append((1..=10).map(|i| set(2, i, &format!("k{i}"), "v")))
            .await
            .unwrap();
        log.save_committed(Some(log_id(2, 7))).await.unwrap();
        log.purge(log_id(2, 3)).await.unwrap();
        log.truncate(log_id(2, 9)).await.unwrap();
    }

    let store = Store::open(dir.path()).unwrap();
    let mut log = log_store(&store);
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 2))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 7)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)));
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(indexes(&entries), vec![4, 5, 6, 7, 8]);
    assert_eq!(entries[0], set(2, 4, "k4", "v"));
}

#[tokio::test]
async fn log_keeps_order_across_byte_boundaries_and_limits_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut log = log_store(&store);
    // 255 → 256 changes the low byte's carry: big-endian keys must still sort numerically.
    log.blocking_append((250..=260).map(|i| blank(1, i)))
        .await
        .unwrap();
    let entries = log.try_get_log_entries(250..=260).await.unwrap();
    assert_eq!(indexes(&entries), (250..=260).collect::<Vec<_>>());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 260)));
    // sled panics on an inverted range; the store must answer "nothing" instead.
    let inverted = 300..std::hint::black_box(200);
    assert!(log.try_get_log_entries(inverted).await.unwrap().is_empty());

    // A far-behind follower is fed in slices: a bounded, non-empty, gap-free prefix.
    log.blocking_append((261..=6000).map(|i| blank(1, i)))
        .await
        .unwrap();
    let slice = log.limited_get_log_entries(250, 6001).await.unwrap();
    assert!(
        !slice.is_empty() && slice.len() < 5751,
        "{} entries",
        slice.len()
    );
    assert_eq!(
        indexes(&slice),
        (250..250 + slice.len() as u64).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn purging_everything_keeps_the_purge_point_as_last_log_id() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut log = log_store(&store);
        log.blocking_append((1..=5).map(|i| blank(1, i)))
            .await
            .unwrap();
        log.purge(log_id(1, 5)).await.unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let mut log = log_store(&store);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 5)));
    assert_eq!(state.last_log_id, Some(log_id(1, 5)));
    assert!(log.try_get_log_entries(0..10).await.unwrap().is_empty());
}

#[tokio::test]
async fn reopened_state_machine_starts_from_its_snapshot_and_writes_nothing_per_apply() {
    let dir = tempfile::tempdir().unwrap();
    let responses = {
        let store = Store::open(dir.path()).unwrap();
        let mut sm = state_machine(&store);
        let responses = sm
            .apply(vec![
                blank(1, 1),
                membership_entry(1, 2, &[1, 2, 3]),
                set(1, 3, "a", "1"),
            ])
            .await
            .unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut after = sm.apply(vec![set(1, 4, "a", "2")]).await.unwrap();
        // A second handle from the same Store sees the same state (one in-memory copy).
        let again = state_machine(&store);
        assert_eq!(again.last_applied(), Some(log_id(1, 4)));
        let mut all = responses;
        all.append(&mut after);
        all
    };
    assert_eq!(
        responses,
        vec![
            KvResponse::NoCommand,
            KvResponse::NoCommand,
            KvResponse::Previous(None),
            KvResponse::Previous(Some("1".into()))
        ]
    );

    // Reopened: the state is the snapshot's (entry 4 is re-applied from the log by openraft,
    // which `single_node` checks end to end).
    let store = Store::open(dir.path()).unwrap();
    let mut sm = state_machine(&store);
    assert_eq!(sm.last_applied(), Some(log_id(1, 3)));
    assert_eq!(
        sm.read(|kv| kv.map.get("a").cloned()),
        Some("1".to_string())
    );
    assert_eq!(sm.read(|kv| kv.commands_applied), 1);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(
        membership,
        StoredMembership::new(
            Some(log_id(1, 2)),
            Membership::new(vec![BTreeSet::from([1, 2, 3])], None)
        )
    );
    // Re-applying entry 4 gives the state before the restart.
    sm.apply(vec![set(1, 4, "a", "2")]).await.unwrap();
    assert_eq!(
        sm.read(|kv| kv.map.get("a").cloned()),
        Some("2".to_string())
    );
}

#[tokio::test]
async fn built_and_installed_snapshots_survive_restart() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let built = {
        let store = Store::open(leader_dir.path()).unwrap();
        let mut sm = state_machine(&store);
        sm.apply(vec![membership_entry(1, 1, &[1]), set(1, 2, "x", "42")])
            .await
            .unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 2)));

    {
        let store = Store::open(leader_dir.path()).unwrap();
        let mut sm = state_machine(&store);
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("snapshot kept");
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
    }

    {
        let store = Store::open(follower_dir.path()).unwrap();
        let mut sm = state_machine(&store);
        sm.apply(vec![set(1, 1, "stale", "yes")]).await.unwrap();
        let mut receiving = sm.begin_receiving_snapshot().await.unwrap();
        *receiving = *built.snapshot.clone();
        sm.install_snapshot(&built.meta, receiving).await.unwrap();
        assert_eq!(
            sm.read(|kv| kv.map.get("stale").cloned()),
            None,
            "install replaces the state"
        );
    }
    let store = Store::open(follower_dir.path()).unwrap();
    let mut sm = state_machine(&store);
    assert_eq!(sm.last_applied(), Some(log_id(1, 2)));
    assert_eq!(
        sm.read(|kv| kv.map.get("x").cloned()),
        Some("42".to_string())
    );
    let current = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("installed snapshot kept");
    assert_eq!(current.meta, built.meta);
}

#[tokio::test]
async fn snapshot_whose_data_contradicts_its_meta_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut sm = state_machine(&store);
    sm.apply(vec![set(1, 1, "a", "1")]).await.unwrap();
    let mut snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    snapshot.meta.last_log_id = Some(log_id(1, 9));
    let err = sm
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(sm.last_applied(), Some(log_id(1, 1)), "state untouched");
}

#[tokio::test]
async fn a_legacy_whole_state_record_is_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut sm = state_machine(&store);
        sm.apply(vec![set(1, 1, "a", "1"), set(1, 2, "b", "2")])
            .await
            .unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    // What an earlier stillpoint wrote after each apply: not read any more.
    damage(
        dir.path(),
        "raft/state_machine",
        b"state",
        b"{\"stale\": true}",
    );
    let store = Store::open(dir.path()).unwrap();
    let sm = state_machine(&store);
    assert_eq!(sm.last_applied(), Some(log_id(1, 2)));
    assert_eq!(sm.read(|kv| kv.map.len()), 2);
    let tree = store.db().open_tree("raft/state_machine").unwrap();
    assert!(
        tree.get("state").unwrap().is_none(),
        "legacy record removed"
    );
}

#[test]
fn second_open_is_refused_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn unusable_dir_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[tokio::test]
async fn damaged_log_entry_vote_and_state_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut log = log_store(&store);
        log.blocking_append((1..=3).map(|i| blank(1, i)))
            .await
            .unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        state_machine(&store)
            .apply(vec![set(1, 1, "a", "1")])
            .await
            .unwrap();
    }
    damage(dir.path(), "raft/log", &2u64.to_be_bytes(), b"{not json");
    damage(dir.path(), "raft/log_meta", b"vote", b"\xff\xfe");
    damage(
        dir.path(),
        "raft/state_machine",
        b"snapshot",
        b"\x00\x00\x00\x02[]",
    );

    let store = Store::open(dir.path()).unwrap();
    let mut log = log_store(&store);
    let err = log.try_get_log_entries(1..=3).await.unwrap_err();
    assert!(
        err.to_string().contains("index 2") && err.to_string().contains("corrupt"),
        "{err}"
    );
    let err = log.read_vote().await.unwrap_err();
    assert!(err.to_string().contains("vote"), "{err}");
    let err = store.state_machine_store::<TestConfig, Kv>().unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn entry_stored_under_the_wrong_index_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        log_store(&store)
            .blocking_append([blank(1, 1)])
            .await
            .unwrap();
    }
    let moved = serde_json::to_vec(&blank(1, 1)).unwrap();
    damage(dir.path(), "raft/log", &5u64.to_be_bytes(), &moved);
    let store = Store::open(dir.path()).unwrap();
    let err = log_store(&store).get_log_state().await.unwrap_err();
    assert!(err.to_string().contains("index 5"), "{err}");
}

#[test]
fn asking_for_the_state_machine_with_other_types_is_refused() {
    #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
    struct Other;
    impl stillpoint_storage::StateMachineData<TestConfig> for Other {
        fn apply(
            &mut self,
            _: &openraft::LogId<u64>,
            _: &openraft::Membership<u64, openraft::BasicNode>,
            _: &common::KvCommand,
        ) -> KvResponse {
            KvResponse::NoCommand
        }
        fn response_for_non_command(_: &openraft::LogId<u64>) -> KvResponse {
            KvResponse::NoCommand
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let _kv = state_machine(&store);
    let err = store
        .state_machine_store::<TestConfig, Other>()
        .unwrap_err();
    assert!(matches!(err, Error::WrongTypes { .. }), "{err}");
}

#[tokio::test]
async fn large_state_and_snapshot_beyond_sleds_blob_threshold_survive_restart() {
    // sled keeps values over ~128 KiB in separate blob files; they must round-trip too.
    let dir = tempfile::tempdir().unwrap();
    let big = "b".repeat(400 * 1024);
    let built = {
        let store = Store::open(dir.path()).unwrap();
        let mut sm = state_machine(&store);
        sm.apply(vec![set(1, 1, "big", &big)]).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };
    assert!(built.snapshot.get_ref().len() > 400 * 1024);
    let store = Store::open(dir.path()).unwrap();
    let mut sm = state_machine(&store);
    assert_eq!(
        sm.read(|kv| kv.map.get("big").map(String::len)),
        Some(big.len())
    );
    let current = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot kept");
    assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
}

#[tokio::test]
async fn damaged_snapshot_is_reported_when_the_state_machine_opens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut sm = state_machine(&store);
        sm.apply(vec![set(1, 1, "a", "1")]).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    // A length prefix announcing more meta than there is.
    damage(
        dir.path(),
        "raft/state_machine",
        b"snapshot",
        &[0, 0, 1, 0, b'{'],
    );
    let store = Store::open(dir.path()).unwrap();
    let err = store.state_machine_store::<TestConfig, Kv>().unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("snapshot"), "{err}");
}
