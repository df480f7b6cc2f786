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

/// How long one request may take before the client gives up: longer than an agent lets a
/// proposal wait (membership changes set their own, from [`crate::deadlines`]).
pub const REQUEST_TIMEOUT_MS: u64 =
    crate::deadlines::PROPOSE_MS + crate::deadlines::CLIENT_MARGIN_MS;
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
        self.call(what, true, false, f).await
    }

    /// As [`Client::on_leader`], for a request that changes something: when the connection
    /// fails after the request may have reached an agent (it stopped answering: paused,
    /// overloaded, cut off), or the client's wait ends first, the outcome is unknown
    /// ([`NodeError::OutcomeUnknown`], exit 5), never "unreachable" (exit 4, nothing happened):
    /// only a connection that could not be made at all sent nothing.
    pub async fn on_leader_write<T, F, Fut>(&self, what: &str, f: F) -> Result<T, NodeError>
    where
        F: Fn(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(what, true, true, f).await
    }

    /// Calls `f` on the endpoint agent only.
    pub async fn on_endpoint<T, F, Fut>(&self, what: &str, f: F) -> Result<T, NodeError>
    where
        F: Fn(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(what, false, false, f).await
    }

    async fn call<T, F, Fut>(
        &self,
        what: &str,
        follow: bool,
        write: bool,
        f: F,
    ) -> Result<T, NodeError>
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
                Err(_) if write => {
                    return Err(NodeError::outcome_unknown(format!(
                        "{address} did not answer {what} within {} ms",
                        self.request_timeout.as_millis()
                    )));
                }
                Err(_) => {
                    return Err(NodeError::Timeout {
                        what: format!("waiting for {address} to answer {what}"),
                        ms: self.request_timeout.as_millis() as u64,
                    });
                }
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) if write && maybe_delivered(&status) => {
                    return Err(NodeError::outcome_unknown(format!(
                        "the connection to {address} failed after {what} may have reached it ({})",
                        status.message()
                    )));
                }
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
            .on_leader_write("propose", |mut c| {
                let command = bytes.clone();
                async move { c.propose(ProposeRequest { command }).await }
            })
            .await?;
        let response = serde_json::from_slice(&reply.response)
            .map_err(|e| NodeError::Invalid(format!("agent sent an undecodable response: {e}")))?;
        Ok((response, reply.log_index))
    }
}

/// Whether a failed call may have reached the agent: the transport failed (the status carries
/// the transport's error as its source; an agent's own answers have none), and not while
/// connecting (tonic wraps every connect-phase failure, refused or timed out, in
/// [`tonic::ConnectError`]; no request byte is sent before the connection exists).
fn maybe_delivered(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    if source.is_none() {
        return false;
    }
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return false;
        }
        source = e.source();
    }
    true
}

/// Proposes `command` at the agent at `address` without following hints (agent to leader).
pub async fn propose_at(address: &str, command: &Command) -> Result<Response, NodeError> {
    let mut client = Client::new(address);
    client.leader_wait = Duration::ZERO;
    client.request_timeout = Duration::from_secs(10);
    client.propose(command).await.map(|(r, _)| r)
}
