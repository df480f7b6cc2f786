//! The node crate's one error type, and the single place it crosses the wire.

use std::path::PathBuf;

use tonic::{Code, Status};

/// Metadata key carrying the leader's node id on a NOT-LEADER refusal.
pub const LEADER_ID_KEY: &str = "x-stillpoint-leader-id";
/// Metadata key carrying the leader's gRPC address on a NOT-LEADER refusal.
pub const LEADER_ADDR_KEY: &str = "x-stillpoint-leader-addr";

/// What went wrong, sorted by what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration file is wrong: fix the file and start again.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    /// The listen address cannot be bound (in use, or not ours): free it or pick another.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },

    /// The data dir cannot be used (in use, foreign, corrupt, I/O): see the message.
    #[error(transparent)]
    Storage(#[from] stillpoint_storage::Error),

    /// A host operation failed; the message names the volume and what to do.
    #[error(transparent)]
    Host(#[from] stillpoint_host::HostError),

    /// An agent could not be reached: check the address and that the agent runs; retry.
    #[error("cannot reach the agent at {address}: {detail}")]
    Unreachable { address: String, detail: String },

    /// This agent is not the leader; send the request to `leader_addr` (the CLI does).
    #[error("this agent is not the leader{}", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },

    /// The request is invalid as given (unknown node, bad address, wrong state): change it.
    #[error("{0}")]
    Invalid(String),

    /// A rule of the replicated state machine refused the command; nothing changed.
    #[error("refused by the cluster: {0}")]
    Refused(String),

    /// The operation did not finish in time. Its outcome is unknown: query before retrying.
    #[error("timed out after {ms} ms {what}")]
    Timeout { what: String, ms: u64 },

    /// The raft node stopped or failed; the agent must be restarted.
    #[error("raft: {0}")]
    Raft(String),

    /// Anything the remote agent reported that fits none of the above.
    #[error("{address} answered {code:?}: {message}")]
    Remote {
        address: String,
        code: Code,
        message: String,
    },
}

fn leader_hint(id: &Option<u64>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("; the leader is node {id} at {addr}"),
        (Some(id), None) => format!("; the leader is node {id}"),
        _ => "; no leader is known yet (election in progress?)".to_string(),
    }
}

impl NodeError {
    /// Exit code for the CLI, stable for job schedulers (documented in the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            NodeError::Config { .. } | NodeError::Invalid(_) => 2,
            NodeError::Refused(_) => 3,
            NodeError::Unreachable { .. } | NodeError::NotLeader { .. } => 4,
            NodeError::Timeout { .. } => 5,
            NodeError::Listen { .. } | NodeError::Storage(_) => 6,
            NodeError::Raft(_) | NodeError::Remote { .. } | NodeError::Host(_) => 1,
        }
    }

    /// The gRPC status a server answers with. The one place errors cross the wire.
    pub fn to_status(&self) -> Status {
        let message = self.to_string();
        match self {
            NodeError::NotLeader {
                leader_id,
                leader_addr,
            } => {
                let mut status = Status::failed_precondition(message);
                if let Some(id) = leader_id
                    && let Ok(v) = id.to_string().parse()
                {
                    status.metadata_mut().insert(LEADER_ID_KEY, v);
                }
                if let Some(addr) = leader_addr
                    && let Ok(v) = addr.parse()
                {
                    status.metadata_mut().insert(LEADER_ADDR_KEY, v);
                }
                status
            }
            NodeError::Config { .. } | NodeError::Invalid(_) => Status::invalid_argument(message),
            NodeError::Refused(_) => Status::permission_denied(message),
            NodeError::Unreachable { .. } => Status::unavailable(message),
            NodeError::Timeout { .. } => Status::deadline_exceeded(message),
            NodeError::Listen { .. }
            | NodeError::Storage(_)
            | NodeError::Raft(_)
            | NodeError::Host(_)
            | NodeError::Remote { .. } => Status::internal(message),
        }
    }

    /// The error a client sees for a status answered by the agent at `address`.
    pub fn from_status(address: &str, status: Status) -> NodeError {
        let text = status.message().to_string();
        match status.code() {
            Code::FailedPrecondition
                if status.metadata().contains_key(LEADER_ID_KEY)
                    || text.contains("not the leader") =>
            {
                let get = |k| {
                    status
                        .metadata()
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                NodeError::NotLeader {
                    leader_id: get(LEADER_ID_KEY).and_then(|s| s.parse().ok()),
                    leader_addr: get(LEADER_ADDR_KEY),
                }
            }
            Code::Unavailable => NodeError::Unreachable {
                address: address.to_string(),
                detail: text,
            },
            Code::DeadlineExceeded => NodeError::Timeout {
                what: format!("waiting for {address}"),
                ms: 0,
            },
            Code::InvalidArgument => NodeError::Invalid(text),
            Code::PermissionDenied => NodeError::Refused(text),
            code => NodeError::Remote {
                address: address.to_string(),
                code,
                message: text,
            },
        }
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        e.to_status()
    }
}
