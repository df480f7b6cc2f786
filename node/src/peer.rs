//! The Raft peer transport over gRPC: the client openraft uses to reach other agents, and the
//! service that receives their messages.
//!
//! Raft's messages travel as openraft's serde encoding inside a [`RaftRequest`] envelope that
//! names the cluster, the sender and the target, each node with its data dir incarnation. The
//! receiver refuses, before openraft sees it, a message
//! - meant for another node id (an address reused by a different agent);
//! - sent by another cluster (two clusters pointed at each other by mistake);
//! - meant for another incarnation of this node: the sender's membership admitted this node id
//!   with a data dir this agent no longer has (a node started anew on an empty disk). Such an
//!   agent must not vote or acknowledge: its promises were lost with its data;
//! - sent by another incarnation of a member than the one this agent's membership records (the
//!   forgetful node campaigning or replicating).
//!
//! A fresh agent that has never belonged to a cluster adopts the cluster id of the first message
//! it receives: that is how a newly added learner learns which cluster it is in. It cannot
//! adopt a cluster that admitted its node id with another incarnation: that message is refused
//! first.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stillpoint_coordinator::{ClusterState, Member, NodeId, Raft, TypeConfig};
use stillpoint_proto::raft::raft_peer_client::RaftPeerClient;
use stillpoint_proto::raft::raft_peer_server::RaftPeer;
use stillpoint_proto::raft::{RaftReply, RaftRequest};
use stillpoint_storage::StateMachineStore;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::error::NodeError;

/// How long a TCP connect to a peer may take before the peer counts as unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// How often a refused raft message is logged per kind of refusal (peers retry several times a
/// second; the first message says all).
const REFUSAL_LOG_EVERY_MS: u64 = 10_000;
/// Metadata key on a refusal telling the sender it was removed from the cluster (its node id).
pub const REMOVED_KEY: &str = "x-stillpoint-removed";

/// This agent's identity as the transport sees it: its node id, its data dir incarnation and,
/// once known, its cluster.
#[derive(Debug)]
pub struct ClusterIdentity {
    pub node_id: NodeId,
    /// The incarnation stamped in this agent's data dir.
    pub incarnation: u64,
    cluster_id: RwLock<Option<String>>,
    /// Where the cluster id is recorded when adopted.
    data_dir: PathBuf,
    /// Serialises adoptions: the first messages of a new cluster arrive concurrently, and the
    /// identity file is replaced through one temporary file.
    adopting: tokio::sync::Mutex<()>,
    /// Set when a member refused this agent's raft message because the cluster removed it:
    /// who said so. The agent stops on it ([`crate::agent::run_on`]).
    removed: tokio::sync::watch::Sender<Option<String>>,
}

impl ClusterIdentity {
    pub fn new(
        node_id: NodeId,
        incarnation: u64,
        cluster_id: Option<String>,
        data_dir: PathBuf,
    ) -> Self {
        ClusterIdentity {
            node_id,
            incarnation,
            cluster_id: RwLock::new(cluster_id),
            data_dir,
            adopting: tokio::sync::Mutex::new(()),
            removed: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Records that `by` told this agent it was removed from the cluster (first report wins).
    pub fn told_removed(&self, by: String) {
        self.removed.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(by);
                true
            } else {
                false
            }
        });
    }

    /// Becomes `Some(who told)` once this agent learns it was removed from the cluster.
    pub fn removed_signal(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.removed.subscribe()
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Joins `cluster_id` if this agent has none yet (recorded in the data dir before it takes
    /// effect, off the async workers); refuses a different one.
    pub async fn adopt(&self, cluster_id: &str) -> Result<(), NodeError> {
        if self.cluster_id().as_deref() == Some(cluster_id) {
            return Ok(());
        }
        let _adopting = self.adopting.lock().await;
        match self.cluster_id().as_deref() {
            Some(mine) if mine == cluster_id => return Ok(()),
            Some(mine) => {
                return Err(NodeError::Refused(format!(
                    "this agent (node {}) belongs to cluster {mine}, not {cluster_id}",
                    self.node_id
                )));
            }
            None => {}
        }
        let (dir, id) = (self.data_dir.clone(), cluster_id.to_string());
        let recorded = tokio::task::spawn_blocking(move || {
            stillpoint_storage::data_dir::record_cluster(&dir, &id)
        })
        .await
        .map_err(|e| NodeError::Raft(format!("recording the cluster id failed: {e}")))??;
        let mut current = self.cluster_id.write().unwrap_or_else(|p| p.into_inner());
        if current.is_none() {
            tracing::info!(cluster_id, "joined cluster");
        }
        *current = recorded.cluster_id;
        Ok(())
    }
}

/// Channels by address, shared by every client in the process: a channel multiplexes requests
/// over one HTTP/2 connection and reconnects by itself, so one per peer is enough.
static CHANNELS: LazyLock<Mutex<HashMap<String, Channel>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The shared channel to `address`, created on first use.
pub fn channel_to(address: &str) -> Result<Channel, NodeError> {
    let mut channels = CHANNELS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(channel) = channels.get(address) {
        return Ok(channel.clone());
    }
    let channel = new_channel(address)?;
    channels.insert(address.to_string(), channel.clone());
    Ok(channel)
}

/// A lazily connecting channel to `address`, with the limits every stillpoint client uses.
fn new_channel(address: &str) -> Result<Channel, NodeError> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| NodeError::Invalid(format!("bad agent address {address:?}: {e}")))?;
    Ok(endpoint
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Creates one [`PeerClient`] per target for openraft.
pub struct PeerNetworkFactory {
    pub identity: Arc<ClusterIdentity>,
    /// How long openraft waits before sending again to a peer that did not answer: the
    /// heartbeat interval. openraft's default (500 ms) let a restarted agent wait for the
    /// leader's first heartbeat past its own first election timeout: it stood for election
    /// with a stale log, was refused, and the "greater log seen" mark that refusal leaves
    /// (kept until its next election) added twice the election timeout to its next election,
    /// the one after the next leader's death.
    pub retry_after: std::time::Duration,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        let client = channel_to(&node.addr).map(|ch| {
            RaftPeerClient::new(ch)
                .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
        });
        PeerClient {
            target,
            target_incarnation: node.incarnation,
            address: node.addr.clone(),
            client: client.map_err(|e| e.to_string()),
            identity: self.identity.clone(),
            retry_after: self.retry_after,
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    target: NodeId,
    /// The incarnation the membership records for the target.
    target_incarnation: u64,
    address: String,
    /// The channel, or why the address could not even be parsed (reported as unreachable).
    client: Result<RaftPeerClient<Channel>, String>,
    identity: Arc<ClusterIdentity>,
    retry_after: std::time::Duration,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        rpc: &Req,
        chunk: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &NodeError::Invalid(e.clone()),
                )));
            }
        };
        let payload =
            serde_json::to_vec(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = Request::new(RaftRequest {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            target_node_id: self.target,
            payload,
            chunk,
            sender_node_id: self.identity.node_id,
            sender_incarnation: self.identity.incarnation,
            target_incarnation: self.target_incarnation,
        });
        let ttl = option.hard_ttl();
        request.set_timeout(ttl);
        let call = async {
            match action {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.identity.node_id,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) => {
                let removed = status
                    .metadata()
                    .get(REMOVED_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<NodeId>().ok());
                if removed == Some(self.identity.node_id) {
                    self.identity
                        .told_removed(format!("node {} at {}", self.target, self.address));
                }
                return Err(self.status_to_rpc_error(status));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                Member::new(&self.address, self.target_incarnation),
                e,
            ))
        })
    }

    fn status_to_rpc_error<E: std::error::Error>(
        &self,
        status: Status,
    ) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
        let err = NodeError::from_status(&self.address, status.clone());
        match status.code() {
            // Not reachable as the member it should be: let openraft back off instead of retrying
            // at full rate.
            Code::Unavailable
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::Unknown => RPCError::Unreachable(Unreachable::new(&err)),
            _ => RPCError::Network(NetworkError::new(&err)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(RPCTypes::AppendEntries, &rpc, Vec::new(), &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let chunk = std::mem::take(&mut rpc.data);
        self.call(RPCTypes::InstallSnapshot, &rpc, chunk, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(RPCTypes::Vote, &rpc, Vec::new(), &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.retry_after))
    }
}

/// Receives other agents' Raft messages and hands them to the local raft node.
pub struct PeerService {
    pub raft: Raft,
    pub identity: Arc<ClusterIdentity>,
    /// The replicated registry, to recognise a sender the cluster removed.
    state: StateMachineStore<TypeConfig, ClusterState>,
    /// When a refusal was last logged, so a peer retrying at heartbeat rate does not flood it.
    last_refusal_logged: Mutex<Option<Instant>>,
}

/// Why a raft message is refused, decided from the envelope and what this agent knows.
#[derive(Debug, PartialEq, Eq)]
pub enum EnvelopeRefusal {
    WrongNode {
        mine: NodeId,
        asked: NodeId,
    },
    NoCluster,
    /// The sender's membership admitted this node id with another data dir.
    NotThisIncarnation {
        node_id: NodeId,
        mine: u64,
        expected: u64,
    },
    /// This agent's membership records another incarnation for the sender.
    SenderIncarnation {
        sender: NodeId,
        recorded: u64,
        sent: u64,
    },
    /// The sender is not in this agent's membership and the registry marks it removed: a
    /// removed member still campaigning. It is told so, and stops.
    SenderRemoved {
        sender: NodeId,
    },
}

impl EnvelopeRefusal {
    fn to_status(&self) -> Status {
        match self {
            EnvelopeRefusal::WrongNode { mine, asked } => Status::failed_precondition(format!(
                "this agent is node {mine}, not node {asked}: the address is configured for another agent"
            )),
            EnvelopeRefusal::NoCluster => {
                Status::invalid_argument("raft message without a cluster id")
            }
            EnvelopeRefusal::NotThisIncarnation {
                node_id,
                mine,
                expected,
            } => Status::failed_precondition(format!(
                "this agent is node {node_id} with data dir incarnation {mine:016x}, but the cluster admitted node {node_id} with incarnation {expected:016x}: its data dir is not the member's (lost, replaced or mistyped); restore the node's own data dir, or remove node {node_id} from the cluster and add this server under a new node_id"
            )),
            EnvelopeRefusal::SenderIncarnation {
                sender,
                recorded,
                sent,
            } => Status::failed_precondition(format!(
                "node {sender} sent incarnation {sent:016x}, but the membership records node {sender} with incarnation {recorded:016x}: that agent is not the member the cluster admitted (its data dir was lost or replaced); remove node {sender} and add it again under a new node_id"
            )),
            EnvelopeRefusal::SenderRemoved { sender } => {
                let mut status = Status::failed_precondition(format!(
                    "node {sender} was removed from the cluster; it must stop (add the server again under a new node_id to bring it back)"
                ));
                if let Ok(v) = sender.to_string().parse() {
                    status.metadata_mut().insert(REMOVED_KEY, v);
                }
                status
            }
        }
    }
}

/// The envelope rules (pure): `membership` is this agent's current view of the members.
pub fn check_envelope(
    req: &RaftRequest,
    me: NodeId,
    my_incarnation: u64,
    membership: &openraft::Membership<NodeId, Member>,
    sender_deregistered: bool,
) -> Result<(), EnvelopeRefusal> {
    if req.target_node_id != me {
        return Err(EnvelopeRefusal::WrongNode {
            mine: me,
            asked: req.target_node_id,
        });
    }
    if req.cluster_id.is_empty() {
        return Err(EnvelopeRefusal::NoCluster);
    }
    if req.target_incarnation != my_incarnation {
        return Err(EnvelopeRefusal::NotThisIncarnation {
            node_id: me,
            mine: my_incarnation,
            expected: req.target_incarnation,
        });
    }
    if sender_deregistered && membership.get_node(&req.sender_node_id).is_none() {
        return Err(EnvelopeRefusal::SenderRemoved {
            sender: req.sender_node_id,
        });
    }
    // A sender this agent does not know yet (it is new here, or this agent is a fresh learner
    // without the membership) cannot be checked; the sender's own check above still holds.
    if let Some(member) = membership.get_node(&req.sender_node_id)
        && member.incarnation != req.sender_incarnation
    {
        return Err(EnvelopeRefusal::SenderIncarnation {
            sender: req.sender_node_id,
            recorded: member.incarnation,
            sent: req.sender_incarnation,
        });
    }
    Ok(())
}

impl PeerService {
    pub fn new(
        raft: Raft,
        identity: Arc<ClusterIdentity>,
        state: StateMachineStore<TypeConfig, ClusterState>,
    ) -> Self {
        PeerService {
            raft,
            identity,
            state,
            last_refusal_logged: Mutex::new(None),
        }
    }

    /// Refuses messages that fail [`check_envelope`]; adopts the cluster of the first message
    /// a fresh agent receives.
    async fn check_envelope(&self, req: &RaftRequest) -> Result<(), Status> {
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let sender_deregistered = self.state.read(|s| {
            s.nodes
                .get(&req.sender_node_id)
                .is_some_and(|r| r.deregistered_at_ms.is_some())
        });
        if let Err(refusal) = check_envelope(
            req,
            self.identity.node_id,
            self.identity.incarnation,
            &membership,
            sender_deregistered,
        ) {
            let status = refusal.to_status();
            self.log_refusal(&status);
            return Err(status);
        }
        self.identity
            .adopt(&req.cluster_id)
            .await
            .map_err(|e| e.to_status())
    }

    fn log_refusal(&self, status: &Status) {
        let mut last = self
            .last_refusal_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_millis(REFUSAL_LOG_EVERY_MS));
        if due {
            *last = Some(Instant::now());
            tracing::error!(reason = %status.message(), "refused a raft message");
        }
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(payload)
        .map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftReply>, Status> {
    let payload = serde_json::to_vec(result)
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(Response::new(RaftReply { payload }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        self.check_envelope(&req).await?;
        let rpc: VoteRequest<NodeId> = decode(&req.payload)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        self.check_envelope(&req).await?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.payload)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        self.check_envelope(&req).await?;
        let mut rpc: InstallSnapshotRequest<TypeConfig> = decode(&req.payload)?;
        rpc.data = req.chunk;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership() -> openraft::Membership<NodeId, Member> {
        let nodes = [(1, Member::new("a:1", 11)), (2, Member::new("b:1", 22))];
        openraft::Membership::new(
            vec![[1, 2].into()],
            nodes
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
    }

    fn request(sender: NodeId, sender_inc: u64, target: NodeId, target_inc: u64) -> RaftRequest {
        RaftRequest {
            cluster_id: "c".into(),
            target_node_id: target,
            payload: Vec::new(),
            chunk: Vec::new(),
            sender_node_id: sender,
            sender_incarnation: sender_inc,
            target_incarnation: target_inc,
        }
    }

    #[test]
    fn a_message_for_or_from_another_incarnation_is_refused() {
        let m = membership();
        assert_eq!(
            check_envelope(&request(1, 11, 2, 22), 2, 22, &m, false),
            Ok(())
        );
        // This agent is node 2 on a new data dir: the cluster admitted incarnation 22.
        assert!(matches!(
            check_envelope(&request(1, 11, 2, 22), 2, 99, &m, false),
            Err(EnvelopeRefusal::NotThisIncarnation {
                expected: 22,
                mine: 99,
                ..
            })
        ));
        // Node 1 came back on a new data dir and asks node 2 for its vote.
        assert!(matches!(
            check_envelope(&request(1, 77, 2, 22), 2, 22, &m, false),
            Err(EnvelopeRefusal::SenderIncarnation {
                recorded: 11,
                sent: 77,
                ..
            })
        ));
        // A sender this agent does not know yet (a new leader seen by a fresh learner) passes.
        assert_eq!(
            check_envelope(&request(5, 55, 2, 22), 2, 22, &m, false),
            Ok(())
        );
        assert!(matches!(
            check_envelope(&request(1, 11, 3, 22), 2, 22, &m, false),
            Err(EnvelopeRefusal::WrongNode { .. })
        ));
        // A removed member (not in the membership, deregistered) is told; a member is not.
        assert_eq!(
            check_envelope(&request(5, 55, 2, 22), 2, 22, &m, true),
            Err(EnvelopeRefusal::SenderRemoved { sender: 5 })
        );
        assert_eq!(
            check_envelope(&request(1, 11, 2, 22), 2, 22, &m, true),
            Ok(())
        );
    }
}
