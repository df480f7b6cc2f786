//! The driver's side of talking to executors: where a step goes, and sending it or asking about
//! it until there is an answer worth recording.

use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::inventory::PairSpec;
use stillpoint_coordinator::job::wire::{ProbeOrder, StepOrder};
use stillpoint_coordinator::job::{Finding, StepCall, StepTarget};

/// How long an executor holds an order before answering "running"; the driver then sends the
/// same order again (answered from the executor's journal, never executed twice).
pub const REPLY_WITHIN_MS: u64 = 10_000;

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

/// Sends `order` once. An error means the outcome is unknown (not delivered, refused, or no
/// answer in time): the caller records that and asks.
pub async fn execute_once(address: &str, order: &StepOrder) -> Result<Finding, String> {
    crate::executor::client::execute(address, order)
        .await
        .map_err(|e| e.to_string())
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
    crate::executor::client::probe(address, order)
        .await
        .map_err(|e| e.to_string())
}
