//! The demo's timeline: each step state the log recorded, in time order, printed once.

use std::collections::BTreeMap;

use stillpoint_coordinator::job::{Job, StepCall, StepResult, StepState, StepTarget};

/// How much of each step's history was printed already.
#[derive(Default)]
pub struct Printed {
    per_step: BTreeMap<u32, usize>,
    round: u32,
}

fn what(call: &StepCall, target: &StepTarget) -> String {
    let on = match target {
        StepTarget::Node(n) => n.clone(),
        StepTarget::Array(a) => a.clone(),
    };
    let action = match call {
        StepCall::FreeRv { volume } => format!("free RV {}", volume.volume),
        StepCall::SetPair { pair } => format!("set pair {pair}"),
        StepCall::Replicate { pair } => format!("replicate {pair} until in sync"),
        StepCall::Quiesce { volume, method, .. } => {
            format!("quiesce {} ({})", volume.volume, method.name())
        }
        StepCall::Separate { pair } => format!("separate {pair}"),
        StepCall::Release { volume, .. } => format!("release {}", volume.volume),
        StepCall::AwaitSeparated { pair } => format!("wait until {pair} separated"),
        StepCall::MountRv { volume } => format!("mount RV {} (new identity)", volume.volume),
        StepCall::RunBackup { command, .. } => format!("run {}", command.join(" ")),
    };
    format!("{on:<8} {action}")
}

fn state(s: &StepState) -> String {
    match s {
        StepState::Pending => "pending (sent again)".into(),
        StepState::Dispatched { token, .. } => {
            format!("sent (term {}, attempt {})", token.term, token.attempt)
        }
        StepState::Unknown { why, .. } => format!("UNKNOWN: {why}; asking"),
        StepState::Done { result, .. } => match result {
            StepResult::Quiesced { quiesce_id } => format!("done (quiesce {quiesce_id})"),
            StepResult::Released {
                held_throughout: false,
                ..
            } => "done, but the quiesce did NOT hold until now".into(),
            StepResult::RvMounted { repaired: true } => "done (checked and repaired first)".into(),
            _ => "done".into(),
        },
        StepState::Failed { reason, .. } => format!("FAILED: {reason}"),
        StepState::Skipped { why } => format!("skipped: {why}"),
    }
}

impl Printed {
    /// The timeline lines recorded since the last call.
    pub fn new_lines(&mut self, job: &Job) -> Vec<String> {
        let mut lines: Vec<(u64, String)> = Vec::new();
        if job.round != self.round {
            if self.round != 0 {
                lines.push((
                    0,
                    format!(
                        "          --- round {} of the static point (the last one could not give a consistent copy)",
                        job.round
                    ),
                ));
            }
            self.round = job.round;
        }
        for s in &job.steps {
            let seen = self.per_step.entry(s.id).or_default();
            // A copy read from an agent that lags may have less history than printed already.
            for e in s.history.get(*seen..).unwrap_or_default() {
                let at = e.at_ms.saturating_sub(job.submitted_at_ms);
                lines.push((
                    at,
                    format!(
                        "{:>7.3}s  step {:>2}  {:<44} {}",
                        at as f64 / 1000.0,
                        s.id,
                        what(&s.call, &s.target),
                        state(&e.state)
                    ),
                ));
            }
            *seen = (*seen).max(s.history.len());
        }
        lines.sort_by_key(|(at, _)| *at);
        lines.into_iter().map(|(_, l)| l).collect()
    }
}
