//! The node registry: who each agent is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;
use crate::job::{JobKind, StepLimits, plan_backup, plan_prepare};
use crate::{Command, JobTable, NodeId, Response};

/// What a host does on the site; an agent may play several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs business applications on master volumes.
    Business,
    /// Mounts replication volumes and copies them to tape.
    Backup,
    /// Runs the array's management software; has the control path to the arrays.
    Management,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Business, Role::Backup, Role::Management];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Business => "business",
            Role::Backup => "backup",
            Role::Management => "management",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of `business`, `backup`, `management`.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}: expected one of business, backup, management")]
pub struct RoleParseError(pub String);

impl FromStr for Role {
    type Err = RoleParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| RoleParseError(s.to_string()))
    }
}

/// What an agent says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: NodeId,
    /// Operator-facing name, unique in the cluster (`--node NAME` in commands).
    pub name: String,
    /// gRPC address other agents and clients reach this agent at.
    pub address: String,
    pub roles: BTreeSet<Role>,
    /// stillpoint version the agent runs, so mixed-version clusters are visible.
    pub version: String,
    /// When the agent registered this record, stamped by the agent (ms since Unix epoch).
    pub registered_at_ms: u64,
    /// Set when the agent was removed from the cluster; the record is kept for the audit trail.
    #[serde(default)]
    pub deregistered_at_ms: Option<u64>,
}

impl NodeRecord {
    /// Same identity and reachability, ignoring when it was stamped.
    pub fn same_as(&self, other: &NodeRecord) -> bool {
        self.node_id == other.node_id
            && self.name == other.name
            && self.address == other.address
            && self.roles == other.roles
            && self.version == other.version
            && self.deregistered_at_ms == other.deregistered_at_ms
    }
}

/// The replicated state of a stillpoint cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Every agent that ever registered, by id.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// The site inventory in force.
    #[serde(default)]
    pub inventory: Inventory,
    /// Accepted jobs, their locks and their history.
    #[serde(default)]
    pub jobs: JobTable,
    /// Array name → the control node its steps go to, when a leader moved them off the
    /// first registered one ([`Command::RouteArraySteps`]). An entry the inventory no
    /// longer backs is ignored by whoever reads it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub array_routes: BTreeMap<String, String>,
}

impl ClusterState {
    /// Applies one committed command. Pure: no clock, no randomness, no I/O. `members` are the
    /// raft membership in effect at this log entry (voters and learners), with the address each
    /// was admitted at.
    pub fn apply(&mut self, members: &BTreeMap<NodeId, String>, command: &Command) -> Response {
        match command {
            Command::RegisterNode(record) => self.register(members, record),
            Command::DeregisterNode { node_id, at_ms } => match self.nodes.get_mut(node_id) {
                None => Response::Refused {
                    rule: format!("node {node_id} is not registered"),
                },
                Some(r) if r.deregistered_at_ms.is_some() => Response::Applied { changed: false },
                Some(r) => {
                    r.deregistered_at_ms = Some(*at_ms);
                    Response::Applied { changed: true }
                }
            },
            Command::ApplyInventory {
                inventory, prune, ..
            } => self.apply_inventory(inventory, *prune),
            Command::SubmitJob {
                kind,
                submitted_by,
                at_ms,
                no_queue,
            } => self.submit_job(kind, submitted_by, *at_ms, *no_queue),
            Command::Job {
                job_id,
                event,
                at_ms,
            } => self.jobs.record(
                *job_id,
                event,
                *at_ms,
                self.inventory.settings.jobs_retained_max,
            ),
            Command::Jobs { events } => {
                let mut last = Response::Applied { changed: false };
                for (i, c) in events.iter().enumerate() {
                    last = self.jobs.record(
                        c.job_id,
                        &c.event,
                        c.at_ms,
                        self.inventory.settings.jobs_retained_max,
                    );
                    if let Response::Refused { rule } = last {
                        return Response::Refused {
                            rule: format!(
                                "change {} of {} (job {}): {rule}",
                                i + 1,
                                events.len(),
                                c.job_id
                            ),
                        };
                    }
                }
                last
            }
            Command::RouteArraySteps {
                array,
                control_node,
            } => match self.inventory.arrays.get(array) {
                Some(spec) if spec.control_nodes.contains(control_node) => {
                    let before = self
                        .array_routes
                        .insert(array.clone(), control_node.clone());
                    Response::Applied {
                        changed: before.as_ref() != Some(control_node),
                    }
                }
                // The inventory changed since the leader chose: nothing to record.
                _ => Response::Applied { changed: false },
            },
        }
    }

    fn apply_inventory(&mut self, new: &Inventory, prune: bool) -> Response {
        let (merged, changes) = self.inventory.merged(new, prune);
        let errors = merged.validate(self);
        if !errors.is_empty() {
            return Response::InventoryInvalid { errors };
        }
        // S5: what an unfinished job uses stays as it is until the job ends.
        for job in self.jobs.unfinished() {
            let group = job.kind.group();
            let used = job.resources();
            let touched = changes.iter().find(|c| {
                let (kind, name) = c.what.split_once(' ').unwrap_or((&c.what, ""));
                (kind == "group" && name == group) || used.contains(&format!("{kind}:{name}"))
            });
            if let Some(c) = touched {
                return Response::Refused {
                    rule: format!(
                        "S5: {} is used by job {} until it ends; wait for it or cancel it",
                        c.what, job.id
                    ),
                };
            }
        }
        self.inventory = merged;
        Response::InventoryApplied { changes }
    }

    fn submit_job(
        &mut self,
        kind: &JobKind,
        submitted_by: &str,
        at_ms: u64,
        no_queue: bool,
    ) -> Response {
        let group = match self.inventory.resolve_group(kind.group()) {
            Ok(g) => g,
            Err(e) => return Response::InventoryInvalid { errors: vec![e] },
        };
        let errors = group.validate(self);
        if !errors.is_empty() {
            return Response::InventoryInvalid { errors };
        }
        let limits = StepLimits::default();
        let steps = match kind {
            JobKind::Backup { .. } => plan_backup(&group, &limits),
            JobKind::Prepare { .. } => plan_prepare(&group, &limits),
        };
        let response = self
            .jobs
            .submit(kind.clone(), steps, submitted_by, at_ms, no_queue);
        // What the job works on, kept with it: the copy catalogue reads it after the inventory
        // has moved on.
        if let Response::JobAccepted { job_id, .. } = &response
            && let Some(job) = self.jobs.jobs.get_mut(job_id)
        {
            std::sync::Arc::make_mut(job).pairs = group.members;
        }
        response
    }

    /// Records an agent's own description of itself. Only members may register (an agent that
    /// was never added, or was removed, is refused), and a removed node's record is never
    /// revived: node ids are not reused.
    fn register(&mut self, members: &BTreeMap<NodeId, String>, record: &NodeRecord) -> Response {
        if let Some(existing) = self.nodes.get(&record.node_id)
            && existing.deregistered_at_ms.is_some()
        {
            return Response::Refused {
                rule: format!(
                    "node {} was removed from the cluster and node ids are never reused; add the server again under a new node_id",
                    record.node_id
                ),
            };
        }
        let Some(admitted_at) = members.get(&record.node_id) else {
            return Response::Refused {
                rule: format!(
                    "node {} is not a member of the cluster (never added, or removed); an agent registers once `stillpoint cluster add` has made it a member",
                    record.node_id
                ),
            };
        };
        // The membership is where agents reach the node; a record saying otherwise would send
        // operators (and `--node NAME`) elsewhere.
        if *admitted_at != record.address {
            return Response::Refused {
                rule: format!(
                    "node {} is a member at {admitted_at}, so its record cannot say {}; to move a node, remove it and add the server again under a new node_id",
                    record.node_id, record.address
                ),
            };
        }
        if record.deregistered_at_ms.is_some() {
            return Response::Refused {
                rule: format!(
                    "node {} cannot register itself as removed; removal is `stillpoint cluster remove`",
                    record.node_id
                ),
            };
        }
        if record.name.trim().is_empty() {
            return Response::Refused {
                rule: format!("node {} has an empty name", record.node_id),
            };
        }
        if let Some(other) = self.nodes.values().find(|r| {
            r.name == record.name && r.node_id != record.node_id && r.deregistered_at_ms.is_none()
        }) {
            return Response::Refused {
                rule: format!(
                    "node names are unique: {:?} is already node {}",
                    record.name, other.node_id
                ),
            };
        }
        match self.nodes.get(&record.node_id) {
            Some(existing) if existing.same_as(record) => Response::Applied { changed: false },
            _ => {
                self.nodes.insert(record.node_id, record.clone());
                Response::Applied { changed: true }
            }
        }
    }

    /// The live (not deregistered) record of the agent called `name`.
    pub fn node_by_name(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes
            .values()
            .find(|r| r.name == name && r.deregistered_at_ms.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> BTreeMap<NodeId, String> {
        (1..=3).map(|id| (id, record(id, "x").address)).collect()
    }

    fn record(id: NodeId, name: &str) -> NodeRecord {
        NodeRecord {
            node_id: id,
            name: name.into(),
            address: format!("127.0.0.1:{}", 7000 + id),
            roles: [Role::Business].into(),
            version: "0.1.0".into(),
            registered_at_ms: 1_000 * id,
            deregistered_at_ms: None,
        }
    }

    #[test]
    fn registering_twice_is_idempotent_even_with_a_new_timestamp() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(&members(), &Command::RegisterNode(record(1, "db1"))),
            Response::Applied { changed: true }
        );
        let mut again = record(1, "db1");
        again.registered_at_ms += 5;
        assert_eq!(
            s.apply(&members(), &Command::RegisterNode(again)),
            Response::Applied { changed: false }
        );
        assert_eq!(s.nodes.len(), 1);
    }

    #[test]
    fn a_duplicate_name_is_refused_naming_the_owner() {
        let mut s = ClusterState::default();
        s.apply(&members(), &Command::RegisterNode(record(1, "db1")));
        let r = s.apply(&members(), &Command::RegisterNode(record(2, "db1")));
        assert!(
            r.refusal()
                .is_some_and(|rule| rule.contains("already node 1")),
            "{r:?}"
        );
        assert_eq!(s.nodes.len(), 1);
    }

    #[test]
    fn a_deregistered_name_can_be_reused_and_the_old_record_is_kept() {
        let mut s = ClusterState::default();
        s.apply(&members(), &Command::RegisterNode(record(1, "db1")));
        s.apply(
            &members(),
            &Command::DeregisterNode {
                node_id: 1,
                at_ms: 9,
            },
        );
        assert_eq!(
            s.apply(&members(), &Command::RegisterNode(record(2, "db1"))),
            Response::Applied { changed: true }
        );
        assert_eq!(s.node_by_name("db1").map(|r| r.node_id), Some(2));
        assert_eq!(s.nodes[&1].deregistered_at_ms, Some(9));
    }

    #[test]
    fn apply_is_deterministic_across_replicas() {
        let commands = [
            Command::RegisterNode(record(1, "a")),
            Command::RegisterNode(record(2, "b")),
            Command::RegisterNode(record(3, "a")),
            Command::DeregisterNode {
                node_id: 1,
                at_ms: 4,
            },
            Command::DeregisterNode {
                node_id: 7,
                at_ms: 5,
            },
        ];
        let run = || {
            let mut s = ClusterState::default();
            let out: Vec<_> = commands.iter().map(|c| s.apply(&members(), c)).collect();
            (s, out)
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn only_members_register_and_a_removed_record_is_never_revived() {
        let mut s = ClusterState::default();
        let r = s.apply(&members(), &Command::RegisterNode(record(4, "db4")));
        assert!(
            r.refusal()
                .is_some_and(|rule| rule.contains("not a member")),
            "{r:?}"
        );
        assert!(s.nodes.is_empty());
        s.apply(&members(), &Command::RegisterNode(record(3, "db3")));
        s.apply(
            &members(),
            &Command::DeregisterNode {
                node_id: 3,
                at_ms: 9,
            },
        );
        // Even while still listed in the membership (the removal entry came first or not).
        let r = s.apply(&members(), &Command::RegisterNode(record(3, "db3")));
        assert!(
            r.refusal().is_some_and(|rule| rule.contains("removed")),
            "{r:?}"
        );
        assert_eq!(s.nodes[&3].deregistered_at_ms, Some(9));
    }

    #[test]
    fn a_record_must_carry_the_address_the_member_was_admitted_at() {
        let mut s = ClusterState::default();
        let mut moved = record(2, "db2");
        moved.address = "10.9.9.9:1".into();
        let r = s.apply(&members(), &Command::RegisterNode(moved));
        assert!(
            r.refusal()
                .is_some_and(|rule| rule.contains("is a member at")),
            "{r:?}"
        );
        assert!(s.nodes.is_empty());
    }

    #[test]
    fn roles_parse_and_refuse_unknown_names() {
        assert_eq!("backup".parse::<Role>().unwrap(), Role::Backup);
        let e = "tape".parse::<Role>().unwrap_err();
        assert!(e.to_string().contains("business, backup, management"));
    }
}
