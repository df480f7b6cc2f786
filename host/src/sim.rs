//! The sim backend: volumes are array LDs reached through a [`BlockDevice`], with just enough
//! of a file system's behaviour to make the host half of a procedure matter:
//!
//! - a **write-back cache**: writes land in dirty blocks; only flush (or freeze, or unmount)
//!   writes all of them back. When the cache is over its size, *random* dirty blocks are written
//!   back, as a kernel's writeback does, so a copy of the device taken without flush has torn
//!   records and holes, not just a missing tail;
//! - **holders**: every open [`SimHandle`] holds the volume, and unmount is refused naming them;
//! - **freeze** flushes and then blocks writers until thaw;
//! - a **superblock** (block 0) with an identity: an RV copy carries its MV's, and mounting both
//!   on one host needs a new identity or an explicit "ignore duplicate";
//! - **mount points** exist only if configured or added, so "mount point missing" is real.
//!
//! In-process applications ([`SimApp`], e.g. the workload) are registered here and run by the
//! agent as stop/start hooks (`app = "name"`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Mutex, watch};

use crate::api::{CheckReport, HookKind, HookOutput, MountIdentity, MountRequest};
use crate::backend::Backend;
use crate::config::VolumeConfig;
use crate::device::BlockDevice;
use crate::error::{Holder, HostError};
use crate::guard::{Guard, Pending};
use crate::limits::{SIM_BLOCK_BYTES, SIM_CACHE_BLOCKS_MAX_DEFAULT};
use crate::switches::AppStop;
use crate::workload;

/// Magic at the start of a sim volume's superblock.
const SUPER_MAGIC: &[u8; 8] = b"SPSIMFS1";

/// An application the sim host can stop and start through hooks.
#[async_trait]
pub trait SimApp: Send + Sync {
    /// Starts it (idempotent); returns a line for the hook output.
    async fn start(&self) -> Result<String, HostError>;
    /// Stops it and releases what it holds (idempotent).
    async fn stop(&self) -> Result<String, HostError>;
}

struct VolState {
    mounted_at: Option<String>,
    frozen: bool,
    /// Dirty blocks by block number, whole-block contents.
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Open handles: id → holder name.
    holders: BTreeMap<u64, String>,
    next_handle: u64,
    rng: StdRng,
}

struct SimVolume {
    ld: String,
    device: Arc<dyn BlockDevice>,
    capacity_bytes: u64,
    /// Dirty blocks held before random ones are written back.
    cache_blocks_max: usize,
    state: Mutex<VolState>,
    /// `true` while frozen; writers wait on it.
    frozen_rx: watch::Receiver<bool>,
    frozen_tx: watch::Sender<bool>,
}

/// The sim host: LDs attached by name, mount points, applications.
pub struct SimBackend {
    volumes: StdMutex<HashMap<String, Arc<SimVolume>>>,
    mount_points: StdMutex<HashSet<String>>,
    apps: StdMutex<HashMap<String, Arc<dyn SimApp>>>,
    cache_blocks_max: usize,
    seed: u64,
    /// Handles kept open by applications the fault switches make hold their volume
    /// ([`crate::switches::AppStop::Holds`]), let go once the switch is lifted.
    strays: StdMutex<Vec<SimHandle>>,
}

impl SimBackend {
    /// A sim host whose write-back caches evict with randomness drawn from `seed`.
    pub fn new(seed: u64) -> Arc<SimBackend> {
        Self::with_cache_blocks(seed, SIM_CACHE_BLOCKS_MAX_DEFAULT)
    }

    /// A sim host as `[host.sim]` describes it.
    pub fn for_config(config: &crate::config::HostConfig) -> Arc<SimBackend> {
        Self::with_cache_blocks(config.sim.seed, config.sim.cache_blocks_max)
    }

    /// As [`SimBackend::new`], with a cache of `cache_blocks_max` dirty blocks per volume.
    pub fn with_cache_blocks(seed: u64, cache_blocks_max: usize) -> Arc<SimBackend> {
        Arc::new(SimBackend {
            volumes: StdMutex::new(HashMap::new()),
            mount_points: StdMutex::new(HashSet::new()),
            apps: StdMutex::new(HashMap::new()),
            cache_blocks_max: cache_blocks_max.max(1),
            seed,
            strays: StdMutex::new(Vec::new()),
        })
    }

    /// Keeps a handle open on `v` as application `app` would after a stop that let go of
    /// nothing (the fault switches' `app_stop = "holds"`).
    async fn hold(&self, v: &VolumeConfig, app: &str) -> Result<(), HostError> {
        let vol = self.vol(ld_of(v)?)?;
        let handle = {
            let mut s = vol.state.lock().await;
            SimHandle::add(
                &vol,
                &mut s,
                format!("{app} (holding on: fault switch app_stop = \"holds\")"),
            )
        };
        lock(&self.strays).push(handle);
        Ok(())
    }

    /// Lets go of the handles [`SimBackend::hold`] kept, once the switch no longer says
    /// "holds".
    fn let_strays_go_once_lifted(&self) {
        if crate::switches::app_stop() != AppStop::Holds {
            let strays = std::mem::take(&mut *lock(&self.strays));
            drop(strays);
        }
    }

    /// Makes the LD `ld` visible to this host through `device` (what a rescan would find).
    pub async fn attach(&self, ld: &str, device: Arc<dyn BlockDevice>) -> Result<(), HostError> {
        let capacity_bytes = device.capacity_bytes().await?;
        if capacity_bytes < 2 * SIM_BLOCK_BYTES {
            return Err(HostError::Device {
                device: device.name(),
                operation: "attach".into(),
                detail: format!("{capacity_bytes} bytes is too small for a sim volume"),
            });
        }
        let (frozen_tx, frozen_rx) = watch::channel(false);
        let seed = self.seed ^ ld.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ b as u64);
        let vol = SimVolume {
            ld: ld.to_string(),
            device,
            capacity_bytes,
            cache_blocks_max: self.cache_blocks_max,
            state: Mutex::new(VolState {
                mounted_at: None,
                frozen: false,
                dirty: BTreeMap::new(),
                holders: BTreeMap::new(),
                next_handle: 1,
                rng: StdRng::seed_from_u64(seed),
            }),
            frozen_rx,
            frozen_tx,
        };
        lock(&self.volumes).insert(ld.to_string(), Arc::new(vol));
        Ok(())
    }

    /// Creates a directory a volume can be mounted on.
    pub fn add_mount_point(&self, path: &str) {
        lock(&self.mount_points).insert(path.to_string());
    }

    /// Registers an application hooks can name with `app = "name"`.
    pub fn register_app(&self, name: &str, app: Arc<dyn SimApp>) {
        lock(&self.apps).insert(name.to_string(), app);
    }

    fn vol(&self, ld: &str) -> Result<Arc<SimVolume>, HostError> {
        lock(&self.volumes)
            .get(ld)
            .cloned()
            .ok_or_else(|| HostError::Device {
                device: ld.into(),
                operation: "find LD".into(),
                detail: "the LD is not visible to this host; attach it (or rescan)".into(),
            })
    }

    async fn vol_at(&self, mount_point: &str) -> Option<Arc<SimVolume>> {
        let vols: Vec<_> = lock(&self.volumes).values().cloned().collect();
        for v in vols {
            if v.state.lock().await.mounted_at.as_deref() == Some(mount_point) {
                return Some(v);
            }
        }
        None
    }

    /// Opens the volume mounted at `mount_point` for I/O, as application `holder`. The handle
    /// holds the volume until dropped or [`SimHandle::close`]d.
    pub async fn open(
        self: &Arc<Self>,
        mount_point: &str,
        holder: &str,
    ) -> Result<SimHandle, HostError> {
        let vols: Vec<_> = lock(&self.volumes).values().cloned().collect();
        for v in vols {
            let mut s = v.state.lock().await;
            if s.mounted_at.as_deref() == Some(mount_point) {
                return Ok(SimHandle::add(&v, &mut s, holder.to_string()));
            }
        }
        Err(HostError::WrongState {
            volume: mount_point.into(),
            operation: "open".into(),
            state: "nothing is mounted there".into(),
        })
    }

    /// Writes a fresh superblock with a new identity and zeroes the data area: `mkfs`.
    pub async fn format(device: &dyn BlockDevice) -> Result<String, HostError> {
        let cap = device.capacity_bytes().await?;
        let zero = vec![0u8; 1024 * 1024];
        let mut off = SIM_BLOCK_BYTES;
        while off < cap {
            let n = (zero.len() as u64).min(cap - off) as usize;
            device.write_at(off, &zero[..n]).await?;
            off += n as u64;
        }
        let id = new_fs_id();
        device.write_at(0, &superblock(&id)).await?;
        Ok(id)
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short critical sections leaves plain data; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_fs_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn superblock(id: &str) -> Vec<u8> {
    let mut b = vec![0u8; SIM_BLOCK_BYTES as usize];
    b[..8].copy_from_slice(SUPER_MAGIC);
    b[8..8 + id.len()].copy_from_slice(id.as_bytes());
    b
}

fn parse_superblock(block: &[u8]) -> Option<String> {
    if block.len() < 40 || &block[..8] != SUPER_MAGIC {
        return None;
    }
    std::str::from_utf8(&block[8..40]).ok().map(str::to_string)
}

impl SimVolume {
    /// Reads through the cache.
    async fn read(&self, s: &VolState, offset: u64, len: usize) -> Result<Vec<u8>, HostError> {
        self.check_range(offset, len)?;
        let mut out = self.device.read_at(offset, len).await?;
        let first = offset / SIM_BLOCK_BYTES;
        let last = (offset + len as u64).div_ceil(SIM_BLOCK_BYTES);
        for (&b, data) in s.dirty.range(first..last) {
            let bstart = b * SIM_BLOCK_BYTES;
            let from = bstart.max(offset);
            let to = (bstart + SIM_BLOCK_BYTES).min(offset + len as u64);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - bstart) as usize..(to - bstart) as usize]);
        }
        Ok(out)
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), HostError> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.capacity_bytes)
        {
            return Err(HostError::Device {
                device: self.ld.clone(),
                operation: format!("access {len} bytes at {offset}"),
                detail: format!("beyond the volume's {} bytes", self.capacity_bytes),
            });
        }
        Ok(())
    }

    /// Writes into the cache, writing random dirty blocks back when it is over size.
    async fn write(&self, s: &mut VolState, offset: u64, data: &[u8]) -> Result<(), HostError> {
        self.check_range(offset, data.len())?;
        let end = offset + data.len() as u64;
        let mut b = offset / SIM_BLOCK_BYTES;
        while b * SIM_BLOCK_BYTES < end {
            let bstart = b * SIM_BLOCK_BYTES;
            let mut block = match s.dirty.remove(&b) {
                Some(d) => d,
                None => {
                    self.device
                        .read_at(bstart, SIM_BLOCK_BYTES as usize)
                        .await?
                }
            };
            let from = bstart.max(offset);
            let to = (bstart + SIM_BLOCK_BYTES).min(end);
            block[(from - bstart) as usize..(to - bstart) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            s.dirty.insert(b, block);
            b += 1;
        }
        while s.dirty.len() > self.cache_blocks_max {
            let pick = s.rng.gen_range(0..s.dirty.len());
            let Some(&victim) = s.dirty.keys().nth(pick) else {
                break;
            };
            if let Some(block) = s.dirty.remove(&victim) {
                self.device
                    .write_at(victim * SIM_BLOCK_BYTES, &block)
                    .await?;
            }
        }
        Ok(())
    }

    async fn flush(&self, s: &mut VolState) -> Result<(), HostError> {
        while let Some((b, block)) = s.dirty.pop_first() {
            if let Err(e) = self.device.write_at(b * SIM_BLOCK_BYTES, &block).await {
                s.dirty.insert(b, block);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// An open volume: the application's file descriptor. Holds the volume until closed.
pub struct SimHandle {
    vol: Arc<SimVolume>,
    id: u64,
    closed: bool,
}

impl SimHandle {
    /// Registers `holder` on `vol` (whose state `s` the caller has locked) and returns its
    /// handle.
    fn add(vol: &Arc<SimVolume>, s: &mut VolState, holder: String) -> SimHandle {
        let id = s.next_handle;
        s.next_handle += 1;
        s.holders.insert(id, holder);
        SimHandle {
            vol: vol.clone(),
            id,
            closed: false,
        }
    }

    async fn usable<'a>(
        &'a self,
        op: &str,
        wait_thaw: bool,
    ) -> Result<tokio::sync::MutexGuard<'a, VolState>, HostError> {
        let mut frozen = self.vol.frozen_rx.clone();
        // Bounded: each pass either returns or waits for the frozen flag to change, and the
        // agent's watchdog ends every freeze.
        loop {
            let s = self.vol.state.lock().await;
            if !s.holders.contains_key(&self.id) {
                return Err(HostError::WrongState {
                    volume: self.vol.ld.clone(),
                    operation: op.into(),
                    state: "the handle was revoked by a forced unmount".into(),
                });
            }
            if s.mounted_at.is_none() {
                return Err(HostError::NotMounted {
                    volume: self.vol.ld.clone(),
                    operation: op.into(),
                });
            }
            if !(wait_thaw && s.frozen) {
                return Ok(s);
            }
            drop(s);
            if frozen.wait_for(|f| !*f).await.is_err() {
                return Err(HostError::WrongState {
                    volume: self.vol.ld.clone(),
                    operation: op.into(),
                    state: "volume went away while frozen".into(),
                });
            }
        }
    }

    /// Writes through the cache; blocks while the volume is frozen.
    pub async fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), HostError> {
        let mut s = self.usable("write", true).await?;
        self.vol.write(&mut s, offset, data).await
    }

    /// Reads through the cache.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, HostError> {
        let s = self.usable("read", false).await?;
        self.vol.read(&s, offset, len).await
    }

    /// Writes every dirty block of the volume back to its device (the application's fsync);
    /// blocks while the volume is frozen.
    pub async fn fsync(&self) -> Result<(), HostError> {
        let mut s = self.usable("fsync", true).await?;
        self.vol.flush(&mut s).await
    }

    /// Volume size in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.vol.capacity_bytes
    }

    /// Stops holding the volume.
    pub async fn close(mut self) {
        self.vol.state.lock().await.holders.remove(&self.id);
        self.closed = true;
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if !self.closed {
            // Best effort when dropped without close: the lock is normally free.
            if let Ok(mut s) = self.vol.state.try_lock() {
                s.holders.remove(&self.id);
            } else {
                let vol = self.vol.clone();
                let id = self.id;
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        vol.state.lock().await.holders.remove(&id);
                    });
                }
            }
        }
    }
}

/// The applications holding a volume open, as unmount reports them.
fn holders_of(s: &VolState) -> Vec<Holder> {
    s.holders
        .values()
        .map(|name| Holder {
            pid: None,
            name: name.clone(),
            what: "open volume handle".into(),
        })
        .collect()
}

fn ld_of(v: &VolumeConfig) -> Result<&str, HostError> {
    v.ld.as_deref().ok_or_else(|| HostError::Config {
        source_name: "host config".into(),
        field: format!("volume {}.ld", v.name),
        reason: "required with the sim backend".into(),
    })
}

#[async_trait]
impl Backend for SimBackend {
    async fn inspect(&self, v: &VolumeConfig) -> Result<crate::backend::Seen, HostError> {
        let vol = self.vol(ld_of(v)?)?;
        let s = vol.state.lock().await;
        let sb = vol.read(&s, 0, SIM_BLOCK_BYTES as usize).await?;
        Ok(crate::backend::Seen {
            device: vol.ld.clone(),
            fs: "sim".into(),
            fs_id: parse_superblock(&sb),
            mounted_at: s.mounted_at.clone(),
            holders: holders_of(&s),
        })
    }

    async fn flush(&self, v: &VolumeConfig) -> Result<(), HostError> {
        let vol = self.vol(ld_of(v)?)?;
        let mut s = vol.state.lock().await;
        if s.mounted_at.is_none() {
            return Err(HostError::NotMounted {
                volume: v.name.clone(),
                operation: "flush".into(),
            });
        }
        vol.flush(&mut s).await
    }

    async fn unmount(&self, v: &VolumeConfig, force: bool) -> Result<Vec<Holder>, HostError> {
        self.let_strays_go_once_lifted();
        let vol = self.vol(ld_of(v)?)?;
        let mut s = vol.state.lock().await;
        if s.mounted_at.is_none() {
            return Ok(vec![]);
        }
        if s.frozen {
            return Err(HostError::WrongState {
                volume: v.name.clone(),
                operation: "unmount".into(),
                state: "frozen; thaw it first".into(),
            });
        }
        let holders = holders_of(&s);
        if !holders.is_empty() && !force {
            return Err(HostError::Busy {
                volume: v.name.clone(),
                holders,
            });
        }
        s.holders.clear();
        vol.flush(&mut s).await?;
        s.mounted_at = None;
        Ok(holders)
    }

    async fn mount(
        &self,
        v: &VolumeConfig,
        mount_point: &str,
        req: &MountRequest,
    ) -> Result<(), HostError> {
        let vol = self.vol(ld_of(v)?)?;
        if !lock(&self.mount_points).contains(mount_point) {
            return Err(HostError::MountPointMissing {
                volume: v.name.clone(),
                mount_point: mount_point.into(),
            });
        }
        {
            let s = vol.state.lock().await;
            match s.mounted_at.as_deref() {
                Some(m) if m == mount_point => return Ok(()),
                Some(m) => {
                    return Err(HostError::MountedElsewhere {
                        volume: v.name.clone(),
                        mounted_at: m.into(),
                    });
                }
                None => {}
            }
        }
        if let Some(other) = self.vol_at(mount_point).await {
            return Err(HostError::MountPointBusy {
                mount_point: mount_point.into(),
                other: other.ld.clone(),
            });
        }
        let sb = vol.device.read_at(0, SIM_BLOCK_BYTES as usize).await?;
        let Some(id) = parse_superblock(&sb) else {
            return Err(HostError::WrongState {
                volume: v.name.clone(),
                operation: "mount".into(),
                state: format!("LD {} carries no sim file system; format it first", vol.ld),
            });
        };
        // Identity clash with another mounted volume of this host?
        let others: Vec<_> = lock(&self.volumes)
            .values()
            .filter(|o| !Arc::ptr_eq(o, &vol))
            .cloned()
            .collect();
        for o in others {
            let os = o.state.lock().await;
            if os.mounted_at.is_none() {
                continue;
            }
            let osb = o.read(&os, 0, SIM_BLOCK_BYTES as usize).await?;
            if parse_superblock(&osb).as_deref() == Some(id.as_str()) {
                match req.identity {
                    MountIdentity::Keep => {
                        return Err(HostError::DuplicateIdentity {
                            volume: v.name.clone(),
                            fs_id: id,
                            other: o.ld.clone(),
                        });
                    }
                    MountIdentity::New => {
                        vol.device.write_at(0, &superblock(&new_fs_id())).await?;
                    }
                    MountIdentity::IgnoreDuplicate => {}
                }
                break;
            }
        }
        let mut s = vol.state.lock().await;
        s.mounted_at = Some(mount_point.into());
        Ok(())
    }

    async fn prepare_freeze(
        &self,
        _v: &VolumeConfig,
        _deadline_boot_ms: u64,
    ) -> Result<Option<Pending>, HostError> {
        Ok(None)
    }

    async fn freeze(
        &self,
        v: &VolumeConfig,
        _deadline_boot_ms: u64,
        _pending: Option<Pending>,
    ) -> Result<Option<Guard>, HostError> {
        let vol = self.vol(ld_of(v)?)?;
        let mut s = vol.state.lock().await;
        if s.mounted_at.is_none() {
            return Err(HostError::NotMounted {
                volume: v.name.clone(),
                operation: "freeze".into(),
            });
        }
        if s.frozen {
            return Err(HostError::WrongState {
                volume: v.name.clone(),
                operation: "freeze".into(),
                state: "already frozen".into(),
            });
        }
        vol.flush(&mut s).await?;
        s.frozen = true;
        vol.frozen_tx.send_replace(true);
        Ok(None)
    }

    async fn thaw(&self, v: &VolumeConfig) -> Result<(), HostError> {
        let vol = self.vol(ld_of(v)?)?;
        let mut s = vol.state.lock().await;
        s.frozen = false;
        vol.frozen_tx.send_replace(false);
        Ok(())
    }

    async fn rescan(&self) -> Result<(), HostError> {
        // LDs become visible through attach(); there is nothing further to discover.
        Ok(())
    }

    async fn check(&self, v: &VolumeConfig, repair: bool) -> Result<CheckReport, HostError> {
        let vol = self.vol(ld_of(v)?)?;
        let s = vol.state.lock().await;
        if let Some(m) = &s.mounted_at {
            return Err(HostError::WrongState {
                volume: v.name.clone(),
                operation: "check".into(),
                state: format!("mounted at {m}; unmount it first"),
            });
        }
        drop(s);
        let report = workload::verify(vol.device.as_ref()).await?;
        let mut repaired = false;
        if repair {
            // Like fsck discarding damaged files: torn records are cleared; lost ones (gaps)
            // cannot be brought back.
            for t in &report.torn {
                vol.device
                    .write_at(t.offset, &vec![0u8; workload::RECORD_BYTES as usize])
                    .await?;
                repaired = true;
            }
        }
        let clean = report.is_consistent() || repaired;
        Ok(CheckReport {
            volume: v.name.clone(),
            clean,
            repaired,
            output: format!(
                "{report}{}",
                if repaired {
                    "; damaged records cleared"
                } else {
                    ""
                }
            ),
        })
    }

    async fn run_app(
        &self,
        v: &VolumeConfig,
        app: &str,
        kind: HookKind,
        timeout_ms: u64,
    ) -> Result<HookOutput, HostError> {
        let a = lock(&self.apps)
            .get(app)
            .cloned()
            .ok_or_else(|| HostError::Config {
                source_name: "host config".into(),
                field: format!("volume {}.{}.app", v.name, kind.as_str()),
                reason: format!("no application {app:?} is registered with the sim host"),
            })?;
        let started = std::time::Instant::now();
        self.let_strays_go_once_lifted();
        let fault = match kind {
            HookKind::Stop => crate::switches::app_stop(),
            HookKind::Start => AppStop::Stops,
        };
        let fut = async {
            match (kind, fault) {
                (HookKind::Stop, AppStop::Fails) => Err(HostError::Refused {
                    volume: v.name.clone(),
                    rule: "fault switch app_stop = \"fails\"".into(),
                    reason: format!("application {app} refused to stop"),
                }),
                (HookKind::Stop, AppStop::Hangs) => std::future::pending().await,
                (HookKind::Stop, AppStop::Holds) => {
                    let line = a.stop().await?;
                    self.hold(v, app).await?;
                    Ok(line)
                }
                (HookKind::Stop, AppStop::Stops) => a.stop().await,
                (HookKind::Start, _) => a.start().await,
            }
        };
        let res = tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), fut)
            .await
            .map_err(|_| HostError::TimedOut {
                volume: v.name.clone(),
                what: format!("{} hook app:{app}", kind.as_str()),
                timeout_ms,
            })?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match res {
            Ok(line) => Ok(HookOutput {
                command: format!("app:{app} {}", kind.as_str()),
                exit_code: Some(0),
                stdout: line,
                stderr: String::new(),
                elapsed_ms,
            }),
            Err(e) => Err(HostError::HookFailed {
                volume: v.name.clone(),
                hook: kind.as_str().into(),
                command: format!("app:{app}"),
                status: "error".into(),
                stderr_tail: e.to_string(),
            }),
        }
    }
}
