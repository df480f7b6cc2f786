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
//! how an unknown step is resolved, and the copy's consistency label). [`views`] computes
//! what operators read about jobs: summaries without step histories, one job's timeline, and
//! the catalogue of copies.
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
//! ## Registration follows membership
//!
//! `apply` receives the raft membership in effect at each entry (the same on every replica), so
//! the registry can follow it: only a member may register, and a removed node's record is never
//! revived by the node itself (node ids are not reused). An agent removed while it was away, or
//! added through a leader whose entry was then discarded, is refused once, deterministically,
//! instead of reappearing as active.
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
//! - The state is applied in memory and snapshotted whole as JSON. Applying costs what a
//!   command changes; a snapshot costs the whole state, which grows with the job history kept
//!   (`settings.jobs_retained_max`; see the `apply` bench for sizes).

pub mod inventory;
pub mod job;
mod jobs;
pub mod postgres;
mod registry;
pub mod views;

use std::io::Cursor;

use inventory::{Change, Inventory, InventoryError};
use job::{JobEvent, JobId, JobKind};
pub use jobs::{JobStanding, JobTable};
pub use registry::{ClusterState, NodeRecord, Role, RoleParseError};
use serde::{Deserialize, Serialize};

/// Agent identifier: stable for the life of a data dir, unique in a cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's type configuration for stillpoint: commands in, responses out, agents
    /// known by [`Member`] (their gRPC address and data dir incarnation).
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What the raft membership records about each member: where it listens, and which
/// incarnation of its data dir the cluster admitted.
///
/// The incarnation is drawn at random when a node's data dir is created (`stillpoint agent
/// --new`) and learnt from the node itself when it is initialised or added. It travels in the
/// membership, so every member knows every other member's incarnation from the same committed
/// entry that made it a member. The peer transport refuses a raft message whose sender or target
/// incarnation differs from the one recorded: a node that lost its data dir (and was started
/// again as new) can then neither vote nor be counted until it is removed and re-added under a
/// new node id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// gRPC address other agents and clients reach the member at.
    pub addr: String,
    /// The member's data dir incarnation.
    pub incarnation: u64,
}

impl Member {
    pub fn new(addr: impl Into<String>, incarnation: u64) -> Member {
        Member {
            addr: addr.into(),
            incarnation,
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (incarnation {:016x})", self.addr, self.incarnation)
    }
}

/// The id of the cluster whose first members are `members`: derived from their node ids and
/// data dir incarnations (not their addresses, which operators may type differently), so every
/// `cluster init` of the same first members, on any of them and any number of times, names
/// the same cluster. FNV-1a, 128 bits, over `id:incarnation;` in id order: an identifier, not a
/// secret (incarnations are random, so two sites never share one).
pub fn cluster_id_for(members: &std::collections::BTreeMap<NodeId, Member>) -> String {
    const FNV_OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const FNV_PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut hash = FNV_OFFSET;
    for (id, member) in members {
        for byte in format!("{id}:{:016x};", member.incarnation).bytes() {
            hash ^= u128::from(byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
    }
    format!("{hash:032x}")
}

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
    /// Several [`Command::Job`] changes in one log entry, applied in order, as the leader's
    /// driver records them (one entry, one disk flush per node, for what piled up while the
    /// previous proposal committed). The first refused change stops the batch: those before it
    /// took effect, it and those after did not.
    Jobs { events: Vec<JobChange> },
    /// The leader's driver moved an array's steps to another of its control nodes (the one in
    /// use did not answer): recorded so that the next leader sends and asks there first,
    /// where the steps it may have to ask about were sent. Ignored (`changed: false`) if the
    /// inventory no longer lists that agent as a control node of that array.
    RouteArraySteps { array: String, control_node: String },
}

/// One change of a [`Command::Jobs`] batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobChange {
    pub job_id: JobId,
    pub event: JobEvent,
    pub at_ms: u64,
}

impl Command {
    /// Whether a client may propose this command through the client API's `Propose`. The
    /// others are proposed only by an agent's own code path (the leader's `cluster remove`).
    /// Exhaustive on purpose: a new command must decide.
    ///
    /// This limits *what* a client may propose, not *who* it is: there is no authentication
    /// until mutual TLS binds a certificate to a node id. Until then any client that reaches an
    /// agent's port may register a member's record with other name, roles or version (but not
    /// another address: `apply` checks it against the membership, nor revive a removed one).
    pub fn proposable_by_clients(&self) -> bool {
        match self {
            Command::RegisterNode(_) => true,
            Command::DeregisterNode { .. } => false,
            // Operators apply site files and submit jobs.
            Command::ApplyInventory { .. } | Command::SubmitJob { .. } => true,
            // Anyone may cancel a job; its progress is recorded only by the leader's driver.
            Command::Job {
                event: JobEvent::CancelRequested { .. },
                ..
            } => true,
            Command::Job { .. } | Command::Jobs { .. } | Command::RouteArraySteps { .. } => false,
        }
    }
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
    fn apply(
        &mut self,
        _log_id: &openraft::LogId<NodeId>,
        membership: &openraft::Membership<NodeId, Member>,
        command: &Command,
    ) -> Response {
        let members = membership
            .nodes()
            .map(|(id, m)| (*id, m.addr.clone()))
            .collect();
        ClusterState::apply(self, &members, command)
    }

    fn response_for_non_command(_log_id: &openraft::LogId<NodeId>) -> Response {
        Response::NoCommand
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_id_follows_ids_and_incarnations_not_addresses() {
        let members = |addr: &str, incarnation: u64| {
            [
                (1, Member::new(format!("{addr}:1"), 7)),
                (2, Member::new(format!("{addr}:2"), incarnation)),
            ]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
        };
        assert_eq!(
            cluster_id_for(&members("10.0.0.5", 9)),
            cluster_id_for(&members("host5", 9))
        );
        assert_ne!(
            cluster_id_for(&members("h", 9)),
            cluster_id_for(&members("h", 10))
        );
        assert_eq!(cluster_id_for(&members("h", 9)).len(), 32);
    }
}
