//! Backup jobs on linux hosts: real ext4 on array LDs (loop devices over the hosts' LD path
//! processes), an application writing and syncing records on the MV throughout, and a
//! business agent SIGKILLed while it holds its MV frozen. Root, /dev/fuse, loop devices,
//! mkfs.ext4 and e2fsck needed: without them the test prints why it SKIPPED.

mod job_site;

use std::path::{Path, PathBuf};
use std::time::Duration;

use job_site::{DB1, JobSite, is_consistent, stderr, stillpoint, wait_async};
use stillpoint_host::{FileApp, Host, check_file_records};
use stillpoint_node::demo::site::{SiteHosts, SiteLayout};

const JOB_WITHIN: Duration = Duration::from_secs(180);
/// The MV's freeze limit in the site file: a frozen MV thaws by itself after this long.
const FREEZE_MS_MAX: u64 = 10_000;

fn skip_reason() -> Option<String> {
    stillpoint_host::lds_unavailable(&["losetup", "mkfs.ext4", "e2fsck", "tune2fs", "blkid"])
}

/// The records in `file`, checked as a clean prefix ([`check_file_records`]).
fn check_records(file: &Path) -> Result<u64, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("read {}: {e}", file.display()))?;
    check_file_records(&bytes)
}

/// A business agent is SIGKILLed while it holds its ext4 MV frozen in a backup job. The file
/// system on the LD stays mounted and writable (its LD path is not the agent): the
/// application's synced writes wait out the freeze (thawed at its limit by the freeze guard,
/// the agent being dead) and go on without an error. The restarted agent resumes the MV, the
/// job ends consistent (the static point taken again), and the RV the backup node mounted
/// holds the records as a clean prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_agent_killed_while_its_ext4_mv_is_frozen_leaves_the_application_writing() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED a_business_agent_killed_while_its_ext4_mv_is_frozen: {why}");
        return;
    }
    let mut layout = SiteLayout::spread_over(1, 1);
    layout.hosts = SiteHosts::Linux { fs: "ext4".into() };
    layout.quiesce = "freeze".into();
    layout.quiesce_ms_max = FREEZE_MS_MAX;
    layout.ld_bytes = 32 * 1024 * 1024;
    let mut site = JobSite::start_applied(layout).await;
    site.site
        .make_file_systems()
        .await
        .expect("mkfs and mount the MV");
    let dir = site.dir.path().to_path_buf();
    let mv = PathBuf::from(site.site.layout.mount_point(&dir, "db1", "mv0"));
    let rv = PathBuf::from(site.site.layout.mount_point(&dir, "backup1", "rv0"));
    let out = stillpoint(&[
        "group",
        "prepare",
        "payroll",
        "--wait",
        "--endpoint",
        &site.site.endpoints[1],
    ]);
    assert!(
        out.status.success(),
        "group prepare: {}\n{}",
        stderr(&out),
        site.logs()
    );
    let mut writer = FileApp::start(mv.join("records"), Duration::from_millis(5));
    wait_async("the application to write", || async {
        (writer.acked() >= 20).then_some(())
    })
    .await;

    // Back up until db1 is caught holding its MV quiesced, and kill it there.
    let db1 = site.site.host(DB1).unwrap();
    let mut caught = None;
    for _attempt in 0..10 {
        let id = site.submit_backup().await;
        let deadline = tokio::time::Instant::now() + JOB_WITHIN;
        loop {
            if let Ok(held) = db1.quiesces().await
                && !held.is_empty()
            {
                site.site.kill(DB1).await;
                caught = Some(id);
                break;
            }
            if site.job(id).await.is_some_and(|j| j.is_ended()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if caught.is_some() {
            break;
        }
    }
    let id = caught.expect("never saw db1 holding a quiesce in 10 backups");
    let at_kill = writer.acked();

    // With the agent dead, the application goes on once the freeze ends at its limit.
    wait_async("the application to write with db1's agent dead", || async {
        let errors = writer.errors();
        assert!(
            errors.is_empty(),
            "the application saw I/O errors: {errors:?}"
        );
        (writer.acked() >= at_kill + 50).then_some(())
    })
    .await;
    site.site.restart(DB1).await.expect("restart db1");
    let end = site.wait_ended(id, JOB_WITHIN).await;
    assert!(is_consistent(&end), "ended {end:?}\n{}", site.logs());
    assert!(
        site.quiesced_mvs().await.is_empty(),
        "an MV is still quiesced"
    );
    assert!(
        writer.stop(Duration::from_secs(60)),
        "the application did not stop"
    );
    assert_eq!(
        writer.errors(),
        Vec::<String>::new(),
        "the application's errors"
    );
    let stall_ms = writer.stall_ms_max();
    assert!(
        stall_ms < FREEZE_MS_MAX + 10_000,
        "a record waited {stall_ms} ms (freeze limit {FREEZE_MS_MAX} ms)"
    );
    eprintln!(
        "records acknowledged: {}, longest wait {stall_ms} ms",
        writer.acked()
    );

    // The copy: the backup node mounted the RV; its records are a clean prefix.
    let copied = check_records(&rv.join("records")).unwrap_or_else(|e| panic!("RV: {e}"));
    assert!(copied >= 20, "the RV holds {copied} records");
    assert!(
        copied <= writer.acked(),
        "the RV holds records never written"
    );
}
