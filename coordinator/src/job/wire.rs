//! What the leader's driver and a step's executor say to each other (serde; the gRPC service
//! `stillpoint.job.StepExecutor` carries these as JSON). Kept here, beside the types they
//! carry, so the driver, the executor and a simulator agree on one definition.

use serde::{Deserialize, Serialize};

use super::step::{StepCall, StepId, StepTarget};
use super::{Dispatch, FencingToken};
use crate::inventory::PairSpec;

/// A step to run under its token: [`Dispatch`] plus what the executor cannot know by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOrder {
    pub dispatch: Dispatch,
    /// For array steps: the pair as the inventory holds it (the job owns it, so it cannot
    /// change while the job runs).
    pub pair: Option<PairSpec>,
    /// How long the executor holds the request before answering [`super::Finding::Running`];
    /// the driver then sends the same order again to ask for the outcome.
    pub reply_within_ms: u64,
}

/// A question about a token: what became of it? Fences it too: after the question, the
/// executor refuses to begin that token (or any older one of the step), and any token of the
/// job from an older term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeOrder {
    pub step: StepId,
    pub token: FencingToken,
    /// The job's round as the asking leader knows it (what an array step's fencing token
    /// carries: see `Dispatch::round`).
    #[serde(default)]
    pub round: u32,
    pub target: StepTarget,
    pub call: StepCall,
    pub pair: Option<PairSpec>,
}

/// The owner a host records for a quiesce taken by a step, so a probe can tell the quiesce of
/// an interrupted attempt from any other.
pub fn quiesce_owner(token: &FencingToken) -> String {
    format!(
        "job {} step {} attempt {} (term {})",
        token.job_id, token.step_index, token.attempt, token.term
    )
}

/// The resource a step acts on (`pair:NAME`, `volume:NODE:VOLUME`), the same names the job's
/// locks use ([`super::Job::resources`]); `None` for a step that touches no pair or volume.
pub fn step_resource(call: &StepCall) -> Option<String> {
    match call {
        StepCall::SetPair { pair }
        | StepCall::Replicate { pair }
        | StepCall::Separate { pair }
        | StepCall::AwaitSeparated { pair } => Some(format!("pair:{pair}")),
        StepCall::FreeRv { volume }
        | StepCall::Quiesce { volume, .. }
        | StepCall::Release { volume, .. }
        | StepCall::MountRv { volume } => Some(format!("volume:{volume}")),
        StepCall::RunBackup { .. } => None,
    }
}
