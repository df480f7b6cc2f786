//! Array steps: what an agent with a control path to an array does on it for a step (the
//! leader never reaches an array itself unless it is such an agent). Each is idempotent: a pair
//! already in sync is in sync, a separate already accepted is accepted.
//!
//! Every call has a timeout; a transport failure or a timeout is "outcome unknown"
//! ([`StepEnd::Unknown`]), never a failure: the driver probes, and the pair's state settles it.
//! An RDR link fault is not unknown: the MV's array answered that it cannot reach the RV's
//! array and changed nothing, or that the pair fell into abnormal suspend while it copied. The
//! step fails naming the pair and the link (sending it again while the link is down would only
//! exhaust its attempts), before any MV of the job is quiesced.
//!
//! Replicate and separate carry the step's token to the array as a fencing token
//! ([`fence_of`]): the array refuses them once a newer token has acted on the pair, which is
//! what lets the driver move a job's array steps to another control node (see the driver).

use std::future::Future;
use std::time::Duration;

use stillpoint_array::{
    Array, ArrayError, FenceToken, FencedOp, LdRef, PairId, PairInfo, ReplicateOptions, Rule,
    SeparateOptions, SyncState, WaitCondition,
};
use stillpoint_coordinator::inventory::{CopyControl, PairSpec};
use stillpoint_coordinator::job::wire::StepOrder;
use stillpoint_coordinator::job::{FencingToken, StepCall, StepResult};

use super::{Executor, StepEnd};

/// Longest an array step waits for the pair to reach the state it needs (sync, separated).
/// The order does not carry the step's own timeout; past the driver's deadline a probe
/// reports the step running, and it ends here at the latest.
pub const ARRAY_WAIT_MS: u64 = 6 * 3_600_000;

/// Time an array call may take beyond the wait it asks for (the array's own call bound plus
/// a margin), before its outcome is unknown.
const ARRAY_CALL_MARGIN_MS: u64 =
    stillpoint_array::CALL_TIMEOUT.as_millis() as u64 + crate::deadlines::CLIENT_MARGIN_MS;

/// The array's id of an inventory pair.
pub fn pair_id(pair: &PairSpec) -> PairId {
    PairId {
        mv: LdRef {
            array: pair.mv.array.clone(),
            ld: pair.mv.ld,
        },
        rv: LdRef {
            array: pair.rv.array.clone(),
            ld: pair.rv.ld,
        },
    }
}

/// The array's fencing token for a step sent in `round` under `token`: the array refuses an
/// operation older than the newest that acted on the pair, so an order left on a cut-off
/// control node never lands after the one a newer attempt sent through another control node.
pub fn fence_of(token: &FencingToken, round: u32) -> FenceToken {
    FenceToken {
        term: token.term,
        job: token.job_id,
        round,
        step: token.step_index,
        attempt: token.attempt,
    }
}

/// Whether the pair's last replicate or separate was sent by this step, in this round, under
/// this leader's term (any attempt): only then is a pair found separating or separated this
/// round's separate. A leader sends a separate only once its round's quiesces are done; one of
/// an older term (a deposed leader's, lost from the log), of another round or step, or an
/// operator's is not.
pub fn separated_by_this_step(acted_by: Option<&FenceToken>, fence: &FenceToken) -> bool {
    acted_by.is_some_and(|a| {
        a.term == fence.term && a.job == fence.job && a.round == fence.round && a.step == fence.step
    })
}

/// Who `acted_by` names, for messages.
pub fn actor(acted_by: Option<&FenceToken>) -> String {
    match acted_by {
        Some(t) => t.to_string(),
        None => "an operator's command (no token)".into(),
    }
}

/// An array error as a step's end. An `Unreachable` (the array called could not be reached)
/// is "outcome unknown". A `PeerUnreachable` is not: the array called answered that it cannot
/// reach the pair's remote array (the RDR link is down, or the remote array does not answer)
/// and changed nothing, so the step fails, naming the link, instead of being sent again and
/// again while the link stays down.
fn array_end(what: &str, pair: &PairSpec, e: ArrayError) -> StepEnd {
    match e {
        ArrayError::PeerUnreachable {
            ref array,
            ref peer,
            ..
        } => StepEnd::Failed(format!(
            "{what}: the RDR link from array {array} to array {peer} is down or {peer} does not \
             answer; nothing was changed (pair {} stays as it was, in abnormal suspend if it \
             was copying): run the job again once the link is back ({e})",
            pair.name
        )),
        ArrayError::WrongState { ref state, .. }
            if pair.rv.array != pair.mv.array && state.contains("abnormal-suspend") =>
        {
            StepEnd::Failed(format!(
                "{what}: pair {} is in abnormal suspend, the RDR link from array {} to array {} \
                 failed while it copied; its MV's writes accumulate as differences: run the job \
                 again once the link is back ({e})",
                pair.name, pair.mv.array, pair.rv.array
            ))
        }
        ArrayError::OutcomeUnknown { .. } | ArrayError::Unreachable { .. } => {
            StepEnd::Unknown(format!("{what}: {e}"))
        }
        ArrayError::Refused {
            rule: Rule::FencingToken,
            ..
        } => StepEnd::Failed(format!(
            "{what}: fenced by the array, a newer attempt, job or leader has acted on the pair since this order was sent ({e})"
        )),
        e => StepEnd::Failed(format!("{what}: {e}")),
    }
}

/// Runs one array call that waits up to `wait_ms`, bounded by that plus the call margin.
async fn call<T>(
    what: &str,
    pair: &PairSpec,
    wait_ms: u64,
    f: impl Future<Output = Result<T, ArrayError>>,
) -> Result<T, StepEnd> {
    let bound_ms = wait_ms + ARRAY_CALL_MARGIN_MS;
    match tokio::time::timeout(Duration::from_millis(bound_ms), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(array_end(what, pair, e)),
        Err(_) => Err(StepEnd::Unknown(format!(
            "{what}: no answer within {bound_ms} ms"
        ))),
    }
}

pub(crate) async fn run(exec: &Executor, order: &StepOrder) -> StepEnd {
    let Some(pair) = &order.pair else {
        return StepEnd::Failed("an array step's order must carry its pair".into());
    };
    let array = match exec.array(&pair.mv.array) {
        Ok(a) => a,
        Err(e) => return StepEnd::Failed(e),
    };
    let fence = fence_of(&order.dispatch.token, order.dispatch.round);
    let result = match &order.dispatch.call {
        StepCall::SetPair { .. } => set_pair(&array, pair).await,
        StepCall::Replicate { .. } => replicate(&array, pair, &fence).await,
        StepCall::Separate { .. } => separate(&array, pair, &fence).await,
        StepCall::AwaitSeparated { .. } => await_separated(&array, pair).await,
        _ => Err(StepEnd::Failed("a host step is not an array step".into())),
    };
    match result {
        Ok(r) => StepEnd::Done(r),
        Err(end) => end,
    }
}

/// The pair's state, or a failure telling the operator to prepare the group if it is not set.
async fn query(array: &dyn Array, pair: &PairSpec, id: &PairId) -> Result<PairInfo, StepEnd> {
    let what = format!("querying pair {} ({id})", pair.name);
    let bound_ms = ARRAY_CALL_MARGIN_MS;
    match tokio::time::timeout(Duration::from_millis(bound_ms), array.pair_query(id)).await {
        Ok(Ok(info)) => Ok(info),
        Ok(Err(ArrayError::NotFound { .. })) => Err(not_set(pair, id)),
        Ok(Err(e)) => Err(array_end(&what, pair, e)),
        Err(_) => Err(StepEnd::Unknown(format!(
            "{what}: no answer within {bound_ms} ms"
        ))),
    }
}

/// The step's end for a pair the array does not have.
fn not_set(pair: &PairSpec, id: &PairId) -> StepEnd {
    StepEnd::Failed(format!(
        "pair {} ({id}) is not set on array {}: run `stillpoint group prepare` for its group first",
        pair.name, pair.mv.array
    ))
}

/// Set the pair on its array; done at once if it is already set (as this pair: a pair is
/// named by its MV and RV).
async fn set_pair(array: &dyn Array, pair: &PairSpec) -> Result<StepResult, StepEnd> {
    let id = pair_id(pair);
    let what = format!("setting pair {} ({id})", pair.name);
    let bound_ms = ARRAY_CALL_MARGIN_MS;
    match tokio::time::timeout(Duration::from_millis(bound_ms), array.pair_query(&id)).await {
        Ok(Ok(_)) => return Ok(StepResult::PairSet),
        Ok(Err(ArrayError::NotFound { .. })) => {}
        Ok(Err(e)) => return Err(array_end(&what, pair, e)),
        Err(_) => {
            return Err(StepEnd::Unknown(format!(
                "{what}: no answer within {bound_ms} ms"
            )));
        }
    }
    call(&what, pair, 0, array.pair_set(&id)).await?;
    Ok(StepResult::PairSet)
}

/// Replicate (difference) and wait until `rpl/sync`; at once if it already is.
async fn replicate(
    array: &dyn Array,
    pair: &PairSpec,
    fence: &FenceToken,
) -> Result<StepResult, StepEnd> {
    let id = pair_id(pair);
    let info = query(array, pair, &id).await?;
    let what = format!("replicating pair {} ({id})", pair.name);
    let info = match info.state.sync {
        SyncState::RplSync if !info.state.abnormal_suspend => return Ok(StepResult::InSync),
        // A replicate already running (an earlier attempt): wait for it.
        SyncState::RplExec if !info.state.abnormal_suspend => {
            call(
                &what,
                pair,
                ARRAY_WAIT_MS,
                array.wait(&id, WaitCondition::Sync, ARRAY_WAIT_MS),
            )
            .await?
        }
        _ => {
            let options = ReplicateOptions {
                copy_control: match pair.copy_control {
                    CopyControl::Sync => stillpoint_array::CopyControl::Sync,
                    CopyControl::SemiSync => stillpoint_array::CopyControl::SemiSync,
                    CopyControl::Background => stillpoint_array::CopyControl::Background,
                },
                wait_timeout_ms: Some(ARRAY_WAIT_MS),
                ..ReplicateOptions::default()
            };
            let op = FencedOp::Replicate(options);
            call(&what, pair, ARRAY_WAIT_MS, array.fenced(&id, fence, &op)).await?
        }
    };
    if info.state.sync == SyncState::RplSync {
        Ok(StepResult::InSync)
    } else {
        Err(StepEnd::Failed(format!(
            "{what}: the pair is {} instead of rpl/sync",
            info.state
        )))
    }
}

/// Separate without waiting: done once the array accepted it (`sep/exec` or `separated`).
async fn separate(
    array: &dyn Array,
    pair: &PairSpec,
    fence: &FenceToken,
) -> Result<StepResult, StepEnd> {
    let id = pair_id(pair);
    let what = format!("separating pair {} ({id})", pair.name);
    let op = FencedOp::Separate(SeparateOptions::default());
    // Straight to the separate: it is inside the freeze window. Only a refusal that may mean
    // "already separated" (the pair's state, or a newer attempt's fence) asks the array who
    // separated it: this step (a re-sent order whose first send acted) or someone else.
    let bound_ms = ARRAY_CALL_MARGIN_MS;
    let refused = match tokio::time::timeout(
        Duration::from_millis(bound_ms),
        array.fenced(&id, fence, &op),
    )
    .await
    {
        Ok(Ok(info)) => {
            return match info.state.sync {
                SyncState::SepExec | SyncState::Separated => Ok(StepResult::SeparateAccepted),
                _ => Err(StepEnd::Failed(format!(
                    "{what}: the array answered {} instead of sep/exec or separated",
                    info.state
                ))),
            };
        }
        Ok(Err(ArrayError::NotFound { .. })) => return Err(not_set(pair, &id)),
        Ok(Err(
            e @ (ArrayError::WrongState { .. }
            | ArrayError::Refused {
                rule: Rule::FencingToken,
                ..
            }),
        )) => e,
        Ok(Err(e)) => return Err(array_end(&what, pair, e)),
        Err(_) => {
            return Err(StepEnd::Unknown(format!(
                "{what}: no answer within {bound_ms} ms"
            )));
        }
    };
    let info = query(array, pair, &id).await?;
    if !matches!(info.state.sync, SyncState::SepExec | SyncState::Separated) {
        return Err(array_end(&what, pair, refused));
    }
    if separated_by_this_step(info.acted_by.as_ref(), fence) {
        return Ok(StepResult::SeparateAccepted);
    }
    Err(StepEnd::Failed(format!(
        "pair {} ({id}) was already {} by {}, not by this round's separate: it does not hold this round's static point",
        pair.name,
        info.state,
        actor(info.acted_by.as_ref())
    )))
}

/// Wait until the pair is `separated` (S1: only then may its RV be mounted).
async fn await_separated(array: &dyn Array, pair: &PairSpec) -> Result<StepResult, StepEnd> {
    let id = pair_id(pair);
    let what = format!("waiting for pair {} ({id}) to be separated", pair.name);
    let info = call(
        &what,
        pair,
        ARRAY_WAIT_MS,
        array.wait(&id, WaitCondition::Sep, ARRAY_WAIT_MS),
    )
    .await?;
    if info.state.sync == SyncState::Separated {
        Ok(StepResult::Separated)
    } else {
        Err(StepEnd::Failed(format!(
            "{what}: the pair is {}",
            info.state
        )))
    }
}
