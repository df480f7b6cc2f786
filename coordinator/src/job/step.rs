//! One step of a job: what it does, where, after what, and where it stands.

use serde::{Deserialize, Serialize};
use stillpoint_storage::journal::FencingToken;

use crate::inventory::{QuiesceMethod, VolumeRef};
use crate::postgres::BackupLabel;

/// A step's index in its job's plan.
pub type StepId = u32;

/// How a found token relates to the one a driver holds for the same step.
pub(crate) trait TokenOrder {
    /// A later attempt, or this attempt as sent in this term or an earlier one.
    fn supersedes_or_is(&self, held: &FencingToken) -> bool;
}

impl TokenOrder for FencingToken {
    fn supersedes_or_is(&self, held: &FencingToken) -> bool {
        self.attempt > held.attempt || (self.attempt == held.attempt && self.term <= held.term)
    }
}

/// Who executes a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepTarget {
    /// The agent of this node, on its own host.
    Node(String),
    /// An agent with a control path to this array (never the leader reaching it itself, unless
    /// the leader is such an agent).
    Array(String),
}

/// The part of a procedure a step belongs to. The static point is the freeze window: it may
/// be re-run as a new round when a round cannot give a consistent copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Before the freeze window: free the RVs, bring every pair to sync.
    Prepare,
    /// Quiesce every MV, separate every pair, release every MV.
    StaticPoint,
    /// After the freeze window: wait for the separates, mount the RVs, run the backup.
    Publish,
}

/// What a step does. Every call is idempotent on its executor: repeating it after it took
/// effect reports the effect instead of doing it twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum StepCall {
    /// Backup node: stop the RV's users, flush, unmount it (done if already unmounted).
    FreeRv { volume: VolumeRef },
    /// Array: set the pair (done if it is already set as this pair).
    SetPair { pair: String },
    /// Array: replicate the pair (difference, sync) and wait until it is in `rpl/sync`.
    Replicate { pair: String },
    /// Business node: quiesce the MV with a deadline.
    Quiesce {
        volume: VolumeRef,
        method: QuiesceMethod,
        limit_ms: u64,
    },
    /// Array: separate the pair; done when the array accepted it (`sep/exec` or `separated`).
    Separate { pair: String },
    /// Business node: end the quiesce taken by step `quiesce_step`.
    Release {
        volume: VolumeRef,
        quiesce_step: StepId,
    },
    /// Array: wait until the pair is `separated` (S1: only then may its RV be mounted).
    AwaitSeparated { pair: String },
    /// Backup node: mount the RV with a new identity and start its users; checks (and
    /// repairs) the file system first when the copy is not consistent.
    MountRv { volume: VolumeRef },
    /// Backup node: run the backup command.
    RunBackup {
        command: Vec<String>,
        timeout_ms: u64,
    },
}

/// What a step reported when it was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum StepResult {
    RvFreed,
    PairSet,
    InSync,
    Quiesced {
        /// The host's id for this quiesce, which its release names.
        quiesce_id: u64,
    },
    SeparateAccepted,
    Released {
        /// False if the host had already resumed the volume by itself (its deadline passed,
        /// or its agent restarted): the static point did not hold until the release.
        held_throughout: bool,
        /// A PostgreSQL quiesce: what `pg_backup_stop` returned, which the RV mount writes
        /// into the copy (only when the quiesce held throughout).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup_label: Option<BackupLabel>,
    },
    Separated,
    RvMounted {
        /// The file system was checked and repaired before mounting.
        repaired: bool,
    },
    BackupRan {
        exit_code: i32,
    },
}

/// Where a step stands. Transitions are the methods of [`Step`]; each checks it starts from a
/// state it may leave, so a late or repeated outcome is refused instead of rewriting history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StepState {
    /// Not sent yet (or sent by nobody, as a probe found).
    Pending,
    /// Sent under `token`; its outcome is expected before `deadline_ms`.
    Dispatched {
        token: FencingToken,
        deadline_ms: u64,
    },
    /// Maybe executed, maybe not: a timeout, a lost reply or a leader change. Resolved only by
    /// asking the executor (S6), never by guessing.
    Unknown {
        token: FencingToken,
        why: String,
    },
    Done {
        token: FencingToken,
        result: StepResult,
    },
    Failed {
        token: FencingToken,
        reason: String,
    },
    /// Will not run: the job was cancelled, or its round was abandoned.
    Skipped {
        why: String,
    },
}

impl StepState {
    pub fn name(&self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Dispatched { .. } => "dispatched",
            StepState::Unknown { .. } => "unknown",
            StepState::Done { .. } => "done",
            StepState::Failed { .. } => "failed",
            StepState::Skipped { .. } => "skipped",
        }
    }
}

/// A moment of a step's life, for the job's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepEvent {
    /// Proposer's wall clock, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The state the step entered.
    pub state: StepState,
}

/// A transition a step's current state does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("step {step} is {from}: it cannot become {to}{detail}")]
pub struct TransitionError {
    pub step: StepId,
    pub from: &'static str,
    pub to: &'static str,
    /// Why, beyond the states (e.g. a stale token).
    pub detail: String,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub id: StepId,
    pub phase: Phase,
    pub target: StepTarget,
    pub call: StepCall,
    /// Steps that must be done (or skipped) before this one is sent.
    pub after: Vec<StepId>,
    /// How long the executor may take before the outcome is unknown.
    pub timeout_ms: u64,
    /// Tokens issued so far (sends, and questions a new leader asked before sending); the
    /// next dispatch uses `attempts + 1`.
    pub attempts: u32,
    /// Times the step was sent in its current round: what wears it out
    /// ([`super::STEP_ATTEMPTS_MAX`]), not the tokens of earlier rounds or of questions.
    #[serde(default)]
    pub sent_in_round: u32,
    /// The newest term in which the step was known not to be out with anybody else (it was
    /// sent in that term, or asking its executor in that term found nothing). After a leader
    /// change, a step not cleared in the new term is asked about before it is sent.
    #[serde(default)]
    pub cleared_term: u64,
    /// No execution recorded under an older term is this step's: the leader of this term
    /// armed the step's round (a record from before is an earlier round's, maybe one only a
    /// deposed leader ran), or a step it waits for completed under this term (a record from
    /// before came ahead of its dependencies, out of the plan's order).
    #[serde(default)]
    pub floor_term: u64,
    pub state: StepState,
    /// Every state it entered, oldest first.
    pub history: Vec<StepEvent>,
}

impl Step {
    pub fn new(
        id: StepId,
        phase: Phase,
        target: StepTarget,
        call: StepCall,
        after: Vec<StepId>,
        timeout_ms: u64,
    ) -> Step {
        Step {
            id,
            phase,
            target,
            call,
            after,
            timeout_ms,
            attempts: 0,
            sent_in_round: 0,
            cleared_term: 0,
            floor_term: 0,
            state: StepState::Pending,
            history: Vec::new(),
        }
    }

    /// Done or skipped: its dependents may go.
    pub fn is_settled(&self) -> bool {
        matches!(
            self.state,
            StepState::Done { .. } | StepState::Skipped { .. }
        )
    }

    pub fn result(&self) -> Option<&StepResult> {
        match &self.state {
            StepState::Done { result, .. } => Some(result),
            _ => None,
        }
    }

    /// The token of the attempt now outstanding or last resolved, if any.
    pub fn token(&self) -> Option<&FencingToken> {
        match &self.state {
            StepState::Dispatched { token, .. }
            | StepState::Unknown { token, .. }
            | StepState::Done { token, .. }
            | StepState::Failed { token, .. } => Some(token),
            StepState::Pending | StepState::Skipped { .. } => None,
        }
    }

    fn refuse(&self, to: &'static str, detail: String) -> TransitionError {
        TransitionError {
            step: self.id,
            from: self.state.name(),
            to,
            detail,
        }
    }

    fn enter(&mut self, state: StepState, at_ms: u64) {
        self.history.push(StepEvent {
            at_ms,
            state: state.clone(),
        });
        self.state = state;
    }

    /// The token the next dispatch of this step would carry.
    pub fn next_token(&self, term: u64, job_id: u64) -> FencingToken {
        FencingToken {
            term,
            job_id,
            step_index: self.id,
            attempt: self.attempts + 1,
        }
    }

    /// Pending → Dispatched.
    pub fn dispatch(&mut self, token: FencingToken, at_ms: u64) -> Result<(), TransitionError> {
        if self.state != StepState::Pending {
            return Err(self.refuse("dispatched", String::new()));
        }
        if token.step_index != self.id || token.attempt != self.attempts + 1 {
            return Err(self.refuse(
                "dispatched",
                format!(
                    " (token is for step {} attempt {}, next attempt is {})",
                    token.step_index,
                    token.attempt,
                    self.attempts + 1
                ),
            ));
        }
        self.attempts = token.attempt;
        self.sent_in_round += 1;
        self.cleared_term = self.cleared_term.max(token.term);
        let deadline_ms = at_ms.saturating_add(self.timeout_ms);
        self.enter(StepState::Dispatched { token, deadline_ms }, at_ms);
        Ok(())
    }

    /// Checks that an outcome reported under `token` is about the attempt outstanding now, or
    /// a later one: asking an executor may find an attempt the log lost track of (a
    /// predecessor sent it and died before recording it), and that attempt's outcome is the
    /// step's. An older attempt, or the same attempt from a newer term, is stale.
    fn outstanding(&self, token: &FencingToken, to: &'static str) -> Result<(), TransitionError> {
        match &self.state {
            StepState::Dispatched { token: t, .. } | StepState::Unknown { token: t, .. }
                if t.step_index == token.step_index && token.supersedes_or_is(t) =>
            {
                Ok(())
            }
            StepState::Dispatched { token: t, .. } | StepState::Unknown { token: t, .. } => {
                Err(self.refuse(
                    to,
                    format!(
                        " (stale token: term {} attempt {}, outstanding is term {} attempt {})",
                        token.term, token.attempt, t.term, t.attempt
                    ),
                ))
            }
            _ => Err(self.refuse(to, String::new())),
        }
    }

    /// Dispatched | Unknown → Done.
    pub fn complete(
        &mut self,
        token: FencingToken,
        result: StepResult,
        at_ms: u64,
    ) -> Result<(), TransitionError> {
        self.outstanding(&token, "done")?;
        self.attempts = self.attempts.max(token.attempt);
        self.enter(StepState::Done { token, result }, at_ms);
        Ok(())
    }

    /// Dispatched | Unknown → Failed: the executor said it could not do it, and did nothing
    /// that needs undoing beyond what the plan does next.
    pub fn fail(
        &mut self,
        token: FencingToken,
        reason: String,
        at_ms: u64,
    ) -> Result<(), TransitionError> {
        self.outstanding(&token, "failed")?;
        self.attempts = self.attempts.max(token.attempt);
        self.enter(StepState::Failed { token, reason }, at_ms);
        Ok(())
    }

    /// Dispatched → Unknown (timeout, lost reply, leader change). A pending step becomes
    /// unknown too when a new leader cannot tell whether its predecessor sent it: `token` is
    /// then the one the predecessor would have used.
    pub fn lose_track(
        &mut self,
        token: FencingToken,
        why: String,
        at_ms: u64,
    ) -> Result<(), TransitionError> {
        match &self.state {
            StepState::Dispatched { token: t, .. } if *t == token => {}
            StepState::Pending if token.attempt == self.attempts + 1 => {
                self.attempts = token.attempt;
            }
            _ => return Err(self.refuse("unknown", String::new())),
        }
        self.enter(StepState::Unknown { token, why }, at_ms);
        Ok(())
    }

    /// Unknown → Pending: asking the executor showed the attempt never took effect (and the
    /// executor now refuses that token), so the step may be sent again as a new attempt.
    pub fn not_executed(&mut self, token: FencingToken, at_ms: u64) -> Result<(), TransitionError> {
        match &self.state {
            StepState::Unknown { token: t, .. } if *t == token => {}
            _ => return Err(self.refuse("pending", String::new())),
        }
        self.cleared_term = self.cleared_term.max(token.term);
        self.enter(StepState::Pending, at_ms);
        Ok(())
    }

    /// Pending → Skipped.
    pub fn skip(&mut self, why: String, at_ms: u64) -> Result<(), TransitionError> {
        if self.state != StepState::Pending {
            return Err(self.refuse("skipped", String::new()));
        }
        self.enter(StepState::Skipped { why }, at_ms);
        Ok(())
    }

    /// Done | Failed | Skipped | Pending → Pending, for a new round of its phase armed by the
    /// leader of `armed_term`. Refused while an attempt is outstanding or unknown: a round is
    /// only re-run once all of it is settled.
    pub fn rearm(&mut self, armed_term: u64, at_ms: u64) -> Result<(), TransitionError> {
        if matches!(
            self.state,
            StepState::Dispatched { .. } | StepState::Unknown { .. }
        ) {
            return Err(self.refuse("pending", " (an attempt is still outstanding)".into()));
        }
        self.floor_term = self.floor_term.max(armed_term);
        self.sent_in_round = 0;
        if self.state != StepState::Pending {
            self.enter(StepState::Pending, at_ms);
        }
        Ok(())
    }
}
