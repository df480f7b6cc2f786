//! Quiesce defects found on real file systems (issue 10), each on ext4 and XFS loop devices
//! (root only; skips with a printed reason otherwise).

mod common;

use std::process::{Command, Stdio};

use common::loopdev::{Fixture, require};
use stillpoint_host::{Host, HostError, MountRequest};

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
