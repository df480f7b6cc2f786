//! An agent SIGKILLed between forking a freeze guard and journaling it, through a real agent
//! process of a test build: the gap the harness's `kill-quiesced` fault hit at random in chaos
//! seed 8018, where a guard that froze before its record was written outlived its agent and
//! later thawed another job's freeze (a copy labelled consistent, cut from a thawed MV).
//!
//! The agent's journal writes are stalled (the fault switches' `journal_write_delay_ms`), so
//! the kill lands in the gap every time: the guard is forked, its record is being written,
//! the agent dies. The guard must exit without ever freezing (its pipe to the dead agent
//! closes), the application on the MV must go on writing, and the restarted agent must hold
//! no quiesce and freeze and release the volume as usual.
//!
//! `host/tests/linux_quiesce.rs` (`*_a_volume_is_frozen_only_once_its_guard_is_journaled`)
//! is the in-process regression test of the fix. Root, /dev/fuse, loop devices, mkfs.ext4 and
//! fsfreeze needed: without them the test prints why it SKIPPED.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stillpoint_host::{Host, freeze_guards_holding};
use stillpoint_node::demo::site::{DB1, LocalSite, SiteHosts, SiteLayout};

/// Each durable journal write of db1's agent stalls this long while the switch is on.
const JOURNAL_DELAY_MS: u64 = 4_000;
/// The freeze's limit (the volume's `freeze_ms_max` in the site's node.toml): a guard that
/// froze would thaw by itself only this long after it froze.
const FREEZE_LIMIT_MS: u64 = 10_000;
/// From the kill, how long the guard may take to exit and a synced write on the MV to go
/// through: half the limit, so a guard that froze (and holds the freeze to its limit) cannot
/// pass, and ample for an exit and a write on a loaded 2-core machine.
const AFTER_KILL_WITHIN: Duration = Duration::from_millis(FREEZE_LIMIT_MS / 2);
/// Bound on every other wait.
const WAIT: Duration = Duration::from_secs(60);

/// Waits (at most `bound`) until `what` holds, polling every 20 ms.
async fn wait_for(what: &str, bound: Duration, mut holds: impl FnMut() -> bool) {
    let started = Instant::now();
    while !holds() {
        assert!(started.elapsed() < bound, "waited {bound:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `text` without its ANSI colour sequences (`ESC [ ... m`), as an agent's log has them.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Appends a record to a file on the MV and fsyncs it, on a thread of its own; true if that
/// ended within `within` (a frozen file system holds it until it thaws).
fn a_synced_write_goes_through(mount_point: &Path, n: u32, within: Duration) -> bool {
    let file = mount_point.join("app.log");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Write;
        let done = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| {
                writeln!(f, "record {n}")?;
                f.sync_all()
            });
        let _ = tx.send(done);
    });
    match rx.recv_timeout(within) {
        Ok(done) => {
            done.expect("the synced write failed");
            true
        }
        Err(_) => false,
    }
}

#[test]
fn an_agent_killed_before_its_freeze_guard_is_journaled_leaves_its_mv_unfrozen() {
    if let Some(why) = stillpoint_host::lds_unavailable(&["losetup", "mkfs.ext4", "fsfreeze"]) {
        eprintln!("SKIPPED an_agent_killed_before_its_freeze_guard_is_journaled: {why}");
        return;
    }
    let bin = common::stillpoint();
    let dir = tempfile::tempdir().expect("temporary dir");
    let runtime = common::runtime();
    runtime.block_on(async {
        let mut layout = SiteLayout::spread(1);
        layout.hosts = SiteHosts::Linux { fs: "ext4".into() };
        layout.quiesce = "freeze".into();
        layout.quiesce_ms_max = FREEZE_LIMIT_MS;
        layout.ld_bytes = 32 * 1024 * 1024;
        let volume = layout.pairs[0].mv_volume.clone();
        let mut site = LocalSite::start(&bin, dir.path(), layout)
            .await
            .expect("the site starts");
        site.make_file_systems()
            .await
            .expect("mkfs and mount the MV");
        let mount_point = PathBuf::from(site.layout.mount_point(dir.path(), "db1", &volume));
        let mount_point = std::fs::canonicalize(&mount_point).expect("the MV's mount point");
        let mp = mount_point.to_str().expect("a UTF-8 mount point").to_string();
        assert!(a_synced_write_goes_through(&mount_point, 0, WAIT));

        // Stall db1's journal, and wait until its agent says it read the switch.
        common::write_switches(
            &site.switches_path(DB1),
            &format!("journal_write_delay_ms = {JOURNAL_DELAY_MS}\n"),
        );
        let log = site.log_path(DB1);
        let switch_read = format!("journal_write_delay_ms={JOURNAL_DELAY_MS}");
        wait_for("db1's agent to read the fault switch", WAIT, || {
            std::fs::read_to_string(&log).is_ok_and(|l| without_colours(&l).contains(&switch_read))
        })
        .await;

        // The freeze forks its guard, then writes the guard's record (for 4 s): kill the
        // agent as soon as the guard is there.
        let db1 = site.host(DB1).expect("db1's host client");
        let freezing = tokio::spawn({
            let (db1, volume) = (db1.clone(), volume.clone());
            async move {
                db1.freeze(&volume, Some(FREEZE_LIMIT_MS), "test: killed in the gap")
                    .await
            }
        });
        wait_for("the freeze guard to be forked", WAIT, || {
            !freeze_guards_holding(&[&mp]).is_empty() || freezing.is_finished()
        })
        .await;
        assert!(
            !freezing.is_finished(),
            "the freeze ended before the test saw its guard: {:?}",
            freezing.await
        );
        site.kill(DB1).await;
        let killed_at = Instant::now();
        let freeze = freezing.await.expect("the freeze task");
        assert!(
            freeze.is_err(),
            "the freeze was acknowledged although its agent was killed while journaling it: {freeze:?}"
        );

        // The guard goes with its agent, and the MV was never frozen: the application writes.
        wait_for(
            "the guard to exit once its agent is dead",
            AFTER_KILL_WITHIN,
            || freeze_guards_holding(&[&mp]).is_empty(),
        )
        .await;
        let writes = a_synced_write_goes_through(
            &mount_point,
            1,
            AFTER_KILL_WITHIN.saturating_sub(killed_at.elapsed()),
        );
        if !writes {
            // Leave no frozen file system behind a failed test.
            let _ = Command::new("fsfreeze")
                .args(["-u", &mp])
                .stderr(Stdio::null())
                .status();
        }
        assert!(
            writes,
            "the MV stayed frozen after its agent was killed before journaling the guard"
        );

        // Back with its journal at full speed, the agent holds no quiesce, and freezes and
        // releases the volume as usual.
        common::write_switches(&site.switches_path(DB1), "");
        site.restart(DB1).await.expect("db1's agent restarts");
        let db1 = site.host(DB1).expect("db1's host client");
        let held = db1.quiesces().await.expect("db1's quiesces");
        assert!(held.is_empty(), "db1 holds {held:?} after its restart");
        let q = db1
            .freeze(&volume, Some(FREEZE_LIMIT_MS), "test: after the restart")
            .await
            .expect("freeze after the restart");
        assert_eq!(
            freeze_guards_holding(&[&mp]).len(),
            1,
            "the freeze after the restart has no guard of its own"
        );
        // Named by its quiesce, the release fails if the freeze did not hold throughout.
        db1.release(&volume, Some(q.quiesce_id))
            .await
            .expect("release after the restart");
        assert!(a_synced_write_goes_through(&mount_point, 2, WAIT));
        site.stop().await;
    });
}
