//! The stores under a real openraft node: a one-voter cluster writes, snapshots, purges, stops,
//! and starts again from the same data dir with every command applied exactly once.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Kv, KvCommand, KvResponse, TestConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use stillpoint_storage::{Error, StateMachineStore, Store};

const NODE_ID: u64 = 1;
/// Generous: the CI box is a loaded 2-core machine.
const WAIT_S_MAX: u64 = 30;
const SNAPSHOT_EVERY_LOGS: u64 = 20;

/// A cluster of one voter never sends an RPC; if openraft ever tried, the test should see a
/// network error rather than a pretend success.
struct NoPeers;

fn no_peer<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "a one-node test cluster has no peers",
    )))
}

impl RaftNetworkFactory<TestConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<TestConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(no_peer())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(no_peer())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(no_peer())
    }
}

async fn start(store: &Store) -> (Raft<TestConfig>, StateMachineStore<TestConfig, Kv>) {
    let config = Config {
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_LOGS),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    }
    .validate()
    .expect("valid raft config");
    let log = store.log_store::<TestConfig>().expect("log store");
    let sm = store
        .state_machine_store::<TestConfig, Kv>()
        .expect("state machine store");
    let raft = Raft::new(NODE_ID, Arc::new(config), NoPeers, log, sm.clone())
        .await
        .expect("start raft");
    (raft, sm)
}

/// Opens the data dir again once the previous node has let go of it: openraft's tasks drop
/// their store handles (and so sled's lock) shortly after `shutdown` returns.
async fn reopen(dir: &std::path::Path) -> Store {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_S_MAX);
    loop {
        match Store::open(dir) {
            Ok(store) => return store,
            Err(Error::InUse { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen the data dir: {e}"),
        }
    }
}

async fn write(raft: &Raft<TestConfig>, key: &str, value: &str) -> KvResponse {
    let command = KvCommand {
        key: key.to_string(),
        value: value.to_string(),
    };
    raft.client_write(command).await.expect("client write").data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_recovers_snapshot_log_and_state_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let wait = Some(Duration::from_secs(WAIT_S_MAX));
    let commands: u64 = 45;

    {
        let store = Store::open(dir.path()).unwrap();
        let (raft, sm) = start(&store).await;
        raft.initialize(BTreeMap::from([(NODE_ID, BasicNode::default())]))
            .await
            .expect("initialize");
        raft.wait(wait)
            .current_leader(NODE_ID, "becomes leader")
            .await
            .unwrap();
        for i in 0..commands {
            assert_eq!(
                write(&raft, &format!("k{i}"), "v1").await,
                KvResponse::Previous(None)
            );
        }
        let metrics = raft
            .wait(wait)
            .metrics(
                |m| {
                    m.snapshot.is_some_and(|s| s.index >= SNAPSHOT_EVERY_LOGS) && m.purged.is_some()
                },
                "snapshot built and log purged",
            )
            .await
            .unwrap();
        assert_eq!(sm.read(|kv| kv.commands_applied), commands);
        tracing::info!(?metrics.snapshot, ?metrics.purged, "before restart");
        raft.shutdown().await.expect("shutdown");
    }

    let store = reopen(dir.path()).await;
    let (raft, sm) = start(&store).await;
    raft.wait(wait)
        .current_leader(NODE_ID, "leader again")
        .await
        .unwrap();
    // Whatever was applied but not yet durable is re-applied from the log; nothing twice.
    assert_eq!(sm.read(|kv| kv.commands_applied), commands);
    assert_eq!(sm.read(|kv| kv.map.len() as u64), commands);
    assert_eq!(
        write(&raft, "k0", "v2").await,
        KvResponse::Previous(Some("v1".to_string())),
        "the restarted node serves the recovered state"
    );
    assert_eq!(sm.read(|kv| kv.commands_applied), commands + 1);
    raft.shutdown().await.expect("shutdown");
}
