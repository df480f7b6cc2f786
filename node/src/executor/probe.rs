//! Answers from the journal, and probes: what became of a token, with what its target shows
//! when the record has no outcome (see the module essay in [`super`]).

use std::sync::Arc;
use std::time::Duration;

use stillpoint_array::Array;
use stillpoint_coordinator::inventory::PairSpec;
use stillpoint_coordinator::job::wire::{ProbeOrder, quiesce_owner};
use stillpoint_coordinator::job::{
    FencingToken, Finding, Observed, PairSync, StepCall, StepResult,
};
use stillpoint_storage::journal::{StepOutcome, StepRecord};
use tonic::Status;

use super::{Executor, OBSERVE_MS, array_steps, check_pair, lock, supersedes_or_is};

impl Executor {
    /// The answer a record gives when no task of this process runs its token: its outcome,
    /// or, with none (the agent restarted mid-step, or the outcome was unknown), what the
    /// target looks like now.
    pub(super) async fn answer_from(
        &self,
        rec: &StepRecord,
        call: &StepCall,
        pair: Option<&PairSpec>,
        round: u32,
    ) -> Result<Finding, Status> {
        let token = rec.token;
        match &rec.outcome {
            StepOutcome::Done { detail } => {
                let result: StepResult = serde_json::from_str(detail).map_err(|e| {
                    Status::internal(format!(
                        "the journal's record of job {} step {} attempt {} is unreadable ({e}); inspect the agent's journal",
                        token.job_id, token.step_index, token.attempt
                    ))
                })?;
                Ok(Finding::Finished {
                    token,
                    outcome: Ok(result),
                })
            }
            StepOutcome::Failed { reason } => Ok(Finding::Finished {
                token,
                outcome: Err(reason.clone()),
            }),
            StepOutcome::Started => Ok(Finding::Interrupted {
                token,
                observed: self.observe(call, &token, pair, round).await,
            }),
        }
    }

    /// What the target of an interrupted step looks like now, for the steps whose resolution
    /// needs it; `None` when it cannot be read (the driver asks again later).
    async fn observe(
        &self,
        call: &StepCall,
        token: &FencingToken,
        pair: Option<&PairSpec>,
        round: u32,
    ) -> Option<Observed> {
        let bound = Duration::from_millis(OBSERVE_MS);
        match call {
            StepCall::Quiesce { volume, .. } => {
                let host = self.host().ok()?;
                let held = tokio::time::timeout(bound, host.quiesces())
                    .await
                    .ok()?
                    .ok()?;
                let owner = quiesce_owner(token);
                let quiesce_id = held
                    .iter()
                    .find(|q| q.volume == volume.volume && q.owner == owner)
                    .map(|q| q.quiesce_id);
                Some(Observed::Volume { quiesce_id })
            }
            StepCall::Separate { .. } => {
                let pair = pair?;
                let array = self.array(&pair.mv.array).ok()?;
                let id = array_steps::pair_id(pair);
                let info = tokio::time::timeout(bound, array.pair_query(&id))
                    .await
                    .ok()?
                    .ok()?;
                let sync = match pair_sync(&info.state) {
                    PairSync::Separating | PairSync::Separated
                        if !array_steps::separated_by_this_step(
                            info.acted_by.as_ref(),
                            &array_steps::fence_of(token, round),
                        ) =>
                    {
                        PairSync::Other(format!(
                            "{} by {}, not by this step",
                            info.state,
                            array_steps::actor(info.acted_by.as_ref())
                        ))
                    }
                    sync => sync,
                };
                Some(Observed::Pair { sync })
            }
            _ => None,
        }
    }

    /// `Probe`: see the module essay.
    pub async fn probe(self: &Arc<Self>, order: ProbeOrder) -> Result<Finding, Status> {
        let asked = order.token;
        if asked.step_index != order.step {
            return Err(Status::invalid_argument(format!(
                "the token is for step {}, the probe for step {}",
                asked.step_index, order.step
            )));
        }
        self.check_target(&order.target, &order.call)?;
        check_pair(&order.target, order.pair.as_ref())?;
        self.journal_op("fencing the step in the journal", move |j| {
            j.fence_step(asked)
        })
        .await?;
        let records = self
            .journal_op("reading the step's records", move |j| {
                j.step_records(asked.job_id, asked.step_index)
            })
            .await?;
        let Some(found) = records
            .into_iter()
            .filter(|r| supersedes_or_is(&r.token, &asked))
            .max_by_key(|r| (r.token.attempt, r.token.term))
        else {
            return Ok(Finding::NotRecorded);
        };
        if found.outcome == StepOutcome::Started {
            if lock(&self.running).contains_key(&found.token) {
                return Ok(Finding::Running { token: found.token });
            }
            // Its task may have finished between the two reads: the journal has the last word
            // (a task journals before it lets go of its claim).
            let token = found.token;
            if let Some(again) = self
                .journal_op("reading the step's record", move |j| j.step(&token))
                .await?
            {
                return self
                    .answer_from(&again, &order.call, order.pair.as_ref(), order.round)
                    .await;
            }
        }
        self.answer_from(&found, &order.call, order.pair.as_ref(), order.round)
            .await
    }
}

/// A pair's state as a step's resolution needs it.
pub fn pair_sync(state: &stillpoint_array::PairState) -> PairSync {
    use stillpoint_array::SyncState;
    match state.sync {
        _ if state.abnormal_suspend => PairSync::Other(state.to_string()),
        SyncState::RplExec => PairSync::Replicating,
        SyncState::RplSync => PairSync::InSync,
        SyncState::SepExec => PairSync::Separating,
        SyncState::Separated => PairSync::Separated,
        _ => PairSync::Other(state.to_string()),
    }
}
