//! The freeze window of a job as its leader recorded it: when each kind of step of the static
//! point (quiesce, separate, release) was sent and heard done. Read by the demo's report and
//! the `jobs` bench, so both measure the window from the same records. Also whether a job is
//! in its window or about to enter it, which the leader keeps its log proposals out of.

use super::{Job, StepCall, StepState};

/// Each phase's span in Unix ms: from the first send of its steps' last attempt to the last
/// step's done record. A job re-arms its steps for a new round, so a step's last dispatch and
/// last done belong to the final round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreezePhases {
    pub quiesce: (u64, u64),
    pub separate: (u64, u64),
    pub release: (u64, u64),
}

impl FreezePhases {
    /// From the first quiesce sent to the last release done.
    pub fn window_ms(&self) -> (u64, u64) {
        (self.quiesce.0, self.release.1)
    }
}

fn is_quiesce(c: &StepCall) -> bool {
    matches!(c, StepCall::Quiesce { .. })
}
fn is_separate(c: &StepCall) -> bool {
    matches!(c, StepCall::Separate { .. })
}
fn is_release(c: &StepCall) -> bool {
    matches!(c, StepCall::Release { .. })
}
fn is_sent(s: &StepState) -> bool {
    matches!(s, StepState::Dispatched { .. })
}
fn is_done(s: &StepState) -> bool {
    matches!(s, StepState::Done { .. })
}

impl Job {
    /// When the steps of one phase entered `state`: each step's last such record only (its
    /// final round), or every record (every round and attempt).
    fn times(
        &self,
        of_phase: fn(&StepCall) -> bool,
        state: fn(&StepState) -> bool,
        last_only: bool,
    ) -> Vec<u64> {
        let steps = self.steps.iter().filter(|s| of_phase(&s.call));
        if last_only {
            steps
                .filter_map(|s| s.history.iter().rev().find(|e| state(&e.state)))
                .map(|e| e.at_ms)
                .collect()
        } else {
            steps
                .flat_map(|s| s.history.iter())
                .filter(|e| state(&e.state))
                .map(|e| e.at_ms)
                .collect()
        }
    }

    /// The final round's freeze window, or `None` when one of its phases has no step sent and
    /// done (the job failed or was cancelled before, or has no static point).
    pub fn freeze_phases(&self) -> Option<FreezePhases> {
        let span = |of_phase: fn(&StepCall) -> bool| -> Option<(u64, u64)> {
            let sent = self.times(of_phase, is_sent, true);
            let done = self.times(of_phase, is_done, true);
            Some((*sent.iter().min()?, *done.iter().max()?))
        };
        Some(FreezePhases {
            quiesce: span(is_quiesce)?,
            separate: span(is_separate)?,
            release: span(is_release)?,
        })
    }

    /// Every moment an MV of this job may have been held, over every round: from the first
    /// quiesce ever sent to the last release done (or to the first quiesce when no release
    /// was recorded done). `None` when no quiesce was sent.
    pub fn quiesced_span_ms(&self) -> Option<(u64, u64)> {
        let from = self.times(is_quiesce, is_sent, false).into_iter().min()?;
        let to = self
            .times(is_release, is_done, false)
            .into_iter()
            .max()
            .unwrap_or(from);
        Some((from, to.max(from)))
    }
}

impl Job {
    /// Whether an MV of this job may be held quiesced by its current round: a quiesce was
    /// sent (in flight, unknown, or done) and a release is neither done nor skipped. The
    /// leader keeps its log proposals out of this window (see the node's driver).
    pub fn in_freeze_window(&self) -> bool {
        let quiesce_out = self.steps.iter().any(|s| {
            is_quiesce(&s.call)
                && matches!(
                    s.state,
                    StepState::Dispatched { .. }
                        | StepState::Unknown { .. }
                        | StepState::Done { .. }
                )
        });
        let release_open = self
            .steps
            .iter()
            .any(|s| is_release(&s.call) && !s.is_settled());
        !self.is_ended() && quiesce_out && release_open
    }

    /// Whether this job's freeze window is about to open: a replicate of its round is out
    /// (sent, unknown or done) and none of its quiesces has been sent, so the window opens as
    /// soon as the last pair is in sync. The leader keeps its log proposals out of this time
    /// too: a proposal makes every agent flush its log, and flushes still under way when the
    /// quiesces go out queue in front of the hosts' own.
    pub fn nearing_freeze_window(&self) -> bool {
        let replicate_out = self.steps.iter().any(|s| {
            matches!(s.call, StepCall::Replicate { .. }) && !matches!(s.state, StepState::Pending)
        });
        let mut quiesces = self.steps.iter().filter(|s| is_quiesce(&s.call)).peekable();
        let quiesces_pending =
            quiesces.peek().is_some() && quiesces.all(|s| matches!(s.state, StepState::Pending));
        !self.is_ended() && replicate_out && quiesces_pending
    }
}
