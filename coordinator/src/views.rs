//! What operators read about jobs, computed from the job table: pure functions, serde types.
//!
//! The job history can hold `settings.jobs_retained_max` ended jobs (10,000 by default), each
//! with every step's full history, so the views that list jobs carry **summaries** only: the
//! state, who and when, how the job ended, and how many of its steps are settled. One job in
//! full (every step and its history) is read by id. The **copy catalogue** lists every backup
//! that ended done: its group, when it ended, its label and why, and for each pair the MV and
//! RV volumes and LDs as they were when the job was planned (the inventory may have changed
//! since). [`step_changes`] turns two readings of one job into the timeline lines `job watch`
//! prints.

use serde::{Deserialize, Serialize};

use crate::JobTable;
use crate::inventory::{LdRef, VolumeRef};
use crate::job::{
    CopyLabel, Job, JobEnd, JobId, JobKind, JobState, Step, StepCall, StepId, StepResult, StepState,
};

/// One line of `job list`: a job without its step histories.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: JobId,
    pub kind: JobKind,
    /// The group the job works on.
    pub group: String,
    /// `queued`, `running`, `cancelling` or `ended`.
    pub state: String,
    /// For a queued job: the job it waits for.
    pub waiting_for: Option<JobId>,
    /// For a cancelling job: who asked.
    pub cancelled_by: Option<String>,
    pub submitted_by: String,
    /// Proposer's wall clock, milliseconds since the Unix epoch.
    pub submitted_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub end: Option<JobEnd>,
    /// The round of the static point, from 1.
    pub round: u32,
    /// Steps done or skipped.
    pub steps_settled: u32,
    pub steps_total: u32,
}

/// What a job does, in a few words: `backup payroll`, `prepare payroll`.
pub fn job_text(kind: &JobKind) -> String {
    match kind {
        JobKind::Backup { group } => format!("backup {group}"),
        JobKind::Prepare { group } => format!("prepare {group}"),
    }
}

/// The name of a job's state, as the views spell it.
pub fn state_name(state: &JobState) -> &'static str {
    match state {
        JobState::Queued { .. } => "queued",
        JobState::Running => "running",
        JobState::Cancelling { .. } => "cancelling",
        JobState::Ended { .. } => "ended",
    }
}

/// The summary of one job.
pub fn job_summary(job: &Job) -> JobSummary {
    let (waiting_for, cancelled_by, ended_at_ms, end) = match &job.state {
        JobState::Queued { waiting_for } => (Some(*waiting_for), None, None, None),
        JobState::Running => (None, None, None, None),
        JobState::Cancelling { by } => (None, Some(by.clone()), None, None),
        JobState::Ended { end, at_ms } => (None, None, Some(*at_ms), Some(end.clone())),
    };
    JobSummary {
        id: job.id,
        kind: job.kind.clone(),
        group: job.kind.group().to_string(),
        state: state_name(&job.state).to_string(),
        waiting_for,
        cancelled_by,
        submitted_by: job.submitted_by.clone(),
        submitted_at_ms: job.submitted_at_ms,
        ended_at_ms,
        end,
        round: job.round,
        steps_settled: job.steps.iter().filter(|s| s.is_settled()).count() as u32,
        steps_total: job.steps.len() as u32,
    }
}

/// Every job the table holds (unfinished and retained ended ones), by id.
pub fn job_summaries(table: &JobTable) -> Vec<JobSummary> {
    table.jobs.values().map(|j| job_summary(j)).collect()
}

/// One pair of a copy: the MV it was taken from and the RV that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyPair {
    pub pair: String,
    pub mv: VolumeRef,
    pub mv_ld: LdRef,
    pub rv: VolumeRef,
    pub rv_ld: LdRef,
    /// How the MV was brought to its static point: `unmount`, `freeze`, `hooks_only`, or
    /// `postgresql` (online backup mode: the copy carries its backup label and recovers to the
    /// backup's end from the WAL archive). A PostgreSQL volume copied under `freeze` is
    /// crash-consistent by design: PostgreSQL recovers it from its own WAL.
    #[serde(default)]
    pub quiesce: String,
}

/// One entry of the copy catalogue: a backup job that ended done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyEntry {
    pub job_id: JobId,
    pub group: String,
    pub submitted_at_ms: u64,
    /// When the job ended (the copy is complete), proposer's wall clock.
    pub ended_at_ms: u64,
    /// Consistent, or crash-consistent with why.
    pub label: CopyLabel,
    pub pairs: Vec<CopyPair>,
}

/// The catalogue entry of `job`, if it is a backup that ended done.
pub fn copy_entry(job: &Job) -> Option<CopyEntry> {
    let JobState::Ended {
        end: JobEnd::Done { label },
        at_ms,
    } = &job.state
    else {
        return None;
    };
    if !job.kind.makes_copy() {
        return None;
    }
    Some(CopyEntry {
        job_id: job.id,
        group: job.kind.group().to_string(),
        submitted_at_ms: job.submitted_at_ms,
        ended_at_ms: *at_ms,
        label: label.clone(),
        pairs: job
            .pairs
            .iter()
            .map(|m| CopyPair {
                pair: m.pair.clone(),
                mv: m.mv.clone(),
                mv_ld: m.mv_ld.clone(),
                rv: m.rv.clone(),
                rv_ld: m.rv_ld.clone(),
                quiesce: m.quiesce.name().to_string(),
            })
            .collect(),
    })
}

/// The copies the retained history holds, oldest first (in the order their jobs ended), of
/// `group` only when given.
pub fn catalogue(table: &JobTable, group: Option<&str>) -> Vec<CopyEntry> {
    table
        .ended
        .iter()
        .filter_map(|id| table.jobs.get(id))
        .filter(|j| group.is_none_or(|g| j.kind.group() == g))
        .filter_map(|j| copy_entry(j))
        .collect()
}

/// What a step does, in a few words: `quiesce db1:data`, `separate p0`.
pub fn step_what(call: &StepCall) -> String {
    match call {
        StepCall::FreeRv { volume } => format!("free-rv {volume}"),
        StepCall::SetPair { pair } => format!("set-pair {pair}"),
        StepCall::Replicate { pair } => format!("replicate {pair}"),
        StepCall::Quiesce { volume, .. } => format!("quiesce {volume}"),
        StepCall::Separate { pair } => format!("separate {pair}"),
        StepCall::Release { volume, .. } => format!("release {volume}"),
        StepCall::AwaitSeparated { pair } => format!("await-separated {pair}"),
        StepCall::MountRv { volume } => format!("mount-rv {volume}"),
        StepCall::RunBackup { command, .. } => format!("backup-command {}", command.join(" ")),
    }
}

/// What a step reported, in a few words: `quiesce 17`, `held throughout`.
pub fn result_text(result: &StepResult) -> String {
    match result {
        StepResult::RvFreed => "RV freed".into(),
        StepResult::PairSet => "pair set".into(),
        StepResult::InSync => "in sync".into(),
        StepResult::Quiesced { quiesce_id } => format!("quiesce {quiesce_id}"),
        StepResult::SeparateAccepted => "separate accepted".into(),
        StepResult::Released {
            held_throughout: true,
            backup_label: Some(label),
        } => format!(
            "held throughout; PostgreSQL online backup ended at {}",
            label.stop_lsn
        ),
        StepResult::Released {
            held_throughout: true,
            ..
        } => "held throughout".into(),
        StepResult::Released {
            held_throughout: false,
            ..
        } => "the quiesce did NOT hold until the release".into(),
        StepResult::Separated => "separated".into(),
        StepResult::RvMounted { repaired: false } => "mounted".into(),
        StepResult::RvMounted { repaired: true } => "checked, repaired, mounted".into(),
        StepResult::BackupRan { exit_code } => format!("exit code {exit_code}"),
    }
}

/// The detail a timeline line shows for a state a step entered.
pub fn state_detail(state: &StepState) -> Option<String> {
    match state {
        StepState::Pending => None,
        StepState::Dispatched { token, .. } => {
            Some(format!("attempt {}, term {}", token.attempt, token.term))
        }
        StepState::Unknown { why, .. } => Some(why.clone()),
        StepState::Done { result, .. } => Some(result_text(result)),
        StepState::Failed { reason, .. } => Some(reason.clone()),
        StepState::Skipped { why } => Some(why.clone()),
    }
}

/// One state change of one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepChange {
    /// Proposer's wall clock when the step entered `to`.
    pub at_ms: u64,
    pub step: StepId,
    /// What the step does (`quiesce db1:data`).
    pub what: String,
    pub from: String,
    pub to: String,
    pub detail: Option<String>,
}

/// The state changes of `now`'s steps that `seen` (an earlier reading of the same job) did
/// not have yet, in time order (then step order). With no earlier reading, every change so far.
pub fn step_changes(seen: Option<&Job>, now: &Job) -> Vec<StepChange> {
    let mut changes = Vec::new();
    for step in &now.steps {
        let known = seen
            .and_then(|j| j.steps.get(step.id as usize))
            .map_or(0, |s: &Step| s.history.len());
        for i in known..step.history.len() {
            let from = match i {
                0 => "pending",
                _ => step.history[i - 1].state.name(),
            };
            let entered = &step.history[i];
            changes.push(StepChange {
                at_ms: entered.at_ms,
                step: step.id,
                what: step_what(&step.call),
                from: from.to_string(),
                to: entered.state.name().to_string(),
                detail: state_detail(&entered.state),
            });
        }
    }
    changes.sort_by_key(|c| (c.at_ms, c.step));
    changes
}

/// How a job ended, in a few words: `done, consistent`, `finished`, `failed: step 3 ...`.
pub fn end_text(end: &JobEnd) -> String {
    match end {
        JobEnd::Done {
            label: CopyLabel::Consistent,
        } => "done, consistent".into(),
        JobEnd::Done {
            label: CopyLabel::CrashConsistent { why },
        } => format!("done, crash-consistent: {why}"),
        JobEnd::Finished => "finished".into(),
        JobEnd::Failed { reason } => format!("failed: {reason}"),
        JobEnd::Cancelled { by } => format!("cancelled by {by}"),
    }
}

#[cfg(test)]
mod tests;
