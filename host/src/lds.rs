//! [`LdAttachment`]: array LDs as block devices of this host, for the linux backend. The agent
//! plays the host's HBA: it serves a FUSE file system (`ldfs`) with one file per LD visible to
//! it and puts a loop device over each file (`losetup --direct-io=on`), so mkfs, mount,
//! fsfreeze, fsck and applications work on the LD unmodified while every byte goes through
//! the array's data API. A volume whose config names an `ld` and no `device` uses that LD's
//! loop device.
//!
//! Start cleans up what an agent killed before it could stop left behind (its loop devices
//! over files under the FUSE directory, and the dead FUSE mount) and says so in the log;
//! `rescan` attaches LDs that became visible; [`LdAttachment::detach`] (graceful stop)
//! unmounts the file systems on the LDs, detaches the loop devices and unmounts the FUSE
//! file system.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::device::BlockDevice;
use crate::error::HostError;
use crate::ldfs::{LdFs, LdTable, SharedTable, write_table};
use crate::limits::{self, OS_COMMAND_TIMEOUT_MS};
use crate::linux::{argv, blocking, mountinfo, os_err};
use crate::process;

/// How long detach waits for the FUSE mount to stop being busy (the kernel releases a loop
/// device's file shortly after `losetup -d`) before detaching it lazily.
const FUSE_UNMOUNT_WAIT_MS: u64 = 10_000;
/// Pause between attempts to unmount the FUSE file system, or a busy file system on an LD.
const FUSE_UNMOUNT_POLL_MS: u64 = 100;
/// How long detach tries again to unmount a busy file system on an LD before it unmounts it
/// lazily: longer than a freeze guard's default deadline (10 s), which holds the root open.
const BUSY_FS_UNMOUNT_WAIT_MS: u64 = limits::FREEZE_MS_MAX_DEFAULT + 5_000;

/// An LD this host may see now (the array's access list admits it).
pub struct VisibleLd {
    /// `ARRAY/NUMBER`, as a volume's `ld` names it.
    pub ld: String,
    pub capacity_bytes: u64,
    /// Reads and writes through the array's data API.
    pub device: Arc<dyn BlockDevice>,
}

/// Where LDs come from: the agent lists the arrays it attaches.
#[async_trait]
pub trait LdSource: Send + Sync {
    /// Every LD visible to this host now.
    async fn visible(&self) -> Result<Vec<VisibleLd>, HostError>;
}

/// A host's path to its array LDs, as the linux backend uses it: the block device of an
/// attached LD, and a rescan for LDs that became visible. [`LdAttachment`] is the path served
/// in this process; the agent binary uses one served by a process of its own, which outlives
/// the agent (a dead agent must not cut its business servers' I/O).
#[async_trait]
pub trait LdPath: Send + Sync {
    /// The block device of `ld` (`ARRAY/NUMBER`), if attached.
    fn device(&self, ld: &str) -> Option<String>;
    /// Attaches every LD that became visible.
    async fn rescan(&self) -> Result<(), HostError>;
}

/// One attached LD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedLd {
    pub ld: String,
    /// The loop device, e.g. `/dev/loop3`.
    pub device: String,
    /// The FUSE file under it.
    pub file: PathBuf,
    /// Whether the loop device does direct I/O on the file (it should; see CAVEATS).
    pub direct_io: bool,
}

/// The LDs this host sees, as loop devices over a FUSE file system.
pub struct LdAttachment {
    dir: PathBuf,
    source: Arc<dyn LdSource>,
    table: SharedTable,
    session: StdMutex<Option<fuser::BackgroundSession>>,
    attached: StdMutex<BTreeMap<String, AttachedLd>>,
    /// Serialises rescans and detach.
    busy: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The FUSE file of an LD: `ARRAY/7` is `ARRAY.7`.
pub fn ld_file_name(ld: &str) -> String {
    ld.replace('/', ".")
}

fn c_path(p: &Path) -> Result<CString, HostError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| os_err("-", &format!("path {}", p.display()), e))
}

/// Loop devices whose backing file is under `dir`, from sysfs: (device, backing file).
pub fn loops_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(blocks) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    let prefix = format!("{}/", dir.display());
    for b in blocks.flatten() {
        let name = b.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(back) = std::fs::read_to_string(b.path().join("loop/backing_file")) else {
            continue;
        };
        let back = back.trim().to_string();
        if back.starts_with(&prefix) {
            out.push((format!("/dev/{name}"), back));
        }
    }
    out
}

fn loop_direct_io(device: &str) -> bool {
    let name = device.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).is_ok_and(|s| s.trim() == "1")
}

/// Mount points of the block device `device` (by device number).
fn mounts_of(device: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(device) else {
        return vec![];
    };
    let dev = (libc::major(md.rdev()), libc::minor(md.rdev()));
    mountinfo()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.dev == dev)
        .map(|m| m.mount_point)
        .collect()
}

fn is_mount_point(dir: &Path) -> bool {
    let d = dir.display().to_string();
    mountinfo()
        .unwrap_or_default()
        .iter()
        .any(|m| m.mount_point == d)
}

async fn umount2(path: &str, flags: libc::c_int) -> Result<(), HostError> {
    try_umount2(path, flags)
        .await?
        .map_err(|e| os_err("-", &format!("unmount {path}"), e))
}

/// `umount2(2)` on the blocking pool: the outer error is the call not completing in time, the
/// inner one what the kernel answered.
async fn try_umount2(path: &str, flags: libc::c_int) -> Result<std::io::Result<()>, HostError> {
    let c = c_path(Path::new(path))?;
    blocking("-", &format!("unmount {path}"), move || {
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await
}

/// Unmounts the file system at `mp` on an LD about to be detached. A busy one is tried again
/// for up to [`BUSY_FS_UNMOUNT_WAIT_MS`] (a freeze guard holds the root until its deadline, an
/// application is closing its files), then detached lazily: left mounted, it would sit on a
/// loop device whose LD path is gone, its I/O failing, until the next start cleaned it up.
async fn unmount_before_detach(ld: &str, mp: &str) {
    let started = Instant::now();
    loop {
        let error = match try_umount2(mp, 0).await {
            Ok(Ok(())) => {
                tracing::info!(%ld, mount_point = %mp, "unmounted before detaching the LD");
                return;
            }
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EBUSY) => {
                if started.elapsed() >= Duration::from_millis(BUSY_FS_UNMOUNT_WAIT_MS) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(FUSE_UNMOUNT_POLL_MS)).await;
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(%ld, mount_point = %mp, %error, "cannot unmount a file system on the LD; its I/O fails once the LD path is gone");
        return;
    }
    match umount2(mp, libc::MNT_DETACH).await {
        Ok(()) => {
            tracing::error!(%ld, mount_point = %mp, "a file system on the LD stayed busy for {BUSY_FS_UNMOUNT_WAIT_MS} ms: unmounted lazily; whoever still holds files there gets I/O errors once the LD path is gone")
        }
        Err(e) => {
            tracing::error!(%ld, mount_point = %mp, error = %e, "cannot unmount a busy file system on the LD, even lazily")
        }
    }
}

async fn losetup_detach(device: &str) -> Result<(), HostError> {
    let out = process::run(
        "-",
        "losetup -d",
        &argv(&["losetup", "-d", device]),
        OS_COMMAND_TIMEOUT_MS,
    )
    .await?;
    if out.exit_code == Some(0) {
        Ok(())
    } else {
        Err(os_err(
            "-",
            &format!("losetup -d {device}"),
            out.stderr.trim(),
        ))
    }
}

impl LdAttachment {
    /// Cleans up after a killed predecessor, mounts the FUSE file system on `dir` (created if
    /// missing) and attaches every LD `source` says is visible. Needs root and `/dev/fuse`.
    pub async fn start(
        dir: &Path,
        source: Arc<dyn LdSource>,
    ) -> Result<Arc<LdAttachment>, HostError> {
        // A dead FUSE mount cannot be stat'ed (ENOTCONN): name it from its canonical parent.
        let dir = match (dir.parent(), dir.file_name()) {
            (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
                std::fs::create_dir_all(parent)
                    .map_err(|e| os_err("-", &format!("create {}", parent.display()), e))?;
                std::fs::canonicalize(parent)
                    .map_err(|e| os_err("-", &format!("resolve {}", parent.display()), e))?
                    .join(name)
            }
            _ => {
                return Err(HostError::Config {
                    source_name: "host config".into(),
                    field: "LD directory".into(),
                    reason: format!("{} has no parent directory", dir.display()),
                });
            }
        };
        Self::clean_up_stale(&dir).await;
        std::fs::create_dir_all(&dir)
            .map_err(|e| os_err("-", &format!("create {}", dir.display()), e))?;
        let table: SharedTable = Arc::new(std::sync::RwLock::new(LdTable::default()));
        let fs = LdFs::new(table.clone(), tokio::runtime::Handle::current());
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("stillpoint".into()),
            fuser::MountOption::Subtype("stillpoint-ld".into()),
            fuser::MountOption::NoExec,
            fuser::MountOption::NoSuid,
        ];
        config.acl = fuser::SessionACL::Owner;
        config.n_threads = Some(limits::LD_FUSE_THREADS);
        config.clone_fd = true;
        let mount_dir = dir.clone();
        let session = blocking("-", "mount the LD file system", move || {
            fuser::Session::new(fs, &mount_dir, &config)?.spawn()
        })
        .await?
        .map_err(|e| os_err("-", &format!("mount FUSE on {}", dir.display()), e))?;
        tracing::info!(dir = %dir.display(), "LD file system mounted");
        let me = Arc::new(LdAttachment {
            dir,
            source,
            table,
            session: StdMutex::new(Some(session)),
            attached: StdMutex::new(BTreeMap::new()),
            busy: tokio::sync::Mutex::new(()),
        });
        if let Err(e) = me.rescan().await {
            // The array may start after the agent: `volume rescan` (or a later start) attaches.
            tracing::warn!(error = %e, "not every LD could be attached yet; `volume rescan` tries again");
        }
        Ok(me)
    }

    /// The FUSE directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The loop device of `ld` (`ARRAY/NUMBER`), if attached.
    pub fn device(&self, ld: &str) -> Option<String> {
        lock(&self.attached).get(ld).map(|a| a.device.clone())
    }

    /// Every attached LD.
    pub fn attached(&self) -> Vec<AttachedLd> {
        lock(&self.attached).values().cloned().collect()
    }

    /// A killed agent leaves loop devices over files of its dead FUSE mount (I/O on them
    /// fails), file systems mounted on them, and the FUSE mount itself: detach those loops (a
    /// loop still in use is cleared by the kernel when its last user closes it), lazily
    /// unmount the file systems on them and the dead FUSE mount.
    async fn clean_up_stale(dir: &Path) {
        for (device, file) in loops_under(dir) {
            match losetup_detach(&device).await {
                Ok(()) => {
                    tracing::warn!(%device, %file, "detached a stale loop device left by an agent that did not stop cleanly")
                }
                Err(e) => {
                    tracing::error!(%device, %file, error = %e, "cannot detach a stale loop device")
                }
            }
            // Its I/O fails (the LD is no longer served through it), and it holds the
            // volume's mount point: detach it lazily; the volume is mounted again on the
            // LD's new loop device. Processes still holding files there get I/O errors.
            for mp in mounts_of(&device) {
                match umount2(&mp, libc::MNT_DETACH).await {
                    Ok(()) => {
                        tracing::warn!(%device, mount_point = %mp, "lazily unmounted a file system left mounted on a stale LD loop device")
                    }
                    Err(e) => {
                        tracing::error!(%device, mount_point = %mp, error = %e, "cannot unmount a file system on a stale LD loop device")
                    }
                }
            }
        }
        if is_mount_point(dir) {
            match umount2(&dir.display().to_string(), libc::MNT_DETACH).await {
                Ok(()) => {
                    tracing::warn!(dir = %dir.display(), "lazily unmounted the stale LD file system of an agent that did not stop cleanly")
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot unmount the stale LD file system")
                }
            }
        }
    }

    /// Attaches every visible LD not attached yet; returns the LDs attached by this call.
    /// LDs that fail are logged and the first failure is returned after trying the others.
    pub async fn rescan(&self) -> Result<Vec<AttachedLd>, HostError> {
        let _busy = self.busy.lock().await;
        if lock(&self.session).is_none() {
            return Err(HostError::WrongState {
                volume: "-".into(),
                operation: "rescan".into(),
                state: "the LDs were detached (the agent is stopping)".into(),
            });
        }
        let visible = self.source.visible().await?;
        let mut added = Vec::new();
        let mut first_error = None;
        for v in visible {
            if lock(&self.attached).contains_key(&v.ld) {
                continue;
            }
            let name = ld_file_name(&v.ld);
            write_table(&self.table).add(&name, v.capacity_bytes, v.device.clone());
            let file = self.dir.join(&name);
            match self.loop_over(&v.ld, &file).await {
                Ok(a) => {
                    tracing::info!(ld = %a.ld, device = %a.device, direct_io = a.direct_io, "LD attached");
                    lock(&self.attached).insert(a.ld.clone(), a.clone());
                    added.push(a);
                }
                Err(e) => {
                    tracing::error!(ld = %v.ld, error = %e, "cannot attach the LD");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(added),
        }
    }

    async fn loop_over(&self, ld: &str, file: &Path) -> Result<AttachedLd, HostError> {
        let path = file.display().to_string();
        let out = process::run(
            ld,
            "losetup",
            &argv(&["losetup", "--find", "--show", "--direct-io=on", &path]),
            OS_COMMAND_TIMEOUT_MS,
        )
        .await?;
        let device = out.stdout.trim().to_string();
        if out.exit_code != Some(0) || !device.starts_with("/dev/loop") {
            return Err(HostError::Device {
                device: ld.into(),
                operation: format!("losetup {path}"),
                detail: format!("exit {:?}: {}", out.exit_code, out.stderr.trim()),
            });
        }
        Ok(AttachedLd {
            ld: ld.into(),
            direct_io: loop_direct_io(&device),
            device,
            file: file.to_path_buf(),
        })
    }

    /// Graceful stop: unmounts the file systems on the LDs (after syncfs), detaches the loop
    /// devices and unmounts the FUSE file system. A file system still busy after
    /// [`BUSY_FS_UNMOUNT_WAIT_MS`] is unmounted lazily, and logged: its holders' I/O fails once
    /// the LD path is gone. Idempotent.
    pub async fn detach(&self) {
        let _busy = self.busy.lock().await;
        let attached: Vec<AttachedLd> = lock(&self.attached).values().cloned().collect();
        for a in &attached {
            for mp in mounts_of(&a.device) {
                let _ = sync_fs(&mp).await;
                unmount_before_detach(&a.ld, &mp).await;
            }
            match losetup_detach(&a.device).await {
                Ok(()) => tracing::info!(ld = %a.ld, device = %a.device, "LD detached"),
                Err(e) => {
                    tracing::error!(ld = %a.ld, device = %a.device, error = %e, "cannot detach the LD's loop device")
                }
            }
        }
        lock(&self.attached).clear();
        let Some(session) = lock(&self.session).take() else {
            return;
        };
        let dir = self.dir.display().to_string();
        // The kernel lets go of a detached loop's file when its last opener (udev's probe,
        // say) closes it: wait for that, bounded, then unmount (lazily if still busy).
        let started = Instant::now();
        while !loops_under(&self.dir).is_empty()
            && started.elapsed() < Duration::from_millis(FUSE_UNMOUNT_WAIT_MS)
        {
            tokio::time::sleep(Duration::from_millis(FUSE_UNMOUNT_POLL_MS)).await;
        }
        // fuser unmounts and then joins its threads, which end with the connection.
        let ended = blocking("-", "unmount the LD file system", move || {
            session.umount_and_join()
        })
        .await;
        if let Err(e) = ended.and_then(|r| r.map_err(|e| os_err("-", "unmount", e))) {
            tracing::warn!(%dir, error = %e, "the LD file system stays busy; unmounting it lazily");
            if let Err(e) = umount2(&dir, libc::MNT_DETACH).await {
                tracing::error!(%dir, error = %e, "cannot unmount the LD file system");
            }
            return;
        }
        tracing::info!(%dir, "LD file system unmounted");
    }
}

#[async_trait]
impl LdPath for LdAttachment {
    fn device(&self, ld: &str) -> Option<String> {
        LdAttachment::device(self, ld)
    }

    async fn rescan(&self) -> Result<(), HostError> {
        LdAttachment::rescan(self).await.map(|_| ())
    }
}

async fn sync_fs(mount_point: &str) -> Result<(), HostError> {
    let mp = mount_point.to_string();
    blocking("-", "syncfs", move || {
        let f = std::fs::File::open(&mp)?;
        // SAFETY: the descriptor is open for the duration of the call.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await?
    .map_err(|e| os_err("-", &format!("syncfs {mount_point}"), e))
}

/// Why array LDs cannot be attached as block devices here (`None`: they can): that needs
/// root, loop devices and FUSE, and the callers name the programs they need besides
/// (`mkfs.ext4`, `e2fsck`...). Tests and the chaos harness say this when they skip or refuse.
pub fn lds_unavailable(tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in tools {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control (loop devices unavailable)".into());
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return Some("/dev/fuse cannot be opened (FUSE unavailable)".into());
    }
    None
}
