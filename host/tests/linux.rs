//! The linux backend on loop devices (root only; skips with a printed reason otherwise).
//! Every loop device, mount and child process is cleaned up by a guard even if a test fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::loopdev::{Fixture, MountGuard, Proc, require, writer};
use common::wait_until;
use stillpoint_host::{Host, HostError, MountIdentity, MountRequest, QuiesceMode, QuiesceRequest};

#[tokio::test]
async fn freeze_blocks_a_writer_and_thaw_releases_it() {
    require!("losetup", "mkfs.ext4", "blkid", "dd");
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", &["mkfs.ext4", "-q"]);
    let host = fx.agent(&[("mv", &dev, &mp, "ext4")]).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();

    let q = host.freeze("mv", Some(30_000), "test").await.unwrap();
    let mut w = writer(&mp.join("f1"));
    // Observe the writer blocked for a while (absence of progress, not waiting for it).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        w.0.try_wait().unwrap().is_none(),
        "a writer finished on a frozen file system"
    );
    let r = host.thaw("mv").await.unwrap();
    assert_eq!(r.quiesce_id, q.quiesce_id);
    wait_until("the writer finishes after thaw", || {
        let done = w.0.try_wait().unwrap().map(|s| s.success());
        async move { done == Some(true) }
    })
    .await;
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn a_freeze_is_thawed_at_its_deadline_and_after_an_agent_restart() {
    require!("losetup", "mkfs.ext4", "blkid", "dd");
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", &["mkfs.ext4", "-q"]);
    let host = fx.agent(&[("mv", &dev, &mp, "ext4")]).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();

    // Nobody releases: the watchdog thaws at the deadline.
    host.freeze("mv", Some(1000), "test").await.unwrap();
    let mut w = writer(&mp.join("f1"));
    wait_until("the deadline thaw releases the writer", || {
        let done = w.0.try_wait().unwrap().map(|s| s.success());
        async move { done == Some(true) }
    })
    .await;
    // The freeze guard thaws at the deadline; the agent's watchdog logs the resume at the same
    // moment, not necessarily before the writer goes through.
    wait_until("the agent logs the deadline resume", || async {
        !host.resumes().await.unwrap().is_empty()
    })
    .await;
    let r = host.resumes().await.unwrap();
    assert!(r[0].reason.contains("deadline passed"), "{r:?}");

    // The agent dies while the file system is frozen; the next agent thaws it at start.
    host.freeze("mv", Some(60_000), "job").await.unwrap();
    let mut w = writer(&mp.join("f2"));
    drop(host);
    assert!(
        w.0.try_wait().unwrap().is_none(),
        "kernel freeze outlives the agent"
    );
    let host = fx.agent(&[("mv", &dev, &mp, "ext4")]).await;
    wait_until("restart thaw releases the writer", || {
        let done = w.0.try_wait().unwrap().map(|s| s.success());
        async move { done == Some(true) }
    })
    .await;
    let r = host.resumes().await.unwrap();
    assert!(r.last().unwrap().reason.contains("restarted"), "{r:?}");
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn busy_unmount_names_the_holder_and_force_terminates_it() {
    require!("losetup", "mkfs.ext4", "blkid", "sleep");
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", &["mkfs.ext4", "-q"]);
    let host = fx.agent(&[("mv", &dev, &mp, "ext4")]).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();

    let holder = Proc(
        Command::new("sleep")
            .arg("300")
            .current_dir(&mp)
            .spawn()
            .unwrap(),
    );
    let pid = holder.0.id();
    match host.unmount("mv", false).await {
        Err(HostError::Busy { holders, .. }) => {
            let h = holders
                .iter()
                .find(|h| h.pid == Some(pid))
                .unwrap_or_else(|| panic!("holder {pid} not named in {holders:?}"));
            assert_eq!(h.name, "sleep");
            assert!(h.what.contains("cwd"), "{h:?}");
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(host.volume("mv").await.unwrap().mounted_at.is_some());
    // The static-point quiesce fails the same way and leaves the volume mounted, unquiesced.
    let err = host
        .quiesce(&QuiesceRequest {
            volume: "mv".into(),
            mode: QuiesceMode::Unmount,
            limit_ms: None,
            owner: "test".into(),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sleep"), "{err}");
    assert!(host.quiesces().await.unwrap().is_empty());
    assert!(host.volume("mv").await.unwrap().mounted_at.is_some());

    let terminated = host.unmount("mv", true).await.unwrap();
    assert!(
        terminated.iter().any(|h| h.pid == Some(pid)),
        "{terminated:?}"
    );
    assert_eq!(host.volume("mv").await.unwrap().mounted_at, None);
    drop(holder);
}

async fn duplicate_identity_case(fs: &str, mkfs: &[&str], identity: MountIdentity) {
    let mut fx = Fixture::new();
    let (mv_dev, mv_mp) = fx.volume("mv", mkfs);
    let rv_mp_dir;
    let rv_dev;
    {
        let host = fx.agent(&[("mv", &mv_dev, &mv_mp, fs)]).await;
        host.mount("mv", &MountRequest::default()).await.unwrap();
        std::fs::write(mv_mp.join("data.txt"), b"static point").unwrap();
        host.flush("mv").await.unwrap();
        host.unmount("mv", false).await.unwrap();
        drop(host);
        let (d, m) = fx.copy("mv", "rv");
        rv_dev = d;
        rv_mp_dir = m;
    }
    let host = fx
        .agent(&[("mv", &mv_dev, &mv_mp, fs), ("rv", &rv_dev, &rv_mp_dir, fs)])
        .await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    let mv = host.volume("mv").await.unwrap();
    let rv = host.volume("rv").await.unwrap();
    assert_eq!(mv.fs_id, rv.fs_id, "the copy carries the MV's identity");

    match host.mount("rv", &MountRequest::default()).await {
        Err(HostError::DuplicateIdentity { volume, .. }) => assert_eq!(volume, "rv"),
        other => panic!("expected DuplicateIdentity, got {other:?}"),
    }
    let rv = host
        .mount(
            "rv",
            &MountRequest {
                identity,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rv.mounted_at.as_deref(), Some(rv_mp_dir.to_str().unwrap()));
    if identity == MountIdentity::New {
        assert_ne!(rv.fs_id, mv.fs_id, "a new identity was given");
    }
    assert_eq!(
        std::fs::read(rv_mp_dir.join("data.txt")).unwrap(),
        b"static point"
    );
    host.unmount("rv", false).await.unwrap();
    let check = host.check("rv", false).await.unwrap();
    assert!(check.clean, "{}", check.output);
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn an_ext4_copy_with_a_duplicate_uuid_mounts_on_the_same_host() {
    require!("losetup", "mkfs.ext4", "blkid", "tune2fs", "e2fsck");
    duplicate_identity_case("ext4", &["mkfs.ext4", "-q"], MountIdentity::New).await;
}

#[tokio::test]
async fn an_xfs_copy_with_a_duplicate_uuid_mounts_with_nouuid() {
    require!("losetup", "mkfs.xfs", "blkid", "xfs_repair");
    duplicate_identity_case(
        "xfs",
        &["mkfs.xfs", "-q", "-f"],
        MountIdentity::IgnoreDuplicate,
    )
    .await;
}

#[tokio::test]
async fn mounting_on_a_missing_mount_point_or_twice_is_refused_by_name() {
    require!("losetup", "mkfs.ext4", "blkid");
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", &["mkfs.ext4", "-q"]);
    let host = fx.agent(&[("mv", &dev, &mp, "ext4")]).await;
    let nowhere = fx.dir.path().join("does-not-exist");
    let err = host
        .mount(
            "mv",
            &MountRequest {
                mount_point: Some(nowhere.display().to_string()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    host.mount("mv", &MountRequest::default()).await.unwrap();
    let other = fx.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let _g = MountGuard(other.clone());
    let err = host
        .mount(
            "mv",
            &MountRequest {
                mount_point: Some(other.display().to_string()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HostError::MountedElsewhere { mounted_at, .. } if *mounted_at == mp.display().to_string()),
        "{err:?}"
    );
    host.unmount("mv", false).await.unwrap();
}

#[tokio::test]
async fn a_static_point_unmount_stops_the_holder_by_hook_and_resumes_it_at_the_deadline() {
    require!("losetup", "mkfs.ext4", "blkid", "sleep", "sh");
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", &["mkfs.ext4", "-q"]);
    let pidfile = fx.dir.path().join("app.pid");
    // The "application": a process whose working directory is on the volume.
    let extra = app_hooks(&mp, &pidfile, "sleep 300", 1500);
    let host = fx.agent_with(&[("mv", &dev, &mp, "ext4")], &extra).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    host.run_hook("mv", stillpoint_host::HookKind::Start)
        .await
        .unwrap();
    let app_pid = || {
        std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    // Kill whatever the start hook left behind, whatever happens below.
    let _cleanup = KillOnDrop(pidfile.clone());

    let first = app_pid();
    match host.unmount("mv", false).await {
        Err(HostError::Busy { holders, .. }) => {
            assert!(holders.iter().any(|h| h.pid == Some(first)), "{holders:?}")
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    // The quiesce runs the stop hook, then unmounts.
    host.quiesce(&QuiesceRequest {
        volume: "mv".into(),
        mode: QuiesceMode::Unmount,
        limit_ms: None,
        owner: "job".into(),
    })
    .await
    .unwrap();
    assert_eq!(host.volume("mv").await.unwrap().mounted_at, None);
    // Nobody releases: at the deadline the agent remounts and starts the application again.
    wait_until("the agent resumes the volume", || async {
        !host.resumes().await.unwrap().is_empty()
    })
    .await;
    let v = host.volume("mv").await.unwrap();
    assert_eq!(v.mounted_at.as_deref(), Some(mp.to_str().unwrap()));
    let second = app_pid();
    assert_ne!(first, second, "the start hook ran again");
    assert!(v.holders.iter().any(|h| h.pid == Some(second)), "{v:?}");
    stop_app(&host).await;
    host.rescan().await.unwrap();
    host.unmount("mv", false).await.unwrap();
}

/// An application's stop hook usually signals the application and returns; the application
/// then takes its time to exit (closing files, flushing). The quiesce must wait for it to let
/// go of the volume (within the volume's limit) rather than find the volume busy at once.
#[tokio::test]
async fn an_unmount_quiesce_waits_for_an_application_that_exits_slowly_after_its_stop_hook() {
    require!("losetup", "mkfs.ext4", "blkid", "sleep", "sh");
    let mut fx = Fixture::new();
    let (dev, mp) = fx.volume("mv", &["mkfs.ext4", "-q"]);
    let pidfile = fx.dir.path().join("app.pid");
    // The "application": on SIGTERM it needs about a second to shut down, and keeps its working
    // directory on the volume until it has.
    let app = "sh -c \\\"trap 'sleep 1; exit 0' TERM; while :; do sleep 0.1; done\\\"";
    let extra = app_hooks(&mp, &pidfile, app, 20_000);
    let host = fx.agent_with(&[("mv", &dev, &mp, "ext4")], &extra).await;
    host.mount("mv", &MountRequest::default()).await.unwrap();
    host.run_hook("mv", stillpoint_host::HookKind::Start)
        .await
        .unwrap();
    let _cleanup = KillOnDrop(pidfile.clone());
    wait_until("the application holds the volume", || async {
        !host.volume("mv").await.unwrap().holders.is_empty()
    })
    .await;

    let q = host
        .quiesce(&QuiesceRequest {
            volume: "mv".into(),
            mode: QuiesceMode::Unmount,
            limit_ms: None,
            owner: "job".into(),
        })
        .await;
    let q = q.unwrap_or_else(|e| panic!("the quiesce gave up on a slow exit: {e}"));
    assert_eq!(host.volume("mv").await.unwrap().mounted_at, None);
    host.release("mv", Some(q.quiesce_id)).await.unwrap();
    // The release started the application again; stop it for good before the clean-up.
    stop_app(&host).await;
    host.unmount("mv", false).await.unwrap();
}

/// The volume's hooks for an "application" `app` (a shell command, TOML-escaped) started in
/// the background with its working directory on the volume at `mp`, its pid in `pidfile`;
/// the stop hook signals it (SIGTERM) and returns at once.
fn app_hooks(
    mp: &std::path::Path,
    pidfile: &std::path::Path,
    app: &str,
    unmount_ms_max: u64,
) -> String {
    format!(
        "unmount_ms_max = {unmount_ms_max}\n\
         start = {{ command = [\"sh\", \"-c\", \"cd {mp} && ({app} >/dev/null 2>&1 & echo $! > {pid})\"] }}\n\
         stop = {{ command = [\"sh\", \"-c\", \"kill $(cat {pid})\"] }}\n",
        mp = mp.display(),
        pid = pidfile.display()
    )
}

/// Kills (SIGKILL) the process whose pid is in the file, whatever a test left running.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(p) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").args(["-9", p.trim()]).status();
        }
    }
}

/// Runs the volume's stop hook and waits until the application has let go of it.
async fn stop_app(host: &stillpoint_host::Agent) {
    host.run_hook("mv", stillpoint_host::HookKind::Stop)
        .await
        .unwrap();
    wait_until("the application lets go", || async {
        host.volume("mv").await.unwrap().holders.is_empty()
    })
    .await;
}
