//! S3 on real file systems: is an RV the harness reads straight from the array's LD file a
//! clean ext4 holding a clean prefix of the application's records?
//!
//! The RV is mounted on the backup node when its job ends (a live file system: the mount
//! wrote its superblock and may write more). So the harness takes a **stable image**: it
//! reads the LD file until two reads in a row are equal (at most [`IMAGE_TRIES`]), and judges
//! that image in a scratch file, never the RV:
//! 1. `e2fsck -E journal_only -y`: replays what the backup node's mount journaled, as its
//!    next mount would;
//! 2. `e2fsck -fn`: a full check must find nothing (exit 0); anything it would repair is a
//!    damaged copy;
//! 3. `debugfs -R "cat /records"`: the application's file, which must be a clean prefix of
//!    records ([`stillpoint_host::check_file_records`]).
//!
//! The tools are e2fsprogs', independent of stillpoint. An image that never settles, or a tool
//! that cannot run, is "unreadable" (not judged), never "damaged".

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::records::VerifyOutcome;

/// The application's file on every MV (and so on every RV), from the file system's root.
pub const RECORDS_FILE: &str = "records";
/// Reads of the RV's LD file before the harness gives up on a stable image.
const IMAGE_TRIES: usize = 4;
/// Bound on each e2fsprogs command.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Judges the ext4 RV whose LD file is `ld_file`, using `scratch` for the image (removed
/// after).
pub async fn verify_ext4(ld_file: &Path, scratch: &Path) -> VerifyOutcome {
    let (ld, image) = (ld_file.to_path_buf(), scratch.to_path_buf());
    let taken = tokio::task::spawn_blocking(move || stable_image(&ld, &image)).await;
    let outcome = match taken {
        Ok(Ok(())) => judge_image(scratch).await,
        Ok(Err(why)) => VerifyOutcome::Unreadable { why },
        Err(e) => VerifyOutcome::Unreadable {
            why: format!("imaging the RV: {e}"),
        },
    };
    let _ = std::fs::remove_file(scratch);
    outcome
}

/// Copies `ld` to `image` once two reads in a row are equal.
fn stable_image(ld: &Path, image: &Path) -> Result<(), String> {
    let read = || std::fs::read(ld).map_err(|e| format!("read {}: {e}", ld.display()));
    let mut last = read()?;
    for _ in 1..IMAGE_TRIES {
        let next = read()?;
        if next == last {
            return std::fs::write(image, &next)
                .map_err(|e| format!("write {}: {e}", image.display()));
        }
        last = next;
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "{} changed between each of {IMAGE_TRIES} reads (the backup node writing it)",
        ld.display()
    ))
}

async fn judge_image(image: &Path) -> VerifyOutcome {
    let path = image.display().to_string();
    // Exit 0 or 1: nothing to replay, or replayed.
    match tool("e2fsck", &["-E", "journal_only", "-y", &path]).await {
        Ok(out) if matches!(out.status.code(), Some(0 | 1)) => {
            // On a file system it cannot open cleanly, `journal_only` repairs everything (from
            // the backup descriptors, say): then the copy was damaged, whatever it fixed.
            if let Some(line) = beyond_replay(&out.stdout) {
                return VerifyOutcome::Damaged {
                    what: format!("e2fsck did more than replay the journal: {line}"),
                };
            }
        }
        Ok(out) => {
            return VerifyOutcome::Damaged {
                what: format!(
                    "e2fsck could not replay the journal (exit {:?}): {}",
                    out.status.code(),
                    tail(&out)
                ),
            };
        }
        Err(why) => return VerifyOutcome::Unreadable { why },
    }
    match tool("e2fsck", &["-fn", &path]).await {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return VerifyOutcome::Damaged {
                what: format!(
                    "e2fsck -fn found the file system damaged (exit {:?}): {}",
                    out.status.code(),
                    tail(&out)
                ),
            };
        }
        Err(why) => return VerifyOutcome::Unreadable { why },
    }
    let cat = format!("cat /{RECORDS_FILE}");
    match tool("debugfs", &["-R", &cat, &path]).await {
        Ok(out) if out.status.success() && complaint(&out.stderr).is_some() => {
            VerifyOutcome::Damaged {
                what: format!(
                    "debugfs could not read /{RECORDS_FILE}: {}",
                    complaint(&out.stderr).unwrap_or_default()
                ),
            }
        }
        Ok(out) if out.status.success() => match stillpoint_host::check_file_records(&out.stdout) {
            Ok(records) => VerifyOutcome::Intact { records },
            Err(what) => VerifyOutcome::Damaged {
                what: format!("/{RECORDS_FILE}: {what}"),
            },
        },
        Ok(out) => VerifyOutcome::Damaged {
            what: format!("debugfs could not read /{RECORDS_FILE}: {}", tail(&out)),
        },
        Err(why) => VerifyOutcome::Unreadable { why },
    }
}

/// The first line of `e2fsck -E journal_only`'s report that is not about the replay itself.
fn beyond_replay(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .find(|l| {
            !l.is_empty()
                && !l.ends_with(": recovering journal")
                && !l.contains(": clean, ")
                && !l.ends_with("***** FILE SYSTEM WAS MODIFIED *****")
        })
        .map(str::to_string)
}

/// What debugfs said besides its banner (it exits 0 when a file is not found).
fn complaint(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("debugfs "))
        .collect();
    (!lines.is_empty()).then(|| lines.join(" | "))
}

/// Runs an e2fsprogs command to its end, bounded by [`TOOL_TIMEOUT`].
async fn tool(program: &str, args: &[&str]) -> Result<std::process::Output, String> {
    let run = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(TOOL_TIMEOUT, run).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
        Err(_) => Err(format!(
            "{program} {} did not end within {} s",
            args.join(" "),
            TOOL_TIMEOUT.as_secs()
        )),
    }
}

/// The last lines a tool printed (stderr, else stdout), for a report.
fn tail(out: &std::process::Output) -> String {
    let text = if out.stderr.is_empty() {
        String::from_utf8_lossy(&out.stdout)
    } else {
        String::from_utf8_lossy(&out.stderr)
    };
    let lines: Vec<&str> = text.lines().rev().take(4).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Where the image of `rv_ld` is taken for a verification (under the schedule's dir).
pub fn scratch_for(dir: &Path, rv_ld: u32) -> PathBuf {
    dir.join(format!("verify-rv-{rv_ld}.img"))
}

/// Why a site of real file systems cannot run here (`None`: it can): it needs root, FUSE,
/// loop devices, `mkfs.ext4`, `e2fsck` and `debugfs`.
pub fn unavailable() -> Option<String> {
    stillpoint_host::lds_unavailable(&[
        "losetup",
        "mkfs.ext4",
        "e2fsck",
        "debugfs",
        "tune2fs",
        "fsfreeze",
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ext4 image of `records` whole records (and `tail` bytes of one more), made by
    /// `mkfs.ext4 -d` from a directory (no root, no mount). `None` when mkfs.ext4 is missing.
    fn image(dir: &Path, records: u64, tail: usize) -> Option<PathBuf> {
        let content = dir.join("content");
        std::fs::create_dir_all(&content).unwrap();
        let mut bytes: Vec<u8> = (0..records)
            .flat_map(stillpoint_host::file_record)
            .collect();
        bytes.extend_from_slice(&stillpoint_host::file_record(records)[..tail]);
        std::fs::write(content.join(RECORDS_FILE), &bytes).unwrap();
        let img = dir.join("rv.img");
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-d"])
            .arg(&content)
            .arg(&img)
            .arg("16M")
            .status();
        match made {
            Ok(s) if s.success() => Some(img),
            Ok(s) => panic!("mkfs.ext4 -d failed: {s}"),
            Err(e) => {
                eprintln!("SKIPPED: cannot run mkfs.ext4: {e}");
                None
            }
        }
    }

    /// The offset of the records file's first block in the image (from debugfs).
    fn first_block_offset(img: &Path) -> u64 {
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("bmap /{RECORDS_FILE} 0")])
            .arg(img)
            .output()
            .unwrap();
        let block: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        block * 4096
    }

    #[tokio::test]
    async fn a_clean_copy_passes_and_a_torn_record_or_a_damaged_file_system_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = image(dir.path(), 40, 0) else {
            return;
        };
        let scratch = dir.path().join("scratch.img");
        assert!(
            matches!(
                verify_ext4(&img, &scratch).await,
                VerifyOutcome::Intact { records: 40 }
            ),
            "a clean copy"
        );

        // A record whose bytes are not its own.
        let at = first_block_offset(&img) + 3 * 4096 + 100;
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[at as usize] ^= 0xff;
        std::fs::write(&img, &bytes).unwrap();
        match verify_ext4(&img, &scratch).await {
            VerifyOutcome::Damaged { what } => assert!(what.contains("record 3 of 40"), "{what}"),
            other => panic!("a flipped byte in record 3 passed: {other:?}"),
        }

        // The file system's own metadata damaged: the group descriptors zeroed.
        let fresh = tempfile::tempdir().unwrap();
        let img = image(fresh.path(), 40, 0).unwrap();
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[4096..8192].fill(0);
        std::fs::write(&img, &bytes).unwrap();
        match verify_ext4(&img, &scratch).await {
            VerifyOutcome::Damaged { what } => assert!(what.contains("e2fsck"), "{what}"),
            other => panic!("zeroed group descriptors passed: {other:?}"),
        }

        // The application's file missing.
        let empty = tempfile::tempdir().unwrap();
        let img = image(empty.path(), 0, 0).unwrap();
        let mut rm = std::process::Command::new("debugfs");
        let removed = rm.args(["-w", "-R", "rm /records"]).arg(&img).status();
        assert!(removed.unwrap().success());
        match verify_ext4(&img, &scratch).await {
            VerifyOutcome::Damaged { what } => assert!(what.contains("not found"), "{what}"),
            other => panic!("a copy without the records passed: {other:?}"),
        }

        // A torn tail.
        let torn = tempfile::tempdir().unwrap();
        let img = image(torn.path(), 10, 512).unwrap();
        match verify_ext4(&img, &scratch).await {
            VerifyOutcome::Damaged { what } => assert!(what.contains("torn"), "{what}"),
            other => panic!("a torn tail passed: {other:?}"),
        }
    }
}
