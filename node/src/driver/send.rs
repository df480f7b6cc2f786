//! The driver's side of talking to executors: where a step goes, and sending it or asking about
//! it until there is an answer worth recording.

use std::time::Duration;

use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::inventory::PairSpec;
use stillpoint_coordinator::job::wire::{ProbeOrder, StepOrder};
use stillpoint_coordinator::job::{Finding, StepCall, StepTarget};
use stillpoint_proto::job::step_executor_client::StepExecutorClient;
use stillpoint_proto::job::{ProbeOrderMessage, StepOrderMessage};

/// How long an executor holds an order before answering "running"; the driver then sends the
/// same order again (answered from the executor's journal, never executed twice).
pub const REPLY_WITHIN_MS: u64 = 10_000;

/// How long the driver waits for any one answer beyond what the executor may hold it.
const TRANSPORT_MARGIN_MS: u64 = 5_000;

/// How long a probe may take: the executor reads its journal and, for an interrupted step, the
/// host or the array.
const PROBE_TIMEOUT_MS: u64 = 15_000;

/// The agent that executes steps of `target`, by address: a node's own agent; for an array, the
/// first of its control nodes (by name) that is registered. Always the same agent for the same
/// target while the registry and inventory stay as they are, so a new leader asks the agent
/// that holds the step's journal. `None` when nobody registered can execute it (say why).
pub fn executor_address(state: &ClusterState, target: &StepTarget) -> Result<String, String> {
    let address_of = |name: &str| {
        state
            .node_by_name(name)
            .filter(|n| n.deregistered_at_ms.is_none())
            .map(|n| n.address.clone())
    };
    match target {
        StepTarget::Node(name) => {
            address_of(name).ok_or_else(|| format!("no registered agent named {name:?}"))
        }
        StepTarget::Array(array) => {
            let spec = state
                .inventory
                .arrays
                .get(array)
                .ok_or_else(|| format!("array {array:?} is not in the inventory"))?;
            spec.control_nodes
                .iter()
                .next()
                .and_then(|n| address_of(n))
                .ok_or_else(|| {
                    format!(
                        "the first control node of array {array:?} ({}) is not registered",
                        spec.control_nodes
                            .iter()
                            .next()
                            .map(String::as_str)
                            .unwrap_or("none listed")
                    )
                })
        }
    }
}

/// The pair an array step acts on, as the inventory holds it.
pub fn pair_of(state: &ClusterState, call: &StepCall) -> Option<PairSpec> {
    match call {
        StepCall::SetPair { pair }
        | StepCall::Replicate { pair }
        | StepCall::Separate { pair }
        | StepCall::AwaitSeparated { pair } => state.inventory.pairs.get(pair).cloned(),
        _ => None,
    }
}

fn client(address: &str) -> Result<StepExecutorClient<tonic::transport::Channel>, String> {
    crate::peer::channel_to(address)
        .map(|c| {
            StepExecutorClient::new(c)
                .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
        })
        .map_err(|e| e.to_string())
}

fn finding(json: &[u8]) -> Result<Finding, String> {
    serde_json::from_slice(json).map_err(|e| format!("the executor's answer does not decode: {e}"))
}

/// Sends `order` once. An error means the outcome is unknown (not delivered, refused, or no
/// answer in time): the caller records that and asks.
pub async fn execute_once(address: &str, order: &StepOrder) -> Result<Finding, String> {
    let json = serde_json::to_vec(order).map_err(|e| format!("cannot encode the order: {e}"))?;
    let mut c = client(address)?;
    let wait = Duration::from_millis(order.reply_within_ms + TRANSPORT_MARGIN_MS);
    match tokio::time::timeout(wait, c.execute(StepOrderMessage { json })).await {
        Err(_) => Err(format!(
            "no answer from {address} within {} ms",
            wait.as_millis()
        )),
        Ok(Err(status)) => Err(format!("{address}: {}", status.message())),
        Ok(Ok(reply)) => finding(&reply.into_inner().finding_json),
    }
}

/// Sends `order` and, while the executor says it is still running, sends it again, until
/// `deadline_ms` (wall clock). Returns the last answer.
pub async fn execute(
    address: &str,
    order: &StepOrder,
    deadline_ms: u64,
) -> Result<Finding, String> {
    loop {
        let found = execute_once(address, order).await?;
        if matches!(found, Finding::Running { .. }) && crate::agent::now_ms() < deadline_ms {
            continue;
        }
        return Ok(found);
    }
}

/// Asks about a token (and fences it).
pub async fn probe(address: &str, order: &ProbeOrder) -> Result<Finding, String> {
    let json = serde_json::to_vec(order).map_err(|e| format!("cannot encode the probe: {e}"))?;
    let mut c = client(address)?;
    let wait = Duration::from_millis(PROBE_TIMEOUT_MS);
    match tokio::time::timeout(wait, c.probe(ProbeOrderMessage { json })).await {
        Err(_) => Err(format!(
            "no answer from {address} within {PROBE_TIMEOUT_MS} ms"
        )),
        Ok(Err(status)) => Err(format!("{address}: {}", status.message())),
        Ok(Ok(reply)) => finding(&reply.into_inner().finding_json),
    }
}
