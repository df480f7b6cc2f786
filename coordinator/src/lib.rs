//! The replicated state machine of a stillpoint cluster, and what may be proposed to it.
//!
//! Every agent holds the same [`ClusterState`], built by applying the same committed log of
//! [`Command`]s in the same order. Today the state is the **node registry**: which agents exist,
//! what they are called, where they listen, which roles they play on the site (business, backup,
//! management) and which software version they run. Inventory, jobs, locks and history join it
//! in later issues; they will follow the same rules.
//!
//! Two modules hold the job engine's pure core, not yet wired into the state machine or a
//! driver: [`inventory`] (the pairs, volumes and groups a job is planned from, and their
//! validation) and [`job`] (a backup's plan of steps, each step's life, fencing tokens, the
//! events that change a job, the pure `decide` function that says what the leader does next,
//! how an unknown step is resolved, and the copy's consistency label).
//!
//! ## Why `apply` is deterministic
//!
//! Raft guarantees that replicas apply the same commands in the same order; it cannot guarantee
//! they reach the same state unless applying is a pure function of (state, command). So
//! [`ClusterState::apply`] reads no clock, draws no random number and does no I/O: a proposer
//! that needs a time or an id stamps it into the command before proposing it
//! ([`NodeRecord::registered_at_ms`] is stamped by the registering agent). A command that breaks
//! a rule is not an error of the log: it is applied as a [`Response::Refused`] that names the
//! rule, on every replica alike, and the proposer reports it to its caller.
//!
//! ## What is not here
//!
//! Raft membership (who votes) is openraft's, not ours: the registry says who an agent *is*,
//! membership says whether it votes. `stillpoint cluster status` joins the two. Nothing here
//! talks to the network; the `node` crate proposes commands and serves queries.
//!
//! ## Caveats
//! - Registry entries are never garbage-collected: a removed agent keeps its record (marked
//!   deregistered) so the audit trail stays readable.
//! - The state is small and snapshotted whole as JSON; that will be revisited when job history
//!   grows.

pub mod inventory;
pub mod job;
mod jobs;
mod registry;

use std::io::Cursor;

use inventory::{Change, Inventory, InventoryError};
use job::{JobEvent, JobId, JobKind};
pub use jobs::JobTable;
pub use registry::{ClusterState, NodeRecord, Role, RoleParseError};
use serde::{Deserialize, Serialize};

/// Agent identifier: stable for the life of a data dir, unique in a cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's type configuration for stillpoint: commands in, responses out, agents
    /// addressed by [`openraft::BasicNode`] (their gRPC address).
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The raft handle every agent holds.
pub type Raft = openraft::Raft<TypeConfig>;

/// A change to the replicated state, as proposed by an agent or an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// An agent says who it is. Idempotent: re-registering the same record changes nothing.
    RegisterNode(NodeRecord),
    /// An agent left the cluster (removed from membership); its record stays, marked so.
    DeregisterNode {
        node_id: NodeId,
        /// Proposer's wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// An operator applies a site file: everything in it is added or replaced, what it does not
    /// mention stays unless `prune`. Refused whole if the result breaks a rule, or if it changes
    /// something an unfinished job uses.
    ApplyInventory {
        inventory: Inventory,
        prune: bool,
        by: String,
        at_ms: u64,
    },
    /// Accept a job: its plan is made in `apply`, from the inventory in force.
    SubmitJob {
        kind: JobKind,
        submitted_by: String,
        at_ms: u64,
        /// Refuse instead of queueing when another job owns what this one needs.
        no_queue: bool,
    },
    /// A change to a job's progress, proposed by the leader's driver (or cancel, by anyone).
    Job {
        job_id: JobId,
        event: JobEvent,
        at_ms: u64,
    },
}

/// The outcome of applying a [`Command`], returned to its proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The command took effect (or had already taken effect: `changed` is false).
    Applied { changed: bool },
    /// The command broke a rule and changed nothing; `rule` names the rule for the operator.
    Refused { rule: String },
    /// A log entry that carried no command (leader blank entry or membership change).
    NoCommand,
    /// The inventory was applied with these changes (none: it was already in force).
    InventoryApplied { changes: Vec<Change> },
    /// The inventory was refused: every rule it breaks, each naming where.
    InventoryInvalid { errors: Vec<InventoryError> },
    /// The job was accepted; `waiting_for` names the job it queues behind, if any.
    JobAccepted {
        job_id: JobId,
        waiting_for: Option<JobId>,
    },
}

impl Response {
    /// Whether the command was refused by a rule of the state machine.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Response::Refused { rule } => Some(rule),
            _ => None,
        }
    }
}

impl stillpoint_storage::StateMachineData<TypeConfig> for ClusterState {
    fn apply(&mut self, _log_id: &openraft::LogId<NodeId>, command: &Command) -> Response {
        ClusterState::apply(self, command)
    }

    fn response_for_non_command(_log_id: &openraft::LogId<NodeId>) -> Response {
        Response::NoCommand
    }
}
