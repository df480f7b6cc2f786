//! The site inventory: arrays and which agents reach them, pairs, the volumes on either side of
//! them, and consistency groups — what jobs are planned from.
//!
//! These are plain values: the `node` crate reads them from the operator's `site.toml` (and
//! maps an [`InventoryError::path`] back to the file's line), the state machine holds them
//! ([`Inventory`], changed only by [`crate::Command::ApplyInventory`]), and
//! [`crate::job::plan_backup`] turns one resolved [`Group`] into a plan. Checking them against
//! the node registry is pure ([`Inventory::validate`]); checks against a live array are the
//! caller's.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::postgres::PostgresQuiesce;
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuiesceMethod {
    /// Stop applications, flush, unmount: the full static point for plain files.
    Unmount,
    /// Freeze the file system: writers block, the volume stays mounted.
    Freeze,
    /// Only the application's hooks (e.g. a database's online-backup mode); the volume stays
    /// mounted and writable, so consistency is the application's promise.
    HooksOnly,
    /// PostgreSQL's online backup mode (`pg_backup_start` .. `pg_backup_stop` in one session
    /// held through the separate); the copy gets the backup's label and recovers to its end
    /// from the WAL archive. See [`crate::postgres`].
    Postgresql(Box<PostgresQuiesce>),
}

impl QuiesceMethod {
    /// The method's name as the site file writes it.
    pub fn name(&self) -> &'static str {
        match self {
            QuiesceMethod::Unmount => "unmount",
            QuiesceMethod::Freeze => "freeze",
            QuiesceMethod::HooksOnly => "hooks_only",
            QuiesceMethod::Postgresql(_) => "postgresql",
        }
    }
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
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
            if let QuiesceMethod::Postgresql(pg) = &m.quiesce {
                for (field, rule) in pg.problems() {
                    broke(at(&format!("postgresql.{field}")), rule);
                }
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

/// Local (same array) or remote (two arrays) replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationKind {
    Ddr,
    Rdr,
}

/// How a pair mirrors MV writes while replicating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyControl {
    Sync,
    SemiSync,
    Background,
}

/// An array and the agents that have a control path to it (the `[[arrays]]` of their
/// `node.toml`): array steps run on one of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArraySpec {
    pub name: String,
    pub control_nodes: BTreeSet<String>,
}

/// A replication pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairSpec {
    pub name: String,
    pub mv: LdRef,
    pub rv: LdRef,
    pub kind: ReplicationKind,
    pub copy_control: CopyControl,
}

/// A volume of one host and the LD behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub node: String,
    /// The volume's name in that node's `[host]`.
    pub volume: String,
    pub ld: LdRef,
}

/// A pair of a group as the operator writes it: by names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpec {
    pub pair: String,
    pub mv: VolumeRef,
    pub rv: VolumeRef,
    pub quiesce: QuiesceMethod,
    pub quiesce_ms_max: u64,
}

/// A consistency group as the operator writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    pub members: Vec<MemberSpec>,
    pub backup_command: Option<BackupCommand>,
}

/// Site-wide settings kept with the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How many ended jobs the state keeps (oldest forgotten first).
    pub jobs_retained_max: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            jobs_retained_max: 10_000,
        }
    }
}

/// The whole inventory, keyed by name (volumes by `node:volume`), so it is compared and
/// serialised deterministically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub arrays: BTreeMap<String, ArraySpec>,
    pub pairs: BTreeMap<String, PairSpec>,
    pub volumes: BTreeMap<String, VolumeSpec>,
    pub groups: BTreeMap<String, GroupSpec>,
    #[serde(default)]
    pub settings: Settings,
}

/// One difference between the inventory in force and a proposed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `add`, `change` or `remove`.
    pub verb: String,
    /// What, e.g. `pair p0`.
    pub what: String,
}

fn diff_map<T: PartialEq>(
    kind: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    prune: bool,
    out: &mut Vec<Change>,
) {
    let change = |verb: &str, name: &str| Change {
        verb: verb.into(),
        what: format!("{kind} {name}"),
    };
    for (name, v) in new {
        match old.get(name) {
            None => out.push(change("add", name)),
            Some(o) if o != v => out.push(change("change", name)),
            Some(_) => {}
        }
    }
    if prune {
        out.extend(
            old.keys()
                .filter(|k| !new.contains_key(*k))
                .map(|k| change("remove", k)),
        );
    }
}

fn merge_map<T: Clone>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    prune: bool,
) -> BTreeMap<String, T> {
    let mut merged = if prune { BTreeMap::new() } else { old.clone() };
    merged.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

impl Inventory {
    /// The inventory after applying `new` declaratively: everything in `new` is added or
    /// replaced; what `new` does not mention stays unless `prune`. Also returns the changes.
    pub fn merged(&self, new: &Inventory, prune: bool) -> (Inventory, Vec<Change>) {
        let mut changes = Vec::new();
        diff_map("array", &self.arrays, &new.arrays, prune, &mut changes);
        diff_map("pair", &self.pairs, &new.pairs, prune, &mut changes);
        diff_map("volume", &self.volumes, &new.volumes, prune, &mut changes);
        diff_map("group", &self.groups, &new.groups, prune, &mut changes);
        if self.settings != new.settings {
            changes.push(Change {
                verb: "change".into(),
                what: "settings".into(),
            });
        }
        let merged = Inventory {
            arrays: merge_map(&self.arrays, &new.arrays, prune),
            pairs: merge_map(&self.pairs, &new.pairs, prune),
            volumes: merge_map(&self.volumes, &new.volumes, prune),
            groups: merge_map(&self.groups, &new.groups, prune),
            settings: new.settings.clone(),
        };
        (merged, changes)
    }

    /// The group called `name` with every name resolved, ready to plan.
    pub fn resolve_group(&self, name: &str) -> Result<Group, InventoryError> {
        let spec = self.groups.get(name).ok_or_else(|| InventoryError {
            path: format!("groups.{name}"),
            rule: format!(
                "no group named {name:?} (known: {})",
                self.groups.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })?;
        let members = spec
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let pair = self.pairs.get(&m.pair).ok_or_else(|| InventoryError {
                    path: format!("groups.{name}.members[{i}].pair"),
                    rule: format!("no pair named {:?}", m.pair),
                })?;
                Ok(GroupMember {
                    pair: m.pair.clone(),
                    mv_ld: pair.mv.clone(),
                    rv_ld: pair.rv.clone(),
                    mv: m.mv.clone(),
                    rv: m.rv.clone(),
                    quiesce: m.quiesce.clone(),
                    quiesce_ms_max: m.quiesce_ms_max,
                })
            })
            .collect::<Result<Vec<_>, InventoryError>>()?;
        Ok(Group {
            name: name.to_string(),
            members,
            backup_command: spec.backup_command.clone(),
        })
    }

    /// Every rule the inventory breaks, against itself and the node registry.
    pub fn validate(&self, registry: &ClusterState) -> Vec<InventoryError> {
        let mut errors = Vec::new();
        let mut broke = |path: String, rule: String| errors.push(InventoryError { path, rule });
        let known_node = |n: &str| registry.node_by_name(n).is_some();
        for (name, a) in &self.arrays {
            for n in a.control_nodes.iter().filter(|n| !known_node(n)) {
                broke(
                    format!("arrays.{name}.control_nodes"),
                    format!("no node named {n:?} is registered"),
                );
            }
        }
        let mut roles: BTreeMap<&LdRef, &str> = BTreeMap::new();
        for (name, p) in &self.pairs {
            for (field, ld) in [("mv", &p.mv), ("rv", &p.rv)] {
                if !self.arrays.contains_key(&ld.array) {
                    broke(
                        format!("pairs.{name}.{field}"),
                        format!("no array named {:?} in the inventory", ld.array),
                    );
                }
            }
            match (p.kind, p.mv.array == p.rv.array) {
                (ReplicationKind::Ddr, false) => broke(
                    format!("pairs.{name}.kind"),
                    "a DDR pair has its MV and RV on one array".into(),
                ),
                (ReplicationKind::Rdr, true) => broke(
                    format!("pairs.{name}.kind"),
                    "an RDR pair has its MV and RV on two arrays".into(),
                ),
                _ => {}
            }
            if p.kind == ReplicationKind::Ddr && p.copy_control == CopyControl::SemiSync {
                broke(
                    format!("pairs.{name}.copy_control"),
                    "semi-sync copy control is for RDR pairs only".into(),
                );
            }
            // An LD plays one role: an RV is in one pair, and an RV is never an MV.
            if let Some(other) = roles.insert(&p.rv, name) {
                broke(
                    format!("pairs.{name}.rv"),
                    format!("LD {} is already the RV of pair {other}", p.rv),
                );
            }
            if self.pairs.values().any(|o| o.rv == p.mv) {
                broke(
                    format!("pairs.{name}.mv"),
                    format!("LD {} is the RV of another pair", p.mv),
                );
            }
        }
        for (key, v) in &self.volumes {
            if *key != format!("{}:{}", v.node, v.volume) {
                broke(
                    format!("volumes.{key}"),
                    format!("is keyed {key:?} but names {}:{}", v.node, v.volume),
                );
            }
            if !known_node(&v.node) {
                broke(
                    format!("volumes.{key}.node"),
                    format!("no node named {:?} is registered", v.node),
                );
            }
            if !self.arrays.contains_key(&v.ld.array) {
                broke(
                    format!("volumes.{key}.ld"),
                    format!("no array named {:?} in the inventory", v.ld.array),
                );
            }
        }
        for (name, g) in &self.groups {
            for (i, m) in g.members.iter().enumerate() {
                let Some(pair) = self.pairs.get(&m.pair) else {
                    broke(
                        format!("groups.{name}.members[{i}].pair"),
                        format!("no pair named {:?}", m.pair),
                    );
                    continue;
                };
                for (field, vol, ld) in [("mv", &m.mv, &pair.mv), ("rv", &m.rv, &pair.rv)] {
                    match self.volumes.get(&vol.to_string()) {
                        None => broke(
                            format!("groups.{name}.members[{i}].{field}"),
                            format!("no volume {vol} in the inventory"),
                        ),
                        Some(v) if v.ld != *ld => broke(
                            format!("groups.{name}.members[{i}].{field}"),
                            format!(
                                "volume {vol} is on LD {}, but pair {}'s {field} is LD {ld}",
                                v.ld, m.pair
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
        for name in self.groups.keys() {
            if let Ok(group) = self.resolve_group(name) {
                errors.extend(group.validate(registry));
            }
        }
        errors
    }
}
