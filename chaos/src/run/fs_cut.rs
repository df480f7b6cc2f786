//! S3 on real file systems, at the cut: a copy labelled consistent of MVs quiesced by freeze
//! (or unmount) must have been cut from a file system with nothing in flight.
//!
//! ext4 keeps a "needs recovery" flag in its superblock while it is mounted, and clears it on
//! disk when it is frozen (the journal flushed, its transactions checkpointed) or unmounted; a
//! thaw sets it again. The array records the head of every RV the moment a separate opens it
//! to hosts (`audit_rv_head_bytes`, [`stillpoint_array::AuditEvent::RvOpened`]), before any
//! host can touch it: the superblock exactly as the array cut it. So for every pair of a copy
//! labelled consistent, the head recorded after that job's separate must be an ext4
//! superblock without the flag: the MV was frozen at the instant the array cut it. A copy cut
//! from a mounted, unfrozen ext4 still recovers to a clean file system (the journal's whole
//! point, which is why [`super::fs_copy`] cannot tell), but it is crash-consistent, not the
//! static point the label promises.
//!
//! Independent of stillpoint: the array's own log and the kernel's own flag. Which separate is
//! the job's is read from the fencing token the array logged with it; the head is the last
//! one recorded for that RV from the pair's replicate before it to the line that logs the
//! pair separated (the array opens the RV just before it logs that). A copy with no such line
//! (lost with a killed array) is counted as not judged.

use stillpoint_array::{AuditEvent, AuditLine, PairId, SyncState};

use super::check::Violation;
use super::instant::name;
use super::records::Records;

/// Where the superblock lies, and the fields read from it (ext4's on-disk layout).
const SUPERBLOCK_OFFSET: usize = 1024;
const MAGIC_OFFSET: usize = SUPERBLOCK_OFFSET + 0x38;
const INCOMPAT_OFFSET: usize = SUPERBLOCK_OFFSET + 0x60;
const EXT4_MAGIC: u16 = 0xEF53;
/// `EXT4_FEATURE_INCOMPAT_RECOVER`: the journal needs recovery.
const INCOMPAT_RECOVER: u32 = 0x4;
/// Head bytes needed to read those fields.
pub const HEAD_BYTES_NEEDED: usize = INCOMPAT_OFFSET + 4;

/// What a recorded head says of the file system the array cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CutFs {
    /// An ext4 with nothing to recover: frozen or unmounted at the cut.
    Quiesced,
    /// An ext4 mounted and not frozen at the cut.
    Live,
    /// Not an ext4 superblock (damaged, or never one).
    NotExt4,
    /// Too short to say.
    TooShort,
}

/// Reads `head` (an RV's first bytes) as an ext4 superblock.
pub fn cut_fs(head: &[u8]) -> CutFs {
    if head.len() < HEAD_BYTES_NEEDED {
        return CutFs::TooShort;
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
    if u16_at(MAGIC_OFFSET) != EXT4_MAGIC {
        CutFs::NotExt4
    } else if u32_at(INCOMPAT_OFFSET) & INCOMPAT_RECOVER != 0 {
        CutFs::Live
    } else {
        CutFs::Quiesced
    }
}

/// What [`s3_cut_of_quiesced_fs`] counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutCounts {
    /// RVs of consistent copies whose head at the cut was judged.
    pub judged: u64,
    /// RVs of consistent copies with no head to judge, and why.
    pub unjudged: Vec<String>,
}

/// Judges every RV of every job the harness saw end done and consistent, from `merged`: every
/// array's audit log in time order (an RDR pair's RV is opened on its own array), each log's
/// lines in their own order.
pub fn s3_cut_of_quiesced_fs(
    merged: &[AuditLine],
    records: &Records,
) -> (Vec<Violation>, CutCounts) {
    let separates = super::instant::last_separates(merged);
    let (mut out, mut counts) = (Vec::new(), CutCounts::default());
    for (id, ended_ms) in records.consistent_copies() {
        for (pair, at) in separates.get(&id).into_iter().flatten() {
            let pair_name = name(pair);
            match head_at_cut(merged, pair, *at) {
                Err(why) => counts
                    .unjudged
                    .push(format!("job {id}, {pair_name}: {why}")),
                Ok((seq, head)) => {
                    counts.judged += 1;
                    let what = match cut_fs(&head) {
                        CutFs::Quiesced => continue,
                        CutFs::Live => {
                            "an ext4 mounted and not frozen: its superblock says the journal needs recovery"
                        }
                        CutFs::NotExt4 => "no ext4: its head holds no ext4 superblock",
                        CutFs::TooShort => {
                            "a head too short to read (the array's audit_rv_head_bytes)"
                        }
                    };
                    out.push(Violation {
                        prop: "S3",
                        at_ms: ended_ms,
                        what: format!(
                            "job {id} ended done, consistent, but the array cut the RV of {pair_name} from {what} (RV opened at {} audit line {seq})",
                            pair.rv.array
                        ),
                    });
                }
            }
        }
    }
    (out, counts)
}

/// The head of `pair`'s RV as the cut of the separate at `merged[at]` opened it, with its
/// line's sequence number in its array's log. The array opens the RV before it logs the
/// state `separated` (the separate's own line, or the "copy complete" after it), so the head
/// is the last one recorded for the RV from the pair's replicate before the separate up to
/// that line. Times, not positions, bound it: an RDR pair's RV is opened on the other array,
/// whose line may share the millisecond of the separated line and sort after it.
fn head_at_cut(merged: &[AuditLine], pair: &PairId, at: usize) -> Result<(u64, Vec<u8>), String> {
    let separated_ms = merged[at..]
        .iter()
        .find(|l| matches!(pair_line(l, pair), Some((_, Some(SyncState::Separated)))))
        .map(|l| l.at_unix_ms)
        .ok_or("the array never logged the pair separated after the job's separate")?;
    let replicated_ms = merged[..at]
        .iter()
        .rev()
        .find(|l| matches!(pair_line(l, pair), Some(("replicate", _))))
        .map(|l| l.at_unix_ms)
        .unwrap_or(0);
    // `merged` is in time order.
    let from = merged.partition_point(|l| l.at_unix_ms < replicated_ms);
    let to = merged.partition_point(|l| l.at_unix_ms <= separated_ms);
    let (seq, error, head) = merged[from..to]
        .iter()
        .rev()
        .find_map(|l| match &l.event {
            AuditEvent::RvOpened { ld, error, .. } if *ld == pair.rv.ld => {
                Some((l.seq, error, l.event.rv_head()))
            }
            _ => None,
        })
        .ok_or("no head recorded for the RV between the replicate and the separate")?;
    match head {
        Some(head) if error.is_empty() => Ok((seq, head)),
        _ => Err(format!("its head could not be read at the cut: {error}")),
    }
}

/// `l`'s reason and sync state if it is a state line of `pair`.
fn pair_line<'a>(l: &'a AuditLine, pair: &PairId) -> Option<(&'a str, Option<SyncState>)> {
    match &l.event {
        AuditEvent::Pair {
            pair: p,
            reason,
            state,
            ..
        } if p == pair => Some((reason.as_str(), state.map(|s| s.sync))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::super::instant::fixtures::*;
    use super::*;

    /// A real ext4 image's head: mounted (live), frozen and unmounted, read from the image
    /// file as the loop device left it. Needs root, `mkfs.ext4`, `fsfreeze` and loop devices;
    /// says it was skipped otherwise.
    #[test]
    fn a_frozen_or_unmounted_ext4_reads_quiesced_and_a_mounted_one_live() {
        if let Some(why) = stillpoint_host::lds_unavailable(&["mkfs.ext4", "fsfreeze", "mount"]) {
            eprintln!("SKIPPED: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (image, mnt) = (dir.path().join("img"), dir.path().join("m"));
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        run("mkfs.ext4", &["-q", path(&image)]);
        let head = || std::fs::read(&image).unwrap()[..HEAD_BYTES_NEEDED].to_vec();
        assert_eq!(cut_fs(&head()), CutFs::Quiesced, "never mounted");
        run("mount", &["-o", "loop", path(&image), path(&mnt)]);
        std::fs::write(mnt.join("f"), vec![7u8; 8192]).unwrap();
        let live = head();
        run("fsfreeze", &["-f", path(&mnt)]);
        let frozen = head();
        run("fsfreeze", &["-u", path(&mnt)]);
        let thawed = head();
        run("umount", &[path(&mnt)]);
        assert_eq!(
            (
                cut_fs(&live),
                cut_fs(&frozen),
                cut_fs(&thawed),
                cut_fs(&head())
            ),
            (CutFs::Live, CutFs::Quiesced, CutFs::Live, CutFs::Quiesced)
        );
    }

    /// An RV opened on its array with `head`, `seq` lines in.
    fn opened(seq: u64, ld: u32, head: &[u8]) -> AuditLine {
        AuditLine {
            seq,
            at_unix_ms: seq,
            event: AuditEvent::RvOpened {
                ld,
                access: stillpoint_array::RvAccess::Rw,
                head_hex: head.iter().map(|b| format!("{b:02x}")).collect(),
                error: String::new(),
            },
        }
    }

    /// A head whose superblock has `incompat` features.
    fn superblock(incompat: u32) -> Vec<u8> {
        let mut head = vec![0u8; 2048];
        head[MAGIC_OFFSET..MAGIC_OFFSET + 2].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        head[INCOMPAT_OFFSET..INCOMPAT_OFFSET + 4].copy_from_slice(&incompat.to_le_bytes());
        head
    }

    #[test]
    fn a_consistent_copy_cut_from_a_live_ext4_is_a_violation_and_a_frozen_one_is_not() {
        let (frozen, live) = (superblock(0x2c2), superblock(0x2c6));
        let records = ended(CopyLabel::Consistent);
        // The array opens each RV just before it logs the separate; the second RV is on the
        // other array, its line in the same millisecond as the separate's, merged after it.
        let audit = |second: &[u8]| {
            let mut remote = opened(9, 3, second);
            remote.at_unix_ms = 3;
            vec![
                opened(0, 1, &frozen),
                separate(1, pair(0, 1), 7),
                separate(3, pair(2, 3), 7),
                remote,
            ]
        };
        let (v, counts) = s3_cut_of_quiesced_fs(&audit(&frozen), &records);
        assert_eq!((v.len(), counts.judged), (0, 2), "{v:?} {counts:?}");
        let (v, counts) = s3_cut_of_quiesced_fs(&audit(&live), &records);
        assert_eq!(counts.judged, 2);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].what.contains("A1:2 -> A1:3") && v[0].what.contains("not frozen"),
            "{v:?}"
        );
        // Crash-consistent copies are not judged here.
        let crash = ended(CopyLabel::CrashConsistent {
            why: "a member's quiesce was lost".into(),
        });
        let (v, counts) = s3_cut_of_quiesced_fs(&audit(&live), &crash);
        assert_eq!((v.len(), counts.judged), (0, 0));
    }

    #[test]
    fn a_copy_with_no_head_recorded_since_the_replicate_is_not_judged() {
        let mut replicate = separate(1, pair(0, 1), 7);
        if let AuditEvent::Pair { reason, .. } = &mut replicate.event {
            *reason = "replicate".into();
        }
        // The head before the replicate is the last copy's, not this one's.
        let audit = vec![
            opened(0, 1, &superblock(0x2c6)),
            replicate,
            separate(2, pair(0, 1), 7),
        ];
        let (v, counts) = s3_cut_of_quiesced_fs(&audit, &ended(CopyLabel::Consistent));
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(counts.judged, 0);
        assert_eq!(counts.unjudged.len(), 1, "{counts:?}");
    }

    #[test]
    fn a_head_that_is_no_ext4_or_too_short_says_so() {
        assert_eq!(cut_fs(&[0u8; 100]), CutFs::TooShort);
        assert_eq!(cut_fs(&vec![0u8; 2048]), CutFs::NotExt4);
    }

    fn path(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    fn run(tool: &str, args: &[&str]) {
        let out = Command::new(tool).args(args).output().unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    }
}
