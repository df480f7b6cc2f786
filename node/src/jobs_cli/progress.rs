//! Copy progress for `job watch` and `backup --wait`: while a step that waits for a copy runs
//! (replicate to sync, wait until separated), the pair's progress is read live from its array
//! through a control node ([`crate::live_array`]) and shown when it moves. Progress is for the
//! operator's eyes: it is not in the replicated job, and a read that fails (no control node
//! answers) shows nothing rather than stopping the watch.

use std::collections::BTreeMap;

use serde::Serialize;
use stillpoint_array::PairInfo;
use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::job::{Job, StepCall, StepId, StepState};

use crate::client::Client;
use crate::output::utc_time;

/// One look at a copying pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CopyProgress {
    pub at_ms: u64,
    pub step: StepId,
    pub pair: String,
    /// The pair's state as the array shows it (`rpl/exec`, `sep/exec`, ...).
    pub state: String,
    /// Whole percent of the current copy done.
    pub percent: u32,
    pub copy_diff_blocks: u64,
    pub copy_total_blocks: u64,
}

impl CopyProgress {
    /// One line of the watch's timeline.
    pub fn line(&self) -> String {
        format!(
            "{}  step {} pair {}  {}: {}% copied ({} of {} blocks left)",
            utc_time(self.at_ms),
            self.step,
            self.pair,
            self.state,
            self.percent,
            self.copy_diff_blocks,
            self.copy_total_blocks
        )
    }
}

/// The steps of `job` that are waiting for a copy now, with their pair.
pub fn copying_steps(job: &Job) -> Vec<(StepId, String)> {
    job.steps
        .iter()
        .filter(|s| matches!(s.state, StepState::Dispatched { .. }))
        .filter_map(|s| match &s.call {
            StepCall::Replicate { pair } | StepCall::AwaitSeparated { pair } => {
                Some((s.id, pair.clone()))
            }
            _ => None,
        })
        .collect()
}

/// What `info` says of step `step` on pair `pair`, if it moved since `last`.
pub fn moved(
    step: StepId,
    pair: &str,
    info: &PairInfo,
    at_ms: u64,
    last: Option<&CopyProgress>,
) -> Option<CopyProgress> {
    let now = CopyProgress {
        at_ms,
        step,
        pair: pair.to_string(),
        state: info.state.to_string(),
        percent: info.progress_percent().floor() as u32,
        copy_diff_blocks: info.copy_diff_blocks,
        copy_total_blocks: info.copy_total_blocks,
    };
    let same = last.is_some_and(|l| l.state == now.state && l.percent == now.percent);
    (!same).then_some(now)
}

/// Reads progress for one watch; remembers the site (registry and inventory) after the first
/// read and the last progress shown per step.
#[derive(Default)]
pub struct ProgressReader {
    site: Option<ClusterState>,
    last: BTreeMap<(StepId, String), CopyProgress>,
}

impl ProgressReader {
    /// Looks at every pair `job` is copying now; returns what moved.
    pub async fn sample(&mut self, client: &Client, job: &Job) -> Vec<CopyProgress> {
        let copying = copying_steps(job);
        if copying.is_empty() {
            return Vec::new();
        }
        if self.site.is_none() {
            self.site = crate::site::read_site(client).await.ok();
        }
        let Some(site) = &self.site else {
            return Vec::new();
        };
        let inv = &site.inventory;
        let mut by_array: BTreeMap<&str, Vec<(StepId, &str)>> = BTreeMap::new();
        for (step, pair) in &copying {
            if let Some(spec) = inv.pairs.get(pair) {
                by_array
                    .entry(spec.mv.array.as_str())
                    .or_default()
                    .push((*step, pair.as_str()));
            }
        }
        let mut moved_now = Vec::new();
        for (array, steps) in by_array {
            let Ok(pairs) = crate::live_array::read_pairs(site, inv, array).await else {
                continue;
            };
            for (step, pair) in steps {
                let Some(spec) = inv.pairs.get(pair) else {
                    continue;
                };
                let info = pairs.iter().find(|p| {
                    p.id.mv.array == spec.mv.array
                        && p.id.mv.ld == spec.mv.ld
                        && p.id.rv.array == spec.rv.array
                        && p.id.rv.ld == spec.rv.ld
                });
                let key = (step, pair.to_string());
                if let Some(m) = info
                    .and_then(|i| moved(step, pair, i, crate::agent::now_ms(), self.last.get(&key)))
                {
                    self.last.insert(key, m.clone());
                    moved_now.push(m);
                }
            }
        }
        moved_now
    }
}

#[cfg(test)]
mod tests {
    use stillpoint_array::{
        Activity, CopyControl, LdRef, PairId, PairKind, PairState, RvAccess, SyncState,
    };

    use super::*;

    fn info(diff: u64, total: u64) -> PairInfo {
        let ld = |n| LdRef {
            array: "A1".into(),
            ld: n,
        };
        PairInfo {
            id: PairId {
                mv: ld(0),
                rv: ld(1),
            },
            kind: PairKind::Ddr,
            state: PairState {
                activity: Activity::Replicate,
                sync: SyncState::RplExec,
                abnormal_suspend: false,
                copy_control: CopyControl::Sync,
                rv_access: RvAccess::Nr,
            },
            separate_diff_blocks: 0,
            copy_diff_blocks: diff,
            copy_total_blocks: total,
            copied_blocks: total - diff,
            block_bytes: 65_536,
            backlog_high_water_blocks: 0,
            last_op: None,
            acted_by: None,
        }
    }

    #[test]
    fn progress_is_shown_when_the_whole_percent_or_the_state_moves() {
        let first = moved(1, "p0", &info(150, 200), 10, None).expect("first look");
        assert_eq!(first.percent, 25);
        assert_eq!(first.state, "rpl/exec");
        assert_eq!(
            moved(1, "p0", &info(149, 200), 20, Some(&first)),
            None,
            "25.5% is still 25%"
        );
        let later = moved(1, "p0", &info(100, 200), 30, Some(&first)).expect("moved");
        assert_eq!(later.percent, 50);
        assert!(
            later
                .line()
                .contains("step 1 pair p0  rpl/exec: 50% copied (100 of 200 blocks left)"),
            "{}",
            later.line()
        );
    }
}
