//! Quiesce defects found on real file systems (issue 10), each on ext4 and XFS loop devices
//! (root only; skips with a printed reason otherwise).

mod common;

use std::process::{Command, Stdio};

use common::loopdev::{Fixture, require};
use common::wait_until;
use stillpoint_host::{Host, HostError, MountIdentity, MountRequest, QuiesceMode, QuiesceRequest};

const EXT4: (&str, &[&str]) = ("ext4", &["mkfs.ext4", "-q"]);
const XFS: (&str, &[&str]) = ("xfs", &["mkfs.xfs", "-q", "-f"]);

/// Whether the file system at `mp` is frozen now: a second FIFREEZE fails with EBUSY. (It
/// succeeds, and freezes, if not; the caller thaws.)
fn frozen_by_someone(mp: &std::path::Path) -> bool {
    let st = Command::new("fsfreeze")
        .args(["-f", mp.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    if st.success() {
        let _ = Command::new("fsfreeze")
            .args(["-u", mp.to_str().unwrap()])
            .status();
    }
    !st.success()
}

/// Defect 1: a freeze refused because another tool froze the file system must not thaw it.
async fn a_refused_freeze_keeps_the_other_tools_freeze(fs: (&str, &[&str])) {
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", fs.1);
    let host = fx.agent(&[("mv", &dev, &mp, fs.0)]).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    let st = Command::new("fsfreeze")
        .args(["-f", mp.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "fsfreeze -f");

    let err = host.freeze("mv", Some(5_000), "test").await.unwrap_err();
    assert!(
        matches!(err, HostError::WrongState { .. }),
        "expected WrongState, got {err:?}"
    );
    assert!(
        frozen_by_someone(&mp),
        "{}: the refused freeze released the other tool's freeze",
        fs.0
    );
    assert!(host.quiesces().await.unwrap().is_empty());
    assert!(host.resumes().await.unwrap().is_empty());
    let _ = Command::new("fsfreeze")
        .args(["-u", mp.to_str().unwrap()])
        .status();
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn ext4_a_refused_freeze_keeps_the_other_tools_freeze() {
    require!("losetup", "mkfs.ext4", "blkid", "fsfreeze");
    a_refused_freeze_keeps_the_other_tools_freeze(EXT4).await;
}

#[tokio::test]
async fn xfs_a_refused_freeze_keeps_the_other_tools_freeze() {
    require!("losetup", "mkfs.xfs", "blkid", "fsfreeze");
    a_refused_freeze_keeps_the_other_tools_freeze(XFS).await;
}

fn unmount_quiesce(volume: &str, limit_ms: u64) -> QuiesceRequest {
    QuiesceRequest {
        volume: volume.into(),
        mode: QuiesceMode::Unmount,
        limit_ms: Some(limit_ms),
        owner: "test".into(),
    }
}

fn identity(identity: MountIdentity) -> MountRequest {
    MountRequest {
        identity,
        ..Default::default()
    }
}

/// Defect 3: while the MV is unmounted for a static point, `--identity new` gives the copy a
/// new identity, and a copy mounted as is never keeps the MV from remounting.
async fn a_copy_never_keeps_the_production_volume_from_remounting(fs: (&str, &[&str])) {
    let mut fx = Fixture::new();
    let (mv_dev, mv_mp) = fx.volume("mv", fs.1);
    {
        let host = fx.agent(&[("mv", &mv_dev, &mv_mp, fs.0)]).await;
        host.mount("mv", &MountRequest::default()).await.unwrap();
        std::fs::write(mv_mp.join("data.txt"), b"static point").unwrap();
        host.unmount("mv", false).await.unwrap();
    }
    let (rv_dev, rv_mp) = fx.copy("mv", "rv");
    let (rv2_dev, rv2_mp) = fx.copy("mv", "rv2");
    let host = fx
        .agent(&[
            ("mv", &mv_dev, &mv_mp, fs.0),
            ("rv", &rv_dev, &rv_mp, fs.0),
            ("rv2", &rv2_dev, &rv2_mp, fs.0),
        ])
        .await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    let mv_id = host.volume("mv").await.unwrap().fs_id;
    assert!(mv_id.is_some());

    host.quiesce(&unmount_quiesce("mv", 60_000)).await.unwrap();
    let rv = host
        .mount("rv", &identity(MountIdentity::New))
        .await
        .unwrap();
    assert_ne!(
        rv.fs_id, mv_id,
        "{}: --identity new kept the MV's identity",
        fs.0
    );
    assert_eq!(
        std::fs::read(rv_mp.join("data.txt")).unwrap(),
        b"static point"
    );
    host.release("mv", None).await.unwrap();
    host.unmount("rv", false).await.unwrap();

    // A copy mounted as is while the MV is away: the MV's remount still wins.
    host.quiesce(&unmount_quiesce("mv", 60_000)).await.unwrap();
    host.mount("rv2", &MountRequest::default()).await.unwrap();
    let released = host.release("mv", None).await;
    assert!(
        released.is_ok(),
        "{}: the copy kept the MV from remounting: {released:?}",
        fs.0
    );
    let mv = host.volume("mv").await.unwrap();
    assert_eq!(mv.mounted_at.as_deref(), Some(mv_mp.to_str().unwrap()));
    assert!(host.quiesces().await.unwrap().is_empty());
    host.unmount("rv2", false).await.unwrap();
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn ext4_a_copy_never_keeps_the_production_volume_from_remounting() {
    require!("losetup", "mkfs.ext4", "blkid", "tune2fs", "e2fsck");
    a_copy_never_keeps_the_production_volume_from_remounting(EXT4).await;
}

#[tokio::test]
async fn xfs_a_copy_never_keeps_the_production_volume_from_remounting() {
    require!("losetup", "mkfs.xfs", "blkid", "xfs_admin", "xfs_repair");
    a_copy_never_keeps_the_production_volume_from_remounting(XFS).await;
}

/// Defect 7: the stop hook's time counts against the quiesce window. A quiesce that cannot be
/// complete before its deadline fails, and is undone, instead of reporting success late.
async fn a_quiesce_that_cannot_finish_before_its_deadline_fails_and_is_undone(fs: (&str, &[&str])) {
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", fs.1);
    let started = fx.dir.path().join("start-hook-ran");
    let extra = format!(
        "stop = {{ command = [\"sleep\", \"3\"] }}\nstart = {{ command = [\"touch\", \"{}\"] }}\n",
        started.display()
    );
    let host = fx.agent_with(&[("mv", &dev, &mp, fs.0)], &extra).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    let t0 = std::time::Instant::now();
    let result = host.quiesce(&unmount_quiesce("mv", 1_000)).await;
    let took_ms = t0.elapsed().as_millis();
    assert!(
        result.is_err(),
        "{}: a 1000 ms quiesce with a 3 s stop hook succeeded after {took_ms} ms: {result:?}",
        fs.0
    );
    let err = result.unwrap_err();
    assert!(err.to_string().contains("deadline"), "{err}");
    assert!(took_ms < 2_900, "{}: failed only after {took_ms} ms", fs.0);
    // Undone: mounted, applications started again, nothing held.
    let v = host.volume("mv").await.unwrap();
    assert_eq!(v.mounted_at.as_deref(), Some(mp.to_str().unwrap()));
    assert!(host.quiesces().await.unwrap().is_empty());
    assert!(started.exists(), "the start hook ran as part of the undo");
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn ext4_a_quiesce_that_cannot_finish_before_its_deadline_fails_and_is_undone() {
    require!("losetup", "mkfs.ext4", "blkid", "sleep", "touch");
    a_quiesce_that_cannot_finish_before_its_deadline_fails_and_is_undone(EXT4).await;
}

#[tokio::test]
async fn xfs_a_quiesce_that_cannot_finish_before_its_deadline_fails_and_is_undone() {
    require!("losetup", "mkfs.xfs", "blkid", "sleep", "touch");
    a_quiesce_that_cannot_finish_before_its_deadline_fails_and_is_undone(XFS).await;
}

/// Defect 5: a start hook that keeps failing during the automatic resume is retried a bounded
/// number of times; the quiesce then ends with that outcome, surfaced on the volume until an
/// operator acknowledges it, and every command works on the volume again.
async fn a_failing_start_hook_ends_the_quiesce_with_its_outcome(fs: (&str, &[&str])) {
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", fs.1);
    let count = fx.dir.path().join("start-hook-runs");
    let extra = format!(
        "stop = {{ command = [\"true\"] }}\nstart = {{ command = [\"sh\", \"-c\", \"echo run >> {}; echo app will not start >&2; exit 3\"] }}\n",
        count.display()
    );
    let host = fx.agent_with(&[("mv", &dev, &mp, fs.0)], &extra).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    host.quiesce(&unmount_quiesce("mv", 3_000)).await.unwrap();
    wait_until(
        "the agent ends the quiesce after the start hook kept failing",
        || async { host.quiesces().await.unwrap().is_empty() },
    )
    .await;
    let runs = std::fs::read_to_string(&count).unwrap().lines().count();
    assert!(runs <= 3, "{}: the start hook ran {runs} times", fs.0);
    let v = host.volume("mv").await.unwrap();
    assert_eq!(v.mounted_at.as_deref(), Some(mp.to_str().unwrap()));
    let problem = v.problem.clone().unwrap_or_default();
    assert!(
        problem.contains("start hook") && problem.contains("app will not start"),
        "{}: the outcome is not surfaced on the volume: {v:?}",
        fs.0
    );
    let last = host.resumes().await.unwrap().pop().unwrap();
    assert!(
        last.error
            .as_deref()
            .is_some_and(|e| e.contains("start hook")),
        "{last:?}"
    );
    let acked = host.acknowledge("mv").await.unwrap();
    assert!(acked.is_some_and(|m| m.contains("start hook")));
    assert_eq!(host.volume("mv").await.unwrap().problem, None);
    assert_eq!(host.acknowledge("mv").await.unwrap(), None);
    // Commands work on the volume again.
    host.freeze("mv", Some(5_000), "test").await.unwrap();
    host.thaw("mv").await.unwrap();
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn ext4_a_failing_start_hook_ends_the_quiesce_with_its_outcome() {
    require!("losetup", "mkfs.ext4", "blkid", "sh", "true");
    a_failing_start_hook_ends_the_quiesce_with_its_outcome(EXT4).await;
}

#[tokio::test]
async fn xfs_a_failing_start_hook_ends_the_quiesce_with_its_outcome() {
    require!("losetup", "mkfs.xfs", "blkid", "sh", "true");
    a_failing_start_hook_ends_the_quiesce_with_its_outcome(XFS).await;
}

/// Defect 4: a copy taken while the MV was frozen (its log not clean on XFS) mounts with a new
/// identity on the MV's host, and `check` / `check --repair` work on such a copy.
async fn a_copy_taken_while_frozen_gets_a_new_identity_and_checks(fs: (&str, &[&str])) {
    let mut fx = Fixture::new();
    let (mv_dev, mv_mp) = fx.volume("mv", fs.1);
    let (rv_dev, rv_mp, rv2_dev, rv2_mp);
    {
        let host = fx.agent(&[("mv", &mv_dev, &mv_mp, fs.0)]).await;
        host.mount("mv", &MountRequest::default()).await.unwrap();
        std::fs::write(mv_mp.join("data.txt"), b"static point").unwrap();
        host.freeze("mv", Some(30_000), "test").await.unwrap();
        (rv_dev, rv_mp) = fx.copy("mv", "rv");
        (rv2_dev, rv2_mp) = fx.copy("mv", "rv2");
        host.thaw("mv").await.unwrap();
    }
    let host = fx
        .agent(&[
            ("mv", &mv_dev, &mv_mp, fs.0),
            ("rv", &rv_dev, &rv_mp, fs.0),
            ("rv2", &rv2_dev, &rv2_mp, fs.0),
        ])
        .await;
    let mv_id = host.volume("mv").await.unwrap().fs_id;
    let rv = host.mount("rv", &identity(MountIdentity::New)).await;
    let rv = match rv {
        Ok(rv) => rv,
        Err(e) => panic!(
            "{}: mount of a copy taken while frozen with a new identity failed: {e}",
            fs.0
        ),
    };
    assert_ne!(rv.fs_id, mv_id, "{}: the identity did not change", fs.0);
    assert_eq!(
        std::fs::read(rv_mp.join("data.txt")).unwrap(),
        b"static point"
    );
    host.unmount("rv", false).await.unwrap();

    // The other copy, checked before any mount: a verdict, and a repair that works.
    let check = host.check("rv2", false).await;
    assert!(
        check.as_ref().is_ok_and(|r| r.clean),
        "{}: check of a copy taken while frozen: {check:?}",
        fs.0
    );
    let repaired = host.check("rv2", true).await;
    assert!(
        repaired.as_ref().is_ok_and(|r| r.clean),
        "{}: check --repair of a copy taken while frozen: {repaired:?} (check said {check:?})",
        fs.0
    );
    let again = host.check("rv2", false).await.unwrap();
    assert!(again.clean, "{}: {}", fs.0, again.output);
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn ext4_a_copy_taken_while_frozen_gets_a_new_identity_and_checks() {
    require!("losetup", "mkfs.ext4", "blkid", "tune2fs", "e2fsck");
    a_copy_taken_while_frozen_gets_a_new_identity_and_checks(EXT4).await;
}

#[tokio::test]
async fn xfs_a_copy_taken_while_frozen_gets_a_new_identity_and_checks() {
    require!("losetup", "mkfs.xfs", "blkid", "xfs_admin", "xfs_repair");
    a_copy_taken_while_frozen_gets_a_new_identity_and_checks(XFS).await;
}

/// Defect 8 (hooks): a hook that leaves a background child holding its output does not keep
/// the agent waiting for that output, and nothing a stop hook started survives it.
async fn a_hooks_background_child_neither_delays_nor_outlives_a_stop_hook(fs: (&str, &[&str])) {
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", fs.1);
    let (start_pid, stop_pid) = (
        fx.dir.path().join("start-child.pid"),
        fx.dir.path().join("stop-child.pid"),
    );
    struct KillPids(Vec<std::path::PathBuf>);
    impl Drop for KillPids {
        fn drop(&mut self) {
            for f in &self.0 {
                if let Ok(p) = std::fs::read_to_string(f) {
                    let _ = Command::new("kill").args(["-9", p.trim()]).status();
                }
            }
        }
    }
    let _cleanup = KillPids(vec![start_pid.clone(), stop_pid.clone()]);
    let extra = format!(
        "start = {{ command = [\"sh\", \"-c\", \"sleep 30 & echo $! > {}; echo started\"] }}\n\
         stop = {{ command = [\"sh\", \"-c\", \"sleep 30 & echo $! > {}; echo stopping\"] }}\n",
        start_pid.display(),
        stop_pid.display()
    );
    let host = fx.agent_with(&[("mv", &dev, &mp, fs.0)], &extra).await;
    let out = host
        .run_hook("mv", stillpoint_host::HookKind::Start)
        .await
        .unwrap();
    assert!(out.stdout.contains("started"), "{out:?}");
    assert!(
        out.elapsed_ms < 1_500,
        "{}: a start hook that exits at once took {} ms (its child holds the output)",
        fs.0,
        out.elapsed_ms
    );
    let out = host
        .run_hook("mv", stillpoint_host::HookKind::Stop)
        .await
        .unwrap();
    assert!(
        out.elapsed_ms < 1_500,
        "{}: stop hook took {} ms",
        fs.0,
        out.elapsed_ms
    );
    let child = std::fs::read_to_string(&stop_pid).unwrap();
    wait_until("the stop hook's child is gone", || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.trim()));
        async move { stat.is_err() || stat.is_ok_and(|s| s.contains(") Z")) }
    })
    .await;
}

#[tokio::test]
async fn ext4_a_hooks_background_child_neither_delays_nor_outlives_a_stop_hook() {
    require!("losetup", "mkfs.ext4", "sh", "sleep");
    a_hooks_background_child_neither_delays_nor_outlives_a_stop_hook(EXT4).await;
}

#[tokio::test]
async fn xfs_a_hooks_background_child_neither_delays_nor_outlives_a_stop_hook() {
    require!("losetup", "mkfs.xfs", "sh", "sleep");
    a_hooks_background_child_neither_delays_nor_outlives_a_stop_hook(XFS).await;
}

/// A freeze undone by something else while the quiesce was to hold (an `fsfreeze -u`, or, as
/// a chaos run found, the freeze guard of an agent killed between freezing and journaling its
/// guard, thawing at its deadline) is reported lost at the release, never as held
/// throughout: a copy cut meanwhile is no static point. (The guard's "not frozen" answer to
/// the release's thaw used to count as a thaw.)
async fn a_freeze_thawed_by_someone_else_is_reported_lost_at_the_release(fs: (&str, &[&str])) {
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", fs.1);
    let host = fx.agent(&[("mv", &dev, &mp, fs.0)]).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    let q = host.freeze("mv", Some(10_000), "test").await.unwrap();
    let st = Command::new("fsfreeze")
        .args(["-u", mp.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "fsfreeze -u");

    let released = host.release("mv", Some(q.quiesce_id)).await;
    assert!(
        matches!(released, Err(HostError::QuiesceLost { .. })),
        "{}: a freeze thawed by someone else was released as held throughout: {released:?}",
        fs.0
    );
    assert!(!frozen_by_someone(&mp));
    assert!(host.quiesces().await.unwrap().is_empty());
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn ext4_a_freeze_thawed_by_someone_else_is_reported_lost_at_the_release() {
    require!("losetup", "mkfs.ext4", "blkid", "fsfreeze");
    a_freeze_thawed_by_someone_else_is_reported_lost_at_the_release(EXT4).await;
}

#[tokio::test]
async fn xfs_a_freeze_thawed_by_someone_else_is_reported_lost_at_the_release() {
    require!("losetup", "mkfs.xfs", "blkid", "fsfreeze");
    a_freeze_thawed_by_someone_else_is_reported_lost_at_the_release(XFS).await;
}

/// An agent killed between forking its freeze guard and journaling it leaves a guard its
/// journal does not name, holding the freeze's deadline: at that deadline it would thaw
/// whatever freeze holds the volume then, another quiesce's (a chaos run found a copy
/// labelled consistent cut that way from a thawed MV). The next agent finds such a guard by
/// the volume root it holds and ends it before doing anything else.
async fn a_guard_the_journal_does_not_name_is_ended_by_the_next_agent(fs: (&str, &[&str])) {
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", fs.1);
    let host = fx.agent(&[("mv", &dev, &mp, fs.0)]).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    host.freeze("mv", Some(60_000), "test").await.unwrap();
    drop(host);
    // As if the agent had died before writing the guard's record.
    let guards = {
        let db = common::open_db(&fx.dir.path().join("db")).await;
        let journal = stillpoint_storage::journal::Journal::open(&db).unwrap();
        let guards = journal.processes().unwrap();
        for p in &guards {
            journal.remove_process(p.pid).unwrap();
        }
        db.flush().unwrap();
        guards
    };
    assert_eq!(guards.len(), 1, "{guards:?}");
    let pid = guards[0].pid;
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z") && !s.contains(") X"))
    };
    assert!(alive(), "the guard outlives its agent");

    let host = fx.agent(&[("mv", &dev, &mp, fs.0)]).await;
    assert!(
        !alive(),
        "{}: the unrecorded guard of the dead agent still runs",
        fs.0
    );
    assert!(!frozen_by_someone(&mp));
    // The next quiesce holds until its release.
    let q = host.freeze("mv", Some(10_000), "test").await.unwrap();
    host.release("mv", Some(q.quiesce_id)).await.unwrap();
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn ext4_a_guard_the_journal_does_not_name_is_ended_by_the_next_agent() {
    require!("losetup", "mkfs.ext4", "blkid", "fsfreeze");
    a_guard_the_journal_does_not_name_is_ended_by_the_next_agent(EXT4).await;
}

#[tokio::test]
async fn xfs_a_guard_the_journal_does_not_name_is_ended_by_the_next_agent() {
    require!("losetup", "mkfs.xfs", "blkid", "fsfreeze");
    a_guard_the_journal_does_not_name_is_ended_by_the_next_agent(XFS).await;
}

/// Each durable journal write of the agent below first stalls this long, as a slow disk
/// would, so the test can look at the volume between the guard's fork and its record.
const SLOW_JOURNAL_MS: u64 = 4_000;

/// The pid of a freeze guard holding the file system at `mp`, if one runs.
fn guard_holding(mp: &std::path::Path) -> Option<u32> {
    let mp = std::fs::canonicalize(mp).ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        if comm.trim() != "sp-freeze-guard" {
            return None;
        }
        std::fs::read_dir(e.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == mp))
            .then_some(pid)
    })
}

/// A freeze's guard freezes only once the journal names it: an agent killed before that
/// leaves a guard that exits unfrozen (its pipe closes; see the guard's own tests), never a
/// frozen volume nobody will thaw on time.
async fn a_volume_is_frozen_only_once_its_guard_is_journaled(fs: (&str, &[&str])) {
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", fs.1);
    let host = fx
        .agent_on_journal(
            &[("mv", &dev, &mp, fs.0)],
            "",
            std::time::Duration::from_millis(SLOW_JOURNAL_MS),
        )
        .await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    let freezing = tokio::spawn({
        let host = host.clone();
        async move { host.freeze("mv", Some(60_000), "test").await }
    });
    wait_until("the freeze guard to be forked", || {
        let mp = mp.clone();
        async move { guard_holding(&mp).is_some() }
    })
    .await;
    // The guard's record is being written (slowly): the volume must not be frozen yet.
    for _ in 0..5 {
        assert!(
            !frozen_by_someone(&mp),
            "{}: the volume was frozen by a guard the journal does not name yet",
            fs.0
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let q = freezing.await.unwrap().unwrap();
    assert!(frozen_by_someone(&mp), "{}: the freeze did not take", fs.0);
    let report = host.release("mv", Some(q.quiesce_id)).await.unwrap();
    assert!(!frozen_by_someone(&mp), "{}: {report:?}", fs.0);
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn ext4_a_volume_is_frozen_only_once_its_guard_is_journaled() {
    require!("losetup", "mkfs.ext4", "blkid", "fsfreeze");
    a_volume_is_frozen_only_once_its_guard_is_journaled(EXT4).await;
}

#[tokio::test]
async fn xfs_a_volume_is_frozen_only_once_its_guard_is_journaled() {
    require!("losetup", "mkfs.xfs", "blkid", "fsfreeze");
    a_volume_is_frozen_only_once_its_guard_is_journaled(XFS).await;
}
