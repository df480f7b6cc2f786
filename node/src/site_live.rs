//! A site file checked against the live arrays, where they can be reached: `stillpoint apply`
//! asks an agent with a control path to each array the pairs name (query `array:NAME`) for its
//! LDs, and refuses pairs and volumes the array would refuse or could not serve — an LD that
//! does not exist, MV and RV of different capacity or format, an LD already playing another
//! role in another pair, a volume on an LD its node is not on the access list of, an MV with
//! more RVs than the array allows (at most [`MAX_RVS_PER_MV`], of which [`MAX_DDR_RVS_PER_MV`]
//! on its own array, spread over [`MAX_RV_ARRAYS_PER_MV`] arrays), counting the pairs the array
//! already has that the site file does not name. An array no
//! control node answers for is not checked, and `apply` says so on stderr; the array still
//! refuses a bad pair when `group prepare` sets it. Deciding ([`pairing_errors`], pure) is
//! apart from asking ([`read_live_arrays`]).

use std::collections::BTreeMap;

use std::collections::BTreeSet;

use stillpoint_array::{LdInfo, LdRole, MAX_DDR_RVS_PER_MV, MAX_RV_ARRAYS_PER_MV, MAX_RVS_PER_MV};
use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::inventory::{Inventory, InventoryError, LdRef};

/// The LDs of each array that answered, by array name.
pub type LiveArrays = BTreeMap<String, Vec<LdInfo>>;

/// What the live arrays say against `inv`'s pairs and volumes. Arrays missing from `live`
/// are not checked.
pub fn pairing_errors(inv: &Inventory, live: &LiveArrays) -> Vec<InventoryError> {
    let mut errors = Vec::new();
    let mut broke = |path: String, rule: String| errors.push(InventoryError { path, rule });
    let find = |r: &LdRef| -> Option<Option<&LdInfo>> {
        live.get(&r.array)
            .map(|lds| lds.iter().find(|l| l.number == r.ld))
    };
    for (name, p) in &inv.pairs {
        let (Some(mv), Some(rv)) = (find(&p.mv), find(&p.rv)) else {
            // One side's array did not answer: whatever can be said of the other is said by
            // the volumes below and by the array at `group prepare`.
            continue;
        };
        let at = |field: &str| format!("pairs.{name}.{field}");
        let (mv, rv) = match (mv, rv) {
            (Some(mv), Some(rv)) => (mv, rv),
            (mv, rv) => {
                for (field, side, r) in [("mv", mv, &p.mv), ("rv", rv, &p.rv)] {
                    if side.is_none() {
                        broke(
                            at(field),
                            format!("array {} has no LD {} (live array)", r.array, r.ld),
                        );
                    }
                }
                continue;
            }
        };
        if mv.capacity_bytes != rv.capacity_bytes {
            broke(
                at("rv"),
                format!(
                    "MV and RV must have the same capacity: {}:{} has {} bytes, {}:{} has {} (live array)",
                    p.mv.array, p.mv.ld, mv.capacity_bytes, p.rv.array, p.rv.ld, rv.capacity_bytes
                ),
            );
        }
        if mv.format != rv.format {
            broke(
                at("rv"),
                format!(
                    "MV and RV must have the same format: {}:{} is {}, {}:{} is {} (live array)",
                    p.mv.array, p.mv.ld, mv.format, p.rv.array, p.rv.ld, rv.format
                ),
            );
        }
        match &rv.role {
            LdRole::Rv { mv: other, .. } if other.array != p.mv.array || other.ld != p.mv.ld => {
                broke(
                    at("rv"),
                    format!(
                        "LD {}:{} is already the RV of another pair (MV {}:{}); an LD plays one role (live array)",
                        p.rv.array, p.rv.ld, other.array, other.ld
                    ),
                );
            }
            LdRole::Mv { rvs } => broke(
                at("rv"),
                format!(
                    "LD {}:{} is the MV of {rvs} pair(s) on the array; an RV is never an MV (live array)",
                    p.rv.array, p.rv.ld
                ),
            ),
            _ => {}
        }
        if let LdRole::Rv { mv: other, .. } = &mv.role {
            broke(
                at("mv"),
                format!(
                    "LD {}:{} is the RV of the pair with MV {}:{}; an RV is never an MV (live array)",
                    p.mv.array, p.mv.ld, other.array, other.ld
                ),
            );
        }
    }
    for (key, v) in &inv.volumes {
        match find(&v.ld) {
            None => {}
            Some(None) => broke(
                format!("volumes.{key}.ld"),
                format!("array {} has no LD {} (live array)", v.ld.array, v.ld.ld),
            ),
            Some(Some(ld)) if !ld.hosts.iter().any(|h| h == "*" || *h == v.node) => broke(
                format!("volumes.{key}.ld"),
                format!(
                    "node {} is not on the access list of LD {}:{} ({}), so it cannot use it (live array)",
                    v.node,
                    v.ld.array,
                    v.ld.ld,
                    if ld.hosts.is_empty() {
                        "empty".to_string()
                    } else {
                        ld.hosts.join(", ")
                    }
                ),
            ),
            Some(Some(_)) => {}
        }
    }
    errors.extend(per_mv_limit_errors(inv, live));
    errors
}

/// The array's limits on the RVs of one MV, over the site file's pairs together with the
/// pairs the live arrays already hold (an RV LD whose role names the MV). When the MV's array
/// counts more RVs than the answered arrays show, the rest are on arrays nobody answered for:
/// they count towards the total (and are not DDR: a DDR RV is on the MV's own array).
fn per_mv_limit_errors(inv: &Inventory, live: &LiveArrays) -> Vec<InventoryError> {
    let mut rvs_of: BTreeMap<&LdRef, (BTreeSet<LdRef>, &str)> = BTreeMap::new();
    for (name, p) in &inv.pairs {
        let e = rvs_of
            .entry(&p.mv)
            .or_insert_with(|| (BTreeSet::new(), name));
        e.0.insert(p.rv.clone());
    }
    let mut errors = Vec::new();
    for (mv, (mut rvs, first_pair)) in rvs_of {
        // RVs already set on the answered arrays (an RV LD's role names its MV).
        let mut set_on_live = 0u32;
        for (array, lds) in live {
            for l in lds {
                if let LdRole::Rv { mv: of, .. } = &l.role
                    && of.array == mv.array
                    && of.ld == mv.ld
                {
                    set_on_live += 1;
                    rvs.insert(LdRef {
                        array: array.clone(),
                        ld: l.number,
                    });
                }
            }
        }
        let unseen = live
            .get(&mv.array)
            .and_then(|lds| lds.iter().find(|l| l.number == mv.ld))
            .map_or(0, |l| match l.role {
                LdRole::Mv { rvs } => rvs.saturating_sub(set_on_live),
                _ => 0,
            });
        let total = rvs.len() as u32 + unseen;
        let ddr = rvs.iter().filter(|r| r.array == mv.array).count() as u32;
        let arrays: BTreeSet<&str> = rvs.iter().map(|r| r.array.as_str()).collect();
        let listed = || {
            rvs.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let path = format!("pairs.{first_pair}.mv");
        let mut broke = |rule: String| {
            errors.push(InventoryError {
                path: path.clone(),
                rule,
            })
        };
        if total > MAX_RVS_PER_MV {
            broke(format!(
                "MV {mv} would have {total} RVs ({}{}); an MV has at most {MAX_RVS_PER_MV}",
                listed(),
                if unseen > 0 {
                    format!(", and {unseen} on arrays that did not answer")
                } else {
                    String::new()
                }
            ));
        }
        if ddr > MAX_DDR_RVS_PER_MV {
            broke(format!(
                "MV {mv} would have {ddr} RVs on its own array ({}); at most {MAX_DDR_RVS_PER_MV} DDR RVs per MV",
                listed()
            ));
        }
        if arrays.len() as u32 > MAX_RV_ARRAYS_PER_MV {
            broke(format!(
                "the RVs of MV {mv} would span {} arrays ({}); at most {MAX_RV_ARRAYS_PER_MV}",
                arrays.len(),
                listed()
            ));
        }
    }
    errors
}

/// Reads the LDs of every array `inv`'s pairs or volumes name. Returns what answered and,
/// for each array nobody answered for, a line saying so.
pub async fn read_live_arrays(state: &ClusterState, inv: &Inventory) -> (LiveArrays, Vec<String>) {
    let mut wanted: Vec<&String> = inv
        .pairs
        .values()
        .flat_map(|p| [&p.mv.array, &p.rv.array])
        .chain(inv.volumes.values().map(|v| &v.ld.array))
        .collect();
    wanted.sort();
    wanted.dedup();
    let (mut live, mut unchecked) = (LiveArrays::new(), Vec::new());
    for array in wanted {
        match crate::live_array::read_lds(state, inv, array).await {
            Ok(lds) => {
                live.insert(array.clone(), lds);
            }
            Err(why) => unchecked.push(format!(
                "array {array} was not checked against the live array: {why}"
            )),
        }
    }
    (live, unchecked)
}

#[cfg(test)]
mod tests;
