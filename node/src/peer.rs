//! The Raft peer transport over gRPC: the client openraft uses to reach other agents, and the
//! service that receives their messages.
//!
//! Raft's messages travel as openraft's serde encoding inside a [`RaftRequest`] envelope that
//! names the cluster and the target node. The receiver refuses a message meant for another
//! node id (an address reused by a different agent) or sent by another cluster (two clusters
//! pointed at each other by mistake) before openraft sees it. A fresh agent that has never
//! belonged to a cluster adopts the cluster id of the first message it receives: that is how a
//! newly added learner or a bootstrapped voter learns which cluster it is in.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use openraft::BasicNode;
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
use stillpoint_coordinator::{NodeId, Raft, TypeConfig};
use stillpoint_proto::raft::raft_peer_client::RaftPeerClient;
use stillpoint_proto::raft::raft_peer_server::RaftPeer;
use stillpoint_proto::raft::{RaftReply, RaftRequest};
use stillpoint_storage::{DataDirIdentity, Store};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::error::NodeError;

/// How long a TCP connect to a peer may take before the peer counts as unreachable.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// This agent's identity as the transport sees it: its node id and, once known, its cluster.
#[derive(Debug)]
pub struct ClusterIdentity {
    pub node_id: NodeId,
    cluster_id: RwLock<Option<String>>,
    store: Arc<Store>,
}

impl ClusterIdentity {
    pub fn new(node_id: NodeId, cluster_id: Option<String>, store: Arc<Store>) -> Self {
        ClusterIdentity {
            node_id,
            cluster_id: RwLock::new(cluster_id),
            store,
        }
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Joins `cluster_id` if this agent has none yet (persisted before it takes effect); refuses
    /// a different one.
    pub fn adopt(&self, cluster_id: &str) -> Result<(), NodeError> {
        let mut current = self.cluster_id.write().unwrap_or_else(|p| p.into_inner());
        match current.as_deref() {
            Some(mine) if mine == cluster_id => Ok(()),
            Some(mine) => Err(NodeError::Refused(format!(
                "this agent (node {}) belongs to cluster {mine}, not {cluster_id}",
                self.node_id
            ))),
            None => {
                self.store.claim_identity(&DataDirIdentity {
                    node_id: self.node_id,
                    cluster_id: Some(cluster_id.to_string()),
                })?;
                tracing::info!(cluster_id, "joined cluster");
                *current = Some(cluster_id.to_string());
                Ok(())
            }
        }
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
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = channel_to(&node.addr).map(|ch| {
            RaftPeerClient::new(ch)
                .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
        });
        PeerClient {
            target,
            address: node.addr.clone(),
            client: client.map_err(|e| e.to_string()),
            identity: self.identity.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    target: NodeId,
    address: String,
    /// The channel, or why the address could not even be parsed (reported as unreachable).
    client: Result<RaftPeerClient<Channel>, String>,
    identity: Arc<ClusterIdentity>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

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
            Ok(Err(status)) => return Err(self.status_to_rpc_error(status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                BasicNode::new(&self.address),
                e,
            ))
        })
    }

    fn status_to_rpc_error<E: std::error::Error>(
        &self,
        status: Status,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
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
}

/// Receives other agents' Raft messages and hands them to the local raft node.
pub struct PeerService {
    pub raft: Raft,
    pub identity: Arc<ClusterIdentity>,
}

impl PeerService {
    /// Refuses messages for another node or from another cluster; adopts the cluster of the
    /// first message a fresh agent receives.
    fn check_envelope(&self, req: &RaftRequest) -> Result<(), Status> {
        if req.target_node_id != self.identity.node_id {
            return Err(Status::failed_precondition(format!(
                "this agent is node {}, not node {}: the address is configured for another agent",
                self.identity.node_id, req.target_node_id
            )));
        }
        if req.cluster_id.is_empty() {
            return Err(Status::invalid_argument(
                "raft message without a cluster id",
            ));
        }
        self.identity
            .adopt(&req.cluster_id)
            .map_err(|e| e.to_status())
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
        self.check_envelope(&req)?;
        let rpc: VoteRequest<NodeId> = decode(&req.payload)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        self.check_envelope(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.payload)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        self.check_envelope(&req)?;
        let mut rpc: InstallSnapshotRequest<TypeConfig> = decode(&req.payload)?;
        rpc.data = req.chunk;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}
