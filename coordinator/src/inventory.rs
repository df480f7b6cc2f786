//! The parts of the site inventory a job is planned from: pairs, the volumes on either side of
//! them, and consistency groups.
//!
//! These are plain values: the `node` crate reads them from the operator's `site.toml` (and
//! maps a [`InventoryError::path`] back to the file's line), the state machine will hold them,
//! and [`crate::job::plan_backup`] turns one group into a plan. Checking them against the node
//! registry is pure too ([`Group::validate`]); checks against a live array are the caller's.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{ClusterState, Role};

/// One LD of one array, as `ARRAY:LD`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LdRef {
    pub array: String,
    pub ld: u32,
}

impl std::fmt::Display for LdRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.array, self.ld)
    }
}

/// A volume as one host sees it: the node's name and the volume's name in that node's `[host]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VolumeRef {
    pub node: String,
    pub volume: String,
}

impl std::fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.node, self.volume)
    }
}

/// How the MV of a group member is brought to a static point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuiesceMethod {
    /// Stop applications, flush, unmount: the full static point for plain files.
    Unmount,
    /// Freeze the file system: writers block, the volume stays mounted.
    Freeze,
    /// Only the application's hooks (e.g. a database's online-backup mode); the volume stays
    /// mounted and writable, so consistency is the application's promise.
    HooksOnly,
}

/// A pair of one group, with the volume on each side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The pair's name in the inventory.
    pub pair: String,
    pub mv_ld: LdRef,
    pub rv_ld: LdRef,
    /// The MV as its business node sees it.
    pub mv: VolumeRef,
    /// The RV as its backup node sees it.
    pub rv: VolumeRef,
    pub quiesce: QuiesceMethod,
    /// The longest the MV may stay quiesced; the host resumes it by itself after this (S4).
    pub quiesce_ms_max: u64,
}

/// The command a backup node runs once every RV of the group is mounted (the tape software).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCommand {
    pub node: String,
    pub command: Vec<String>,
    pub timeout_ms: u64,
}

/// A consistency group: pairs whose RVs must form one static point together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub members: Vec<GroupMember>,
    pub backup_command: Option<BackupCommand>,
}

/// A rule of the inventory that a value breaks. `path` names the value the way the site file
/// does (`groups.payroll.members[1].rv`), so the reader can point at its line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {rule}")]
pub struct InventoryError {
    pub path: String,
    pub rule: String,
}

impl Group {
    /// Checks the group against itself and the node registry. Returns every broken rule, not
    /// just the first, so an operator fixes a file in one pass.
    pub fn validate(&self, registry: &ClusterState) -> Vec<InventoryError> {
        let mut errors = Vec::new();
        let here = |field: String| format!("groups.{}.{field}", self.name);
        if self.members.is_empty() {
            errors.push(InventoryError {
                path: here("members".into()),
                rule: "a group needs at least one pair".into(),
            });
        }
        let mut pairs = BTreeSet::new();
        let mut mvs = BTreeSet::new();
        let mut rvs = BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let at = |field: &str| here(format!("members[{i}].{field}"));
            let mut broke = |path: String, rule: String| errors.push(InventoryError { path, rule });
            if !pairs.insert(&m.pair) {
                broke(
                    at("pair"),
                    format!("pair {:?} is listed twice in the group", m.pair),
                );
            }
            if !mvs.insert(&m.mv) {
                broke(
                    at("mv"),
                    format!("MV volume {} is backed up twice in one group", m.mv),
                );
            }
            if !rvs.insert(&m.rv) {
                broke(at("rv"), format!("RV volume {} is used twice", m.rv));
            }
            if m.mv_ld == m.rv_ld {
                broke(at("rv"), format!("the RV's LD {} is the MV's", m.rv_ld));
            }
            if m.quiesce_ms_max == 0 {
                broke(
                    at("quiesce_ms_max"),
                    "a quiesce needs a deadline above 0 ms".into(),
                );
            }
            for (field, vol, role) in [("mv", &m.mv, Role::Business), ("rv", &m.rv, Role::Backup)] {
                match registry.node_by_name(&vol.node) {
                    None => broke(
                        at(field),
                        format!("no node named {:?} is registered", vol.node),
                    ),
                    Some(n) if !n.roles.contains(&role) => broke(
                        at(field),
                        format!(
                            "node {:?} does not have the {role} role (it has: {})",
                            vol.node,
                            n.roles
                                .iter()
                                .map(|r| r.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        if let Some(cmd) = &self.backup_command {
            let at = |field: &str| here(format!("backup_command.{field}"));
            if cmd.command.is_empty() {
                errors.push(InventoryError {
                    path: at("command"),
                    rule: "the backup command is empty".into(),
                });
            }
            if cmd.timeout_ms == 0 {
                errors.push(InventoryError {
                    path: at("timeout_ms"),
                    rule: "the backup command needs a timeout above 0 ms".into(),
                });
            }
            if !self.members.iter().any(|m| m.rv.node == cmd.node) {
                errors.push(InventoryError {
                    path: at("node"),
                    rule: format!(
                        "node {:?} mounts none of the group's RVs, so it has nothing to back up",
                        cmd.node
                    ),
                });
            }
        }
        errors
    }
}
