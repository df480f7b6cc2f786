//! A harness for cluster-level tests: real agents, in this process, talking gRPC on loopback.
//!
//! Each agent gets a port chosen by the OS and its own data dir under one temporary dir, so
//! tests run in parallel without colliding. Raft timings are shortened so elections happen in
//! well under a second; every wait is on a condition with a generous bound (the CI machine is a
//! loaded 2-core box), never a fixed sleep.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use stillpoint_coordinator::{ClusterState, Command, NodeRecord, Response, Role};
use stillpoint_node::config::{ClusterSection, NodeConfig, RaftTuning};
use stillpoint_node::{Client, NodeError, RunningAgent};
use stillpoint_proto::cluster::{
    AddMemberRequest, InitRequest, MemberRequest, MembershipReply, StatusReply, StatusRequest,
};

/// Bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

/// Raft timings for tests: fast elections, still far above loopback latency.
pub fn fast_raft() -> RaftTuning {
    RaftTuning {
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 500,
        election_timeout_max_ms: 1000,
        ..RaftTuning::default()
    }
}

/// A set of agents under one temporary dir. Slot `i` holds node id `i + 1`.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<NodeConfig>,
    pub agents: Vec<Option<RunningAgent>>,
    pub tuning: RaftTuning,
}

impl TestCluster {
    /// Starts `n` agents (not yet a cluster).
    pub async fn start(n: usize, tuning: RaftTuning) -> TestCluster {
        let dir = tempfile::tempdir().expect("temporary dir");
        let mut cluster = TestCluster {
            dir,
            configs: Vec::new(),
            agents: Vec::new(),
            tuning,
        };
        for _ in 0..n {
            cluster.add_agent().await;
        }
        cluster
    }

    /// Starts one more agent with the next node id; returns its slot.
    pub async fn add_agent(&mut self) -> usize {
        let slot = self.configs.len();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local addr").to_string();
        let config = NodeConfig {
            node_id: slot as u64 + 1,
            name: format!("agent{}", slot + 1),
            listen: address,
            advertise: None,
            data_dir: self.data_dir(slot),
            roles: BTreeSet::from([Role::ALL[slot % 3]]),
            cluster_id: None,
            cluster: ClusterSection::default(),
            raft: self.tuning.clone(),
            arrays: Vec::new(),
            host: None,
            loaded_from: None,
        };
        stillpoint_node::agent::init_data_dir(&config)
            .await
            .expect("a new data dir");
        let agent = stillpoint_node::start(config.clone(), listener)
            .await
            .expect("agent starts");
        self.configs.push(config);
        self.agents.push(Some(agent));
        slot
    }

    pub fn data_dir(&self, slot: usize) -> PathBuf {
        self.dir.path().join(format!("agent{}", slot + 1))
    }

    pub fn address(&self, slot: usize) -> String {
        self.configs[slot].listen.clone()
    }

    pub fn agent(&self, slot: usize) -> &RunningAgent {
        self.agents[slot].as_ref().expect("agent is running")
    }

    /// Slots of the agents that are running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.agents.len())
            .filter(|i| self.agents[*i].is_some())
            .collect()
    }

    /// A client that starts at the first running agent.
    pub fn client(&self) -> Client {
        Client::new(self.address(self.running()[0]))
    }

    /// Bootstraps the first `voters` agents as the cluster's voters, through the client API.
    pub async fn init(&self, voters: usize) -> String {
        let addresses: Vec<String> = (0..voters).map(|i| self.address(i)).collect();
        let reply = Client::new(self.address(0))
            .on_endpoint("init", |mut c| {
                let member_addresses = addresses.clone();
                async move {
                    c.init(InitRequest {
                        member_addresses,
                        cluster_id: String::new(),
                    })
                    .await
                }
            })
            .await
            .expect("cluster init");
        reply.cluster_id
    }

    /// Waits until every running agent agrees on one leader among the running agents; returns
    /// the leader's slot.
    pub async fn leader(&self) -> usize {
        let running = self.running();
        stillpoint_node::wait::until("a leader every running agent agrees on", WAIT, || {
            let leaders: BTreeSet<Option<u64>> = running
                .iter()
                .map(|i| self.agent(*i).raft().metrics().borrow().current_leader)
                .collect();
            let agreed = match leaders.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(id)] => running
                    .iter()
                    .copied()
                    .find(|i| self.configs[*i].node_id == *id),
                _ => None,
            };
            async move { agreed }
        })
        .await
        .expect("leader elected")
    }

    /// Waits until the agent in `slot` has applied at least `index`.
    pub async fn wait_applied(&self, slot: usize, index: u64) {
        let raft = self.agent(slot).raft().clone();
        stillpoint_node::wait::until(
            &format!("agent{} to apply index {index}", slot + 1),
            WAIT,
            || {
                let applied = raft
                    .metrics()
                    .borrow()
                    .last_applied
                    .map(|l| l.index)
                    .unwrap_or(0);
                async move { (applied >= index).then_some(()) }
            },
        )
        .await
        .expect("caught up")
    }

    /// Waits until every running agent's registry lists `n` live agents.
    pub async fn wait_registered(&self, n: usize) {
        for slot in self.running() {
            let state = self.agent(slot).context.state.clone();
            stillpoint_node::wait::until(
                &format!("agent{} to see {n} registered agents", slot + 1),
                WAIT,
                || {
                    let count = state.read(|s| {
                        s.nodes
                            .values()
                            .filter(|r| r.deregistered_at_ms.is_none())
                            .count()
                    });
                    async move { (count == n).then_some(()) }
                },
            )
            .await
            .expect("registered");
        }
    }

    /// The replicated state as the agent in `slot` has applied it.
    pub fn state(&self, slot: usize) -> ClusterState {
        self.agent(slot).context.state.read(|s| s.clone())
    }

    /// Proposes one real command (an idempotent re-registration of agent 1, so the state
    /// stays meaningful) and returns the log index it committed at.
    pub async fn write(&self, client: &Client, stamp_ms: u64) -> Result<u64, NodeError> {
        let record = NodeRecord {
            node_id: 1,
            name: self.configs[0].name.clone(),
            address: self.address(0),
            roles: self.configs[0].roles.clone(),
            version: stillpoint_node::agent::VERSION.to_string(),
            registered_at_ms: stamp_ms,
            deregistered_at_ms: None,
        };
        match client.propose(&Command::RegisterNode(record)).await? {
            (Response::Refused { rule }, _) => Err(NodeError::Refused(rule)),
            (_, index) => Ok(index),
        }
    }

    /// Stops the agent in `slot` (graceful: as SIGTERM would).
    pub async fn stop(&mut self, slot: usize) {
        let agent = self.agents[slot].take().expect("agent is running");
        agent.shutdown().await.expect("clean shutdown");
    }

    /// Starts the agent in `slot` again from its data dir, on its old address.
    pub async fn restart(&mut self, slot: usize) {
        let config = self.configs[slot].clone();
        // The old process's sockets and data-dir lock may take a moment to be released.
        let agent = stillpoint_node::wait::until("the agent to start again", WAIT, || {
            let config = config.clone();
            async move {
                let listener = stillpoint_node::agent::bind(&config).await.ok()?;
                stillpoint_node::start(config, listener).await.ok()
            }
        })
        .await
        .expect("agent restarts");
        self.agents[slot] = Some(agent);
    }

    pub async fn status(&self, slot: usize, consistent: bool) -> Result<StatusReply, NodeError> {
        Client::new(self.address(slot))
            .on_leader("status", |mut c| async move {
                c.status(StatusRequest { consistent }).await
            })
            .await
    }

    pub async fn add_member(
        &self,
        slot: usize,
        promote: bool,
    ) -> Result<MembershipReply, NodeError> {
        self.adding_member(slot, promote, self.client()).await
    }

    /// Adds the agent in `slot` through `client`, without borrowing the cluster (to run it
    /// on a task of its own while the cluster changes).
    pub fn adding_member(
        &self,
        slot: usize,
        promote: bool,
        client: Client,
    ) -> impl std::future::Future<Output = Result<MembershipReply, NodeError>> + Send + 'static
    {
        let address = self.address(slot);
        async move {
            client
                .on_leader("add member", |mut c| {
                    let address = address.clone();
                    async move { c.add_member(AddMemberRequest { address, promote }).await }
                })
                .await
        }
    }

    pub async fn promote(&self, node_id: u64) -> Result<MembershipReply, NodeError> {
        self.client()
            .on_leader("promote", |mut c| async move {
                c.promote_member(MemberRequest { node_id }).await
            })
            .await
    }

    pub async fn remove(&self, node_id: u64) -> Result<MembershipReply, NodeError> {
        self.client()
            .on_leader("remove", |mut c| async move {
                c.remove_member(MemberRequest { node_id }).await
            })
            .await
    }

    /// Voter and learner ids as the agent in `slot` sees the membership.
    pub fn membership(&self, slot: usize) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let m = self
            .agent(slot)
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<u64> = m.voter_ids().collect();
        let learners = m.learner_ids().filter(|id| !voters.contains(id)).collect();
        (voters, learners)
    }

    /// Stops every agent.
    pub async fn shutdown(mut self) {
        for slot in 0..self.agents.len() {
            if self.agents[slot].is_some() {
                self.stop(slot).await;
            }
        }
    }
}

/// Registry entries by id, for comparing replicas.
pub fn registry(state: &ClusterState) -> BTreeMap<u64, (String, String)> {
    state
        .nodes
        .iter()
        .map(|(id, r)| (*id, (r.name.clone(), r.address.clone())))
        .collect()
}
