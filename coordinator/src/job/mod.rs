//! Jobs: a procedure planned as steps, driven by the leader, recorded in the replicated log.
//!
//! A job is accepted with a **plan** fixed from the inventory ([`plan_backup`]): steps, each
//! bound to one node (host steps) or one array (executed by an agent with that array's control
//! path), each with the steps it must wait for. Its progress changes only through
//! [`JobEvent`]s, applied by [`Job::record`] on every replica alike: pure, no clock (the
//! proposer stamps `at_ms`), and a transition the current state does not allow is refused with
//! the reason instead of rewriting history.
//!
//! What to do next is a pure function too: [`decide`] reads a job, the driver's term and the
//! time the driver read, and returns [`Action`]s (send a step, ask an executor about a step,
//! record an event). The runtime in `node/` performs them and proposes what came back; a
//! simulator can drive the same function with no cluster at all.
//!
//! ## How order and honesty are kept
//! - Dependencies carry the procedure's order: a separate waits for every quiesce of its group
//!   to be done, a release for every separate to be accepted, an RV mount for its pair to be
//!   separated and for every release to have reported (S1, S3).
//! - A step that may have been sent but has no recorded outcome is **unknown** until its
//!   executor is asked ([`resolve`]); a timeout makes a step unknown, never failed (S6). A new
//!   leader records that it took over ([`Job::takeover_events`]): every step recorded as
//!   dispatched becomes unknown, and every other step is asked about before its first send in
//!   the new term, because the predecessor did not wait for a log commit before sending and may
//!   have gone further than the log shows.
//! - A job never ends with one of its steps possibly out: it waits for every outstanding step,
//!   and after a takeover it first asks about every ready step its predecessor may have sent
//!   (S5: its locks pass to the next job only when nothing of it can still act).
//! - A deposed leader may have run steps, even whole rounds, the log never heard of. A new
//!   round remembers the term that armed it, and a step the term its last dependency completed
//!   under (`Step::floor_term`): an executor's record from before is not taken for its
//!   replicate, separate, wait or release (it came before its round, or before what it waits
//!   for, out of the plan's order); a round
//!   starts again by freeing the RVs, in case a lost round got as far as mounting them (S1, S2).
//!   A step is worn out by its sends in the current round ([`STEP_ATTEMPTS_MAX`]), not by the
//!   tokens of earlier rounds or a new leader's questions.
//! - The copy's label is computed from the steps, not asserted: consistent only if, in the last
//!   round of the static point, every quiesce was done before any separate was sent (the
//!   dependencies), every separate accepted before any release was sent (same), and every
//!   release reports the quiesce held throughout. A round that cannot give that is re-run as a
//!   new round (a fresh replicate and static point) up to [`ROUNDS_MAX`]; after that the copy
//!   is recorded crash-consistent, with the reason, and its RVs are checked before mounting.
//! - A PostgreSQL member's release result carries the `backup_label` its `pg_backup_stop`
//!   returned; [`decide`] hands it to that member's RV mount only when the release held
//!   throughout ([`crate::postgres`]), so a label never goes with a copy it does not describe.
//!
//! ## Caveats (what is not here yet)
//! - Only the backup procedure is planned; restore, replica use, host restart and recovery
//!   will be further planners on the same steps and events.
//! - Fencing on the executor side (refusing a token older than one seen, answering a repeated
//!   token from the journal, and recording the term of a probe so a deposed leader's late send
//!   is refused after a new leader asked) is the agent's; this module only issues tokens.
//! - Locks, queues, retention of history and the wiring into the state machine and the driver
//!   come next.

mod decide;
mod phases;
mod plan;
mod step;
pub mod wire;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
pub use stillpoint_storage::journal::FencingToken;

use crate::inventory::GroupMember;

pub use decide::{Action, Dispatch, Finding, Observed, PairSync, answered, decide, resolve};
pub use phases::FreezePhases;
pub use plan::{StepLimits, plan_backup, plan_prepare};
pub use step::{
    Phase, Step, StepCall, StepEvent, StepId, StepResult, StepState, StepTarget, TransitionError,
};

/// A job's id, unique in the cluster (assigned in log order).
pub type JobId = u64;

/// How many rounds of the static point a job tries before it settles for a crash-consistent
/// copy. Two: one retry covers a leader change or a lost quiesce inside the freeze window,
/// without holding the business servers in repeated freezes.
pub const ROUNDS_MAX: u32 = 2;

/// How many times one step is sent in one round before the job fails on it.
pub const STEP_ATTEMPTS_MAX: u32 = 5;

/// What a job does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// Split-mirror backup of a group (BRIEF §3.1): a copy on the RVs, labelled.
    Backup { group: String },
    /// Preparing a group's volumes: set every pair on its array and run the first whole-volume
    /// replicate until in sync. Makes no copy.
    Prepare { group: String },
}

impl JobKind {
    /// The group the job acts on.
    pub fn group(&self) -> &str {
        match self {
            JobKind::Backup { group } | JobKind::Prepare { group } => group,
        }
    }

    /// Whether the job ends with a copy on the RVs (and so a label).
    pub fn makes_copy(&self) -> bool {
        matches!(self, JobKind::Backup { .. })
    }
}

/// What a finished copy can be relied on for (S3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "label", rename_all = "snake_case")]
pub enum CopyLabel {
    /// Separated inside every MV's quiesce: a static point.
    Consistent,
    /// Needs a file-system check before use; `why` says what broke the static point.
    CrashConsistent { why: String },
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum JobEnd {
    /// A backup made its copy, labelled.
    Done {
        label: CopyLabel,
    },
    /// A job that makes no copy (prepare) did everything it planned.
    Finished,
    Failed {
        reason: String,
    },
    Cancelled {
        by: String,
    },
}

/// Where a job stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, waiting for `waiting_for` to release a pair or volume this job needs (S5).
    Queued {
        waiting_for: JobId,
    },
    Running,
    /// Cancel asked: nothing new is sent, held quiesces are released, then it ends.
    Cancelling {
        by: String,
    },
    Ended {
        end: JobEnd,
        at_ms: u64,
    },
}

/// A change to a job, as proposed by the driver (or an operator, for cancel) and applied by
/// every replica through [`Job::record`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    Dispatched {
        step: StepId,
        token: FencingToken,
    },
    Completed {
        step: StepId,
        token: FencingToken,
        result: StepResult,
    },
    Failed {
        step: StepId,
        token: FencingToken,
        reason: String,
    },
    LostTrack {
        step: StepId,
        token: FencingToken,
        why: String,
    },
    NotExecuted {
        step: StepId,
        token: FencingToken,
    },
    Skipped {
        steps: Vec<StepId>,
        why: String,
    },
    /// Re-run the replicate and the static point; with `without_static_point`, the quiesces
    /// and releases are skipped and the copy will be crash-consistent for `why`.
    NewRound {
        why: String,
        without_static_point: bool,
    },
    /// Keep the copy of the current round, labelled crash-consistent for `why`.
    AcceptCrashConsistent {
        why: String,
    },
    CancelRequested {
        by: String,
    },
    /// A new leader took over the job in `term`.
    TakenOver {
        term: u64,
    },
    Ended {
        end: JobEnd,
    },
}

/// An event the job refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job {job} has ended; nothing more can be recorded")]
    Ended { job: JobId },
    #[error("job {job} is queued: nothing is sent before it starts")]
    Queued { job: JobId },
    #[error("job {job} has no step {step}")]
    NoSuchStep { job: JobId, step: StepId },
    #[error("job {job}: {source}")]
    Transition {
        job: JobId,
        #[source]
        source: TransitionError,
    },
}

/// A job with its plan and progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    /// Who asked for it (the client's own statement until authentication exists).
    pub submitted_by: String,
    /// Proposer's wall clock, milliseconds since the Unix epoch.
    pub submitted_at_ms: u64,
    /// The group's pairs with their volumes and LDs, as the inventory held them when the job
    /// was planned: what the copy is of, still readable after the inventory changes.
    #[serde(default)]
    pub pairs: Vec<GroupMember>,
    pub steps: Vec<Step>,
    /// The round of the static point, from 1.
    pub round: u32,
    /// Set once the copy cannot be consistent any more, with the reason.
    pub crash_consistent_why: Option<String>,
    /// The term of the latest leader that took the job over from another.
    pub takeover_term: Option<u64>,
    pub state: JobState,
}

impl Job {
    pub fn new(
        id: JobId,
        kind: JobKind,
        submitted_by: String,
        submitted_at_ms: u64,
        steps: Vec<Step>,
    ) -> Job {
        Job {
            id,
            kind,
            submitted_by,
            submitted_at_ms,
            pairs: Vec::new(),
            steps,
            round: 1,
            crash_consistent_why: None,
            takeover_term: None,
            state: JobState::Running,
        }
    }

    /// Gives back the room its lists grew into while it ran (each step's history doubles as
    /// it grows): an ended job is read, never added to, and the history holds up to
    /// `jobs_retained_max` of them. Changes no value.
    pub fn shrink_to_fit(&mut self) {
        self.pairs.shrink_to_fit();
        self.steps.shrink_to_fit();
        for step in &mut self.steps {
            step.history.shrink_to_fit();
            step.after.shrink_to_fit();
        }
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state, JobState::Ended { .. })
    }

    /// Every pair and volume the plan touches, as `pair:NAME` and `volume:NODE:VOLUME`: what
    /// the job owns from start to end (S5).
    pub fn resources(&self) -> BTreeSet<String> {
        self.steps
            .iter()
            .filter_map(|s| wire::step_resource(&s.call))
            .collect()
    }

    fn step_mut(&mut self, step: StepId) -> Result<&mut Step, JobError> {
        let job = self.id;
        self.steps
            .get_mut(step as usize)
            .ok_or(JobError::NoSuchStep { job, step })
    }

    /// Applies one event. Pure; refused events change nothing.
    pub fn record(&mut self, event: &JobEvent, at_ms: u64) -> Result<(), JobError> {
        let job = self.id;
        if self.is_ended() {
            return Err(JobError::Ended { job });
        }
        if matches!(self.state, JobState::Queued { .. })
            && !matches!(event, JobEvent::CancelRequested { .. })
        {
            return Err(JobError::Queued { job });
        }
        let wrap = |source| JobError::Transition { job, source };
        match event {
            JobEvent::Dispatched { step, token } => {
                self.step_mut(*step)?.dispatch(*token, at_ms).map_err(wrap)
            }
            JobEvent::Completed {
                step,
                token,
                result,
            } => {
                self.step_mut(*step)?
                    .complete(*token, result.clone(), at_ms)
                    .map_err(wrap)?;
                // What waits for this step executes after it: nothing recorded under an older
                // term can be its execution. Not the backup command: it is not idempotent, and
                // its mounts completing again (a no-op remount) must not have it run twice.
                for s in self
                    .steps
                    .iter_mut()
                    .filter(|s| s.after.contains(step))
                    .filter(|s| !matches!(s.call, StepCall::RunBackup { .. }))
                {
                    s.floor_term = s.floor_term.max(token.term);
                }
                Ok(())
            }
            JobEvent::Failed {
                step,
                token,
                reason,
            } => self
                .step_mut(*step)?
                .fail(*token, reason.clone(), at_ms)
                .map_err(wrap),
            JobEvent::LostTrack { step, token, why } => self
                .step_mut(*step)?
                .lose_track(*token, why.clone(), at_ms)
                .map_err(wrap),
            JobEvent::NotExecuted { step, token } => self
                .step_mut(*step)?
                .not_executed(*token, at_ms)
                .map_err(wrap),
            JobEvent::Skipped { steps, why } => {
                // All or nothing: check every step first.
                for s in steps {
                    let st = self
                        .steps
                        .get(*s as usize)
                        .ok_or(JobError::NoSuchStep { job, step: *s })?;
                    if st.state != StepState::Pending {
                        return Err(wrap(TransitionError {
                            step: *s,
                            from: st.state.name(),
                            to: "skipped",
                            detail: String::new(),
                        }));
                    }
                }
                for s in steps {
                    self.step_mut(*s)?.skip(why.clone(), at_ms).map_err(wrap)?;
                }
                Ok(())
            }
            JobEvent::NewRound {
                why,
                without_static_point,
            } => self.new_round(why, *without_static_point, at_ms),
            JobEvent::AcceptCrashConsistent { why } => {
                self.crash_consistent_why.get_or_insert_with(|| why.clone());
                Ok(())
            }
            JobEvent::CancelRequested { by } => {
                match self.state {
                    JobState::Running => self.state = JobState::Cancelling { by: by.clone() },
                    // Nothing was sent: it ends at once.
                    JobState::Queued { .. } => {
                        self.state = JobState::Ended {
                            end: JobEnd::Cancelled { by: by.clone() },
                            at_ms,
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
            JobEvent::TakenOver { term } => {
                self.takeover_term = self.takeover_term.max(Some(*term));
                Ok(())
            }
            JobEvent::Ended { end } => {
                self.state = JobState::Ended {
                    end: end.clone(),
                    at_ms,
                };
                Ok(())
            }
        }
    }

    /// The steps a new round sends again: free the RVs, replicate, the static point, and the
    /// wait for separated. The RVs are freed again because a deposed leader may have run a
    /// round the log lost as far as mounting them (S2: no replicate onto a mounted RV).
    fn round_steps(&self) -> impl Iterator<Item = StepId> + '_ {
        self.steps
            .iter()
            .filter(|s| {
                s.phase == Phase::StaticPoint
                    || matches!(
                        s.call,
                        StepCall::FreeRv { .. }
                            | StepCall::Replicate { .. }
                            | StepCall::AwaitSeparated { .. }
                    )
            })
            .map(|s| s.id)
    }

    fn new_round(
        &mut self,
        why: &str,
        without_static_point: bool,
        at_ms: u64,
    ) -> Result<(), JobError> {
        let job = self.id;
        let ids: Vec<StepId> = self.round_steps().collect();
        // The leader recording the round took the job over in its term (or nobody did yet,
        // and there is no earlier leader's send to tell apart).
        let armed_term = self.takeover_term.unwrap_or(0);
        // All or nothing: refuse while any of them is outstanding.
        if let Some(s) = ids.iter().map(|&i| &self.steps[i as usize]).find(|s| {
            matches!(
                s.state,
                StepState::Dispatched { .. } | StepState::Unknown { .. }
            )
        }) {
            return Err(JobError::Transition {
                job,
                source: TransitionError {
                    step: s.id,
                    from: s.state.name(),
                    to: "pending",
                    detail: " (a new round waits until the last one is settled)".into(),
                },
            });
        }
        for &i in &ids {
            let s = &mut self.steps[i as usize];
            s.rearm(armed_term, at_ms)
                .map_err(|source| JobError::Transition { job, source })?;
            let static_step = matches!(s.call, StepCall::Quiesce { .. } | StepCall::Release { .. });
            if without_static_point && static_step {
                s.skip(format!("no static point this round: {why}"), at_ms)
                    .map_err(|source| JobError::Transition { job, source })?;
            }
        }
        self.round += 1;
        if without_static_point {
            self.crash_consistent_why
                .get_or_insert_with(|| why.to_string());
        }
        Ok(())
    }

    /// The events a new leader records before sending anything: it took over, and every step
    /// recorded as dispatched becomes unknown, to be resolved by asking its executor.
    pub fn takeover_events(&self, term: u64) -> Vec<JobEvent> {
        if self.is_ended() {
            return Vec::new();
        }
        let mut events = vec![JobEvent::TakenOver { term }];
        for s in &self.steps {
            if let StepState::Dispatched { token, .. } = &s.state {
                events.push(JobEvent::LostTrack {
                    step: s.id,
                    token: *token,
                    why: format!(
                        "leader changed (now term {term}) before its outcome was recorded"
                    ),
                });
            }
        }
        events
    }

    /// Whether `step` must be asked about before it is sent: a leader took the job over since
    /// the step was last known not to be out.
    pub fn must_ask_first(&self, step: &Step) -> bool {
        self.takeover_term.is_some_and(|t| step.cleared_term < t)
    }

    /// Pending with every dependency settled.
    pub fn ready(&self, step: &Step) -> bool {
        step.state == StepState::Pending
            && step
                .after
                .iter()
                .all(|&d| self.steps[d as usize].is_settled())
    }

    /// The copy's label, once every release of the last round has settled; `None` before.
    /// Computed from the steps: consistent only if every quiesce is done and every release
    /// reports the quiesce held throughout.
    pub fn label(&self) -> Option<CopyLabel> {
        let mut quiesces = 0;
        for s in &self.steps {
            match (&s.call, &s.state) {
                (StepCall::Quiesce { .. }, StepState::Done { .. }) => quiesces += 1,
                (StepCall::Release { .. }, StepState::Done { .. })
                | (StepCall::Release { .. }, StepState::Skipped { .. })
                | (StepCall::Quiesce { .. }, StepState::Skipped { .. }) => {}
                (StepCall::Release { .. } | StepCall::Quiesce { .. }, _) => return None,
                _ => {}
            }
        }
        if let Some(why) = &self.crash_consistent_why {
            return Some(CopyLabel::CrashConsistent { why: why.clone() });
        }
        let lost: Vec<String> = self
            .steps
            .iter()
            .filter_map(|s| match (&s.call, s.result()) {
                (
                    StepCall::Release { volume, .. },
                    Some(StepResult::Released {
                        held_throughout: false,
                        ..
                    }),
                ) => Some(volume.to_string()),
                (StepCall::Release { volume, .. }, None) => Some(volume.to_string()),
                _ => None,
            })
            .collect();
        if !lost.is_empty() {
            return Some(CopyLabel::CrashConsistent {
                why: format!(
                    "the quiesce of {} did not hold until its release",
                    lost.join(", ")
                ),
            });
        }
        if quiesces == 0 {
            return Some(CopyLabel::CrashConsistent {
                why: "no MV was quiesced".into(),
            });
        }
        Some(CopyLabel::Consistent)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_postgres;
