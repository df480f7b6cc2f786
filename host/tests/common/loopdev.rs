//! Loop-device fixtures for the linux backend's tests (root only; callers skip with a printed
//! reason otherwise). Every loop device, mount and child process is cleaned up by a guard even
//! if a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use stillpoint_storage::journal::Journal;

use super::open_db;
use stillpoint_host::{Agent, Engine, HostConfig};

const IMAGE_BYTES: u64 = 64 * 1024 * 1024;
/// mkfs.xfs refuses file systems under 300 MB; the image file stays sparse.
const XFS_IMAGE_BYTES: u64 = 320 * 1024 * 1024;

pub fn skip_reason(need: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in need {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control (loop devices unavailable)".into());
    }
    None
}

#[allow(unused_macros)]
macro_rules! require {
    ($($tool:expr),*) => {
        if let Some(why) = $crate::common::loopdev::skip_reason(&[$($tool),*]) {
            eprintln!(
                "SKIPPED {}: {why}",
                std::thread::current().name().unwrap_or("linux test")
            );
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require;

pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device over an image file; detached on drop.
pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn new(image: &Path) -> Loop {
        Loop {
            dev: run(&["losetup", "--find", "--show", image.to_str().unwrap()]),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Unmounts (lazily, so a failed test never leaves a busy mount) on drop.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        // Thaw first: a frozen file system cannot be unmounted.
        let _ = Command::new("fsfreeze")
            .args(["-u", self.0.to_str().unwrap()])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .args(["-l", self.0.to_str().unwrap()])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    // Field order = drop order: mounts before loop devices.
    pub _mounts: Vec<MountGuard>,
    pub loops: Vec<Loop>,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            _mounts: vec![],
            loops: vec![],
        }
    }

    /// A loop device with a fresh file system; returns (device, mount point dir).
    pub fn volume(&mut self, name: &str, mkfs: &[&str]) -> (String, PathBuf) {
        let img = self.dir.path().join(format!("{name}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(if mkfs[0] == "mkfs.xfs" {
                XFS_IMAGE_BYTES
            } else {
                IMAGE_BYTES
            })
            .unwrap();
        let lo = Loop::new(&img);
        let dev = lo.dev.clone();
        self.loops.push(lo);
        let mut cmd: Vec<&str> = mkfs.to_vec();
        cmd.push(&dev);
        run(&cmd);
        let mp = self.dir.path().join(format!("mnt-{name}"));
        std::fs::create_dir(&mp).unwrap();
        self._mounts.push(MountGuard(mp.clone()));
        (dev, mp)
    }

    /// A loop device over a byte copy of `from`'s image (what the array's copy yields).
    pub fn copy(&mut self, from: &str, name: &str) -> (String, PathBuf) {
        let src = self.dir.path().join(format!("{from}.img"));
        let img = self.dir.path().join(format!("{name}.img"));
        // Sparse copy: the XFS image is mostly holes.
        run(&[
            "cp",
            "--sparse=always",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        let lo = Loop::new(&img);
        let dev = lo.dev.clone();
        self.loops.push(lo);
        let mp = self.dir.path().join(format!("mnt-{name}"));
        std::fs::create_dir(&mp).unwrap();
        self._mounts.push(MountGuard(mp.clone()));
        (dev, mp)
    }

    pub async fn agent(&self, volumes: &[(&str, &str, &Path, &str)]) -> Arc<Agent> {
        self.agent_with(volumes, "").await
    }

    /// As `agent`, with `extra` TOML appended to the last volume.
    pub async fn agent_with(
        &self,
        volumes: &[(&str, &str, &Path, &str)],
        extra: &str,
    ) -> Arc<Agent> {
        self.agent_on_journal(volumes, extra, std::time::Duration::ZERO)
            .await
    }

    /// As `agent`, on a journal whose every durable write first stalls `journal_delay`.
    pub async fn agent_on_journal(
        &self,
        volumes: &[(&str, &str, &Path, &str)],
        extra: &str,
        journal_delay: std::time::Duration,
    ) -> Arc<Agent> {
        let mut toml = String::from("backend = \"linux\"\n");
        for (name, dev, mp, fs) in volumes {
            toml.push_str(&format!(
                "[[volumes]]\nname = \"{name}\"\ndevice = \"{dev}\"\nmount_point = \"{}\"\nfs = \"{fs}\"\nfreeze_ms_max = 60000\n",
                mp.display()
            ));
        }
        toml.push_str(extra);
        let cfg = HostConfig::from_toml_str(&toml, "test.toml").unwrap();
        let db = open_db(&self.dir.path().join("db")).await;
        let journal = Journal::open(&db).unwrap().with_write_delay(journal_delay);
        Agent::start(cfg, journal, Engine::Linux).await.unwrap()
    }
}

pub fn writer(path: &Path) -> Proc {
    Proc(
        Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", path.display()),
                "bs=4096",
                "count=16",
                "conv=fsync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}
