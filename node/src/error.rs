//! The node crate's one error type, and the single place it crosses the wire.

use std::path::PathBuf;

use tonic::{Code, Status};

/// Metadata key carrying the leader's node id on a NOT-LEADER refusal.
pub const LEADER_ID_KEY: &str = "x-stillpoint-leader-id";
/// Metadata key carrying the leader's gRPC address on a NOT-LEADER refusal.
pub const LEADER_ADDR_KEY: &str = "x-stillpoint-leader-addr";
/// Metadata key marking an UNAVAILABLE answer as "this agent leads but has no quorum".
pub const QUORUM_LOST_KEY: &str = "x-stillpoint-quorum-lost";

/// How a [`NodeError::Refused`] reads, on the wire and on the terminal.
const REFUSED_PREFIX: &str = "refused by the cluster: ";

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

    /// An array answered with an error (or could not be reached).
    #[error("array: {0}")]
    Array(#[from] stillpoint_array::ArrayError),

    /// An agent could not be reached: check the address and that the agent runs; retry.
    #[error("cannot reach the agent at {address}: {detail}")]
    Unreachable { address: String, detail: String },

    /// This agent is not the leader; send the request to `leader_addr` (the CLI does).
    #[error("this agent is not the leader{}", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },

    /// Something this command needs is not on this machine (a package, root, a device): the
    /// message says what and how to get it. Nothing was changed.
    #[error("{0}")]
    Prerequisite(String),

    /// The request is invalid as given (bad address, wrong state): change it.
    #[error("{0}")]
    Invalid(String),

    /// The request names something that does not exist (a node not in the registry); the
    /// message lists what does.
    #[error("{0}")]
    NotFound(String),

    /// A rule of the replicated state machine refused the command; nothing changed.
    #[error("{REFUSED_PREFIX}{0}")]
    Refused(String),

    /// What was asked is not valid in the current state of its object (a job that has
    /// already ended cannot be cancelled); nothing changed.
    #[error("{0}")]
    WrongState(String),

    /// The operation did not finish in time. Its outcome is unknown: query before retrying.
    #[error("timed out after {ms} ms {what}")]
    Timeout { what: String, ms: u64 },

    /// A change may or may not have taken effect: the agent's own bound expired before it
    /// committed, or the agent stopped answering after the request may have reached it. Query
    /// the state before retrying. Built with [`NodeError::outcome_unknown`].
    #[error("{0}")]
    OutcomeUnknown(String),

    /// This agent leads but cannot reach a quorum of voters, so it confirms nothing; nothing
    /// was read or changed. Retry later or ask another agent (the others may have elected a
    /// leader of their own).
    #[error("quorum lost: {0}")]
    QuorumLost(String),

    /// The raft node stopped or failed; the agent must be restarted.
    #[error("raft: {0}")]
    Raft(String),

    /// This agent's raft core stopped on a fatal error (its storage failed: disk full, I/O
    /// error, flush timeout; or the core panicked). The agent stops and exits with
    /// [`exit::RAFT_STOPPED`]: fix the cause it names, then start it again.
    #[error("raft stopped on a fatal error, the agent must be restarted: {cause}")]
    RaftStopped { cause: String },

    /// The cluster removed this node (a member said so when it campaigned); the agent stopped.
    /// Do not restart it as is: to bring the server back, give it a new node_id, start it with
    /// `--new` and `stillpoint cluster add` it.
    #[error(
        "this node was removed from the cluster (told by {by}); its raft role has stopped. To bring the server back, give it a new node_id, start it with --new and add it with `stillpoint cluster add`"
    )]
    Removed { by: String },

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
    /// "Outcome unknown" about `what`, telling the operator to look before retrying.
    pub fn outcome_unknown(what: impl std::fmt::Display) -> NodeError {
        NodeError::OutcomeUnknown(format!(
            "outcome unknown: {what}; check with `stillpoint cluster status` before retrying"
        ))
    }

    /// Exit code for the CLI, stable for job schedulers (the table is in [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            NodeError::Config { .. } | NodeError::Invalid(_) => exit::BAD_INPUT,
            NodeError::Prerequisite(_) => exit::MISSING_PREREQUISITE,
            NodeError::Refused(_) => exit::REFUSED,
            NodeError::WrongState(_) => exit::WRONG_STATE,
            NodeError::NotFound(_) => exit::NOT_FOUND,
            NodeError::Unreachable { .. }
            | NodeError::NotLeader { .. }
            | NodeError::QuorumLost(_) => exit::UNREACHABLE,
            NodeError::Timeout { .. } | NodeError::OutcomeUnknown(_) => exit::TIMED_OUT,
            NodeError::Listen { .. } | NodeError::Storage(_) => exit::CANNOT_START,
            NodeError::Host(e) => host_exit_code(e),
            NodeError::Array(e) => array_exit_code(e),
            NodeError::RaftStopped { .. } => exit::RAFT_STOPPED,
            NodeError::Raft(_) | NodeError::Remote { .. } => exit::OTHER,
            NodeError::Removed { .. } => exit::REMOVED,
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
            NodeError::Prerequisite(_) => Status::failed_precondition(message),
            NodeError::Refused(_) => Status::permission_denied(message),
            NodeError::WrongState(_) => Status::failed_precondition(message),
            NodeError::NotFound(_) => Status::not_found(message),
            NodeError::Unreachable { .. } => Status::unavailable(message),
            NodeError::Timeout { .. } | NodeError::OutcomeUnknown(_) => {
                Status::deadline_exceeded(message)
            }
            NodeError::QuorumLost(reason) => {
                let mut status = Status::unavailable(reason.clone());
                status.metadata_mut().insert(
                    QUORUM_LOST_KEY,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                status
            }
            NodeError::Listen { .. }
            | NodeError::Storage(_)
            | NodeError::Raft(_)
            | NodeError::RaftStopped { .. }
            | NodeError::Removed { .. }
            | NodeError::Host(_)
            | NodeError::Array(_)
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
            Code::Unavailable if status.metadata().contains_key(QUORUM_LOST_KEY) => {
                NodeError::QuorumLost(format!("{text} (answered by {address})"))
            }
            Code::Unavailable => NodeError::Unreachable {
                address: address.to_string(),
                detail: text,
            },
            Code::DeadlineExceeded if text.starts_with("outcome unknown") => {
                NodeError::OutcomeUnknown(text)
            }
            Code::DeadlineExceeded => {
                NodeError::outcome_unknown(format!("{address} gave up: {text}"))
            }
            Code::InvalidArgument => NodeError::Invalid(text),
            // The server's message already reads "refused by the cluster: ..." (to_status);
            // keep the rule only, or Display would say it twice.
            Code::PermissionDenied => NodeError::Refused(
                text.strip_prefix(REFUSED_PREFIX)
                    .map(str::to_string)
                    .unwrap_or(text),
            ),
            Code::NotFound => NodeError::NotFound(text),
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

/// The `stillpoint` binary's exit codes, one table for every command (cluster, volume, array,
/// pair), so a job scheduler can branch on them without knowing which subsystem answered.
pub mod exit {
    /// Anything not listed below; the message says what.
    pub const OTHER: u8 = 1;
    /// Bad input: a config file or argument is wrong; the message names the file, field or flag.
    pub const BAD_INPUT: u8 = 2;
    /// Refused by a rule (pairing rule, RV access, busy volume, S4 ceiling; a job whose pairs
    /// another job holds, with `--no-queue`; a backup of an unknown group); nothing changed.
    pub const REFUSED: u8 = 3;
    /// No agent, leader, quorum or array reachable at the address given; nothing happened.
    pub const UNREACHABLE: u8 = 4;
    /// Timed out, or the outcome is unknown: query the state before retrying.
    pub const TIMED_OUT: u8 = 5;
    /// The data dir or listen address is unusable (in use, another node's, corrupt).
    pub const CANNOT_START: u8 = 6;
    /// The operation is not valid in the current state (pair, volume, job); nothing changed.
    pub const WRONG_STATE: u8 = 7;
    /// No such node, volume, LD, pair or job.
    pub const NOT_FOUND: u8 = 8;
    /// The agent stopped because its raft core hit a fatal error (its data dir's storage failed:
    /// disk full, I/O error, a flush that did not finish; or the core panicked). stderr names
    /// the cause; fix it, and let the supervisor start the agent again.
    pub const RAFT_STOPPED: u8 = 9;
    /// The agent stopped because the cluster removed its node: do not restart it as is.
    pub const REMOVED: u8 = 10;
    /// A backup job ended done, but its copy is only crash-consistent: the RVs were checked
    /// (and repaired) before mounting; the reason is printed. (`backup --wait`, `job watch`,
    /// `job show` of an ended job; done and consistent is 0.)
    pub const DONE_CRASH_CONSISTENT: u8 = 11;
    /// The job failed; the reason is printed, and `job show` has every step's state.
    pub const JOB_FAILED: u8 = 12;
    /// The job was cancelled (who asked is printed); no copy was recorded.
    pub const JOB_CANCELLED: u8 = 13;
    /// Something the command needs is not on this machine (e.g. PostgreSQL for `demo
    /// --postgres`, or root); the message says how to get it. Nothing was changed.
    pub const MISSING_PREREQUISITE: u8 = 14;
}

/// Exit code of a job that ended `end`: 0 done and consistent (or, for a job that makes no
/// copy, finished), [`exit::DONE_CRASH_CONSISTENT`], [`exit::JOB_FAILED`] or
/// [`exit::JOB_CANCELLED`].
pub fn job_end_exit_code(end: &stillpoint_coordinator::job::JobEnd) -> u8 {
    use stillpoint_coordinator::job::{CopyLabel, JobEnd};
    match end {
        JobEnd::Done {
            label: CopyLabel::Consistent,
        }
        | JobEnd::Finished => 0,
        JobEnd::Done {
            label: CopyLabel::CrashConsistent { .. },
        } => exit::DONE_CRASH_CONSISTENT,
        JobEnd::Failed { .. } => exit::JOB_FAILED,
        JobEnd::Cancelled { .. } => exit::JOB_CANCELLED,
    }
}

/// Exit code of an array command's error.
pub fn array_exit_code(e: &stillpoint_array::ArrayError) -> u8 {
    use stillpoint_array::ArrayError as A;
    match e {
        A::Refused { .. } => exit::REFUSED,
        A::WrongState { .. } | A::CopyWrongState { .. } => exit::WRONG_STATE,
        A::Timeout { .. } | A::OutcomeUnknown { .. } => exit::TIMED_OUT,
        A::Unreachable { .. } | A::PeerUnreachable { .. } => exit::UNREACHABLE,
        A::NotFound { .. } => exit::NOT_FOUND,
        A::InvalidInput { .. } | A::Config { .. } => exit::BAD_INPUT,
        A::CorruptMetadata { .. } | A::CannotStart { .. } => exit::CANNOT_START,
        A::DeviceFailed { .. } | A::Io { .. } => exit::OTHER,
    }
}

/// Exit code of a host (volume) command's error.
pub fn host_exit_code(e: &stillpoint_host::HostError) -> u8 {
    use stillpoint_host::HostError as H;
    match e {
        H::Config { .. } => exit::BAD_INPUT,
        H::UnknownVolume { .. } | H::MountPointMissing { .. } | H::NoHook { .. } => exit::NOT_FOUND,
        H::Busy { .. } | H::Refused { .. } | H::DuplicateIdentity { .. } => exit::REFUSED,
        H::WrongState { .. }
        | H::NotMounted { .. }
        | H::MountedElsewhere { .. }
        | H::MountPointBusy { .. }
        | H::QuiesceLost { .. } => exit::WRONG_STATE,
        H::TimedOut { .. } => exit::TIMED_OUT,
        H::Unreachable(_) => exit::UNREACHABLE,
        H::HookFailed { .. }
        | H::Database { .. }
        | H::OsError { .. }
        | H::Device { .. }
        | H::Unsupported { .. }
        | H::Journal(_) => exit::OTHER,
    }
}

#[cfg(test)]
mod tests {
    use stillpoint_coordinator::job::{CopyLabel, JobEnd};

    use super::*;

    #[test]
    fn a_jobs_end_maps_to_the_scheduler_exit_codes() {
        let done = |label| JobEnd::Done { label };
        assert_eq!(job_end_exit_code(&done(CopyLabel::Consistent)), 0);
        assert_eq!(job_end_exit_code(&JobEnd::Finished), 0);
        let crash = CopyLabel::CrashConsistent { why: "x".into() };
        assert_eq!(job_end_exit_code(&done(crash)), 11);
        let failed = JobEnd::Failed { reason: "x".into() };
        assert_eq!(job_end_exit_code(&failed), 12);
        let cancelled = JobEnd::Cancelled { by: "x".into() };
        assert_eq!(job_end_exit_code(&cancelled), 13);
        // The new codes follow the existing table without reusing any of its numbers.
        assert_eq!(
            [
                exit::REMOVED,
                exit::DONE_CRASH_CONSISTENT,
                exit::JOB_FAILED,
                exit::JOB_CANCELLED
            ],
            [10, 11, 12, 13]
        );
        assert_eq!(
            NodeError::WrongState("x".into()).exit_code(),
            exit::WRONG_STATE
        );
    }
}
