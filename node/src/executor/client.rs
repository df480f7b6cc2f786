//! The driver's side of the step executor: send an order or a probe to the agent at `address`
//! and read its [`Finding`]. One shared channel per address ([`crate::peer::channel_to`]).
//!
//! What the errors mean for the driver:
//! - [`NodeError::Refused`]: the executor refused the order (`FAILED_PRECONDITION`: a stale or
//!   fenced token, a term older than the executor's, a step that is not this agent's); nothing
//!   was begun. The message says why.
//! - [`NodeError::OutcomeUnknown`]: the step may or may not have taken effect (the executor
//!   said so, or no answer came within the call's bound): probe it.
//! - [`NodeError::Unreachable`]: the agent could not be reached. For `execute`, the order may
//!   still have arrived (a connection cut mid-request): treat the step as unknown and probe.
//! - anything else: the executor failed to answer (its journal, a malformed order).

use std::time::Duration;

use stillpoint_coordinator::job::Finding;
use stillpoint_coordinator::job::wire::{ProbeOrder, StepOrder};
use stillpoint_proto::job as pb;
use stillpoint_proto::job::step_executor_client::StepExecutorClient;
use tonic::Code;

use super::{JOURNAL_OP_MS, OBSERVE_MS, REPLY_WITHIN_MS_MAX};
use crate::deadlines::CLIENT_MARGIN_MS;
use crate::error::NodeError;
use crate::peer::channel_to;

/// How long [`execute`] waits for an answer: the executor's longest hold of the reply
/// (`reply_within_ms`, capped at [`REPLY_WITHIN_MS_MAX`]), plus its journal write, plus a margin.
pub fn execute_timeout(order: &StepOrder) -> Duration {
    Duration::from_millis(
        order.reply_within_ms.min(REPLY_WITHIN_MS_MAX) + JOURNAL_OP_MS + CLIENT_MARGIN_MS,
    )
}

/// How long [`probe`] waits for an answer: the fence and reads in the journal, a look at the
/// target, and a margin.
pub const PROBE_TIMEOUT: Duration =
    Duration::from_millis(2 * JOURNAL_OP_MS + OBSERVE_MS + CLIENT_MARGIN_MS);

fn client(address: &str) -> Result<StepExecutorClient<tonic::transport::Channel>, NodeError> {
    Ok(StepExecutorClient::new(channel_to(address)?)
        .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES))
}

fn error(address: &str, what: &str, status: tonic::Status) -> NodeError {
    match status.code() {
        Code::FailedPrecondition => NodeError::Refused(format!(
            "the executor at {address} refused the {what}: {}",
            status.message()
        )),
        Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => {
            NodeError::OutcomeUnknown(format!(
                "outcome unknown: the {what} sent to {address} got no outcome ({}: {}); probe the step",
                status.code(),
                status.message()
            ))
        }
        _ => NodeError::from_status(address, status),
    }
}

fn finding(address: &str, reply: pb::StepReply) -> Result<Finding, NodeError> {
    serde_json::from_slice(&reply.finding_json).map_err(|e| NodeError::Remote {
        address: address.to_string(),
        code: Code::Internal,
        message: format!("the executor's finding is not valid JSON of a Finding: {e}"),
    })
}

/// Sends `order` to the executor at `address` (`HOST:PORT`) and returns what it found:
/// `Finished` (done or failed, from its journal if it ran before), `Running` (ask again by
/// sending the same order), or `Interrupted` (begun by an agent that restarted: resolve it).
/// Bounded by [`execute_timeout`].
pub async fn execute(address: &str, order: &StepOrder) -> Result<Finding, NodeError> {
    let json = serde_json::to_vec(order)
        .map_err(|e| NodeError::Invalid(format!("the step order cannot be encoded: {e}")))?;
    let mut request = tonic::Request::new(pb::StepOrderMessage { json });
    let bound = execute_timeout(order);
    request.set_timeout(bound);
    let mut client = client(address)?;
    let call = client.execute(request);
    match tokio::time::timeout(bound, call).await {
        Ok(Ok(reply)) => finding(address, reply.into_inner()),
        Ok(Err(status)) => Err(error(address, "step order", status)),
        Err(_) => Err(NodeError::OutcomeUnknown(format!(
            "outcome unknown: the step order sent to {address} got no answer within {} ms; probe the step",
            bound.as_millis()
        ))),
    }
}

/// Asks the executor at `address` what became of `order.token`, fencing it: from then on the
/// executor refuses that token and older attempts of the step, and the job's older terms.
/// Bounded by [`PROBE_TIMEOUT`]. Asking again is safe.
pub async fn probe(address: &str, order: &ProbeOrder) -> Result<Finding, NodeError> {
    let json = serde_json::to_vec(order)
        .map_err(|e| NodeError::Invalid(format!("the probe order cannot be encoded: {e}")))?;
    let mut request = tonic::Request::new(pb::ProbeOrderMessage { json });
    request.set_timeout(PROBE_TIMEOUT);
    let mut client = client(address)?;
    let call = client.probe(request);
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(Ok(reply)) => finding(address, reply.into_inner()),
        Ok(Err(status)) => Err(error(address, "probe", status)),
        Err(_) => Err(NodeError::OutcomeUnknown(format!(
            "outcome unknown: the probe sent to {address} got no answer within {} ms; ask again",
            PROBE_TIMEOUT.as_millis()
        ))),
    }
}

/// Whether the executor served a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batched {
    /// It did: every answer it gave went to the callback.
    Served,
    /// It does not know `ExecuteMany` (an agent of an older version): nothing was begun;
    /// send the orders one by one.
    NotServed,
}

/// Sends `orders` to the executor at `address` as one `ExecuteMany` and hands each answer to
/// `on_answer` (the order's index in `orders`) as it arrives, in any order. An error ends the
/// call: the orders not answered by then have an unknown outcome (probe them). Bounded by the
/// longest [`execute_timeout`] of the orders.
pub async fn execute_many(
    address: &str,
    orders: &[&StepOrder],
    on_answer: &mut (dyn FnMut(usize, Result<Finding, NodeError>) + Send),
) -> Result<Batched, NodeError> {
    let mut batch = pb::StepOrderBatch::default();
    for order in orders {
        let json = serde_json::to_vec(order)
            .map_err(|e| NodeError::Invalid(format!("the step order cannot be encoded: {e}")))?;
        batch.orders.push(pb::StepOrderMessage { json });
    }
    let bound = orders
        .iter()
        .map(|o| execute_timeout(o))
        .max()
        .unwrap_or_default();
    let mut request = tonic::Request::new(batch);
    request.set_timeout(bound);
    let mut client = client(address)?;
    let call = async {
        let mut answers = match client.execute_many(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => return Ok(Batched::NotServed),
            Err(status) => return Err(error(address, "batch of step orders", status)),
        };
        while let Some(answer) = answers
            .message()
            .await
            .map_err(|status| error(address, "batch of step orders", status))?
        {
            let index = answer.index as usize;
            if index >= orders.len() {
                return Err(NodeError::Remote {
                    address: address.to_string(),
                    code: Code::Internal,
                    message: format!(
                        "the executor answered order {index} of a batch of {} (a bug)",
                        orders.len()
                    ),
                });
            }
            let result = if answer.code == 0 {
                finding(
                    address,
                    pb::StepReply {
                        finding_json: answer.finding_json,
                    },
                )
            } else {
                let status = tonic::Status::new(Code::from(answer.code), answer.message);
                Err(error(address, "step order", status))
            };
            on_answer(index, result);
        }
        Ok(Batched::Served)
    };
    match tokio::time::timeout(bound, call).await {
        Ok(done) => done,
        Err(_) => Err(NodeError::OutcomeUnknown(format!(
            "outcome unknown: the batch of step orders sent to {address} got no full answer within {} ms; probe the steps",
            bound.as_millis()
        ))),
    }
}
