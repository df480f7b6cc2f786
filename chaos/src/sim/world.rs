//! The simulated hosts and arrays, and the records they keep of themselves: the array's log
//! of pair transitions, the hosts' quiesce intervals and mounts, and every effect a step had,
//! with the token it came under. The checkers judge from these records only; S1 and S2 are
//! checked here, at the instant a mount, an I/O or a replicate happens.

use std::collections::{BTreeMap, BTreeSet};

use stillpoint_coordinator::inventory::VolumeRef;
use stillpoint_coordinator::job::FencingToken;

use super::site::Site;

/// A pair's state on its array. Copies take virtual time: `done_at_ms` is when they finish,
/// materialised lazily by [`World::settle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairState {
    Replicating {
        done_at_ms: u64,
    },
    InSync,
    Separating {
        done_at_ms: u64,
    },
    Separated,
    /// Failure separation after a copy fault: a replicate starts the copy again.
    Fault,
    /// RDR abnormal suspend: the link is down; resumes when it is up again.
    Suspended {
        separating: bool,
    },
}

impl PairState {
    pub fn name(&self) -> &'static str {
        match self {
            PairState::Replicating { .. } => "rpl/exec",
            PairState::InSync => "rpl/sync",
            PairState::Separating { .. } => "sep/exec",
            PairState::Separated => "separated",
            PairState::Fault => "fault",
            PairState::Suspended { .. } => "abnormal suspend",
        }
    }
}

/// A transition in the array's own log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrayOp {
    ReplicateStarted,
    InSync,
    SeparateAccepted,
    Separated,
    CopyFault,
    Suspended,
    Resumed,
}

#[derive(Clone, Debug)]
pub struct ArrayRec {
    /// Position in the run's order of happenings (ties of `at_ms` are ordered by it).
    pub seq: u64,
    pub at_ms: u64,
    pub pair: String,
    pub op: ArrayOp,
    /// The token the array was asked under (none for its own transitions).
    pub token: Option<FencingToken>,
}

/// One quiesce of an MV as its host records it: from the static point taken to the moment
/// writes could resume (release, deadline, or the agent's restart).
#[derive(Clone, Debug)]
pub struct QuiesceInterval {
    pub volume: VolumeRef,
    pub id: u64,
    pub owner: FencingToken,
    pub start_ms: u64,
    pub start_seq: u64,
    pub end_ms: Option<u64>,
    pub end_seq: Option<u64>,
    pub limit_ms: u64,
    pub end_why: &'static str,
}

/// Something a step (or the world by itself) did to a resource.
#[derive(Clone, Debug)]
pub struct Effect {
    pub seq: u64,
    pub at_ms: u64,
    /// `pair:NAME`, `volume:NODE:VOLUME` or `node:NAME` (the coordinator's names).
    pub resource: String,
    /// The step's token; `None` for the world's own changes (a deadline, a copy fault).
    pub token: Option<FencingToken>,
    pub call: &'static str,
    /// It changed the resource's state (not an idempotent repeat, not a refusal).
    pub changed: bool,
}

/// A safety property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prop {
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    S7,
    /// The engine contradicted itself: `decide` asked to record an event its own job refused.
    Engine,
}

impl Prop {
    pub const ALL: [Prop; 8] = [
        Prop::S1,
        Prop::S2,
        Prop::S3,
        Prop::S4,
        Prop::S5,
        Prop::S6,
        Prop::S7,
        Prop::Engine,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Prop::S1 => "S1",
            Prop::S2 => "S2",
            Prop::S3 => "S3",
            Prop::S4 => "S4",
            Prop::S5 => "S5",
            Prop::S6 => "S6",
            Prop::S7 => "S7",
            Prop::Engine => "engine",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub prop: Prop,
    pub at_ms: u64,
    pub what: String,
}

/// A quiesce a host holds on an MV.
#[derive(Clone, Debug)]
struct Held {
    id: u64,
    owner: FencingToken,
    /// False once the host resumed it by itself (deadline, restart): kept until released.
    holding: bool,
    interval: usize,
}

/// Hosts and arrays, and their records.
pub struct World {
    site: Site,
    pub pairs: BTreeMap<String, PairState>,
    pub link_up: bool,
    /// Every mounted volume (MVs and RVs), as the hosts' mount tables say.
    pub mounted: BTreeSet<VolumeRef>,
    held: BTreeMap<VolumeRef, Held>,
    /// A holder refuses to let go of the volume until this time.
    pub busy_until: BTreeMap<VolumeRef, u64>,
    /// The node's stop hooks fail until this time.
    pub hook_fails_until: BTreeMap<String, u64>,
    next_quiesce_id: u64,
    /// Counter of happenings, shared by every record (and the trace).
    pub seq: u64,
    pub array_log: Vec<ArrayRec>,
    pub intervals: Vec<QuiesceInterval>,
    pub effects: Vec<Effect>,
    pub violations: Vec<Violation>,
    /// Mutation (tests only): a release always claims the quiesce held throughout.
    pub host_claims_held: bool,
    /// Per pair, the token of the last replicate or separate that changed it (the software
    /// array's `acted_by`).
    pub acted_by: BTreeMap<String, FencingToken>,
}

impl World {
    /// Pairs start in sync with their RV unmounted, or separated with the RV mounted (the last
    /// backup's copy in use); every MV is mounted.
    pub fn new(site: &Site, initially_separated: &[bool]) -> World {
        let mut w = World {
            site: site.clone(),
            pairs: BTreeMap::new(),
            link_up: true,
            mounted: BTreeSet::new(),
            held: BTreeMap::new(),
            busy_until: BTreeMap::new(),
            hook_fails_until: BTreeMap::new(),
            next_quiesce_id: 0,
            seq: 0,
            array_log: Vec::new(),
            intervals: Vec::new(),
            effects: Vec::new(),
            violations: Vec::new(),
            host_claims_held: false,
            acted_by: BTreeMap::new(),
        };
        for (p, &sep) in site.pairs.iter().zip(initially_separated) {
            w.mounted.insert(p.mv.clone());
            if sep {
                w.pairs.insert(p.name.clone(), PairState::Separated);
                w.mounted.insert(p.rv.clone());
            } else {
                w.pairs.insert(p.name.clone(), PairState::InSync);
            }
        }
        w
    }

    /// The next position in the run's order of happenings.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn violate(&mut self, prop: Prop, at_ms: u64, what: String) {
        self.violations.push(Violation { prop, at_ms, what });
    }

    fn effect(
        &mut self,
        at_ms: u64,
        resource: String,
        token: Option<FencingToken>,
        call: &'static str,
        changed: bool,
    ) {
        let seq = self.next_seq();
        self.effects.push(Effect {
            seq,
            at_ms,
            resource,
            token,
            call,
            changed,
        });
    }

    fn log(&mut self, at_ms: u64, pair: &str, op: ArrayOp, token: Option<FencingToken>) {
        let seq = self.next_seq();
        self.array_log.push(ArrayRec {
            seq,
            at_ms,
            pair: pair.to_string(),
            op,
            token,
        });
    }

    /// Finishes every copy due by `now_ms`, logging each at the instant it finished.
    pub fn settle(&mut self, now_ms: u64) {
        let due: Vec<(String, u64, bool)> = self
            .pairs
            .iter()
            .filter_map(|(name, st)| match st {
                PairState::Replicating { done_at_ms } if *done_at_ms <= now_ms => {
                    Some((name.clone(), *done_at_ms, false))
                }
                PairState::Separating { done_at_ms } if *done_at_ms <= now_ms => {
                    Some((name.clone(), *done_at_ms, true))
                }
                _ => None,
            })
            .collect();
        for (name, at, separating) in due {
            if separating {
                self.pairs.insert(name.clone(), PairState::Separated);
                self.log(at, &name, ArrayOp::Separated, None);
            } else {
                self.pairs.insert(name.clone(), PairState::InSync);
                self.log(at, &name, ArrayOp::InSync, None);
            }
        }
    }

    pub fn pair_state(&mut self, pair: &str, now_ms: u64) -> PairState {
        self.settle(now_ms);
        self.pairs.get(pair).cloned().unwrap_or(PairState::Fault)
    }

    /// When the pair's running copy finishes, if one runs.
    pub fn copy_done_at(&self, pair: &str) -> Option<u64> {
        match self.pairs.get(pair) {
            Some(PairState::Replicating { done_at_ms } | PairState::Separating { done_at_ms }) => {
                Some(*done_at_ms)
            }
            _ => None,
        }
    }

    fn rv_mounted(&self, pair: &str) -> Option<VolumeRef> {
        let rv = &self.site.pair(pair)?.rv;
        self.mounted.contains(rv).then(|| rv.clone())
    }

    fn is_rdr(&self, pair: &str) -> bool {
        self.site.pair(pair).is_some_and(|p| p.rdr)
    }

    fn stop_hook_fails(&self, node: &str, now_ms: u64) -> bool {
        self.hook_fails_until.get(node).is_some_and(|t| now_ms < *t)
    }

    fn busy(&self, volume: &VolumeRef, now_ms: u64) -> bool {
        self.busy_until.get(volume).is_some_and(|t| now_ms < *t)
    }

    // ---- array operations -------------------------------------------------------------

    pub fn replicate(
        &mut self,
        pair: &str,
        token: FencingToken,
        now_ms: u64,
        copy_ms: u64,
    ) -> Result<(), String> {
        let st = self.pair_state(pair, now_ms);
        let resource = format!("pair:{pair}");
        match st {
            PairState::Replicating { .. } | PairState::InSync => {
                self.effect(now_ms, resource, Some(token), "replicate", false);
                Ok(())
            }
            PairState::Suspended { .. } => {
                Err(format!("{pair} is in abnormal suspend (RDR link down)"))
            }
            PairState::Separating { .. } => Err(format!("{pair} is still separating")),
            PairState::Separated | PairState::Fault => {
                if self.is_rdr(pair) && !self.link_up {
                    return Err(format!("{pair}: the RDR link is down"));
                }
                if let Some(rv) = self.rv_mounted(pair) {
                    self.violate(
                        Prop::S2,
                        now_ms,
                        format!(
                            "replicate of {pair} issued under {} while its RV {rv} is mounted",
                            tok(&token)
                        ),
                    );
                }
                self.pairs.insert(
                    pair.to_string(),
                    PairState::Replicating {
                        done_at_ms: now_ms + copy_ms,
                    },
                );
                self.log(now_ms, pair, ArrayOp::ReplicateStarted, Some(token));
                self.acted_by.insert(pair.to_string(), token);
                self.effect(now_ms, resource, Some(token), "replicate", true);
                Ok(())
            }
        }
    }

    pub fn separate(
        &mut self,
        pair: &str,
        token: FencingToken,
        now_ms: u64,
        copy_ms: u64,
    ) -> Result<(), String> {
        let st = self.pair_state(pair, now_ms);
        let resource = format!("pair:{pair}");
        match st {
            PairState::Separating { .. } | PairState::Separated => {
                // As the executor does: only this step's own separate, in this term, counts.
                if !self.separated_by_step(pair, &token) {
                    return Err(format!(
                        "{pair} was already {} by {}, not by this round's separate",
                        st.name(),
                        self.acted_by
                            .get(pair)
                            .map(tok)
                            .unwrap_or_else(|| "something else".into())
                    ));
                }
                self.effect(now_ms, resource, Some(token), "separate", false);
                Ok(())
            }
            PairState::Replicating { .. } | PairState::InSync => {
                self.pairs.insert(
                    pair.to_string(),
                    PairState::Separating {
                        done_at_ms: now_ms + copy_ms,
                    },
                );
                self.log(now_ms, pair, ArrayOp::SeparateAccepted, Some(token));
                self.acted_by.insert(pair.to_string(), token);
                self.effect(now_ms, resource, Some(token), "separate", true);
                Ok(())
            }
            other => Err(format!("{pair} cannot be separated from {}", other.name())),
        }
    }

    /// Whether the pair's last replicate or separate is `token`'s step under `token`'s term
    /// (the executor's rule for a pair found already separated).
    pub fn separated_by_step(&self, pair: &str, token: &FencingToken) -> bool {
        self.acted_by.get(pair).is_some_and(|a| {
            a.term == token.term && a.job_id == token.job_id && a.step_index == token.step_index
        })
    }

    /// A copy fault on the pair's running copy (failure separation).
    pub fn copy_fault(&mut self, pair: &str, now_ms: u64) -> bool {
        let st = self.pair_state(pair, now_ms);
        if matches!(
            st,
            PairState::Replicating { .. } | PairState::Separating { .. }
        ) {
            self.pairs.insert(pair.to_string(), PairState::Fault);
            self.log(now_ms, pair, ArrayOp::CopyFault, None);
            self.effect(now_ms, format!("pair:{pair}"), None, "copy fault", true);
            true
        } else {
            false
        }
    }

    /// The RDR link goes down or comes back; RDR pairs suspend or resume their copy.
    pub fn set_link(&mut self, up: bool, now_ms: u64, resync_ms: u64) {
        self.settle(now_ms);
        self.link_up = up;
        let rdr: Vec<String> = self
            .site
            .pairs
            .iter()
            .filter(|p| p.rdr)
            .map(|p| p.name.clone())
            .collect();
        for pair in rdr {
            let st = self.pairs[&pair].clone();
            let next = match (up, st) {
                (false, PairState::Replicating { .. } | PairState::InSync) => Some((
                    PairState::Suspended { separating: false },
                    ArrayOp::Suspended,
                )),
                (false, PairState::Separating { .. }) => Some((
                    PairState::Suspended { separating: true },
                    ArrayOp::Suspended,
                )),
                (true, PairState::Suspended { separating }) => {
                    let done_at_ms = now_ms + resync_ms;
                    Some((
                        if separating {
                            PairState::Separating { done_at_ms }
                        } else {
                            PairState::Replicating { done_at_ms }
                        },
                        ArrayOp::Resumed,
                    ))
                }
                _ => None,
            };
            if let Some((state, op)) = next {
                self.pairs.insert(pair.clone(), state);
                self.log(now_ms, &pair, op, None);
            }
        }
    }

    // ---- host operations --------------------------------------------------------------

    pub fn free_rv(
        &mut self,
        volume: &VolumeRef,
        token: FencingToken,
        now_ms: u64,
    ) -> Result<(), String> {
        if self.stop_hook_fails(&volume.node, now_ms) {
            return Err(format!(
                "{}: the stop hook of the RV's users failed",
                volume.node
            ));
        }
        let resource = format!("volume:{volume}");
        if !self.mounted.contains(volume) {
            self.effect(now_ms, resource, Some(token), "free RV", false);
            return Ok(());
        }
        if self.busy(volume, now_ms) {
            return Err(format!("unmount of {volume} refused: a process holds it"));
        }
        self.mounted.remove(volume);
        self.effect(now_ms, resource, Some(token), "free RV", true);
        Ok(())
    }

    pub fn mount_rv(
        &mut self,
        volume: &VolumeRef,
        token: FencingToken,
        now_ms: u64,
    ) -> Result<(), String> {
        let resource = format!("volume:{volume}");
        if self.mounted.contains(volume) {
            self.effect(now_ms, resource, Some(token), "mount RV", false);
            return Ok(());
        }
        self.io_check(volume, now_ms, "mount");
        self.mounted.insert(volume.clone());
        self.effect(now_ms, resource, Some(token), "mount RV", true);
        Ok(())
    }

    /// S1, at the instant an RV is mounted or read: its pair must be separated.
    fn io_check(&mut self, rv: &VolumeRef, now_ms: u64, what: &str) {
        let Some(pair) = self.site.pair_of_rv(rv).map(|p| p.name.clone()) else {
            return;
        };
        let st = self.pair_state(&pair, now_ms);
        if st != PairState::Separated {
            self.violate(
                Prop::S1,
                now_ms,
                format!("{what} of RV {rv} while its pair {pair} is {}", st.name()),
            );
        }
    }

    /// The backup command reads every RV mounted on `node`.
    pub fn run_backup(&mut self, node: &str, token: FencingToken, now_ms: u64) {
        let rvs: Vec<VolumeRef> = self
            .mounted
            .iter()
            .filter(|v| v.node == node && self.site.pair_of_rv(v).is_some())
            .cloned()
            .collect();
        for rv in rvs {
            self.io_check(&rv, now_ms, "backup read");
        }
        self.effect(
            now_ms,
            format!("node:{node}"),
            Some(token),
            "backup command",
            true,
        );
    }

    pub fn quiesce(
        &mut self,
        volume: &VolumeRef,
        token: FencingToken,
        limit_ms: u64,
        now_ms: u64,
    ) -> Result<u64, String> {
        if self.stop_hook_fails(&volume.node, now_ms) {
            return Err(format!(
                "{}: the applications' stop hook failed",
                volume.node
            ));
        }
        if let Some(h) = self.held.get(volume).filter(|h| h.holding) {
            return Err(format!(
                "{volume} is already quiesced (quiesce {}, {})",
                h.id,
                tok(&h.owner)
            ));
        }
        if self.busy(volume, now_ms) {
            return Err(format!("unmount of {volume} refused: a process holds it"));
        }
        self.next_quiesce_id += 1;
        let id = self.next_quiesce_id;
        self.next_seq();
        self.mounted.remove(volume);
        self.intervals.push(QuiesceInterval {
            volume: volume.clone(),
            id,
            owner: token,
            start_ms: now_ms,
            start_seq: self.seq,
            end_ms: None,
            end_seq: None,
            limit_ms,
            end_why: "",
        });
        self.held.insert(
            volume.clone(),
            Held {
                id,
                owner: token,
                holding: true,
                interval: self.intervals.len() - 1,
            },
        );
        self.effect(
            now_ms,
            format!("volume:{volume}"),
            Some(token),
            "quiesce",
            true,
        );
        Ok(id)
    }

    /// The id of a quiesce held on `volume` by `job`'s step `step` (any attempt), if any.
    pub fn held_by(&self, volume: &VolumeRef, job: u64, step: u32) -> Option<u64> {
        self.held
            .get(volume)
            .filter(|h| h.holding && h.owner.job_id == job && h.owner.step_index == step)
            .map(|h| h.id)
    }

    fn end_hold(&mut self, volume: &VolumeRef, now_ms: u64, why: &'static str) {
        let Some(h) = self.held.get_mut(volume) else {
            return;
        };
        if !h.holding {
            return;
        }
        h.holding = false;
        let iv = &mut self.intervals[h.interval];
        iv.end_ms = Some(now_ms);
        self.seq += 1;
        iv.end_seq = Some(self.seq);
        iv.end_why = why;
        self.mounted.insert(volume.clone());
        self.effect(now_ms, format!("volume:{volume}"), None, why, true);
    }

    /// The host's own deadline (S4): it resumes the MV by itself.
    pub fn deadline_passed(&mut self, volume: &VolumeRef, id: u64, now_ms: u64) {
        if self.held.get(volume).is_some_and(|h| h.id == id) {
            self.end_hold(volume, now_ms, "resumed at its deadline");
        }
    }

    /// The node's agent restarted: it resumes every quiesce it holds.
    pub fn agent_restarted(&mut self, node: &str, now_ms: u64) {
        let vols: Vec<VolumeRef> = self
            .held
            .keys()
            .filter(|v| v.node == node)
            .cloned()
            .collect();
        for v in vols {
            self.end_hold(&v, now_ms, "resumed at agent restart");
        }
    }

    pub fn release(
        &mut self,
        volume: &VolumeRef,
        quiesce_id: Option<u64>,
        token: FencingToken,
        now_ms: u64,
    ) -> Result<bool, String> {
        let resource = format!("volume:{volume}");
        match self.held.get(volume) {
            Some(h) if Some(h.id) == quiesce_id => {
                let holding = h.holding;
                if holding {
                    self.end_hold(volume, now_ms, "released");
                }
                self.held.remove(volume);
                self.effect(now_ms, resource, Some(token), "release", true);
                Ok(holding || self.host_claims_held)
            }
            _ => {
                // Nothing of that quiesce left: it ended by itself before.
                self.effect(now_ms, resource, Some(token), "release", false);
                Ok(self.host_claims_held)
            }
        }
    }

    /// MVs still held quiesced.
    pub fn still_quiesced(&self) -> Vec<VolumeRef> {
        self.held
            .iter()
            .filter(|(_, h)| h.holding)
            .map(|(v, _)| v.clone())
            .collect()
    }
}

/// A token, short.
pub fn tok(t: &FencingToken) -> String {
    format!(
        "job {} step {} term {} attempt {}",
        t.job_id, t.step_index, t.term, t.attempt
    )
}
