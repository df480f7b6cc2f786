//! Talking to agents as a client: follows the leader hint so callers may name any agent.

use std::future::Future;
use std::time::{Duration, Instant};

use stillpoint_coordinator::{Command, Response};
use stillpoint_proto::cluster::cluster_client::ClusterClient;
use stillpoint_proto::cluster::{Empty, NodeIdentity, ProposeRequest};
use tonic::Status;
use tonic::transport::Channel;

use crate::error::NodeError;
use crate::peer::channel_to;

/// How long one request may take before its outcome is reported as unknown.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// How long a client waits for a leader to be elected before giving up.
pub const LEADER_WAIT_MS: u64 = 15_000;
/// How many leader hints a request follows before giving up (a hint loop means churn).
const MAX_LEADER_HOPS: usize = 5;

/// A gRPC client for the cluster API with stillpoint's message limits.
pub fn cluster_client(address: &str) -> Result<ClusterClient<Channel>, NodeError> {
    Ok(ClusterClient::new(channel_to(address)?)
        .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES))
}

/// Client of a cluster, starting at one agent's address.
#[derive(Clone, Debug)]
pub struct Client {
    pub endpoint: String,
    pub request_timeout: Duration,
    pub leader_wait: Duration,
}

impl Client {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Client {
            endpoint: endpoint.into(),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            leader_wait: Duration::from_millis(LEADER_WAIT_MS),
        }
    }

    /// Calls `f` on the endpoint agent; when that agent says it is not the leader, calls again
    /// on the leader it names, and while no leader is known, waits (bounded) for one.
    pub async fn on_leader<T, F, Fut>(&self, what: &str, f: F) -> Result<T, NodeError>
    where
        F: Fn(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(what, true, f).await
    }

    /// Calls `f` on the endpoint agent only.
    pub async fn on_endpoint<T, F, Fut>(&self, what: &str, f: F) -> Result<T, NodeError>
    where
        F: Fn(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(what, false, f).await
    }

    async fn call<T, F, Fut>(&self, what: &str, follow: bool, f: F) -> Result<T, NodeError>
    where
        F: Fn(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.leader_wait;
        let mut address = self.endpoint.clone();
        let mut hops = 0;
        let mut pause = Duration::from_millis(100);
        loop {
            let client = cluster_client(&address)?;
            let outcome = tokio::time::timeout(self.request_timeout, f(client)).await;
            let error = match outcome {
                Err(_) => {
                    return Err(NodeError::Timeout {
                        what: format!("waiting for {address} to answer {what} (outcome unknown)"),
                        ms: self.request_timeout.as_millis() as u64,
                    });
                }
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) => NodeError::from_status(&address, status),
            };
            match error {
                NodeError::NotLeader {
                    leader_addr: Some(leader),
                    ..
                } if follow && hops < MAX_LEADER_HOPS && leader != address => {
                    tracing::debug!(from = %address, to = %leader, "following the leader hint");
                    address = leader;
                    hops += 1;
                }
                NodeError::NotLeader { .. } if follow && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    address = self.endpoint.clone();
                }
                other => return Err(other),
            }
        }
    }

    /// Who the endpoint agent is.
    pub async fn identity(&self) -> Result<NodeIdentity, NodeError> {
        self.on_endpoint(
            "identity",
            |mut c| async move { c.identity(Empty {}).await },
        )
        .await
    }

    /// Proposes a command on the leader and returns the state machine's answer.
    pub async fn propose(&self, command: &Command) -> Result<(Response, u64), NodeError> {
        let bytes = serde_json::to_vec(command)
            .map_err(|e| NodeError::Invalid(format!("cannot encode command: {e}")))?;
        let reply = self
            .on_leader("propose", |mut c| {
                let command = bytes.clone();
                async move { c.propose(ProposeRequest { command }).await }
            })
            .await?;
        let response = serde_json::from_slice(&reply.response)
            .map_err(|e| NodeError::Invalid(format!("agent sent an undecodable response: {e}")))?;
        Ok((response, reply.log_index))
    }
}

/// Proposes `command` at the agent at `address` without following hints (agent to leader).
pub async fn propose_at(address: &str, command: &Command) -> Result<Response, NodeError> {
    let mut client = Client::new(address);
    client.leader_wait = Duration::ZERO;
    client.request_timeout = Duration::from_secs(10);
    client.propose(command).await.map(|(r, _)| r)
}
