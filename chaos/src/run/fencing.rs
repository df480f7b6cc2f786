//! S5 and S6 from the array's audit log: who acted on each pair, in the array's own order.
//!
//! Every pair operation a job's step sends carries a fencing token (term, job, round, step,
//! attempt); the array refuses a token older than the newest that acted on the pair (its
//! "fence floor") and writes the token of every operation it accepted on the operation's audit
//! line. These checkers replay those lines per pair in sequence order and judge:
//!
//! - **S6** (no stale step takes effect): no operation is accepted with a token lower than one
//!   the array already accepted for that pair. A deposed leader's step that reaches the array
//!   after the new leader's step acted would show here.
//! - **S5** (at most one job owns a pair at a time): the jobs acting on a pair form runs; once a
//!   step of job B acted on the pair after job A's, no step of A acts on it again. Tokens order
//!   by term first, so a job taken over in a newer term could pass S6 while interleaving with
//!   another job; S5 catches that.
//!
//! Operators' commands (no token) and the array's own transitions are not judged. A pair unset
//! (or set again) starts a new history: its fence floor is new too.

use std::collections::BTreeMap;

use stillpoint_array::{AuditEvent, AuditLine, FenceToken, PairId};

use super::check::Violation;

/// What the fencing checkers saw: operations judged, and the distinct jobs that acted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FencingCounts {
    /// Accepted pair operations that carried a token.
    pub fenced_ops: u64,
    /// Refused pair operations that carried a token (fencing at work, or a wrong state).
    pub fenced_refused: u64,
}

/// The S5 rule over one resource's history, shared by the pair check (positions are audit
/// seqs) and the volume check ([`super::volumes`]; positions are journal records): the jobs
/// acting on the resource form runs, and a job whose run ended (another job acted after it)
/// never acts again.
#[derive(Debug)]
pub struct OwnerRuns<P> {
    /// The job acting now, and the position of its last act.
    current: Option<(u64, P)>,
    /// Jobs whose run has ended, with the position of their last act.
    done: BTreeMap<u64, P>,
}

impl<P> Default for OwnerRuns<P> {
    fn default() -> Self {
        OwnerRuns {
            current: None,
            done: BTreeMap::new(),
        }
    }
}

impl<P: Clone> OwnerRuns<P> {
    /// `job` acted at `at`. If its own run had ended before (another job acted since), returns
    /// where that run ended: an S5 violation.
    pub fn act(&mut self, job: u64, at: P) -> Option<P> {
        let mut again = None;
        match self.current.take() {
            Some((j, _)) if j == job => {}
            previous => {
                again = self.done.get(&job).cloned();
                if let Some((j, p)) = previous {
                    self.done.insert(j, p);
                }
            }
        }
        self.current = Some((job, at));
        again
    }
}

/// The S6 rule's floor: the highest value (token, term) that took effect so far on a resource,
/// with where it did.
#[derive(Debug)]
pub struct Floor<T, P> {
    top: Option<(T, P)>,
}

impl<T, P> Default for Floor<T, P> {
    fn default() -> Self {
        Floor { top: None }
    }
}

impl<T: Ord + Clone, P: Clone> Floor<T, P> {
    /// The floor, if `value` is below it (an S6 violation).
    pub fn above(&self, value: &T) -> Option<&(T, P)> {
        self.top.as_ref().filter(|(t, _)| value < t)
    }

    /// `value` took effect at `at`: the floor rises to it if it is higher.
    pub fn raise(&mut self, value: &T, at: &P) {
        if self.top.as_ref().is_none_or(|(t, _)| value >= t) {
            self.top = Some((value.clone(), at.clone()));
        }
    }
}

#[derive(Default)]
struct PairHistory {
    /// The highest token accepted so far, with the audit seq of the line that accepted it.
    floor: Floor<FenceToken, u64>,
    runs: OwnerRuns<u64>,
}

/// S5 and S6 over the audit log (lines in file order, which is the array's sequence order).
pub fn s5_s6(audit: &[AuditLine]) -> (Vec<Violation>, FencingCounts) {
    let mut out = Vec::new();
    let mut counts = FencingCounts::default();
    let mut pairs: BTreeMap<PairId, PairHistory> = BTreeMap::new();
    for l in audit {
        match &l.event {
            AuditEvent::Pair {
                pair,
                state,
                reason,
                fence,
            } => {
                if state.is_none() || reason == "pair set" {
                    pairs.remove(pair);
                    continue;
                }
                let Some(token) = fence else { continue };
                counts.fenced_ops += 1;
                let h = pairs.entry(pair.clone()).or_default();
                if let Some((floor, floor_seq)) = h.floor.above(token) {
                    out.push(Violation {
                        prop: "S6",
                        at_ms: l.at_unix_ms,
                        what: format!(
                            "pair {pair}: {reason} accepted (audit seq {}) with {token}, lower than {floor} accepted before (audit seq {floor_seq})",
                            l.seq
                        ),
                    });
                }
                h.floor.raise(token, &l.seq);
                if let Some(ended_seq) = h.runs.act(token.job, l.seq) {
                    out.push(Violation {
                        prop: "S5",
                        at_ms: l.at_unix_ms,
                        what: format!(
                            "pair {pair}: job {} acted again ({reason} with {token}, audit seq {}) after another job acted on the pair (its own run ended at audit seq {ended_seq})",
                            token.job, l.seq
                        ),
                    });
                }
            }
            AuditEvent::PairRefused { fence: Some(_), .. } => counts.fenced_refused += 1,
            _ => {}
        }
    }
    (out, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stillpoint_array::{Activity, CopyControl, LdRef, PairState, RvAccess, SyncState};

    fn pair(mv: u32) -> PairId {
        PairId {
            mv: LdRef {
                array: "A1".into(),
                ld: mv,
            },
            rv: LdRef {
                array: "A1".into(),
                ld: mv + 1,
            },
        }
    }

    fn token(term: u64, job: u64, step: u32) -> FenceToken {
        FenceToken {
            term,
            job,
            round: 0,
            step,
            attempt: 0,
        }
    }

    fn op(seq: u64, mv: u32, reason: &str, fence: Option<FenceToken>) -> AuditLine {
        AuditLine {
            seq,
            at_unix_ms: 1_000 + seq,
            event: AuditEvent::Pair {
                pair: pair(mv),
                state: Some(PairState {
                    activity: Activity::Separate,
                    sync: SyncState::Separated,
                    abnormal_suspend: false,
                    copy_control: CopyControl::Sync,
                    rv_access: RvAccess::Rw,
                }),
                reason: reason.into(),
                fence,
            },
        }
    }

    #[test]
    fn a_clean_history_passes_and_counts_what_it_judged() {
        let audit = vec![
            op(0, 0, "replicate", Some(token(3, 1, 1))),
            op(1, 0, "copy complete", None),
            op(2, 0, "separate", Some(token(3, 1, 2))),
            // The job taken over by a new leader: same job, newer term.
            op(3, 0, "separate", Some(token(4, 1, 2))),
            op(4, 0, "replicate", Some(token(4, 2, 1))),
            // Another pair has its own floor.
            op(5, 2, "replicate", Some(token(2, 7, 1))),
            // An operator's command carries no token and is not judged.
            op(6, 0, "replicate", None),
        ];
        let (v, c) = s5_s6(&audit);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(c.fenced_ops, 5);
    }

    #[test]
    fn an_operation_accepted_under_a_lower_token_is_s6() {
        let audit = vec![
            op(0, 0, "replicate", Some(token(5, 3, 1))),
            // The deposed leader's separate (term 4) reaches the array afterwards.
            op(1, 0, "separate", Some(token(4, 3, 2))),
        ];
        let (v, _) = s5_s6(&audit);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].prop, "S6");
        assert!(v[0].what.contains("term 4 job 3"), "{}", v[0].what);
        assert!(v[0].what.contains("audit seq 0"), "{}", v[0].what);
    }

    #[test]
    fn a_job_acting_again_after_another_job_acted_is_s5() {
        let audit = vec![
            op(0, 0, "replicate", Some(token(3, 1, 1))),
            op(1, 0, "replicate", Some(token(3, 2, 1))),
            // Job 1 again, under a newer term (so S6 holds): two owners interleave.
            op(2, 0, "separate", Some(token(4, 1, 2))),
        ];
        let (v, _) = s5_s6(&audit);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].prop, "S5");
        assert!(v[0].what.contains("job 1 acted again"), "{}", v[0].what);
    }

    #[test]
    fn a_pair_set_again_starts_a_new_history() {
        let mut unset = op(1, 0, "pair unset", None);
        if let AuditEvent::Pair { state, .. } = &mut unset.event {
            *state = None;
        }
        let audit = vec![
            op(0, 0, "replicate", Some(token(9, 4, 1))),
            unset,
            op(2, 0, "pair set", None),
            op(3, 0, "replicate", Some(token(2, 1, 1))),
        ];
        let (v, _) = s5_s6(&audit);
        assert!(v.is_empty(), "{v:?}");
    }
}
