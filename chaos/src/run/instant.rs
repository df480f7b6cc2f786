//! S3, the one instant: a copy labelled consistent is the image of every member's MV at one
//! and the same instant, judged from the array's audit log alone.
//!
//! The array cuts each pair's RV at its separate: the RV of pair `i` holds its MV as it was
//! at that separate's line `s_i` of the audit log. With every MV write in the log (the site's
//! array logs them unsampled, `audit_mv_write_sample_ms = 0`; each line is written under the
//! LD's I/O lock before the write is answered), let `a_i` be the last write on MV `i` logged
//! before `s_i` and `b_i` the first logged after it. MV `i` was the same at every point of
//! `(a_i, b_i)`, so the copies are the image of all MVs at one instant exactly when those
//! intervals share a point: `max a_i < min b_i`. A write on one MV after its separate, logged
//! before another MV's last write before its own separate, means no instant has both: the
//! group's copy mixes two moments, which no quiesce allows.
//!
//! This needs no clock (only the log's order) and no trust in stillpoint's records: which
//! separates belong to a job is read from the fencing token the array logged with them (the
//! last separate of each pair under the job's id, its final round). What it does not judge:
//! that the instant lies inside every member's quiesce (the array does not see quiesces; the
//! workload writes every 10 ms, so a write-free interval around every separate that they all
//! share is where the quiesces overlapped), and a record torn inside one MV (the verifier's
//! part, [`super::check::s3`]). A line lost (the array killed while writing it) can only hide
//! a write, never invent one.

use std::collections::BTreeMap;

use super::check::Violation;
use super::records::Records;
use stillpoint_array::{AuditEvent, AuditLine, PairId};

/// One pair's cut in a job's copy: its separate's line and the MV writes around it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cut {
    pair: PairId,
    separate_seq: u64,
    /// The last MV write logged before the separate.
    last_before: Option<u64>,
    /// The first MV write logged after it.
    first_after: Option<u64>,
}

/// Judges every job the harness saw end done and consistent. Returns the violations and how
/// many copies were judged (jobs whose separates the log shows).
pub fn s3_one_instant(audit: &[AuditLine], records: &Records) -> (Vec<Violation>, u64) {
    // Every MV write's line, per LD, in log order.
    let mut writes: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for l in audit {
        if let AuditEvent::MvWrite { ld, .. } = &l.event {
            writes.entry(*ld).or_default().push(l.seq);
        }
    }
    let separates = last_separates(audit);
    let (mut out, mut judged) = (Vec::new(), 0);
    for (id, ended_ms) in records.consistent_copies() {
        let Some(cuts) = separates.get(&id) else {
            continue;
        };
        let cuts: Vec<Cut> = cuts
            .iter()
            .map(|(pair, at)| {
                let seq = &audit[*at].seq;
                let on_mv = writes.get(&pair.mv.ld).map(Vec::as_slice).unwrap_or(&[]);
                let after = on_mv.partition_point(|w| w < seq);
                Cut {
                    pair: pair.clone(),
                    separate_seq: *seq,
                    last_before: after.checked_sub(1).map(|i| on_mv[i]),
                    first_after: on_mv.get(after).copied(),
                }
            })
            .collect();
        judged += 1;
        if let Some(what) = mixed_instants(&cuts) {
            out.push(Violation {
                prop: "S3",
                at_ms: ended_ms,
                what: format!("job {id} ended done, consistent, but {what}"),
            });
        }
    }
    (out, judged)
}

/// Per job: per pair, the index in `audit` of the last separate the array logged under the
/// job's token (its final round).
pub(super) fn last_separates(audit: &[AuditLine]) -> BTreeMap<u64, BTreeMap<PairId, usize>> {
    let mut separates: BTreeMap<u64, BTreeMap<PairId, usize>> = BTreeMap::new();
    for (i, l) in audit.iter().enumerate() {
        if let AuditEvent::Pair {
            pair,
            reason,
            fence: Some(fence),
            ..
        } = &l.event
            && reason == "separate"
        {
            separates
                .entry(fence.job)
                .or_default()
                .insert(pair.clone(), i);
        }
    }
    separates
}

/// Why `cuts` are not of one instant, or `None` when their write-free intervals share a point.
fn mixed_instants(cuts: &[Cut]) -> Option<String> {
    let latest_before = cuts
        .iter()
        .filter_map(|c| c.last_before.map(|a| (a, c)))
        .max_by_key(|(a, _)| *a)?;
    let earliest_after = cuts
        .iter()
        .filter_map(|c| c.first_after.map(|b| (b, c)))
        .min_by_key(|(b, _)| *b)?;
    let ((a, x), (b, y)) = (latest_before, earliest_after);
    (a > b).then(|| {
        format!(
            "its copies are of no one instant: the MV of {} was written (audit line {b}) after its separate (line {}), before the MV of {} was last written (line {a}) ahead of its own separate (line {})",
            name(&y.pair),
            y.separate_seq,
            name(&x.pair),
            x.separate_seq
        )
    })
}

pub(super) fn name(p: &PairId) -> String {
    format!(
        "pair {}:{} -> {}:{}",
        p.mv.array, p.mv.ld, p.rv.array, p.rv.ld
    )
}

/// Audit lines and records for the checkers' tests.
#[cfg(test)]
pub(super) mod fixtures {
    use stillpoint_array::{
        Activity, CopyControl, FenceToken, LdRef, PairState, RvAccess, SyncState,
    };

    use stillpoint_array::{AuditEvent, AuditLine, PairId};
    pub use stillpoint_coordinator::job::CopyLabel;
    use stillpoint_coordinator::job::JobEnd;

    use crate::run::records::{JobSeen, Records};

    pub fn pair(mv: u32, rv: u32) -> PairId {
        PairId {
            mv: LdRef {
                array: "A1".into(),
                ld: mv,
            },
            rv: LdRef {
                array: "A1".into(),
                ld: rv,
            },
        }
    }

    pub fn write(seq: u64, ld: u32) -> AuditLine {
        AuditLine {
            seq,
            at_unix_ms: seq,
            event: AuditEvent::MvWrite {
                host: "db1".into(),
                ld,
            },
        }
    }

    pub fn separate(seq: u64, p: PairId, job: u64) -> AuditLine {
        AuditLine {
            seq,
            at_unix_ms: seq,
            event: AuditEvent::Pair {
                pair: p,
                state: Some(PairState {
                    activity: Activity::Separate,
                    sync: SyncState::Separated,
                    abnormal_suspend: false,
                    copy_control: CopyControl::Sync,
                    rv_access: RvAccess::Rw,
                }),
                reason: "separate".into(),
                fence: Some(FenceToken {
                    term: 1,
                    job,
                    round: 1,
                    step: 5,
                    attempt: 1,
                }),
            },
        }
    }

    pub fn ended(label: CopyLabel) -> Records {
        let mut r = Records::default();
        r.jobs.insert(
            7,
            JobSeen {
                accepted_ms: 0,
                end: Some((JobEnd::Done { label }, 100)),
            },
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn copies_cut_while_every_mv_was_still_are_of_one_instant() {
        // Both MVs written, both quiesced, both separated, then written again.
        let audit = vec![
            write(0, 0),
            write(1, 2),
            separate(2, pair(0, 1), 7),
            separate(3, pair(2, 3), 7),
            write(4, 0),
            write(5, 2),
        ];
        let (v, judged) = s3_one_instant(&audit, &ended(CopyLabel::Consistent));
        assert_eq!((v, judged), (vec![], 1));
        // One MV released early (written after its separate, while the other stayed still
        // until its own): still one instant, the one between the last writes and the first.
        let audit = vec![
            write(0, 0),
            write(1, 2),
            separate(2, pair(0, 1), 7),
            write(3, 0),
            separate(4, pair(2, 3), 7),
        ];
        assert!(
            s3_one_instant(&audit, &ended(CopyLabel::Consistent))
                .0
                .is_empty()
        );
    }

    #[test]
    fn copies_cut_around_a_write_of_another_mv_are_s3_unless_labelled_crash_consistent() {
        // MV 0 is separated, written again, and only then MV 2 stops being written and is
        // separated: no instant has both copies.
        let audit = vec![
            write(0, 0),
            separate(1, pair(0, 1), 7),
            write(2, 0),
            write(3, 2),
            separate(4, pair(2, 3), 7),
        ];
        let (v, judged) = s3_one_instant(&audit, &ended(CopyLabel::Consistent));
        assert_eq!(judged, 1);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].prop, "S3");
        assert!(
            v[0].what.contains("line 2") && v[0].what.contains("line 3"),
            "{v:?}"
        );
        // Labelled crash-consistent, the same copy is what it says.
        let crash = CopyLabel::CrashConsistent {
            why: "a quiesce was lost".into(),
        };
        assert_eq!(s3_one_instant(&audit, &ended(crash)), (vec![], 0));
    }

    #[test]
    fn only_the_last_separate_of_each_pair_under_the_job_counts() {
        // Round 1's separates were cut around a write (the round was abandoned); round 2's,
        // later, are of one instant. Another job's separate is not this job's.
        let audit = vec![
            write(0, 0),
            separate(1, pair(0, 1), 7),
            write(2, 0),
            write(3, 2),
            separate(4, pair(2, 3), 7),
            write(5, 0),
            write(6, 2),
            separate(7, pair(0, 1), 7),
            separate(8, pair(2, 3), 7),
            write(9, 2),
            separate(10, pair(0, 1), 8),
        ];
        assert_eq!(
            s3_one_instant(&audit, &ended(CopyLabel::Consistent)),
            (vec![], 1)
        );
    }
}
