//! The linux backend: real block devices and file systems. Flush is `syncfs(2)`, freeze and
//! thaw are the FIFREEZE / FITHAW ioctls, unmount is `umount2(2)` (EBUSY → the holders are
//! found by walking `/proc`), mount, identity changes, checks and device discovery use the
//! standard tools (`mount`, `blkid`, `tune2fs`, `e2fsck`, `xfs_admin`, `xfs_repair`, `udevadm`),
//! each under a timeout. Mount state is read from `/proc/self/mountinfo` by device number, so
//! a device is recognised whatever path it was mounted by.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::api::{CheckReport, HookKind, HookOutput, MountIdentity, MountRequest};
use crate::backend::{Backend, Seen};
use crate::config::{FsType, VolumeConfig};
use crate::error::{Holder, HostError};
use crate::guard::{FITHAW, FreezeFailed, Guard, Pending};
use crate::lds::LdPath;
use crate::limits::{
    FSCK_TIMEOUT_MS, HOLDER_TERM_GRACE_MS, OS_COMMAND_TIMEOUT_MS, SYSCALL_TIMEOUT_MS,
};
use crate::process;

/// Pause between looks at /proc while waiting for terminated holders to let go.
const HOLDER_POLL_MS: u64 = 50;

/// Operations on this Linux machine.
#[derive(Default)]
pub struct LinuxBackend {
    /// Array LDs attached as loop devices: the devices of volumes that name an `ld` only.
    lds: Option<Arc<dyn LdPath>>,
}

impl LinuxBackend {
    pub fn new() -> LinuxBackend {
        LinuxBackend { lds: None }
    }

    /// A backend whose volumes may name an array LD of `lds` instead of a device.
    pub fn with_lds(lds: Arc<dyn LdPath>) -> LinuxBackend {
        LinuxBackend { lds: Some(lds) }
    }

    /// The volume's block device: its `device`, else the loop device of its attached `ld`.
    fn device_of(&self, v: &VolumeConfig) -> Result<String, HostError> {
        if let Some(d) = &v.device {
            return Ok(d.clone());
        }
        match (&v.ld, &self.lds) {
            (Some(ld), Some(lds)) => lds.device(ld).ok_or_else(|| HostError::Device {
                device: ld.clone(),
                operation: "find the LD's block device".into(),
                detail: format!(
                    "LD {ld} of volume {} is not attached: it is not visible to this host yet (access list) or the array did not answer; try `volume rescan`",
                    v.name
                ),
            }),
            _ => Err(HostError::Config {
                source_name: "host config".into(),
                field: format!("volume {}.device", v.name),
                reason: "required with the linux backend (or an ld of an attached array)".into(),
            }),
        }
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub(crate) struct MountEntry {
    pub(crate) dev: (u32, u32),
    root: String,
    pub(crate) mount_point: String,
    fs: String,
    source: String,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn mountinfo() -> Result<Vec<MountEntry>, HostError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| HostError::OsError {
        volume: "-".into(),
        operation: "read /proc/self/mountinfo".into(),
        detail: e.to_string(),
    })?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < sep + 3 || sep < 5 {
            continue;
        }
        let Some((maj, min)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse(), min.parse()) else {
            continue;
        };
        out.push(MountEntry {
            dev: (maj, min),
            root: unescape(f[3]),
            mount_point: unescape(f[4]),
            fs: f[sep + 1].to_string(),
            source: unescape(f[sep + 2]),
        });
    }
    Ok(out)
}

pub(crate) fn os_err(volume: &str, operation: &str, e: impl std::fmt::Display) -> HostError {
    HostError::OsError {
        volume: volume.into(),
        operation: operation.into(),
        detail: e.to_string(),
    }
}

/// Device number of a block device path.
fn rdev(volume: &str, device: &str) -> Result<(u32, u32), HostError> {
    let md = std::fs::metadata(device).map_err(|e| HostError::Device {
        device: device.into(),
        operation: "stat".into(),
        detail: format!(
            "{e}; is the LD visible to this host? try `volume rescan` (volume {volume})"
        ),
    })?;
    if !md.file_type().is_block_device() {
        return Err(HostError::Device {
            device: device.into(),
            operation: "stat".into(),
            detail: "not a block device".into(),
        });
    }
    let r = md.rdev();
    Ok((libc::major(r), libc::minor(r)))
}

/// Runs a blocking system call on the blocking pool with a timeout.
pub(crate) async fn blocking<T: Send + 'static>(
    volume: &str,
    what: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<std::io::Result<T>, HostError> {
    match tokio::time::timeout(
        Duration::from_millis(SYSCALL_TIMEOUT_MS),
        tokio::task::spawn_blocking(f),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(os_err(volume, what, e)),
        Err(_) => Err(HostError::TimedOut {
            volume: volume.into(),
            what: what.into(),
            timeout_ms: SYSCALL_TIMEOUT_MS,
        }),
    }
}

fn open_dir(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

fn ioctl_dir(path: &str, request: u64) -> std::io::Result<()> {
    let f = open_dir(path)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: FIFREEZE/FITHAW take an int argument that the kernel ignores; fd is open.
    let rc = unsafe { libc::ioctl(fd, request as _, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(crate) fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Every process holding something under `mount_point` or the device itself.
pub(crate) fn find_holders(mount_point: &str, device: Option<&str>) -> Vec<Holder> {
    let under = |p: &Path| {
        let p = p.as_os_str().as_bytes();
        let m = mount_point.as_bytes();
        p == m || (p.starts_with(m) && (m.ends_with(b"/") || p.get(m.len()) == Some(&b'/')))
    };
    let dev_canon = device.and_then(|d| std::fs::canonicalize(d).ok());
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = p.path();
        let name = std::fs::read_to_string(base.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let links = ["cwd", "root", "exe"].into_iter().filter_map(|link| {
            let t = std::fs::read_link(base.join(link)).ok()?;
            (under(&t) && !(link == "root" && mount_point == "/"))
                .then(|| format!("{link} {}", t.display()))
        });
        let fds = std::fs::read_dir(base.join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| {
                let t = std::fs::read_link(fd.path()).ok()?;
                (under(&t) || dev_canon.as_deref() == Some(t.as_path()))
                    .then(|| format!("open file {}", t.display()))
            });
        let maps = std::fs::read_to_string(base.join("maps")).unwrap_or_default();
        let mapped = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| under(Path::new(p)))
            .map(|p| format!("mapped {p}"));
        let what = links.chain(fds).chain(mapped).next();
        if let Some(what) = what {
            out.push(Holder {
                pid: Some(pid),
                name,
                what,
            });
        }
    }
    out
}

async fn blkid(volume: &str, device: &str, tag: &str) -> Result<Option<String>, HostError> {
    // -p probes the device itself: the cache would be stale right after a copy.
    let out = process::run(
        volume,
        "blkid",
        &argv(&["blkid", "-p", "-o", "value", "-s", tag, device]),
        OS_COMMAND_TIMEOUT_MS,
    )
    .await?;
    let v = out.stdout.trim();
    Ok((out.exit_code == Some(0) && !v.is_empty()).then(|| v.to_string()))
}

impl LinuxBackend {
    async fn fs_type(&self, v: &VolumeConfig, device: &str) -> Result<String, HostError> {
        match v.fs {
            FsType::Ext4 | FsType::Xfs => Ok(v.fs.as_str().into()),
            _ => blkid(&v.name, device, "TYPE")
                .await?
                .ok_or_else(|| HostError::WrongState {
                    volume: v.name.clone(),
                    operation: "detect file system".into(),
                    state: format!("no file system found on {device}"),
                }),
        }
    }

    fn mounted_at(&self, v: &VolumeConfig) -> Result<Option<String>, HostError> {
        let dev = rdev(&v.name, &self.device_of(v)?)?;
        Ok(mountinfo()?
            .into_iter()
            .filter(|m| m.dev == dev)
            .min_by_key(|m| m.root != "/")
            .map(|m| m.mount_point))
    }

    /// Gives the (unmounted) file system on `device` a new identity and checks that it took.
    async fn new_identity(
        &self,
        v: &VolumeConfig,
        device: &str,
        fs: &str,
        old: &str,
    ) -> Result<(), HostError> {
        let out = match fs {
            "ext4" | "ext3" | "ext2" => {
                // tune2fs refuses to change the UUID of a file system not checked since it
                // was last mounted (a copy of a mounted MV never is); e2fsck also replays the
                // journal of a copy taken while the MV was mounted.
                let fsck = process::run(
                    &v.name,
                    "e2fsck before new UUID",
                    &argv(&["e2fsck", "-f", "-y", device]),
                    FSCK_TIMEOUT_MS,
                )
                .await?;
                if fsck.exit_code.is_none_or(|c| c >= 4) {
                    return Err(os_err(
                        &v.name,
                        "e2fsck before new UUID",
                        format!(
                            "exit {:?}: {}; repair the copy with `volume check --repair`, then mount again",
                            fsck.exit_code,
                            process::tail(&fsck.stdout, 400)
                        ),
                    ));
                }
                process::run(
                    &v.name,
                    "tune2fs -U random",
                    &argv(&["tune2fs", "-U", "random", device]),
                    OS_COMMAND_TIMEOUT_MS,
                )
                .await?
            }
            "xfs" => {
                let cmd = argv(&["xfs_admin", "-U", "generate", device]);
                let admin = || {
                    process::run(
                        &v.name,
                        "xfs_admin -U generate",
                        &cmd,
                        OS_COMMAND_TIMEOUT_MS,
                    )
                };
                let out = admin().await?;
                if xfs_log_dirty(&out) {
                    // A copy taken while the MV was mounted or frozen: replay its log first.
                    replay_xfs_log(&v.name, device).await?;
                    admin().await?
                } else {
                    out
                }
            }
            other => {
                return Err(HostError::Unsupported {
                    operation: format!("new identity for {other}"),
                    reason: "only ext2/3/4 and xfs are handled; mount with ignore-duplicate".into(),
                });
            }
        };
        // The tools do not always say they failed (xfs_admin exits 0 after an error): the
        // identity on the device is what counts.
        let now = blkid(&v.name, device, "UUID").await?;
        if out.exit_code != Some(0) || now.as_deref() == Some(old) || now.is_none() {
            return Err(os_err(
                &v.name,
                "new file-system identity",
                format!(
                    "{} exited {:?} and the id is {} (was {old}): {}",
                    out.command,
                    out.exit_code,
                    now.as_deref().unwrap_or("unreadable"),
                    process::tail(&format!("{}{}", out.stdout, out.stderr), 600)
                ),
            ));
        }
        Ok(())
    }

    /// Forks the guard that will freeze `v` (see [`Guard::spawn`]); it freezes nothing yet.
    async fn spawn_guard(
        &self,
        v: &VolumeConfig,
        deadline_boot_ms: u64,
    ) -> Result<Pending, HostError> {
        let mp = self.require_mounted(v, "freeze")?;
        let root = open_dir(&mp).map_err(|e| os_err(&v.name, &format!("open {mp}"), e))?;
        tokio::task::spawn_blocking(move || Guard::spawn(root, deadline_boot_ms))
            .await
            .map_err(|e| os_err(&v.name, "forking the freeze guard", e))?
            .map_err(|e| os_err(&v.name, "forking the freeze guard", e))
    }

    fn require_mounted(&self, v: &VolumeConfig, op: &str) -> Result<String, HostError> {
        self.mounted_at(v)?.ok_or_else(|| HostError::NotMounted {
            volume: v.name.clone(),
            operation: op.into(),
        })
    }
}

#[async_trait]
impl Backend for LinuxBackend {
    async fn inspect(&self, v: &VolumeConfig) -> Result<Seen, HostError> {
        let device = self.device_of(v)?;
        let device = device.as_str();
        let mounted_at = self.mounted_at(v)?;
        let holders = match &mounted_at {
            Some(mp) => {
                let mp = mp.clone();
                let d = device.to_string();
                tokio::task::spawn_blocking(move || find_holders(&mp, Some(&d)))
                    .await
                    .unwrap_or_default()
            }
            None => vec![],
        };
        // A device without a file system is listed as such, not as an error.
        let fs = self
            .fs_type(v, device)
            .await
            .unwrap_or_else(|_| "none".into());
        Ok(Seen {
            device: device.into(),
            fs,
            fs_id: blkid(&v.name, device, "UUID").await?,
            mounted_at,
            holders,
        })
    }

    async fn flush(&self, v: &VolumeConfig) -> Result<(), HostError> {
        let mp = self.require_mounted(v, "flush")?;
        blocking(&v.name, "syncfs", move || {
            let f = open_dir(&mp)?;
            // SAFETY: syncfs on an open descriptor.
            let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await?
        .map_err(|e| os_err(&v.name, "syncfs", e))
    }

    async fn unmount(&self, v: &VolumeConfig, force: bool) -> Result<Vec<Holder>, HostError> {
        let Some(mp) = self.mounted_at(v)? else {
            return Ok(vec![]);
        };
        let device = self.device_of(v)?;
        let try_umount = |mp: String| {
            blocking(&v.name, "umount", move || {
                let c = CString::new(mp).map_err(std::io::Error::other)?;
                // SAFETY: umount2 with a valid NUL-terminated path.
                let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            })
        };
        match try_umount(mp.clone()).await? {
            Ok(()) => return Ok(vec![]),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(os_err(&v.name, &format!("umount {mp}"), e)),
        }
        let scan = {
            let (mp, device) = (mp.clone(), device.clone());
            move || find_holders(&mp, Some(&device))
        };
        let holders = tokio::task::spawn_blocking(scan.clone())
            .await
            .unwrap_or_default();
        if !force {
            let holders = if holders.is_empty() {
                vec![Holder {
                    pid: None,
                    name: "kernel".into(),
                    what: "no process found (a bind or nested mount, swap, or a process in another mount namespace)".into(),
                }]
            } else {
                holders
            };
            return Err(HostError::Busy {
                volume: v.name.clone(),
                holders,
            });
        }
        // Forced: terminate the holders (SIGTERM, then SIGKILL after a grace), then unmount.
        for h in &holders {
            if let Some(pid) = h.pid {
                // SAFETY: kill(2) on a pid we just found holding the volume.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        let started = Instant::now();
        let mut killed = false;
        loop {
            let left = tokio::task::spawn_blocking(scan.clone())
                .await
                .unwrap_or_default();
            if left.is_empty() {
                break;
            }
            if started.elapsed() >= Duration::from_millis(HOLDER_TERM_GRACE_MS) {
                if killed {
                    return Err(HostError::Busy {
                        volume: v.name.clone(),
                        holders: left,
                    });
                }
                for h in &left {
                    if let Some(pid) = h.pid {
                        // SAFETY: as above.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                }
                killed = true;
            }
            tokio::time::sleep(Duration::from_millis(HOLDER_POLL_MS)).await;
        }
        try_umount(mp.clone()).await?.map_err(|e| {
            os_err(
                &v.name,
                &format!("umount {mp} after terminating holders"),
                e,
            )
        })?;
        Ok(holders)
    }

    async fn mount(
        &self,
        v: &VolumeConfig,
        mount_point: &str,
        req: &MountRequest,
    ) -> Result<(), HostError> {
        let device = self.device_of(v)?;
        let device = device.as_str();
        if !Path::new(mount_point).is_dir() {
            return Err(HostError::MountPointMissing {
                volume: v.name.clone(),
                mount_point: mount_point.into(),
            });
        }
        let dev = rdev(&v.name, device)?;
        let mounts = mountinfo()?;
        if let Some(m) = mounts.iter().find(|m| m.dev == dev) {
            if m.mount_point == mount_point {
                return Ok(());
            }
            return Err(HostError::MountedElsewhere {
                volume: v.name.clone(),
                mounted_at: m.mount_point.clone(),
            });
        }
        if let Some(m) = mounts.iter().rev().find(|m| m.mount_point == mount_point) {
            return Err(HostError::MountPointBusy {
                mount_point: mount_point.into(),
                other: format!("{} ({})", m.source, m.fs),
            });
        }
        let fs = self.fs_type(v, device).await?;
        let mut options: Vec<String> = v.mount_options.clone();
        if req.read_only {
            options.push("ro".into());
        }
        let uuid = blkid(&v.name, device, "UUID").await?;
        match (req.identity, uuid) {
            // Always a new identity, whether or not a duplicate is mounted right now (the MV
            // may be unmounted for a static point and come back).
            (MountIdentity::New, Some(old)) => self.new_identity(v, device, &fs, &old).await?,
            (MountIdentity::New, None) => {
                return Err(HostError::WrongState {
                    volume: v.name.clone(),
                    operation: "mount with a new identity".into(),
                    state: format!("no file-system id found on {device}"),
                });
            }
            (identity, Some(uuid)) => {
                if let Some(other) = duplicate_mounted(&v.name, device, &uuid, &mounts).await? {
                    match (identity, fs.as_str()) {
                        (MountIdentity::IgnoreDuplicate, "xfs") => options.push("nouuid".into()),
                        (MountIdentity::IgnoreDuplicate, _) => {}
                        _ => {
                            return Err(HostError::DuplicateIdentity {
                                volume: v.name.clone(),
                                fs_id: uuid,
                                other,
                            });
                        }
                    }
                }
            }
            (_, None) => {}
        }
        let mut cmd = argv(&["mount", "-t", &fs]);
        if !options.is_empty() {
            cmd.push("-o".into());
            cmd.push(options.join(","));
        }
        cmd.push(device.into());
        cmd.push(mount_point.into());
        process::run_ok(&v.name, "mount", &cmd, OS_COMMAND_TIMEOUT_MS).await?;
        Ok(())
    }

    async fn prepare_freeze(
        &self,
        v: &VolumeConfig,
        deadline_boot_ms: u64,
    ) -> Result<Option<Pending>, HostError> {
        self.spawn_guard(v, deadline_boot_ms).await.map(Some)
    }

    async fn freeze(
        &self,
        v: &VolumeConfig,
        deadline_boot_ms: u64,
        pending: Option<Pending>,
    ) -> Result<Option<Guard>, HostError> {
        // Only a guard the agent has journaled may freeze (see `crate::guard`).
        let Some(pending) = pending else {
            return Err(HostError::WrongState {
                volume: v.name.clone(),
                operation: "freeze".into(),
                state: "no freeze guard prepared and journaled for it (a bug of the caller)".into(),
            });
        };
        let mp = self.require_mounted(v, "freeze")?;
        let frozen = tokio::task::spawn_blocking(move || {
            // The freeze may not outlast the window it opens.
            let left_ms = deadline_boot_ms.saturating_sub(crate::process::now_boot_ms());
            pending.freeze(SYSCALL_TIMEOUT_MS.min(left_ms.max(1)))
        })
        .await
        .map_err(|e| os_err(&v.name, "FIFREEZE", e))?;
        match frozen {
            Ok(guard) => Ok(Some(guard)),
            Err(FreezeFailed::Refused(e)) if e.raw_os_error() == Some(libc::EBUSY) => {
                Err(HostError::WrongState {
                    volume: v.name.clone(),
                    operation: "freeze".into(),
                    state: format!(
                        "already frozen by someone else (another tool froze {mp}; its freeze is left alone: `fsfreeze -u {mp}` ends it)"
                    ),
                })
            }
            Err(FreezeFailed::Refused(e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                Err(HostError::Unsupported {
                    operation: format!("freeze of {}", v.name),
                    reason: "the file system does not support freezing; quiesce by unmount".into(),
                })
            }
            Err(FreezeFailed::Refused(e)) | Err(FreezeFailed::Spawn(e)) => {
                Err(os_err(&v.name, "FIFREEZE", e))
            }
            Err(FreezeFailed::TimedOut(guard)) => {
                // The guard thaws as soon as its freeze completes.
                guard.thaw_when_frozen();
                Err(HostError::TimedOut {
                    volume: v.name.clone(),
                    what: "FIFREEZE (the freeze guard thaws it if it completes)".into(),
                    timeout_ms: SYSCALL_TIMEOUT_MS,
                })
            }
        }
    }

    async fn thaw(&self, v: &VolumeConfig) -> Result<(), HostError> {
        let Some(mp) = self.mounted_at(v)? else {
            return Ok(());
        };
        match blocking(&v.name, "FITHAW", move || ioctl_dir(&mp, FITHAW)).await? {
            Ok(()) => Ok(()),
            // EINVAL: not frozen. Thaw is idempotent for the agent's resume after a crash.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            Err(e) => Err(os_err(&v.name, "FITHAW", e)),
        }
    }

    async fn rescan(&self) -> Result<(), HostError> {
        if let Some(lds) = &self.lds {
            lds.rescan().await?;
        }
        // SCSI hosts: ask every adapter to scan all channels, targets and LUNs.
        if let Ok(hosts) = std::fs::read_dir("/sys/class/scsi_host") {
            for h in hosts.flatten() {
                let p = h.path().join("scan");
                let _ = tokio::task::spawn_blocking(move || std::fs::write(p, "- - -")).await;
            }
        }
        if Path::new("/usr/bin/udevadm").exists() || Path::new("/bin/udevadm").exists() {
            process::run(
                "-",
                "udevadm trigger",
                &argv(&["udevadm", "trigger", "--subsystem-match=block"]),
                OS_COMMAND_TIMEOUT_MS,
            )
            .await?;
            process::run(
                "-",
                "udevadm settle",
                &argv(&["udevadm", "settle"]),
                OS_COMMAND_TIMEOUT_MS,
            )
            .await?;
        }
        Ok(())
    }

    async fn check(&self, v: &VolumeConfig, repair: bool) -> Result<CheckReport, HostError> {
        if let Some(mp) = self.mounted_at(v)? {
            return Err(HostError::WrongState {
                volume: v.name.clone(),
                operation: "check".into(),
                state: format!("mounted at {mp}; unmount it first"),
            });
        }
        let device = self.device_of(v)?;
        let device = device.as_str();
        let fs = self.fs_type(v, device).await?;
        let (cmd, clean_codes, repaired_codes): (Vec<String>, &[i32], &[i32]) =
            match (fs.as_str(), repair) {
                ("xfs", false) => (argv(&["xfs_repair", "-n", device]), &[0], &[]),
                ("xfs", true) => (argv(&["xfs_repair", device]), &[0], &[]),
                (_, false) => (argv(&["e2fsck", "-f", "-n", device]), &[0], &[]),
                (_, true) => (argv(&["e2fsck", "-f", "-y", device]), &[0, 1, 2], &[1, 2]),
            };
        let mut out = process::run(&v.name, "file-system check", &cmd, FSCK_TIMEOUT_MS).await?;
        let mut replayed = "";
        if fs == "xfs" && out.exit_code != Some(0) && xfs_log_dirty(&out) {
            // A copy taken while its MV was mounted or frozen carries a log to replay;
            // xfs_repair refuses it (and -L would throw it away). Replay it, then check.
            replay_xfs_log(&v.name, device).await?;
            out = process::run(&v.name, "file-system check", &cmd, FSCK_TIMEOUT_MS).await?;
            replayed = "(the file system's log was replayed first, by mounting it with nouuid and unmounting it)\n";
        }
        let code = out.exit_code.unwrap_or(-1);
        if code >= 8 || (fs == "xfs" && code == 2) {
            return Err(os_err(
                &v.name,
                &out.command,
                format!(
                    "exit {code}: {}",
                    process::tail(&(out.stdout.clone() + &out.stderr), 600)
                ),
            ));
        }
        Ok(CheckReport {
            volume: v.name.clone(),
            clean: clean_codes.contains(&code),
            repaired: repaired_codes.contains(&code),
            output: format!("{replayed}{}{}", out.stdout, out.stderr),
        })
    }

    async fn run_app(
        &self,
        v: &VolumeConfig,
        app: &str,
        _kind: HookKind,
        _timeout_ms: u64,
    ) -> Result<HookOutput, HostError> {
        Err(HostError::Unsupported {
            operation: format!("in-process application {app:?} for volume {}", v.name),
            reason: "the linux backend runs hooks as commands only".into(),
        })
    }
}

/// Whether an XFS tool refused to work because the file system's log needs replaying (the
/// tools may say so and still exit 0).
fn xfs_log_dirty(out: &HookOutput) -> bool {
    let text = format!("{}{}", out.stdout, out.stderr);
    text.contains("valuable metadata changes in a log") || text.contains("needs to be replayed")
}

/// Replays an unmounted XFS file system's log: mounts it (nouuid: it may be a copy of a
/// mounted MV) on a private temporary directory and unmounts it.
async fn replay_xfs_log(volume: &str, device: &str) -> Result<(), HostError> {
    let dir = std::env::temp_dir().join(format!(
        "stillpoint-replay-{}-{}",
        std::process::id(),
        crate::process::now_unix_ms()
    ));
    std::fs::create_dir(&dir)
        .map_err(|e| os_err(volume, &format!("mkdir {}", dir.display()), e))?;
    let d = dir.display().to_string();
    let mounted = process::run_ok(
        volume,
        "mount to replay the XFS log",
        &argv(&["mount", "-t", "xfs", "-o", "nouuid", device, &d]),
        OS_COMMAND_TIMEOUT_MS,
    )
    .await;
    let unmounted = match &mounted {
        Ok(_) => process::run_ok(
            volume,
            "unmount after log replay",
            &argv(&["umount", &d]),
            OS_COMMAND_TIMEOUT_MS,
        )
        .await
        .map(|_| ()),
        Err(_) => Ok(()),
    };
    let _ = std::fs::remove_dir(&dir);
    if let Err(e) = mounted {
        return Err(os_err(
            volume,
            "replay of the XFS log",
            format!(
                "{e}; the log cannot be replayed by mounting. `volume check --repair` cannot fix this either: \
                 only `xfs_repair -L {device}` can, and it DISCARDS the log's last changes (take a new copy instead if you can)"
            ),
        ));
    }
    unmounted
}

/// Another mounted device carrying file-system id `uuid`, if any.
async fn duplicate_mounted(
    volume: &str,
    device: &str,
    uuid: &str,
    mounts: &[MountEntry],
) -> Result<Option<String>, HostError> {
    let own = rdev(volume, device)?;
    // -c /dev/null: probe devices instead of trusting a cache made before the copy.
    let out = process::run(
        volume,
        "blkid -t UUID",
        &argv(&[
            "blkid",
            "-c",
            "/dev/null",
            "-o",
            "device",
            "-t",
            &format!("UUID={uuid}"),
        ]),
        OS_COMMAND_TIMEOUT_MS,
    )
    .await?;
    for d in out.stdout.lines().map(str::trim).filter(|d| !d.is_empty()) {
        let Ok(md) = std::fs::metadata(d) else {
            continue;
        };
        let r = (libc::major(md.rdev()), libc::minor(md.rdev()));
        if r == own {
            continue;
        }
        if let Some(m) = mounts.iter().find(|m| m.dev == r) {
            return Ok(Some(format!("{d} at {}", m.mount_point)));
        }
    }
    Ok(None)
}
