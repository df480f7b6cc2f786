//! Turning a group into the steps of a backup (BRIEF §3.1), fixed when the job is accepted.

use serde::{Deserialize, Serialize};

use super::step::{Phase, Step, StepCall, StepId, StepTarget};
use crate::inventory::Group;

/// How long each kind of step may take before its outcome is unknown. Stamped into the plan,
/// so changing them affects only jobs accepted later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLimits {
    /// Stopping an RV's users, flushing and unmounting it; mounting it (with a check).
    pub host_step_ms: u64,
    /// A difference replicate until `rpl/sync`.
    pub replicate_ms: u64,
    /// The array accepting a separate.
    pub separate_ms: u64,
    /// Releasing a quiesce (thaw, or remount and start applications).
    pub release_ms: u64,
    /// A separate's background copy until `separated`.
    pub await_separated_ms: u64,
    /// Added to a backup command's own timeout for the agent to report back.
    pub report_margin_ms: u64,
}

impl Default for StepLimits {
    fn default() -> Self {
        StepLimits {
            host_step_ms: 120_000,
            replicate_ms: 6 * 3_600_000,
            separate_ms: 30_000,
            release_ms: 120_000,
            await_separated_ms: 6 * 3_600_000,
            report_margin_ms: 10_000,
        }
    }
}

/// The steps of a backup of `group`, in dependency order (a step only depends on steps with a
/// lower id). Each step names only what its executor needs; the freeze window holds only the
/// quiesces, separates and releases, since the wait for sync comes before it.
pub fn plan_backup(group: &Group, limits: &StepLimits) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut add = |phase, target, call, after: Vec<StepId>, timeout_ms| -> StepId {
        let id = steps.len() as StepId;
        steps.push(Step::new(id, phase, target, call, after, timeout_ms));
        id
    };

    // Backup node(s): free every RV (S2: no replicate while an RV is mounted).
    let free: Vec<StepId> = group
        .members
        .iter()
        .map(|m| {
            add(
                Phase::Prepare,
                StepTarget::Node(m.rv.node.clone()),
                StepCall::FreeRv {
                    volume: m.rv.clone(),
                },
                vec![],
                limits.host_step_ms,
            )
        })
        .collect();
    // Arrays: replicate each pair once its RV is free, and wait for sync.
    let replicate: Vec<StepId> = group
        .members
        .iter()
        .zip(&free)
        .map(|(m, &f)| {
            add(
                Phase::Prepare,
                StepTarget::Array(m.mv_ld.array.clone()),
                StepCall::Replicate {
                    pair: m.pair.clone(),
                },
                vec![f],
                limits.replicate_ms,
            )
        })
        .collect();
    // Business nodes: quiesce every MV at once, once every pair is in sync. The host call
    // returns only when the static point is complete, which must be inside the deadline.
    let quiesce: Vec<StepId> = group
        .members
        .iter()
        .map(|m| {
            add(
                Phase::StaticPoint,
                StepTarget::Node(m.mv.node.clone()),
                StepCall::Quiesce {
                    volume: m.mv.clone(),
                    method: m.quiesce.clone(),
                    limit_ms: m.quiesce_ms_max,
                },
                replicate.clone(),
                m.quiesce_ms_max,
            )
        })
        .collect();
    // Arrays: separate every pair at once, once every MV is quiesced (S3) and every pair in
    // sync. The replicates are named too, not only reached through the quiesces: a round
    // without a static point skips the quiesces, and its separates must still wait.
    let separate: Vec<StepId> = group
        .members
        .iter()
        .map(|m| {
            add(
                Phase::StaticPoint,
                StepTarget::Array(m.mv_ld.array.clone()),
                StepCall::Separate {
                    pair: m.pair.clone(),
                },
                replicate.iter().chain(&quiesce).copied().collect(),
                limits.separate_ms,
            )
        })
        .collect();
    // Business nodes: release every MV at once, once every separate was accepted.
    let releases: Vec<StepId> = group
        .members
        .iter()
        .zip(&quiesce)
        .map(|(m, &q)| {
            add(
                Phase::StaticPoint,
                StepTarget::Node(m.mv.node.clone()),
                StepCall::Release {
                    volume: m.mv.clone(),
                    quiesce_step: q,
                },
                separate.clone(),
                limits.release_ms,
            )
        })
        .collect();
    // Arrays, then backup node(s): once the freeze window is over (every release reported, so
    // the round's label is known), wait for each pair to be separated; only then mount its RV
    // (S1).
    let mut mounted = Vec::new();
    for (m, &s) in group.members.iter().zip(&separate) {
        let await_separated = add(
            Phase::Publish,
            StepTarget::Array(m.mv_ld.array.clone()),
            StepCall::AwaitSeparated {
                pair: m.pair.clone(),
            },
            std::iter::once(s).chain(releases.iter().copied()).collect(),
            limits.await_separated_ms,
        );
        mounted.push(add(
            Phase::Publish,
            StepTarget::Node(m.rv.node.clone()),
            StepCall::MountRv {
                volume: m.rv.clone(),
            },
            vec![await_separated],
            limits.host_step_ms,
        ));
    }
    if let Some(cmd) = &group.backup_command {
        add(
            Phase::Publish,
            StepTarget::Node(cmd.node.clone()),
            StepCall::RunBackup {
                command: cmd.command.clone(),
                timeout_ms: cmd.timeout_ms,
            },
            mounted,
            cmd.timeout_ms.saturating_add(limits.report_margin_ms),
        );
    }
    steps
}

/// The steps of preparing `group`'s volumes (the seeds' "preparing volumes"): free every RV,
/// set every pair on its array, and run the first replicate — a whole-volume copy, since a
/// freshly set pair has no common content yet — until every pair is in sync. Pairs go in
/// parallel; each pair's steps in order.
pub fn plan_prepare(group: &Group, limits: &StepLimits) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for m in &group.members {
        let free = steps.len() as StepId;
        steps.push(Step::new(
            free,
            Phase::Prepare,
            StepTarget::Node(m.rv.node.clone()),
            StepCall::FreeRv {
                volume: m.rv.clone(),
            },
            vec![],
            limits.host_step_ms,
        ));
        let set = free + 1;
        steps.push(Step::new(
            set,
            Phase::Prepare,
            StepTarget::Array(m.mv_ld.array.clone()),
            StepCall::SetPair {
                pair: m.pair.clone(),
            },
            vec![free],
            limits.separate_ms,
        ));
        steps.push(Step::new(
            set + 1,
            Phase::Prepare,
            StepTarget::Array(m.mv_ld.array.clone()),
            StepCall::Replicate {
                pair: m.pair.clone(),
            },
            vec![set],
            limits.replicate_ms,
        ));
    }
    steps
}
