//! A running agent: raft node, gRPC server, self-registration, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stillpoint_coordinator::{
    ClusterState, Command, Member, NodeId, NodeRecord, Raft, Response, TypeConfig,
};
use stillpoint_proto::cluster::cluster_server::ClusterServer;
use stillpoint_proto::raft::raft_peer_server::RaftPeerServer;
use stillpoint_storage::{DataDirIdentity, StateMachineStore, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::cluster_service::ClusterService;
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::peer::{ClusterIdentity, PeerNetworkFactory, PeerService};

/// The version every agent reports in the registry.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a proposal may wait for commit before its outcome is reported as unknown.
pub const PROPOSE_TIMEOUT_MS: u64 = crate::deadlines::PROPOSE_MS;

/// Longest an agent whose raft stopped spends stopping (resuming quiesced volumes, finishing
/// requests in flight) before it exits anyway.
const FATAL_SHUTDOWN_TIMEOUT_MS: u64 = 20_000;

/// How often an agent re-checks that its registry record is current.
const REGISTRATION_CHECK_MS: u64 = 1_000;

/// The state every service of one agent shares.
pub struct AgentContext {
    pub config: NodeConfig,
    pub raft: Raft,
    /// Read access to the applied replicated state, for queries.
    pub state: StateMachineStore<TypeConfig, ClusterState>,
    pub identity: Arc<ClusterIdentity>,
}

impl AgentContext {
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The raft metrics as this agent may report them (no leader once raft has stopped).
    pub fn metrics(&self) -> openraft::RaftMetrics<NodeId, Member> {
        crate::raft_health::visible_metrics(&self.raft)
    }

    /// The refusal a follower gives for a request only the leader can serve.
    pub fn not_leader(&self) -> NodeError {
        let metrics = self.metrics();
        let leader_id = metrics.current_leader;
        let leader_addr = leader_id.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        NodeError::NotLeader {
            leader_id,
            leader_addr,
        }
    }

    /// Whether this agent currently believes it leads.
    pub fn is_leader(&self) -> bool {
        self.metrics().current_leader == Some(self.node_id())
    }

    /// The record this agent registers for itself.
    pub fn own_record(&self) -> NodeRecord {
        NodeRecord {
            node_id: self.config.node_id,
            name: self.config.name.clone(),
            address: self.config.advertised_address(),
            roles: self.config.roles.clone(),
            version: VERSION.to_string(),
            registered_at_ms: now_ms(),
            deregistered_at_ms: None,
        }
    }

    /// Proposes `command` on this agent, which must be the leader; waits for it to apply.
    pub async fn propose_local(&self, command: Command) -> Result<(Response, u64), NodeError> {
        let write = tokio::time::timeout(
            Duration::from_millis(PROPOSE_TIMEOUT_MS),
            self.raft.client_write(command),
        );
        match write.await {
            Err(_) => Err(NodeError::outcome_unknown(format!(
                "the proposal did not commit within {PROPOSE_TIMEOUT_MS} ms"
            ))),
            Ok(Ok(reply)) => Ok((reply.data, reply.log_id.index)),
            Ok(Err(e)) => Err(self.client_write_error(e)),
        }
    }

    /// Maps openraft's write errors onto ours, turning ForwardToLeader into a leader hint.
    pub fn client_write_error(
        &self,
        e: openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, Member>>,
    ) -> NodeError {
        use openraft::error::{ClientWriteError, RaftError};
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
                leader_id: f.leader_id,
                leader_addr: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                NodeError::Invalid(c.to_string())
            }
            RaftError::Fatal(f) => NodeError::RaftStopped {
                cause: f.to_string(),
            },
        }
    }
}

/// This agent's wall clock, ms since the Unix epoch: stamps of records and of times shown
/// (in a test build, moved by the fault switches' clock step; see
/// [`stillpoint_host::switches`]). Never used to time anything out within the agent's life:
/// see [`LeadClock`].
pub fn now_ms() -> u64 {
    stillpoint_host::switches::wall_unix_ms()
}

/// A leader's clock: the wall clock read once when its lead began, advanced since by the
/// machine's boot clock. A wall-clock step during the lead (NTP, an operator) then neither
/// expires every step's deadline at once nor stretches them, and the stamps one leader puts
/// on a job's timeline never run backwards. A new leader reads the wall clock afresh (and
/// probes every step a predecessor left out, whatever its deadline said).
#[derive(Clone, Copy, Debug)]
pub struct LeadClock {
    wall_at_start_ms: u64,
    boot_at_start_ms: u64,
}

impl LeadClock {
    pub fn start() -> LeadClock {
        LeadClock {
            wall_at_start_ms: now_ms(),
            boot_at_start_ms: stillpoint_host::switches::monotonic_ms(),
        }
    }

    /// Now, in wall-clock ms as of the lead's start.
    pub fn now_ms(&self) -> u64 {
        let since_ms =
            stillpoint_host::switches::monotonic_ms().saturating_sub(self.boot_at_start_ms);
        self.wall_at_start_ms.saturating_add(since_ms)
    }
}

/// A started agent. Dropping it without [`RunningAgent::shutdown`] aborts nothing: call
/// shutdown to stop it gracefully.
pub struct RunningAgent {
    pub context: Arc<AgentContext>,
    /// The address the gRPC server is bound to (useful when the config asked for port 0).
    pub local_addr: SocketAddr,
    /// The host half, when `[host]` is configured (its watchdogs live as long as it does).
    pub host: Option<Arc<stillpoint_host::Agent>>,
    /// Array LDs attached as loop devices (linux host); detached by a graceful stop.
    lds: Option<Arc<crate::hba::HbaLink>>,
    /// The step executor this agent serves.
    pub executor: Arc<crate::executor::Executor>,
    shutdown_tx: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    registration: JoinHandle<()>,
    /// Forgets the journal's records of jobs the history dropped ([`crate::executor::retention`]).
    retention: JoinHandle<()>,
    /// Drives jobs while this agent leads ([`crate::driver`]).
    driver: JoinHandle<()>,
}

impl RunningAgent {
    pub fn raft(&self) -> &Raft {
        &self.context.raft
    }

    pub fn node_id(&self) -> NodeId {
        self.context.node_id()
    }

    /// Resumes every volume this agent holds quiesced, then stops serving, stops raft and
    /// flushes the data dir.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        // Steps cut short now are reported interrupted after the restart (their records say
        // begun, no outcome); ending them first lets nothing act on a volume being resumed.
        self.executor.stop();
        if let Some(host) = &self.host {
            resume_before_exit(host.as_ref()).await;
        }
        // The LD path process keeps serving: the host's file systems on array LDs do not
        // depend on the agent (`stillpoint hba stop` takes them away).
        if let Some(lds) = &self.lds {
            lds.stop_keeping();
        }
        let _ = self.shutdown_tx.send(true);
        self.registration.abort();
        self.retention.abort();
        self.driver.abort();
        // Wait until the tasks are gone: they hold handles on the data dir that a restart
        // reopens.
        let _ = self.registration.await;
        let _ = self.retention.await;
        let _ = self.driver.await;
        let served = self.server.await;
        self.context
            .raft
            .shutdown()
            .await
            .map_err(|e| NodeError::Raft(format!("raft did not stop cleanly: {e}")))?;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Raft(format!("gRPC server failed: {e}"))),
            Err(e) => Err(NodeError::Raft(format!("gRPC server task failed: {e}"))),
        }
    }
}

impl RunningAgent {
    /// Stops an agent whose raft core has already stopped: as [`RunningAgent::shutdown`], but
    /// bounded, since requests in flight may wait on the dead core; problems are only logged,
    /// the caller reports the fatal error itself.
    pub async fn shutdown_after_fatal(self) {
        let bound = Duration::from_millis(FATAL_SHUTDOWN_TIMEOUT_MS);
        match tokio::time::timeout(bound, self.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "while stopping after the fatal error"),
            Err(_) => tracing::warn!(
                timeout_ms = FATAL_SHUTDOWN_TIMEOUT_MS,
                "stopping after the fatal error took too long; exiting anyway"
            ),
        }
    }
}

/// S4: nobody will release a quiesce this agent holds once it has stopped, and its watchdogs
/// stop with it, so a graceful stop resumes every quiesced volume first (a crash is covered by
/// the journal: the next start resumes them).
async fn resume_before_exit(host: &dyn stillpoint_host::Host) {
    let held = match host.quiesces().await {
        Ok(held) => held,
        Err(e) => {
            tracing::error!(error = %e, "cannot list quiesced volumes before exit; the next start resumes them");
            return;
        }
    };
    for q in held {
        match host.release(&q.volume, Some(q.quiesce_id)).await {
            Ok(r) => {
                tracing::warn!(volume = %r.volume, held_ms = r.held_ms, owner = %q.owner, "resumed a quiesced volume because the agent is stopping")
            }
            Err(e) => {
                tracing::error!(volume = %q.volume, error = %e, "cannot resume the volume before exit; the next start resumes it")
            }
        }
    }
}

/// Binds the configured listen address. Done before the data dir is touched, so a port in use
/// changes nothing on disk.
pub async fn bind(config: &NodeConfig) -> Result<TcpListener, NodeError> {
    TcpListener::bind(&config.listen)
        .await
        .map_err(|source| NodeError::Listen {
            address: config.listen.clone(),
            source,
        })
}

/// Starts an agent on an already bound listener.
pub async fn start(config: NodeConfig, listener: TcpListener) -> Result<RunningAgent, NodeError> {
    config.validate().map_err(|message| NodeError::Config {
        path: "node config".into(),
        message,
    })?;
    let local_addr = listener.local_addr().map_err(|source| NodeError::Listen {
        address: config.listen.clone(),
        source,
    })?;
    // The data dir must already be this node's own: checked before sled opens (and writes) it.
    let own = open_data_dir(&config).await?;
    let store = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| NodeError::Raft(format!("opening the data dir failed: {e}")))??
    };
    let store = Arc::new(store);
    let cluster_id = own.cluster_id.clone().or_else(|| config.cluster_id.clone());
    let identity = Arc::new(ClusterIdentity::new(
        config.node_id,
        own.incarnation,
        cluster_id,
        config.data_dir.clone(),
    ));
    // One journal for the agent: the host half's quiesces and the step executor's records.
    let journal = store.journal().map_err(stillpoint_host::HostError::from)?;
    let (host, lds) = match crate::volumes::start(&config, journal.clone()).await? {
        Some(h) => (Some(h.agent), h.lds),
        None => (None, None),
    };
    let log_store = store.log_store::<TypeConfig>()?;
    let state = store.state_machine_store::<TypeConfig, ClusterState>()?;
    let raft_config = Arc::new(config.openraft_config()?);
    let network = PeerNetworkFactory {
        identity: identity.clone(),
        retry_after: std::time::Duration::from_millis(raft_config.heartbeat_interval),
    };
    let raft = Raft::new(
        config.node_id,
        raft_config,
        network,
        log_store,
        state.clone(),
    )
    .await
    .map_err(|e| NodeError::Raft(format!("cannot start raft: {e}")))?;
    tracing::info!(node_id = config.node_id, name = %config.name, address = %local_addr, data_dir = %config.data_dir.display(), incarnation = %format!("{:016x}", own.incarnation), "agent started");

    let context = Arc::new(AgentContext {
        config,
        raft: raft.clone(),
        state,
        identity: identity.clone(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let peer = RaftPeerServer::new(PeerService::new(raft, identity, context.state.clone()))
        .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES);
    let cluster = ClusterServer::new(ClusterService::new(context.clone()))
        .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES);
    let executor = crate::executor::Executor::new(
        context.clone(),
        journal,
        host.clone().map(|h| h as Arc<dyn stillpoint_host::Host>),
    );
    let mut server_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .timeout(Duration::from_millis(
                crate::deadlines::SERVER_REQUEST_CAP_MS,
            ))
            .add_service(peer)
            .add_service(cluster)
            .add_service(executor.clone().into_server())
            .add_optional_service(
                host.clone()
                    .map(|h| stillpoint_host::HostService::new(h).into_server()),
            )
            // Nagle's algorithm with delayed ACKs adds ~40 ms to every small request/response;
            // the builder's tcp_nodelay applies only to listeners tonic binds itself.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = server_shutdown.wait_for(|stop| *stop).await;
                },
            ),
    );
    let registration = tokio::spawn(keep_registered(context.clone(), shutdown_rx.clone()));
    let retention = tokio::spawn(crate::executor::retention::run(
        executor.clone(),
        shutdown_rx.clone(),
    ));
    let driver = tokio::spawn(crate::driver::run(context.clone(), shutdown_rx));
    Ok(RunningAgent {
        context,
        local_addr,
        host,
        lds,
        executor,
        shutdown_tx,
        server,
        registration,
        retention,
        driver,
    })
}

/// The explicit act that makes a brand-new node (`stillpoint agent --new`): creates the data dir
/// if needed and stamps it for this node id with a fresh random incarnation. A dir already
/// stamped for this node is left as it is (returns `false`), so a supervisor that keeps passing
/// `--new` restarts the same node; a dir of another node or cluster, or a database without an
/// identity, is refused with nothing written.
pub async fn init_data_dir(config: &NodeConfig) -> Result<(DataDirIdentity, bool), NodeError> {
    // Zero is never drawn, so an envelope without an incarnation can never match one.
    let incarnation = rand::random::<u64>().max(1);
    let (dir, node_id, cluster_id) = (
        config.data_dir.clone(),
        config.node_id,
        config.cluster_id.clone(),
    );
    let (identity, created) = tokio::task::spawn_blocking(move || {
        stillpoint_storage::data_dir::create(&dir, node_id, cluster_id.as_deref(), incarnation)
    })
    .await
    .map_err(|e| NodeError::Raft(format!("creating the data dir failed: {e}")))??;
    if created {
        tracing::info!(data_dir = %config.data_dir.display(), %identity, "created a new data dir");
    } else {
        tracing::info!(data_dir = %config.data_dir.display(), %identity, "the data dir already belongs to this node; --new changes nothing");
    }
    Ok((identity, created))
}

/// Reads the data dir's identity and decides, without writing anything, whether this agent may
/// use it: it must exist and be stamped for this node (and cluster, when configured).
async fn open_data_dir(config: &NodeConfig) -> Result<DataDirIdentity, NodeError> {
    let (dir, node_id, cluster_id) = (
        config.data_dir.clone(),
        config.node_id,
        config.cluster_id.clone(),
    );
    let checked = tokio::task::spawn_blocking(move || {
        let state = stillpoint_storage::data_dir::inspect(&dir)?;
        stillpoint_storage::data_dir::check(&dir, &state, node_id, cluster_id.as_deref())
    })
    .await
    .map_err(|e| NodeError::Raft(format!("reading the data dir failed: {e}")))??;
    Ok(checked)
}

/// Runs an agent until `shutdown` completes (mini-redis style: the caller owns the signal), or
/// until its raft core stops on a fatal error: then the agent stops and the error names the
/// cause ([`NodeError::RaftStopped`]), for the process to exit non-zero.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let listener = bind(&config).await?;
    run_on(config, listener, shutdown).await
}

/// [`run`] on an already bound listener.
pub async fn run_on(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let agent = start(config, listener).await?;
    let raft = agent.raft().clone();
    let mut removed = agent.context.identity.removed_signal();
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down");
            agent.shutdown().await
        }
        cause = crate::raft_health::stopped(raft) => {
            tracing::error!(%cause, "raft stopped on a fatal error; stopping the agent so that a supervisor restarts it");
            agent.shutdown_after_fatal().await;
            Err(NodeError::RaftStopped { cause })
        }
        told = removed.wait_for(|r| r.is_some()) => {
            let by = told.ok().and_then(|r| r.clone()).unwrap_or_else(|| "a member".into());
            tracing::error!(%by, "this node was removed from the cluster; stopping its raft role and exiting");
            agent.shutdown().await?;
            Err(NodeError::Removed { by })
        }
    }
}

/// Keeps this agent's registry record current: registers once the agent is a member and a
/// leader is known, and again only when something changed (its name, address, roles or version,
/// or the membership it sees). A proposal answered by the cluster, accepted or refused, is not
/// repeated for the same record and membership: a removed or never-admitted agent is refused
/// once and then stays quiet instead of adding a log entry every second. An unanswered one
/// (leader unreachable, timeout) is retried with backoff: registering is idempotent.
async fn keep_registered(ctx: Arc<AgentContext>, mut shutdown: watch::Receiver<bool>) {
    let mut delay_ms = REGISTRATION_CHECK_MS;
    // The record (without its time stamp) and membership of the last answered proposal.
    let mut answered: Option<(NodeRecord, Option<openraft::LogId<NodeId>>)> = None;
    let mut said_removed = false;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
        }
        let me = ctx.own_record();
        let (current, removed) = ctx.state.read(|s| match s.nodes.get(&me.node_id) {
            Some(r) => (r.same_as(&me), r.deregistered_at_ms.is_some()),
            None => (false, false),
        });
        if current {
            delay_ms = REGISTRATION_CHECK_MS;
            continue;
        }
        if removed {
            if !said_removed {
                tracing::error!(
                    node_id = me.node_id,
                    "this node was removed from the cluster; it does not register again: stop it, or add the server again under a new node_id"
                );
                said_removed = true;
            }
            continue;
        }
        let metrics = ctx.raft.metrics().borrow().clone();
        let key = (
            NodeRecord {
                registered_at_ms: 0,
                ..me.clone()
            },
            *metrics.membership_config.log_id(),
        );
        if answered.as_ref() == Some(&key) {
            continue;
        }
        let Some(leader) = metrics.current_leader else {
            continue;
        };
        if metrics
            .membership_config
            .membership()
            .get_node(&me.node_id)
            .is_none()
        {
            continue;
        }
        let result = if leader == me.node_id {
            ctx.propose_local(Command::RegisterNode(me.clone()))
                .await
                .map(|(r, _)| r)
        } else {
            match metrics.membership_config.membership().get_node(&leader) {
                Some(node) => {
                    crate::client::propose_at(&node.addr, &Command::RegisterNode(me.clone())).await
                }
                None => continue,
            }
        };
        match result {
            Ok(Response::Refused { rule }) => {
                tracing::error!(%rule, "the cluster refused this agent's registration; not proposed again until node.toml or the membership changes");
                answered = Some(key);
                delay_ms = REGISTRATION_CHECK_MS;
            }
            Ok(_) => {
                tracing::info!(name = %me.name, "registered in the cluster registry");
                answered = Some(key);
                delay_ms = REGISTRATION_CHECK_MS;
            }
            Err(e) => {
                tracing::debug!(error = %e, "registration not done yet; will retry");
                delay_ms = (delay_ms * 2).min(10_000);
            }
        }
    }
}
