//! Whether this agent's raft may still be trusted, and the read barrier that depends on it.
//!
//! openraft stops its core on a fatal error — a storage error (disk full, I/O error, a flush
//! that did not finish in time) or a panic inside the core — and records the cause in its
//! metrics (`running_state`). The process around it keeps running, though: its gRPC server
//! still answers and its metrics still name the last leader, itself if it led. Such a zombie
//! leader tells operators and agents that it leads a cluster it no longer takes part in. So:
//!
//! - [`stopped`] completes, with the cause, once the core has stopped on its own;
//!   [`crate::agent::run`] then stops the agent and fails with [`NodeError::RaftStopped`], and
//!   the process exits with [`crate::error::exit::RAFT_STOPPED`] so a supervisor restarts it
//!   once the cause is fixed;
//! - [`visible_metrics`] is what the rest of the agent reads: a stopped core leads nobody;
//! - [`confirm_read`] is the linearizable-read barrier: a stopped core confirms nothing, and a
//!   leader that cannot reach a quorum says "quorum lost" rather than a timeout.

use std::time::Duration;

use openraft::RaftMetrics;
use openraft::error::{CheckIsLeaderError, RaftError};
use stillpoint_coordinator::{Member, NodeId, Raft};

use crate::error::NodeError;

/// How many times a leader asks a quorum to confirm its leadership before it reports the quorum
/// lost. openraft waits one heartbeat interval for the answers, which one slow round on a loaded
/// machine can miss; three rounds in a row cannot all be slow while a quorum is really there.
const READ_CONFIRM_ROUNDS_MAX: u32 = 3;

/// Upper bound on a whole read barrier, including waiting for the state machine to apply up to
/// the confirmed index.
const READ_BARRIER_TIMEOUT_MS: u64 = 10_000;

/// Why the raft core stopped, if it has.
pub fn stop_cause(metrics: &RaftMetrics<NodeId, Member>) -> Option<String> {
    metrics.running_state.as_ref().err().map(|f| f.to_string())
}

/// Completes once the raft core has stopped, with the cause. Also completes when the core task
/// is gone without saying why (it panicked): openraft drops the metrics sender then.
pub async fn stopped(raft: Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        let cause = stop_cause(&metrics.borrow());
        if let Some(cause) = cause {
            return cause;
        }
        if metrics.changed().await.is_err() {
            return "the raft core task ended without reporting why".to_string();
        }
    }
}

/// The raft metrics as the agent may report them: once the core has stopped, nobody is leader
/// as far as this agent knows (its metrics would otherwise keep naming the last one forever).
pub fn visible_metrics(raft: &Raft) -> RaftMetrics<NodeId, Member> {
    let mut metrics = raft.metrics().borrow().clone();
    if metrics.running_state.is_err() {
        metrics.current_leader = None;
    }
    metrics
}

/// Confirms with a quorum that this agent still leads and waits until its state machine has
/// applied everything committed before the read (a linearizable read barrier).
pub async fn confirm_read(raft: &Raft) -> Result<(), NodeError> {
    let barrier = async {
        let mut round = 1;
        loop {
            if let Some(cause) = stop_cause(&raft.metrics().borrow()) {
                return Err(NodeError::RaftStopped { cause });
            }
            match raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    return Err(NodeError::NotLeader {
                        leader_id: f.leader_id,
                        leader_addr: f.leader_node.map(|n| n.addr),
                    });
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))
                    if round >= READ_CONFIRM_ROUNDS_MAX =>
                {
                    return Err(NodeError::QuorumLost(format!(
                        "this agent leads but no quorum of voters confirmed it in {round} rounds ({q}); nothing was read"
                    )));
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => round += 1,
                Err(RaftError::Fatal(f)) => {
                    return Err(NodeError::RaftStopped {
                        cause: f.to_string(),
                    });
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(READ_BARRIER_TIMEOUT_MS), barrier)
        .await
        .unwrap_or(Err(NodeError::Timeout {
            what: "confirming leadership and applying up to the read index; nothing was read"
                .into(),
            ms: READ_BARRIER_TIMEOUT_MS,
        }))
}
