//! The driver's side of talking to executors: where a step goes, and sending it or asking about
//! it until there is an answer worth recording.

use std::collections::BTreeMap;

use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::inventory::PairSpec;
use stillpoint_coordinator::job::wire::{ProbeOrder, StepOrder};
use stillpoint_coordinator::job::{Finding, StepCall, StepTarget};

use crate::error::NodeError;

/// How long an executor holds an order before answering "running"; the driver then sends the
/// same order again (answered from the executor's journal, never executed twice).
pub const REPLY_WITHIN_MS: u64 = 10_000;

/// The agents that can execute steps of `target`, by name and address, in the order the driver
/// tries them: a node's own agent; for an array, its registered control nodes in name
/// order. `Err` says why nobody can.
pub fn executor_candidates(
    state: &ClusterState,
    target: &StepTarget,
) -> Result<Vec<(String, String)>, String> {
    let address_of = |name: &str| {
        state
            .node_by_name(name)
            .filter(|n| n.deregistered_at_ms.is_none())
            .map(|n| (name.to_string(), n.address.clone()))
    };
    match target {
        StepTarget::Node(name) => address_of(name)
            .map(|c| vec![c])
            .ok_or_else(|| format!("no registered agent named {name:?}")),
        StepTarget::Array(array) => {
            let spec = state
                .inventory
                .arrays
                .get(array)
                .ok_or_else(|| format!("array {array:?} is not in the inventory"))?;
            let found: Vec<(String, String)> = spec
                .control_nodes
                .iter()
                .filter_map(|n| address_of(n))
                .collect();
            if found.is_empty() {
                Err(format!(
                    "no control node of array {array:?} ({}) is registered",
                    spec.control_nodes
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            } else {
                Ok(found)
            }
        }
    }
}

/// Where the driver sends the steps of each target. An array's steps go to the control node
/// the replicated state records for it ([`ClusterState::array_routes`]: where the last leader
/// moved them), else to its first registered control node, until that agent fails to answer
/// (unreachable, or a probe with no answer); then to the next, round the list, and the driver
/// proposes the move ([`stillpoint_coordinator::Command::RouteArraySteps`]) so that the next
/// leader starts there, where the steps it must ask about were sent. Safe even when that
/// record is late or lost, because the array fences its pair operations by token: an order
/// left on the agent passed over cannot land after one a newer attempt sent elsewhere, and
/// asking the new agent about an old token finds it not recorded there, which the job answers
/// with a new attempt.
#[derive(Debug, Default)]
pub struct Routes {
    /// Per array: the control node this lead moved its steps to (ahead of the log).
    in_use: BTreeMap<String, String>,
}

impl Routes {
    /// The candidates for `target` and the index of the one in use.
    fn current(
        &self,
        state: &ClusterState,
        target: &StepTarget,
    ) -> Result<(Vec<(String, String)>, usize), String> {
        let candidates = executor_candidates(state, target)?;
        let chosen = match target {
            StepTarget::Array(array) => self
                .in_use
                .get(array)
                .or_else(|| state.array_routes.get(array)),
            StepTarget::Node(_) => None,
        };
        let index = chosen
            .and_then(|name| candidates.iter().position(|(n, _)| n == name))
            .unwrap_or(0);
        Ok((candidates, index))
    }

    /// The address to send `target`'s steps to now.
    pub fn address(&self, state: &ClusterState, target: &StepTarget) -> Result<String, String> {
        let (candidates, index) = self.current(state, target)?;
        Ok(candidates[index].1.clone())
    }

    /// The agent at `address` did not answer for `target`: if it is still the one in use,
    /// pass over it to the next control node. Returns the agent now in use when it changed
    /// (the caller proposes it).
    pub fn pass_over(
        &mut self,
        state: &ClusterState,
        target: &StepTarget,
        address: &str,
    ) -> Option<String> {
        let StepTarget::Array(array) = target else {
            return None;
        };
        let (candidates, index) = self.current(state, target).ok()?;
        if candidates.len() < 2 || candidates[index].1 != address {
            return None;
        }
        let next = candidates[(index + 1) % candidates.len()].0.clone();
        self.in_use.insert(array.clone(), next.clone());
        Some(next)
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

/// Why an executor gave no answer: the outcome is unknown (asked about next). `unreachable`
/// when the agent could not be reached at all.
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub why: String,
    pub unreachable: bool,
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl From<NodeError> for Unanswered {
    fn from(e: NodeError) -> Self {
        Unanswered {
            unreachable: matches!(e, NodeError::Unreachable { .. }),
            why: e.to_string(),
        }
    }
}

/// Sends `order` once. An error means the outcome is unknown (not delivered, refused, or no
/// answer in time): the caller records that and asks.
pub async fn execute_once(address: &str, order: &StepOrder) -> Result<Finding, Unanswered> {
    Ok(crate::executor::client::execute(address, order).await?)
}

/// Sends `order` and, while the executor says it is still running, sends it again, until
/// `deadline_ms` (on the lead's `clock`). Returns the last answer.
pub async fn execute(
    address: &str,
    order: &StepOrder,
    deadline_ms: u64,
    clock: crate::agent::LeadClock,
) -> Result<Finding, Unanswered> {
    loop {
        let found = execute_once(address, order).await?;
        if matches!(found, Finding::Running { .. }) && clock.now_ms() < deadline_ms {
            continue;
        }
        return Ok(found);
    }
}

/// Sends `orders` (each with its deadline on the lead's `clock`) to the executor at `address`
/// as one batch (`ExecuteMany`), and sends again, as one batch, those it says are still
/// running, until their deadlines. `on_answer` gets each order's last answer (its index in
/// `orders`) as soon as it has it. A lone order goes as a single `Execute`, and so does every
/// order when the executor does not serve batches (an agent of an older version).
pub async fn execute_all(
    address: &str,
    orders: &[(StepOrder, u64)],
    clock: crate::agent::LeadClock,
    on_answer: &mut (dyn FnMut(usize, Result<Finding, Unanswered>) + Send),
) {
    use crate::executor::client::{Batched, execute_many};
    let mut pending: Vec<usize> = (0..orders.len()).collect();
    while !pending.is_empty() {
        if let [i] = pending[..] {
            on_answer(i, execute(address, &orders[i].0, orders[i].1, clock).await);
            return;
        }
        let batch: Vec<&StepOrder> = pending.iter().map(|&i| &orders[i].0).collect();
        let mut answered = vec![false; pending.len()];
        let mut again = Vec::new();
        let served = execute_many(address, &batch, &mut |k, result| {
            answered[k] = true;
            let i = pending[k];
            match result {
                Ok(Finding::Running { .. }) if clock.now_ms() < orders[i].1 => again.push(i),
                result => on_answer(i, result.map_err(Unanswered::from)),
            }
        })
        .await;
        let cut = match served {
            Ok(Batched::Served) => Unanswered {
                why: format!(
                    "outcome unknown: the executor at {address} ended the batch without answering the order; probe the step"
                ),
                unreachable: false,
            },
            Ok(Batched::NotServed) => {
                let singles = pending
                    .iter()
                    .map(|&i| execute(address, &orders[i].0, orders[i].1, clock));
                for (&i, result) in pending.iter().zip(futures::future::join_all(singles).await) {
                    on_answer(i, result);
                }
                return;
            }
            Err(e) => Unanswered::from(e),
        };
        for (k, &i) in pending.iter().enumerate() {
            if !answered[k] {
                on_answer(i, Err(cut.clone()));
            }
        }
        pending = again;
    }
}

/// Asks about a token (and fences it).
pub async fn probe(address: &str, order: &ProbeOrder) -> Result<Finding, Unanswered> {
    Ok(crate::executor::client::probe(address, order).await?)
}

#[cfg(test)]
mod tests {
    use stillpoint_coordinator::inventory::ArraySpec;
    use stillpoint_coordinator::{Command, NodeRecord, Role};

    use super::*;

    /// Array `A1` with control nodes `mgmt1` and `mgmt2`, both registered.
    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        let members: BTreeMap<u64, String> = [
            (1, "127.0.0.1:7001".to_string()),
            (2, "127.0.0.1:7002".to_string()),
        ]
        .into();
        for (id, name) in [(1, "mgmt1"), (2, "mgmt2")] {
            state.apply(
                &members,
                &Command::RegisterNode(NodeRecord {
                    node_id: id,
                    name: name.into(),
                    address: format!("127.0.0.1:{}", 7000 + id),
                    roles: [Role::Management].into(),
                    version: "0.1.0".into(),
                    registered_at_ms: 0,
                    deregistered_at_ms: None,
                }),
            );
        }
        state.inventory.arrays.insert(
            "A1".into(),
            ArraySpec {
                name: "A1".into(),
                control_nodes: ["mgmt1".to_string(), "mgmt2".to_string()].into(),
            },
        );
        state
    }

    #[test]
    fn an_array_moves_to_its_next_control_node_only_when_the_one_in_use_did_not_answer() {
        let state = state();
        let a1 = StepTarget::Array("A1".into());
        let mut routes = Routes::default();
        assert_eq!(routes.address(&state, &a1).unwrap(), "127.0.0.1:7001");
        // A late failure of an agent no longer in use changes nothing.
        assert_eq!(routes.pass_over(&state, &a1, "127.0.0.1:7002"), None);
        assert_eq!(
            routes.pass_over(&state, &a1, "127.0.0.1:7001").as_deref(),
            Some("mgmt2")
        );
        assert_eq!(routes.address(&state, &a1).unwrap(), "127.0.0.1:7002");
        // Round the list.
        assert_eq!(
            routes.pass_over(&state, &a1, "127.0.0.1:7002").as_deref(),
            Some("mgmt1")
        );
        // A node's steps always go to its own agent.
        let node = StepTarget::Node("mgmt2".into());
        assert_eq!(routes.pass_over(&state, &node, "127.0.0.1:7002"), None);
        assert_eq!(routes.address(&state, &node).unwrap(), "127.0.0.1:7002");
    }

    #[test]
    fn a_new_leader_sends_an_arrays_steps_where_the_last_one_moved_them() {
        let mut state = state();
        let members = BTreeMap::new();
        let a1 = StepTarget::Array("A1".into());
        let route = |node: &str| Command::RouteArraySteps {
            array: "A1".into(),
            control_node: node.into(),
        };
        // The last leader passed over mgmt1, and proposed the move.
        let mut last = Routes::default();
        let moved = last.pass_over(&state, &a1, "127.0.0.1:7001");
        assert_eq!(moved.as_deref(), Some("mgmt2"));
        assert_eq!(
            state.apply(&members, &route("mgmt2")),
            stillpoint_coordinator::Response::Applied { changed: true }
        );
        // A new leader's routes start from the record.
        let routes = Routes::default();
        assert_eq!(routes.address(&state, &a1).unwrap(), "127.0.0.1:7002");
        // A record the inventory does not back is not kept, and one whose agent is no longer
        // registered is passed over for the first that is.
        assert_eq!(
            state.apply(&members, &route("db1")),
            stillpoint_coordinator::Response::Applied { changed: false }
        );
        assert_eq!(state.array_routes["A1"], "mgmt2");
        state.nodes.get_mut(&2).unwrap().deregistered_at_ms = Some(1);
        assert_eq!(routes.address(&state, &a1).unwrap(), "127.0.0.1:7001");
    }
}
