//! The checkers of the process-level layer: pure functions of the records ([`super::records`])
//! and the array's audit log. Each returns the violations it found; none asks stillpoint.

use std::collections::BTreeMap;

use stillpoint_array::{AuditEvent, AuditLine, RvAccess, SyncState};
use stillpoint_coordinator::job::JobEnd;

use super::excuse::{damages_mv, excuses_on};
use super::records::{FaultWindow, Records, VerifyOutcome};
use super::schedule::FaultKind;

/// A property broken, when, and the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub prop: &'static str,
    pub at_ms: u64,
    pub what: String,
}

/// What the checkers need to know about the site.
#[derive(Clone, Debug)]
pub struct SiteFacts {
    /// The backup node's name (its RV I/O is judged).
    pub backup_host: String,
    /// RV LD number → pair name. LD numbers are unique across the site's arrays (A1 and, with
    /// RDR pairs, A2; [`SiteFacts::check_unique_lds`]), so the checkers key RV and MV LDs by
    /// number whichever array's audit log a line comes from.
    pub rv_pairs: BTreeMap<u32, String>,
    /// RV LD number → the array holding it (`A1`, or `A2` for an RDR pair).
    pub rv_arrays: BTreeMap<u32, String>,
    /// RV LD number → the host of its pair's MV.
    pub rv_mv_hosts: BTreeMap<u32, String>,
    /// MV LD number → (pair name, the MV's host).
    pub mvs: BTreeMap<u32, (String, String)>,
    pub quiesce_ms_max: u64,
    /// Added to the quiesce limit before a write stall is a violation.
    pub stall_slack_ms: u64,
    /// The MVs are real file systems (linux hosts; [`super::excuse::excuses_on`]).
    pub real_fs: bool,
}

impl SiteFacts {
    /// Refuses facts where one LD number names LDs on two arrays: the audit logs of both
    /// arrays are judged together, keyed by LD number.
    pub fn check_unique_lds(&self) -> Result<(), String> {
        for rv in self.rv_pairs.keys() {
            if self.mvs.contains_key(rv) {
                return Err(format!(
                    "LD number {rv} is both an RV and an MV: the checkers key LDs by number"
                ));
            }
        }
        Ok(())
    }
}

/// Whether a pair in `sync` counts as separated for S1 (no copy runs onto the RV).
fn separated(sync: SyncState) -> bool {
    matches!(
        sync,
        SyncState::Separated | SyncState::Cancel | SyncState::Fault
    )
}

/// Per RV LD: every (instant, separated?) the array recorded, in order.
fn rv_timelines(audit: &[AuditLine]) -> BTreeMap<u32, Vec<(u64, bool)>> {
    let mut out: BTreeMap<u32, Vec<(u64, bool)>> = BTreeMap::new();
    for l in audit {
        if let AuditEvent::Pair { pair, state, .. } = &l.event {
            // Unset: the LD is no RV any more, nothing to protect.
            let sep = state.map(|s| separated(s.sync)).unwrap_or(true);
            out.entry(pair.rv.ld).or_default().push((l.at_unix_ms, sep));
        }
    }
    out
}

/// S1 and S2 from the array's audit log and the harness's looks at the backup node's mounts.
///
/// - The array never lets a host read or write an RV whose access forbids it (an accepted
///   I/O under `nr`/`na`/`ro`-write is an array defect, judged as S1).
/// - No look at the backup node finds an RV mounted while its pair was, by the array's
///   record, not separated during the whole look: it was mounted while copied onto (S1), and
///   a replicate ran under a mounted RV (S2).
///
/// I/O the array refused is counted (the second value), not judged: a host reads an RV's
/// superblock to report on it (`volume list`) whatever the pair does, and the array's refusal
/// is the protection working; a mount it refused shows in no look as mounted.
pub fn s1_s2(audit: &[AuditLine], records: &Records, facts: &SiteFacts) -> (Vec<Violation>, u64) {
    let mut out = Vec::new();
    let mut refused = 0;
    for l in audit {
        let AuditEvent::RvIo {
            host,
            ld,
            write,
            accepted,
            access,
            ..
        } = &l.event
        else {
            continue;
        };
        let allowed = match access {
            RvAccess::Rw => true,
            RvAccess::Ro => !write,
            RvAccess::Nr | RvAccess::Na => false,
        };
        let pair = facts.rv_pairs.get(ld).cloned().unwrap_or_default();
        if *accepted && !allowed {
            out.push(Violation {
                prop: "S1",
                at_ms: l.at_unix_ms,
                what: format!(
                    "the array accepted a {} by {host} on RV LD {ld} ({pair}) under access {access} (audit seq {})",
                    if *write { "write" } else { "read" },
                    l.seq
                ),
            });
        }
        if !*accepted && host == &facts.backup_host {
            refused += 1;
        }
    }
    let timelines = rv_timelines(audit);
    for poll in &records.polls {
        for ld in &poll.mounted_rv_lds {
            let Some(tl) = timelines.get(ld) else {
                continue;
            };
            // The state at `sent_ms`, and every change up to `recv_ms`.
            let before = tl.iter().rev().find(|(t, _)| *t <= poll.sent_ms);
            let during = tl
                .iter()
                .filter(|(t, _)| *t > poll.sent_ms && *t <= poll.recv_ms);
            let copying_throughout =
                before.is_some_and(|(_, sep)| !sep) && during.clone().all(|(_, sep)| !sep);
            if copying_throughout {
                let pair = facts.rv_pairs.get(ld).cloned().unwrap_or_default();
                out.push(Violation {
                    prop: "S1/S2",
                    at_ms: poll.sent_ms,
                    what: format!(
                        "{} had RV LD {ld} ({pair}) mounted between {} and {} while the array had it not separated (copying) the whole time",
                        facts.backup_host, poll.sent_ms, poll.recv_ms
                    ),
                });
            }
        }
    }
    (out, refused)
}

/// What [`s3`] found besides violations.
#[derive(Clone, Debug, Default)]
pub struct S3Counts {
    pub judged: u64,
    /// RVs not judged, with why (changed before the read finished, unreadable).
    pub unjudged: Vec<String>,
    /// Damaged RVs of copies whose MV may itself have been damaged by a fault ([`damages_mv`])
    /// that no earlier consistent copy of the pair shows its application recovered from
    /// ([`s3`]). Counted and listed, not judged (the workload keeps no log of its
    /// acknowledged writes to tell a faithful copy of a damaged MV from a torn copy).
    pub excused: Vec<String>,
}

/// S3: every copy labelled consistent whose RVs the verifier read before anything changed
/// them has no torn or missing record. A read that raced a later replicate is not judged.
///
/// A damaged copy is counted apart ([`S3Counts::excused`]) when its MV may have been damaged
/// itself: a fault that can leave the MV torn ([`damages_mv`]: its host crashed, or its writes
/// failed) struck before the job ended, and the workload had not provably started again since.
/// It starts again (and recovers its volume: keeps the intact prefix, clears the damaged tail)
/// at the release of the next quiesce of that MV, which runs its start hook, or at the host's
/// boot. So once an earlier consistent copy of the same pair was separated after the fault
/// ended (its release came later still, and the next quiesce of the MV waited for it), the
/// fault excuses nothing: a copy made after that is judged. What stays excused is the first
/// consistent copy after the fault: its quiesce stopped an application that was already down
/// on the error (or not yet started after the boot), and the copy is a faithful copy of the
/// damaged MV.
pub fn s3(audit: &[AuditLine], records: &Records, facts: &SiteFacts) -> (Vec<Violation>, S3Counts) {
    let timelines = rv_timelines(audit);
    let mut out = Vec::new();
    let mut counts = S3Counts::default();
    for v in &records.verifications {
        let changed = timelines.get(&v.rv_ld).is_some_and(|tl| {
            tl.iter()
                .any(|(t, _)| *t > v.job_ended_ms && *t <= v.finished_ms)
        });
        let still_separated = timelines.get(&v.rv_ld).is_some_and(|tl| {
            tl.iter()
                .rev()
                .find(|(t, _)| *t <= v.job_ended_ms)
                .is_some_and(|(_, sep)| *sep)
        });
        if changed || !still_separated {
            counts.unjudged.push(format!(
                "job {} {}: the RV changed state before the verifier finished",
                v.job_id, v.pair
            ));
            continue;
        }
        match &v.outcome {
            VerifyOutcome::Intact { .. } => counts.judged += 1,
            VerifyOutcome::Damaged { what } => {
                let host = facts.rv_mv_hosts.get(&v.rv_ld).cloned().unwrap_or_default();
                // A consistent copy of the pair, made before this one, separated after `w`
                // ended: the release that followed it started the application again.
                let recovered_after = |w: &FaultWindow| {
                    records.verifications.iter().any(|k| {
                        k.rv_ld == v.rv_ld
                            && k.job_id != v.job_id
                            && k.job_ended_ms < v.job_ended_ms
                            && timelines
                                .get(&k.rv_ld)
                                .and_then(|tl| copied_until(tl, k.job_ended_ms))
                                .is_some_and(|t| t > w.end_ms)
                    })
                };
                if let Some(w) = records.faults.iter().find(|w| {
                    damages_mv(w, &host) && w.start_ms <= v.job_ended_ms && !recovered_after(w)
                }) {
                    counts.excused.push(format!(
                        "job {} {}: {what} (after {} on {})",
                        v.job_id,
                        v.pair,
                        w.kind.name(),
                        w.targets.join(", ")
                    ));
                    continue;
                }
                counts.judged += 1;
                out.push(Violation {
                    prop: "S3",
                    at_ms: v.finished_ms,
                    what: format!(
                        "job {} ended done, consistent, but the RV of {} is not a clean copy: {what}",
                        v.job_id, v.pair
                    ),
                });
            }
            VerifyOutcome::Unreadable { why } => counts.unjudged.push(format!(
                "job {} {}: the verifier could not read the RV: {why}",
                v.job_id, v.pair
            )),
        }
    }
    (out, counts)
}

/// The last instant at or before `ended_ms` at which the array had the pair not separated
/// (copying or separating): the copy the job published was separated after it.
fn copied_until(timeline: &[(u64, bool)], ended_ms: u64) -> Option<u64> {
    timeline
        .iter()
        .rev()
        .find(|(t, sep)| *t <= ended_ms && !*sep)
        .map(|(t, _)| *t)
}

/// S4: between the start of the fault phase and the end of the heal phase, no MV's writes
/// (as the array saw them, sampled) stop for longer than the quiesce limit plus the slack —
/// unless a fault on the writer's own host or on the array overlaps the stall (those are
/// counted, not judged). Returns (violations, longest judged stall in ms, stalls excused).
pub fn s4(audit: &[AuditLine], records: &Records, facts: &SiteFacts) -> (Vec<Violation>, u64, u64) {
    let (from, to) = (records.fault_phase_ms.0, records.heal_phase_ms.1);
    let bound = facts.quiesce_ms_max + facts.stall_slack_ms;
    let (mut out, mut longest, mut excused) = (Vec::new(), 0, 0);
    for (ld, (pair, host)) in &facts.mvs {
        let mut writes: Vec<u64> = audit
            .iter()
            .filter_map(|l| match &l.event {
                AuditEvent::MvWrite { ld: w, .. } if w == ld => Some(l.at_unix_ms),
                _ => None,
            })
            .filter(|t| *t >= from && *t <= to)
            .collect();
        writes.insert(0, from);
        writes.push(to);
        for gap in writes.windows(2) {
            let (a, b) = (gap[0], gap[1]);
            let stall = b - a;
            if stall <= bound {
                longest = longest.max(stall);
                continue;
            }
            if records
                .faults
                .iter()
                .any(|w| excuses_on(w, host, facts.real_fs) && w.start_ms <= b && w.end_ms >= a)
            {
                excused += 1;
                continue;
            }
            longest = longest.max(stall);
            out.push(Violation {
                prop: "S4",
                at_ms: a,
                what: format!(
                    "the application on {host} ({pair}, MV LD {ld}) wrote nothing the array saw for {stall} ms (from {a} to {b}); limit {} ms + slack {} ms",
                    facts.quiesce_ms_max, facts.stall_slack_ms
                ),
            });
        }
    }
    (out, longest, excused)
}

/// Per RV LD: every (instant, sync state) the array recorded, in order (`None`: unset).
fn rv_states(audit: &[AuditLine]) -> BTreeMap<u32, Vec<(u64, Option<SyncState>)>> {
    let mut out: BTreeMap<u32, Vec<(u64, Option<SyncState>)>> = BTreeMap::new();
    for l in audit {
        if let AuditEvent::Pair { pair, state, .. } = &l.event {
            out.entry(pair.rv.ld)
                .or_default()
                .push((l.at_unix_ms, state.map(|s| s.sync)));
        }
    }
    out
}

/// S3, the label's honesty at the array: a job that ended done (whatever its label) mounted
/// its RVs only after the array said each pair was `separated`, and nothing of the group
/// runs between that and the job's end. So when it ended, every pair of the group must be
/// `separated` by the array's record: one in `fault` (a copy fault in the separate, or a write
/// mirrored onto a failed RV) or still copying means a copy that is not whole was published.
pub fn done_jobs_left_pairs_separated(
    audit: &[AuditLine],
    records: &Records,
    facts: &SiteFacts,
) -> Vec<Violation> {
    let states = rv_states(audit);
    let mut out = Vec::new();
    for (id, j) in &records.jobs {
        let Some((JobEnd::Done { label }, ended_ms)) = &j.end else {
            continue;
        };
        for (rv_ld, pair) in &facts.rv_pairs {
            let last = states
                .get(rv_ld)
                .and_then(|tl| tl.iter().rev().find(|(t, _)| t <= ended_ms));
            if let Some((at, Some(sync))) = last
                && *sync != SyncState::Separated
            {
                out.push(Violation {
                    prop: "S3",
                    at_ms: *ended_ms,
                    what: format!(
                        "job {id} ended done ({label:?}) while the array had {pair} (RV LD {rv_ld}) {sync} since {at}: a copy that is not whole was published"
                    ),
                });
            }
        }
    }
    out
}

/// Pairs (name, RV LD) whose last state in the array's record is failure separation
/// (`fault`).
pub fn pairs_in_fault(audit: &[AuditLine], facts: &SiteFacts) -> Vec<(String, u32)> {
    let states = rv_states(audit);
    facts
        .rv_pairs
        .iter()
        .filter(|(ld, _)| {
            states
                .get(ld)
                .and_then(|tl| tl.last())
                .is_some_and(|(_, s)| *s == Some(SyncState::Fault))
        })
        .map(|(ld, pair)| (pair.clone(), *ld))
        .collect()
}

/// After the heal: a pair may be left in failure separation only by a failure of its own RV
/// LD that the harness struck (the next backup, once the LD is repaired, takes it out). Any
/// other pair in `fault` is a violation of the heal.
pub fn unexplained_faults(
    in_fault: &[(String, u32)],
    records: &Records,
    facts: &SiteFacts,
    at_ms: u64,
) -> Vec<Violation> {
    in_fault
        .iter()
        .filter(|(_, ld)| {
            let array = facts.rv_arrays.get(ld).map_or("A1", String::as_str);
            let target = format!("{array}/{ld}");
            !records
                .faults
                .iter()
                .any(|w| w.kind == FaultKind::RvLdFailure && w.targets.contains(&target))
        })
        .map(|(pair, ld)| Violation {
            prop: "heal",
            at_ms,
            what: format!(
                "{pair} was left in failure separation (fault) after the heal, yet no failure of its RV LD {ld} was struck"
            ),
        })
        .collect()
}

/// S7: every job the client saw accepted ended (done, finished, failed with a reason, or
/// cancelled) by the end of the heal phase.
pub fn s7(records: &Records) -> Vec<Violation> {
    let mut out = Vec::new();
    for (id, j) in &records.jobs {
        match &j.end {
            None => out.push(Violation {
                prop: "S7",
                at_ms: records.heal_phase_ms.1,
                what: format!(
                    "job {id}, accepted at {}, had not ended when the heal phase ended",
                    j.accepted_ms
                ),
            }),
            Some((JobEnd::Failed { reason }, at)) if reason.trim().is_empty() => {
                out.push(Violation {
                    prop: "S7",
                    at_ms: *at,
                    what: format!("job {id} failed without a reason"),
                })
            }
            Some(_) => {}
        }
    }
    out
}

/// Gaps in the audit log's sequence (lines lost): a problem of the records, reported so.
pub fn audit_gaps(audit: &[AuditLine]) -> Vec<String> {
    audit
        .windows(2)
        .filter(|w| w[1].seq != w[0].seq + 1)
        .map(|w| format!("audit seq {} follows {}", w[1].seq, w[0].seq))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::records::{MountPoll, Verification};
    use crate::run::schedule::FaultKind;
    use stillpoint_array::{Activity, CopyControl, LdRef, PairId, PairState, RvAccess, SyncState};

    fn pair_line(seq: u64, at: u64, sync: SyncState) -> AuditLine {
        AuditLine {
            seq,
            at_unix_ms: at,
            event: AuditEvent::Pair {
                pair: PairId {
                    mv: LdRef {
                        array: "A1".into(),
                        ld: 0,
                    },
                    rv: LdRef {
                        array: "A1".into(),
                        ld: 1,
                    },
                },
                state: Some(PairState {
                    activity: Activity::Replicate,
                    sync,
                    abnormal_suspend: false,
                    copy_control: CopyControl::Sync,
                    rv_access: RvAccess::Nr,
                }),
                reason: "test".into(),
                fence: None,
            },
        }
    }

    fn facts() -> SiteFacts {
        SiteFacts {
            backup_host: "backup1".into(),
            rv_pairs: [(1, "p0".to_string())].into(),
            rv_arrays: [(1, "A1".to_string())].into(),
            rv_mv_hosts: [(1, "db1".to_string())].into(),
            mvs: [(0, ("p0".to_string(), "db1".to_string()))].into(),
            quiesce_ms_max: 1_000,
            stall_slack_ms: 500,
            real_fs: false,
        }
    }

    #[test]
    fn a_mount_seen_while_copying_is_s1_and_one_racing_a_separate_is_not() {
        let audit = vec![
            pair_line(0, 100, SyncState::Separated),
            pair_line(1, 200, SyncState::RplExec),
            pair_line(2, 400, SyncState::SepExec),
            pair_line(3, 450, SyncState::Separated),
        ];
        let mut r = Records::default();
        r.polls.push(MountPoll {
            sent_ms: 150,
            recv_ms: 160,
            mounted_rv_lds: vec![1],
        });
        r.polls.push(MountPoll {
            sent_ms: 430,
            recv_ms: 460,
            mounted_rv_lds: vec![1],
        });
        assert!(s1_s2(&audit, &r, &facts()).0.is_empty());
        r.polls.push(MountPoll {
            sent_ms: 250,
            recv_ms: 300,
            mounted_rv_lds: vec![1],
        });
        let (v, _) = s1_s2(&audit, &r, &facts());
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].prop, "S1/S2");
    }

    #[test]
    fn rv_io_the_array_accepted_under_nr_is_s1_and_refused_io_is_counted() {
        let io = |seq, accepted| AuditLine {
            seq,
            at_unix_ms: 5,
            event: AuditEvent::RvIo {
                host: "backup1".into(),
                ld: 1,
                write: false,
                accepted,
                access: RvAccess::Nr,
                error: String::new(),
            },
        };
        let (v, refused) = s1_s2(&[io(0, false)], &Records::default(), &facts());
        assert!(v.is_empty() && refused == 1, "{v:?}");
        let (v, _) = s1_s2(&[io(0, true)], &Records::default(), &facts());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].prop, "S1");
    }

    #[test]
    fn a_stall_is_s4_unless_a_fault_on_its_host_or_the_array_overlaps_it() {
        let audit: Vec<AuditLine> = [1_000u64, 1_100, 4_000, 4_100]
            .iter()
            .enumerate()
            .map(|(i, t)| AuditLine {
                seq: i as u64,
                at_unix_ms: *t,
                event: AuditEvent::MvWrite {
                    host: "db1".into(),
                    ld: 0,
                },
            })
            .collect();
        let mut r = Records {
            fault_phase_ms: (1_000, 0),
            heal_phase_ms: (0, 4_200),
            ..Default::default()
        };
        let (v, _, _) = s4(&audit, &r, &facts());
        assert_eq!(v.len(), 1, "{v:?}");
        r.faults.push(FaultWindow {
            kind: FaultKind::KillLeader,
            targets: vec!["mgmt1".into()],
            start_ms: 2_000,
            end_ms: 2_500,
        });
        assert_eq!(
            s4(&audit, &r, &facts()).0.len(),
            1,
            "a leader's death excuses nothing"
        );
        r.faults.push(FaultWindow {
            kind: FaultKind::KillArray,
            targets: vec!["A1".into()],
            start_ms: 2_000,
            end_ms: 2_500,
        });
        let (v, _, excused) = s4(&audit, &r, &facts());
        assert!(v.is_empty() && excused == 1, "{v:?}");
        // The array's slow copies excuse nothing: MV writes do not wait for copies.
        r.faults.retain(|w| w.kind != FaultKind::KillArray);
        r.faults.push(FaultWindow {
            kind: FaultKind::SlowCopy,
            targets: vec!["A1".into()],
            start_ms: 2_000,
            end_ms: 2_500,
        });
        assert_eq!(
            s4(&audit, &r, &facts()).0.len(),
            1,
            "a slow copy excuses nothing"
        );
    }

    #[test]
    fn a_torn_consistent_copy_is_s3_unless_the_rv_changed_before_it_was_read() {
        let audit = vec![
            pair_line(0, 100, SyncState::Separated),
            pair_line(1, 900, SyncState::RplExec),
        ];
        let mut r = Records::default();
        let v = |finished_ms| Verification {
            job_id: 1,
            rv_ld: 1,
            pair: "p0".into(),
            job_ended_ms: 200,
            started_ms: 300,
            finished_ms,
            outcome: VerifyOutcome::Damaged {
                what: "torn record 5".into(),
            },
        };
        r.verifications.push(v(500));
        let (bad, c) = s3(&audit, &r, &facts());
        assert_eq!((bad.len(), c.judged), (1, 1));
        // After the array died under the application, the damage is counted apart.
        r.faults.push(FaultWindow {
            kind: FaultKind::KillArray,
            targets: vec!["A1".into()],
            start_ms: 50,
            end_ms: 60,
        });
        let (bad, c) = s3(&audit, &r, &facts());
        assert_eq!((bad.len(), c.judged, c.excused.len()), (0, 0, 1));
        r.faults.clear();
        r.verifications[0] = v(1_000);
        let (bad, c) = s3(&audit, &r, &facts());
        assert_eq!((bad.len(), c.judged, c.unjudged.len()), (0, 0, 1));
    }

    #[test]
    fn a_fault_that_damages_the_mv_excuses_a_damaged_copy_only_until_a_copy_after_it() {
        // Two consistent copies of p0: job 1 separated at 400-450, job 2 at 700-750.
        let audit = vec![
            pair_line(0, 100, SyncState::Separated),
            pair_line(1, 300, SyncState::RplExec),
            pair_line(2, 400, SyncState::SepExec),
            pair_line(3, 450, SyncState::Separated),
            pair_line(4, 600, SyncState::RplExec),
            pair_line(5, 700, SyncState::SepExec),
            pair_line(6, 750, SyncState::Separated),
        ];
        let copy = |job_id, job_ended_ms| Verification {
            job_id,
            rv_ld: 1,
            pair: "p0".into(),
            job_ended_ms,
            started_ms: job_ended_ms + 10,
            finished_ms: job_ended_ms + 50,
            outcome: VerifyOutcome::Damaged {
                what: "torn record 5".into(),
            },
        };
        let fault = |kind, target: &str, start_ms, end_ms| FaultWindow {
            kind,
            targets: vec![target.into()],
            start_ms,
            end_ms,
        };
        // The array died (the MV's writer ended on the error) before both copies: the first
        // is a faithful copy of the damaged MV, but job 1's release started the workload
        // again (it recovered), so job 2's damage is judged.
        let mut r = Records {
            verifications: vec![copy(1, 500), copy(2, 800)],
            faults: vec![fault(FaultKind::KillArray, "A1", 50, 60)],
            ..Default::default()
        };
        let (bad, c) = s3(&audit, &r, &facts());
        assert_eq!((bad.len(), c.judged, c.excused.len()), (1, 1, 1), "{bad:?}");
        assert!(bad[0].what.contains("job 2"), "{bad:?}");
        // A fault that ended only after job 1's copy was separated: nothing shows a restart
        // since, so both are excused.
        r.faults = vec![fault(FaultKind::KillArray, "A1", 50, 420)];
        let (bad, c) = s3(&audit, &r, &facts());
        assert_eq!((bad.len(), c.excused.len()), (0, 2), "{bad:?}");
        // The MV's host crashed or was cut from the array: as the array's death.
        for kind in [FaultKind::KillFollower, FaultKind::CutArray] {
            r.faults = vec![fault(kind, "db1", 50, 60)];
            let (bad, c) = s3(&audit, &r, &facts());
            assert_eq!((bad.len(), c.excused.len()), (1, 1), "{kind:?}: {bad:?}");
        }
        // A pause loses nothing, and a cut or crash of another host does not touch this MV.
        for (kind, target) in [
            (FaultKind::PauseFollower, "db1"),
            (FaultKind::CutArray, "db2"),
            (FaultKind::KillLeader, "mgmt1"),
        ] {
            r.faults = vec![fault(kind, target, 50, 60)];
            let (bad, c) = s3(&audit, &r, &facts());
            assert_eq!((bad.len(), c.excused.len()), (2, 0), "{kind:?} {target}");
        }
    }

    #[test]
    fn a_done_job_with_a_pair_in_fault_is_s3_and_a_fault_after_it_ended_is_not() {
        use stillpoint_coordinator::job::CopyLabel;
        let audit = vec![
            pair_line(0, 100, SyncState::SepExec),
            pair_line(1, 150, SyncState::Fault),
        ];
        let mut r = Records::default();
        r.jobs.insert(
            4,
            crate::run::records::JobSeen {
                accepted_ms: 1,
                end: Some((
                    JobEnd::Done {
                        label: CopyLabel::Consistent,
                    },
                    200,
                )),
            },
        );
        let v = done_jobs_left_pairs_separated(&audit, &r, &facts());
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].prop, "S3");
        let audit = vec![
            pair_line(0, 100, SyncState::SepExec),
            pair_line(1, 150, SyncState::Separated),
            pair_line(2, 300, SyncState::Fault),
        ];
        assert!(done_jobs_left_pairs_separated(&audit, &r, &facts()).is_empty());
        // Left in fault: explained only by a failure of that pair's RV LD.
        let stuck = pairs_in_fault(&audit, &facts());
        assert_eq!(stuck, vec![("p0".to_string(), 1)]);
        assert_eq!(unexplained_faults(&stuck, &r, &facts(), 0).len(), 1);
        r.faults.push(FaultWindow {
            kind: FaultKind::RvLdFailure,
            targets: vec!["A1/1".into()],
            start_ms: 250,
            end_ms: 400,
        });
        assert!(unexplained_faults(&stuck, &r, &facts(), 0).is_empty());
    }

    #[test]
    fn a_job_accepted_and_never_ended_is_s7() {
        let mut r = Records::default();
        r.jobs.insert(
            3,
            crate::run::records::JobSeen {
                accepted_ms: 1,
                end: None,
            },
        );
        assert_eq!(s7(&r).len(), 1);
    }
}
