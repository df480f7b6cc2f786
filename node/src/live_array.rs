//! An array's live state read through an agent with a control path to it: the cluster query
//! `array:NAME` (its LDs) or `pairs:NAME` (its pairs, with copy progress), asked of the array's
//! registered control nodes in turn. The leader never reaches an array itself; neither does
//! the CLI. Used by `apply` (pairing checks) and `job watch` (copy progress).

use std::time::Duration;

use serde::de::DeserializeOwned;
use stillpoint_array::{LdInfo, PairInfo};
use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::inventory::Inventory;

use crate::Client;
use crate::error::NodeError;

/// How long one control node may take to answer.
pub const LIVE_ARRAY_MS: u64 = 5_000;

/// What to read of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrayView {
    Lds,
    Pairs,
}

impl ArrayView {
    fn query(self, array: &str) -> String {
        match self {
            ArrayView::Lds => format!("array:{array}"),
            ArrayView::Pairs => format!("pairs:{array}"),
        }
    }
}

/// The LDs of `array`, from the first of its control nodes that answers; `Err` says, for each
/// one tried, why not.
pub async fn read_lds(
    state: &ClusterState,
    inv: &Inventory,
    array: &str,
) -> Result<Vec<LdInfo>, String> {
    read(state, inv, array, ArrayView::Lds).await
}

/// The pairs of `array` (those whose MV is on it), as [`read_lds`].
pub async fn read_pairs(
    state: &ClusterState,
    inv: &Inventory,
    array: &str,
) -> Result<Vec<PairInfo>, String> {
    read(state, inv, array, ArrayView::Pairs).await
}

async fn read<T: DeserializeOwned>(
    state: &ClusterState,
    inv: &Inventory,
    array: &str,
    view: ArrayView,
) -> Result<T, String> {
    let Some(spec) = inv.arrays.get(array) else {
        return Err(format!("array {array} is not in the inventory"));
    };
    let mut tried = Vec::new();
    for node in &spec.control_nodes {
        let Some(address) = state
            .node_by_name(node)
            .filter(|n| n.deregistered_at_ms.is_none())
            .map(|n| n.address.clone())
        else {
            continue;
        };
        match ask(&address, &view.query(array)).await {
            Ok(v) => return Ok(v),
            Err(e) => tried.push(format!("{node}: {e}")),
        }
    }
    Err(if tried.is_empty() {
        "none of its control nodes is registered".to_string()
    } else {
        tried.join("; ")
    })
}

async fn ask<T: DeserializeOwned>(address: &str, what: &str) -> Result<T, NodeError> {
    let client = Client::new(address.to_string());
    let call = client.on_endpoint("query", |mut c| async move {
        c.query(stillpoint_proto::cluster::QueryRequest {
            what: what.to_string(),
            consistent: false,
        })
        .await
    });
    let reply = tokio::time::timeout(Duration::from_millis(LIVE_ARRAY_MS), call)
        .await
        .map_err(|_| NodeError::Timeout {
            what: format!("reading {what} at {address}"),
            ms: LIVE_ARRAY_MS,
        })??;
    serde_json::from_slice(&reply.json).map_err(|e| {
        NodeError::Invalid(format!(
            "agent at {address} sent an undecodable {what}: {e}"
        ))
    })
}
