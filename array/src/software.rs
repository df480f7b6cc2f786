//! The software array: LDs as sparse files, pairs with real copies, metadata in sled.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use crate::api::{Array, PeerReply, PeerRequest};
use crate::bitmap::Bitmap;
use crate::config::ArrayConfig;
use crate::error::{ArrayError, Result, Rule};
use crate::pair::{PairRec, wait_reached};
use crate::types::*;

mod copies;

/// Link between this array and a peer: latency, bandwidth and up/down, applied to every
/// replication request that crosses it.
#[derive(Debug)]
pub struct Link {
    up: AtomicBool,
    latency_ms: AtomicU64,
    bandwidth_bytes_per_s: AtomicU64,
}

impl Link {
    /// A link that is up.
    pub fn new(latency_ms: u64, bandwidth_bytes_per_s: u64) -> Self {
        Link {
            up: AtomicBool::new(true),
            latency_ms: AtomicU64::new(latency_ms),
            bandwidth_bytes_per_s: AtomicU64::new(bandwidth_bytes_per_s),
        }
    }

    async fn cross(&self, peer: &str, bytes: u64) -> Result<()> {
        let down = || ArrayError::Unreachable {
            target: format!("array {peer}"),
            detail: "link is down".into(),
        };
        if !self.up.load(Ordering::SeqCst) {
            return Err(down());
        }
        let bw = self.bandwidth_bytes_per_s.load(Ordering::Relaxed);
        let mut delay = Duration::from_millis(self.latency_ms.load(Ordering::Relaxed));
        if bw > 0 {
            delay += Duration::from_secs_f64(bytes as f64 / bw as f64);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if !self.up.load(Ordering::SeqCst) {
            return Err(down());
        }
        Ok(())
    }
}

/// An in-process (or remote) peer array reached through a link.
pub struct PeerHandle {
    /// The peer's array name.
    pub name: String,
    /// The peer itself.
    pub array: Arc<dyn Array>,
    /// The link to it.
    pub link: Arc<Link>,
}

struct Ld {
    number: u32,
    name: String,
    capacity_bytes: u64,
    format: String,
    hosts: Vec<String>,
    path: PathBuf,
    file: File,
    /// Serialises I/O and copies touching this LD (MV lock is always taken before RV lock).
    io: tokio::sync::Mutex<()>,
    failed: AtomicBool,
}

impl Ld {
    fn fail_err(&self, array: &str) -> ArrayError {
        ArrayError::DeviceFailed {
            array: array.into(),
            ld: self.number,
            detail: "LD failed (fault injected or disk error)".into(),
        }
    }
    fn read_at(&self, array: &str, off: u64, len: u64) -> Result<Vec<u8>> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.fail_err(array));
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, off)
            .map_err(|e| ArrayError::io(&self.path, e))?;
        Ok(buf)
    }
    fn write_at(&self, array: &str, off: u64, data: &[u8]) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.fail_err(array));
        }
        self.file
            .write_all_at(data, off)
            .map_err(|e| ArrayError::io(&self.path, e))
    }
    /// Copies `[off, off + len)` of this LD to the same range of `dst`. Blocking: run it on a
    /// blocking thread. The bytes move inside the kernel (`copy_file_range`, as `cp` does: no
    /// user-space buffer, no zero-filling); where the kernel cannot, through one buffer. Like
    /// `write_at`, nothing is fsynced.
    fn copy_to(&self, dst: &Ld, array: &str, off: u64, len: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        for ld in [self, dst] {
            if ld.failed.load(Ordering::SeqCst) {
                return Err(ld.fail_err(array));
            }
        }
        let mut done = 0u64;
        while done < len {
            let mut off_in = (off + done) as libc::loff_t;
            let mut off_out = off_in;
            // SAFETY: both descriptors are open files owned by `self` and `dst`; the offsets
            // are valid pointers for the duration of the call.
            let n = unsafe {
                libc::copy_file_range(
                    self.file.as_raw_fd(),
                    &mut off_in,
                    dst.file.as_raw_fd(),
                    &mut off_out,
                    (len - done) as usize,
                    0,
                )
            };
            if n > 0 {
                done += n as u64;
                continue;
            }
            let e = std::io::Error::last_os_error();
            match (n, e.raw_os_error()) {
                (0, _) => {
                    return Err(ArrayError::io(
                        &self.path,
                        format!("unexpected end of file at {}", off + done),
                    ));
                }
                (_, Some(libc::EINTR)) => continue,
                (
                    _,
                    Some(
                        libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL | libc::EPERM,
                    ),
                ) => return self.copy_by_buffer(dst, array, off + done, len - done),
                _ => return Err(ArrayError::io(&dst.path, e)),
            }
        }
        Ok(())
    }
    /// `copy_to` through user space, for filesystems without in-kernel copies.
    fn copy_by_buffer(&self, dst: &Ld, array: &str, off: u64, len: u64) -> Result<()> {
        let mut buf = vec![0u8; len.min(crate::COPY_RUN_BYTES_MAX) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], off + done)
                .map_err(|e| ArrayError::io(&self.path, e))?;
            dst.write_at(array, off + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// RV role of one of our LDs, persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RoleRec {
    mv: LdRef,
    access: RvAccess,
    /// Blocks hosts changed on the RV while separated.
    dirty: Bitmap,
}

struct PairSlot {
    rec: Mutex<PairRec>,
    wake: Notify,
    stop: AtomicBool,
    engine: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Serialises RV-access pushes: the engine and an operation can both push after changing
    /// the state, and without order an older access could land last on the RV's array.
    access_push: tokio::sync::Mutex<()>,
}

struct Inner {
    name: String,
    block_bytes: u64,
    /// Copy pace of every engine (0 = unpaced); changed at runtime by `set_copy_pace`.
    pace_bytes_per_s: AtomicU64,
    backlog_max: u64,
    lds: BTreeMap<u32, Arc<Ld>>,
    db: sled::Db,
    db_path: PathBuf,
    pairs_tree: sled::Tree,
    roles_tree: sled::Tree,
    pairs: Mutex<BTreeMap<PairId, Arc<PairSlot>>>,
    roles: Mutex<BTreeMap<u32, RoleRec>>,
    copies_tree: sled::Tree,
    /// Business copies by copy LD.
    copies: Mutex<BTreeMap<u32, Arc<copies::CopySlot>>>,
    peers: BTreeMap<String, (Arc<dyn Array>, Arc<Link>)>,
    events: broadcast::Sender<ArrayEvent>,
    /// Control operations run one at a time so rule checks see a stable inventory.
    op_lock: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

/// The embedded software array. Cheap to clone; all clones are the same array.
#[derive(Clone)]
pub struct SoftwareArray {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug in this crate; the data is plain
    // bitmaps and states, still usable, so recover instead of poisoning every later call.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SoftwareArray {
    /// Opens (or creates) the array described by `cfg`. Peers named in `cfg.peers` are reached
    /// over gRPC; `extra_peers` are in-process arrays (tests, the demo). Pair metadata is loaded
    /// from sled and copies that were running resume. Must run inside a tokio runtime.
    pub async fn open(cfg: &ArrayConfig, extra_peers: Vec<PeerHandle>) -> Result<SoftwareArray> {
        cfg.validate().map_err(|detail| ArrayError::Config {
            path: cfg.name.clone(),
            detail,
        })?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| ArrayError::io(&cfg.data_dir, e))?;
        let mut lds = BTreeMap::new();
        for l in &cfg.lds {
            let path = cfg.data_dir.join(format!("ld-{}.img", l.number));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| ArrayError::io(&path, e))?;
            let len = file.metadata().map_err(|e| ArrayError::io(&path, e))?.len();
            if len == 0 {
                file.set_len(l.capacity_bytes)
                    .map_err(|e| ArrayError::io(&path, e))?;
            } else if len != l.capacity_bytes {
                return Err(ArrayError::Config {
                    path: path.display().to_string(),
                    detail: format!(
                        "LD {} file holds {len} bytes but capacity_bytes = {}",
                        l.number, l.capacity_bytes
                    ),
                });
            }
            lds.insert(
                l.number,
                Arc::new(Ld {
                    number: l.number,
                    name: l.name.clone(),
                    capacity_bytes: l.capacity_bytes,
                    format: l.format.clone(),
                    hosts: l.hosts.clone(),
                    path,
                    file,
                    io: tokio::sync::Mutex::new(()),
                    failed: AtomicBool::new(false),
                }),
            );
        }
        let db_path = cfg.data_dir.join("meta");
        let corrupt = |detail: String| ArrayError::CorruptMetadata {
            path: db_path.display().to_string(),
            detail,
        };
        let db = sled::open(&db_path).map_err(|e| corrupt(format!("cannot open sled: {e}")))?;
        let pairs_tree = db.open_tree("pairs").map_err(|e| corrupt(e.to_string()))?;
        let roles_tree = db.open_tree("roles").map_err(|e| corrupt(e.to_string()))?;

        let mut peers = BTreeMap::new();
        for p in &cfg.peers {
            let remote = crate::remote::RemoteArray::lazy(&p.endpoint)?;
            let arr: Arc<dyn Array> = Arc::new(remote);
            peers.insert(
                p.name.clone(),
                (
                    arr,
                    Arc::new(Link::new(p.latency_ms, p.bandwidth_bytes_per_s)),
                ),
            );
        }
        for p in extra_peers {
            peers.insert(p.name, (p.array, p.link));
        }

        let blocks_of = |ld: &Ld| ld.capacity_bytes / cfg.block_bytes;
        let mut roles = BTreeMap::new();
        for kv in roles_tree.iter() {
            let (k, v) = kv.map_err(|e| corrupt(e.to_string()))?;
            let key = String::from_utf8_lossy(&k).to_string();
            let rec: RoleRec =
                serde_json::from_slice(&v).map_err(|e| corrupt(format!("roles/{key}: {e}")))?;
            let ld: u32 = key
                .parse()
                .map_err(|_| corrupt(format!("roles/{key}: bad key")))?;
            let Some(l) = lds.get(&ld) else {
                return Err(corrupt(format!(
                    "roles/{key}: LD {ld} is not in the config"
                )));
            };
            rec.dirty
                .validate(blocks_of(l))
                .map_err(|e| corrupt(format!("roles/{key}: {e}")))?;
            roles.insert(ld, rec);
        }
        let mut pairs = BTreeMap::new();
        for kv in pairs_tree.iter() {
            let (k, v) = kv.map_err(|e| corrupt(e.to_string()))?;
            let key = String::from_utf8_lossy(&k).to_string();
            let rec: PairRec =
                serde_json::from_slice(&v).map_err(|e| corrupt(format!("pairs/{key}: {e}")))?;
            let Some(l) = lds.get(&rec.id.mv.ld) else {
                return Err(corrupt(format!("pairs/{key}: MV LD is not in the config")));
            };
            for b in [&rec.copy, &rec.mv_dirty] {
                b.validate(blocks_of(l))
                    .map_err(|e| corrupt(format!("pairs/{key}: {e}")))?;
            }
            if rec.id.kind() == PairKind::Rdr && !peers.contains_key(&rec.id.rv.array) {
                return Err(ArrayError::Config {
                    path: cfg.name.clone(),
                    detail: format!(
                        "pair {key} needs peer array {:?}, which is not configured",
                        rec.id.rv.array
                    ),
                });
            }
            pairs.insert(
                rec.id.clone(),
                Arc::new(PairSlot {
                    rec: Mutex::new(rec),
                    wake: Notify::new(),
                    stop: AtomicBool::new(false),
                    engine: Mutex::new(None),
                    access_push: tokio::sync::Mutex::new(()),
                }),
            );
        }
        let copies_tree = db.open_tree("copies").map_err(|e| corrupt(e.to_string()))?;
        let mvs = pairs.keys().map(|p: &PairId| p.mv.ld).collect();
        let copies = copies::load(&copies_tree, &lds, cfg.block_bytes, &roles, &mvs, corrupt)?;
        let (events, _) = broadcast::channel(crate::EVENT_CHANNEL_CAPACITY);
        let inner = Arc::new(Inner {
            name: cfg.name.clone(),
            block_bytes: cfg.block_bytes,
            pace_bytes_per_s: AtomicU64::new(cfg.copy_pace_bytes_per_s),
            backlog_max: cfg.semi_sync_backlog_blocks_max.max(1),
            lds,
            db,
            db_path,
            pairs_tree,
            roles_tree,
            pairs: Mutex::new(pairs),
            roles: Mutex::new(roles),
            copies_tree,
            copies: Mutex::new(copies),
            peers,
            events,
            op_lock: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        });
        let slots: Vec<_> = lock(&inner.pairs).values().cloned().collect();
        for s in slots {
            Inner::start_engine(&inner, &s);
        }
        let copy_slots: Vec<_> = lock(&inner.copies).values().cloned().collect();
        for s in copy_slots {
            Inner::start_copy_engine(&inner, &s);
        }
        Ok(SoftwareArray { inner })
    }

    /// The link to a peer, for tests and fault injection.
    pub fn link(&self, peer: &str) -> Option<Arc<Link>> {
        self.inner.peers.get(peer).map(|(_, l)| l.clone())
    }

    /// Changes the copy pace of every pair and business copy from its next run on (the config's
    /// `copy_pace_bytes_per_s`; 0 copies as fast as the disk goes). Not persisted: a restart
    /// takes the configured pace again.
    pub fn set_copy_pace(&self, bytes_per_s: u64) {
        self.inner
            .pace_bytes_per_s
            .store(bytes_per_s, Ordering::SeqCst);
    }

    /// Stops copy engines, persists every pair and flushes metadata. The array refuses work
    /// afterwards; drop it to release the data dir.
    pub async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let slots: Vec<_> = lock(&self.inner.pairs).values().cloned().collect();
        for s in &slots {
            s.stop.store(true, Ordering::SeqCst);
            s.wake.notify_one();
            let h = lock(&s.engine).take();
            if let Some(h) = h {
                let _ = h.await;
            }
            self.inner.persist_pair(s, false)?;
        }
        self.inner.close_copies().await?;
        self.inner.flush().await
    }
}

enum Dir {
    MvToRv,
    RvToMv,
}

impl Inner {
    fn ld(&self, n: u32) -> Result<&Arc<Ld>> {
        self.lds
            .get(&n)
            .ok_or_else(|| ArrayError::not_found(format!("LD {n} on array {}", self.name)))
    }

    fn slot(&self, id: &PairId) -> Result<Arc<PairSlot>> {
        lock(&self.pairs)
            .get(id)
            .cloned()
            .ok_or_else(|| ArrayError::not_found(format!("pair {id} on array {}", self.name)))
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ArrayError::Unreachable {
                target: format!("array {}", self.name),
                detail: "array is shutting down".into(),
            });
        }
        Ok(())
    }

    fn meta_err(&self, e: impl std::fmt::Display) -> ArrayError {
        ArrayError::io(&self.db_path, e)
    }

    async fn flush(&self) -> Result<()> {
        self.db.flush_async().await.map_err(|e| self.meta_err(e))?;
        Ok(())
    }

    /// Writes one metadata record as JSON (not flushed: callers flush when it must be durable).
    fn put_record<T: serde::Serialize>(
        &self,
        tree: &sled::Tree,
        key: String,
        rec: &T,
    ) -> Result<()> {
        let v = serde_json::to_vec(rec).map_err(|e| self.meta_err(e))?;
        tree.insert(key, v).map_err(|e| self.meta_err(e))?;
        Ok(())
    }

    fn persist_pair(&self, slot: &PairSlot, _flush: bool) -> Result<()> {
        let rec = lock(&slot.rec).clone();
        self.put_record(&self.pairs_tree, rec.id.to_string(), &rec)
    }

    async fn persist_pair_durable(&self, slot: &PairSlot) -> Result<()> {
        self.persist_pair(slot, true)?;
        self.flush().await
    }

    fn persist_role(&self, ld: u32) -> Result<()> {
        let rec = lock(&self.roles).get(&ld).cloned();
        match rec {
            Some(r) => {
                let v = serde_json::to_vec(&r).map_err(|e| self.meta_err(e))?;
                self.roles_tree
                    .insert(ld.to_string(), v)
                    .map_err(|e| self.meta_err(e))?;
            }
            None => {
                self.roles_tree
                    .remove(ld.to_string())
                    .map_err(|e| self.meta_err(e))?;
            }
        }
        Ok(())
    }

    fn emit(&self, id: &PairId, state: Option<PairState>, reason: &str) {
        let _ = self.events.send(ArrayEvent::Pair(PairEvent {
            array: self.name.clone(),
            pair: id.clone(),
            state,
            reason: reason.into(),
            at_unix_ms: now_unix_ms(),
        }));
    }

    fn emit_copy(&self, copy: u32, parent: u32, state: Option<CopyState>, reason: &str) {
        let _ = self.events.send(ArrayEvent::Copy(CopyEvent {
            array: self.name.clone(),
            copy,
            parent,
            state,
            reason: reason.into(),
            at_unix_ms: now_unix_ms(),
        }));
    }

    fn info_of(&self, slot: &PairSlot) -> PairInfo {
        lock(&slot.rec).info(self.block_bytes)
    }

    fn blocks(&self, off: u64, len: u64) -> (u64, u64) {
        (
            off / self.block_bytes,
            (off + len).div_ceil(self.block_bytes),
        )
    }

    // ---- peer side (RV role) -------------------------------------------------------------

    fn peer_of(&self, array: &str) -> Result<(&Arc<dyn Array>, &Arc<Link>)> {
        self.peers.get(array).map(|(a, l)| (a, l)).ok_or_else(|| {
            ArrayError::not_found(format!("peer array {array} (no link configured)"))
        })
    }

    /// Sends a peer request to the RV's array: directly for DDR, over the link for RDR.
    async fn to_rv(self: &Arc<Self>, rv_array: &str, req: PeerRequest) -> Result<PeerReply> {
        if rv_array == self.name {
            return self.peer_op(req).await;
        }
        let (arr, link) = self.peer_of(rv_array)?;
        let bytes = match &req {
            PeerRequest::Write { data, .. } => data.len() as u64,
            PeerRequest::Read { len, .. } => *len,
            _ => 0,
        };
        link.cross(rv_array, bytes).await?;
        match tokio::time::timeout(crate::PEER_CALL_TIMEOUT, arr.peer(req)).await {
            Ok(r) => r,
            Err(_) => Err(ArrayError::Unreachable {
                target: format!("array {rv_array}"),
                detail: format!("no answer within {:?}", crate::PEER_CALL_TIMEOUT),
            }),
        }
    }

    async fn peer_op(&self, req: PeerRequest) -> Result<PeerReply> {
        self.check_open()?;
        match req {
            PeerRequest::Claim {
                rv,
                mv,
                capacity_bytes,
                format,
            } => {
                let ld = self.ld(rv)?;
                if ld.capacity_bytes != capacity_bytes {
                    return Err(ArrayError::refused(
                        Rule::SameCapacity,
                        format!(
                            "MV {mv} has {capacity_bytes} bytes, RV {}:{rv} has {}",
                            self.name, ld.capacity_bytes
                        ),
                    ));
                }
                if ld.format != format {
                    return Err(ArrayError::refused(
                        Rule::SameFormat,
                        format!(
                            "MV {mv} is {format}, RV {}:{rv} is {}",
                            self.name, ld.format
                        ),
                    ));
                }
                {
                    let mut roles = lock(&self.roles);
                    if let Some(r) = roles.get(&rv) {
                        return Err(ArrayError::refused(
                            Rule::OneRolePerLd,
                            format!("LD {}:{rv} is already the RV of {}", self.name, r.mv),
                        ));
                    }
                    self.check_rv_vs_copies(rv)?;
                    let is_mv = lock(&self.pairs).keys().any(|p| p.mv.ld == rv);
                    if is_mv {
                        let rule = if mv.array == self.name {
                            Rule::SingleDdrLayer
                        } else {
                            Rule::OneRolePerLd
                        };
                        return Err(ArrayError::refused(
                            rule,
                            format!("LD {}:{rv} is an MV and cannot also be an RV", self.name),
                        ));
                    }
                    let blocks = ld.capacity_bytes / self.block_bytes;
                    roles.insert(
                        rv,
                        RoleRec {
                            mv,
                            access: RvAccess::Rw,
                            dirty: Bitmap::new(blocks),
                        },
                    );
                }
                self.persist_role(rv)?;
                self.flush().await?;
                Ok(PeerReply::Ok)
            }
            PeerRequest::Release { rv, mv } => {
                let removed = {
                    let mut roles = lock(&self.roles);
                    match roles.get(&rv) {
                        Some(r) if r.mv == mv => roles.remove(&rv).is_some(),
                        _ => false,
                    }
                };
                if removed {
                    self.persist_role(rv)?;
                    self.flush().await?;
                }
                Ok(PeerReply::Ok)
            }
            PeerRequest::SetAccess { rv, mv, access } => {
                {
                    let mut roles = lock(&self.roles);
                    let r = roles.get_mut(&rv).filter(|r| r.mv == mv).ok_or_else(|| {
                        ArrayError::not_found(format!("RV role of {}:{rv} for {mv}", self.name))
                    })?;
                    r.access = access;
                }
                self.persist_role(rv)?;
                self.flush().await?;
                Ok(PeerReply::Ok)
            }
            PeerRequest::TakeDirty { rv, mv } => {
                let bits = {
                    let mut roles = lock(&self.roles);
                    let r = roles.get_mut(&rv).filter(|r| r.mv == mv).ok_or_else(|| {
                        ArrayError::not_found(format!("RV role of {}:{rv} for {mv}", self.name))
                    })?;
                    let mut v = Vec::new();
                    let mut i = 0;
                    while let Some(b) = r.dirty.next_set(i) {
                        if b < i {
                            break;
                        }
                        v.push(b);
                        i = b + 1;
                    }
                    r.dirty.clear_all();
                    v
                };
                self.persist_role(rv)?;
                Ok(PeerReply::Dirty(bits))
            }
            PeerRequest::Write { rv, offset, data } => {
                let ld = self.ld(rv)?.clone();
                self.check_range(&ld, offset, data.len() as u64)?;
                let _g = ld.io.lock().await;
                ld.write_at(&self.name, offset, &data)?;
                Ok(PeerReply::Ok)
            }
            PeerRequest::Read { rv, offset, len } => {
                let ld = self.ld(rv)?.clone();
                self.check_range(&ld, offset, len)?;
                let _g = ld.io.lock().await;
                Ok(PeerReply::Data(ld.read_at(&self.name, offset, len)?))
            }
        }
    }

    fn check_range(&self, ld: &Ld, off: u64, len: u64) -> Result<()> {
        if len > crate::IO_BYTES_MAX {
            return Err(ArrayError::invalid(format!(
                "I/O of {len} bytes exceeds the {} byte limit per request",
                crate::IO_BYTES_MAX
            )));
        }
        if off
            .checked_add(len)
            .is_none_or(|end| end > ld.capacity_bytes)
        {
            return Err(ArrayError::invalid(format!(
                "range {off}+{len} is beyond LD {} capacity {}",
                ld.number, ld.capacity_bytes
            )));
        }
        Ok(())
    }

    async fn rv_write(self: &Arc<Self>, id: &PairId, off: u64, data: &[u8]) -> Result<()> {
        if id.kind() == PairKind::Ddr {
            // The MV io lock held by the caller excludes host I/O on a DDR RV.
            return self.ld(id.rv.ld)?.write_at(&self.name, off, data);
        }
        self.to_rv(
            &id.rv.array,
            PeerRequest::Write {
                rv: id.rv.ld,
                offset: off,
                data: data.to_vec(),
            },
        )
        .await
        .map(|_| ())
    }

    async fn rv_read(self: &Arc<Self>, id: &PairId, off: u64, len: u64) -> Result<Vec<u8>> {
        if id.kind() == PairKind::Ddr {
            return self.ld(id.rv.ld)?.read_at(&self.name, off, len);
        }
        match self
            .to_rv(
                &id.rv.array,
                PeerRequest::Read {
                    rv: id.rv.ld,
                    offset: off,
                    len,
                },
            )
            .await?
        {
            PeerReply::Data(d) if d.len() as u64 == len => Ok(d),
            other => Err(ArrayError::OutcomeUnknown {
                op: "replication read".into(),
                detail: format!("peer answered {other:?}"),
            }),
        }
    }

    async fn push_access(self: &Arc<Self>, slot: &PairSlot) {
        // The access is read under the push lock, so the last push carries the newest state.
        let _ordered = slot.access_push.lock().await;
        let (id, access) = {
            let r = lock(&slot.rec);
            (r.id.clone(), r.state.rv_access)
        };
        let req = PeerRequest::SetAccess {
            rv: id.rv.ld,
            mv: id.mv.clone(),
            access,
        };
        if let Err(e) = self.to_rv(&id.rv.array, req).await {
            // Re-pushed when the link comes back (LinkUp) or at the next operation.
            tracing::warn!(pair = %id, error = %e, "could not set RV access on the RV's array");
        }
    }

    async fn take_rv_dirty(self: &Arc<Self>, id: &PairId, blocks: u64) -> Result<Bitmap> {
        let req = PeerRequest::TakeDirty {
            rv: id.rv.ld,
            mv: id.mv.clone(),
        };
        let mut b = Bitmap::new(blocks);
        match self.to_rv(&id.rv.array, req).await? {
            PeerReply::Dirty(v) => {
                for i in v {
                    b.set(i);
                }
                Ok(b)
            }
            other => Err(ArrayError::OutcomeUnknown {
                op: "take RV differences".into(),
                detail: format!("peer answered {other:?}"),
            }),
        }
    }

    /// Reacts to an error of a copy to/from the RV: a link fault suspends the pair, an LD
    /// failure separates it (fault). Returns true when the state changed.
    fn on_copy_error(&self, slot: &PairSlot, e: &ArrayError) -> Option<&'static str> {
        let mut r = lock(&slot.rec);
        match e {
            ArrayError::Unreachable { .. } if r.id.kind() == PairKind::Rdr => r
                .enter_abnormal_suspend()
                .then_some("link fault: abnormal suspend"),
            ArrayError::DeviceFailed { .. } | ArrayError::Io { .. } => {
                r.enter_fault();
                Some("copy fault: failure separation")
            }
            _ => None,
        }
    }

    async fn after_copy_error(self: &Arc<Self>, slot: &PairSlot, e: &ArrayError) {
        if let Some(reason) = self.on_copy_error(slot, e) {
            tracing::warn!(array = %self.name, error = %e, "{reason}");
            let _ = self.persist_pair_durable(slot).await;
            let (id, st) = {
                let r = lock(&slot.rec);
                (r.id.clone(), r.state)
            };
            if st.sync == SyncState::Fault {
                self.push_access(slot).await;
            }
            self.emit(&id, Some(st), reason);
        }
    }

    // ---- copy engine -----------------------------------------------------------------------

    fn start_engine(this: &Arc<Self>, slot: &Arc<PairSlot>) {
        let h = tokio::spawn(Inner::engine(this.clone(), slot.clone()));
        *lock(&slot.engine) = Some(h);
    }

    /// Copies one run between the MV and the RV; the caller holds the MV's I/O lock. A DDR run
    /// goes file to file on a blocking thread (it can take milliseconds; the runtime's workers
    /// stay free for host I/O on other LDs); an RDR run crosses the link.
    async fn copy_run(
        self: &Arc<Self>,
        id: &PairId,
        mv: &Arc<Ld>,
        dir: &Dir,
        off: u64,
        len: u64,
    ) -> Result<()> {
        if id.kind() == PairKind::Ddr {
            let rv = self.ld(id.rv.ld)?.clone();
            let (src, dst) = match dir {
                Dir::MvToRv => (mv.clone(), rv),
                Dir::RvToMv => (rv, mv.clone()),
            };
            let name = self.name.clone();
            return match tokio::task::spawn_blocking(move || src.copy_to(&dst, &name, off, len))
                .await
            {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(ArrayError::Unreachable {
                    target: format!("array {}", self.name),
                    detail: format!("copy thread did not finish: {e}"),
                }),
            };
        }
        match dir {
            Dir::MvToRv => {
                let d = mv.read_at(&self.name, off, len)?;
                self.rv_write(id, off, &d).await
            }
            Dir::RvToMv => {
                let d = self.rv_read(id, off, len).await?;
                mv.write_at(&self.name, off, &d)
            }
        }
    }

    /// Longest run in blocks and the pace (bytes/s, 0 = unpaced) for a copy's next run; read per
    /// run so `set_copy_pace` takes effect at once.
    fn run_shape(&self) -> (u64, u64) {
        let pace = self.pace_bytes_per_s.load(Ordering::SeqCst);
        let mut run_bytes = crate::COPY_RUN_BYTES_MAX;
        if pace > 0 {
            // Keep each paced run short so the pace is smooth and writes are not starved.
            run_bytes = run_bytes.min(pace / 10);
        }
        ((run_bytes / self.block_bytes).max(1), pace)
    }

    async fn engine(this: Arc<Self>, slot: Arc<PairSlot>) {
        let mut cursor = 0u64;
        let mut last_persist = tokio::time::Instant::now();
        loop {
            if slot.stop.load(Ordering::SeqCst) || this.closed.load(Ordering::SeqCst) {
                return;
            }
            let mut completed = None;
            let plan = {
                let mut r = lock(&slot.rec);
                let dir = match r.state.sync {
                    _ if r.state.abnormal_suspend => None,
                    SyncState::RstExec => Some(Dir::RvToMv),
                    SyncState::RplExec
                    | SyncState::RplSync
                    | SyncState::RstSync
                    | SyncState::SepExec => Some(Dir::MvToRv),
                    _ => None,
                };
                match dir {
                    None => None,
                    Some(d) => match r.copy.next_set(cursor) {
                        Some(b) => Some((d, b, r.id.clone())),
                        None => {
                            if r.complete_copy() {
                                completed = Some((r.id.clone(), r.state));
                            }
                            None
                        }
                    },
                }
            };
            if let Some((id, st)) = completed {
                if let Err(e) = this.persist_pair_durable(&slot).await {
                    tracing::error!(pair = %id, error = %e, "cannot persist pair state");
                }
                this.push_access(&slot).await;
                this.emit(&id, Some(st), "copy complete");
                continue;
            }
            let Some((dir, start, id)) = plan else {
                let _ =
                    tokio::time::timeout(crate::ENGINE_IDLE_RECHECK, slot.wake.notified()).await;
                continue;
            };
            let Ok(mv) = this.ld(id.mv.ld).cloned() else {
                return;
            };
            let (run_blocks_max, pace) = this.run_shape();
            let res = {
                let _g = mv.io.lock().await;
                // Re-read the run under the MV lock: a copy-before-write may have taken blocks.
                let n = {
                    let r = lock(&slot.rec);
                    let mut n = 0;
                    while n < run_blocks_max && r.copy.get(start + n) {
                        n += 1;
                    }
                    n
                };
                if n == 0 {
                    Ok(0)
                } else {
                    let off = start * this.block_bytes;
                    let len = n * this.block_bytes;
                    let r = this.copy_run(&id, &mv, &dir, off, len).await;
                    r.map(|_| {
                        let mut rec = lock(&slot.rec);
                        for b in start..start + n {
                            rec.copy.clear(b);
                        }
                        rec.copied_blocks += n;
                        n
                    })
                }
            };
            match res {
                Ok(n) => {
                    cursor = start + n.max(1);
                    if pace > 0 && n > 0 {
                        let secs = (n * this.block_bytes) as f64 / pace as f64;
                        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    }
                    if last_persist.elapsed() >= crate::COPY_PERSIST_INTERVAL {
                        // Clearing bits is persisted lazily: a lost clear only recopies a block.
                        let _ = this.persist_pair(&slot, false);
                        last_persist = tokio::time::Instant::now();
                    }
                }
                Err(e) => {
                    this.after_copy_error(&slot, &e).await;
                    let _ = tokio::time::timeout(crate::ENGINE_IDLE_RECHECK, slot.wake.notified())
                        .await;
                }
            }
        }
    }

    // ---- host I/O --------------------------------------------------------------------------

    fn check_host(&self, ld: &Ld, host: &str) -> Result<()> {
        if ld.hosts.iter().any(|h| h == "*" || h == host) {
            return Ok(());
        }
        Err(ArrayError::refused(
            Rule::AccessList,
            format!(
                "host {host:?} is not on the access list of LD {}:{}",
                self.name, ld.number
            ),
        ))
    }

    fn pairs_of_mv(&self, ld: u32) -> Vec<Arc<PairSlot>> {
        lock(&self.pairs)
            .iter()
            .filter(|(k, _)| k.mv.ld == ld)
            .map(|(_, v)| v.clone())
            .collect()
    }

    async fn host_read(
        self: &Arc<Self>,
        host: &str,
        n: u32,
        off: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        self.check_open()?;
        let ld = self.ld(n)?.clone();
        self.check_host(&ld, host)?;
        self.check_range(&ld, off, len)?;
        if let Some(c) = self.copy_slot(n) {
            return self.copy_host_read(&c, &ld, off, len).await;
        }
        let role = lock(&self.roles).get(&n).cloned();
        if let Some(role) = role {
            if !matches!(role.access, RvAccess::Rw | RvAccess::Ro) {
                return Err(ArrayError::refused(
                    Rule::RvAccess,
                    format!(
                        "LD {}:{n} is an RV with access {}: no reads",
                        self.name, role.access
                    ),
                ));
            }
            return self
                .rv_host_io(&ld, &role, off, len, None)
                .await
                .map(|d| d.unwrap_or_default());
        }
        let _g = ld.io.lock().await;
        let mut data = ld.read_at(&self.name, off, len)?;
        // During rst/exec the MV already shows the RV's content: pending blocks come from the RV.
        for slot in self.pairs_of_mv(n) {
            let (pending, id) = {
                let r = lock(&slot.rec);
                if r.state.sync != SyncState::RstExec {
                    continue;
                }
                let (b0, b1) = self.blocks(off, len);
                (
                    (b0..b1).filter(|&b| r.copy.get(b)).collect::<Vec<_>>(),
                    r.id.clone(),
                )
            };
            for b in pending {
                let (boff, blen) = (b * self.block_bytes, self.block_bytes);
                let src = self.rv_read(&id, boff, blen).await?;
                overlay(&mut data, off, &src, boff);
            }
        }
        self.parent_read_overlay(&ld, off, &mut data).await?;
        Ok(data)
    }

    /// Host I/O on an LD that is an RV. For a DDR RV in `sep/exec` the blocks still pending
    /// hold the separate instant's content on the MV: reads take them from there, writes first
    /// copy them over.
    async fn rv_host_io(
        self: &Arc<Self>,
        ld: &Arc<Ld>,
        role: &RoleRec,
        off: u64,
        len: u64,
        write: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>> {
        let ddr_slot = (role.mv.array == self.name)
            .then(|| {
                lock(&self.pairs)
                    .get(&PairId {
                        mv: role.mv.clone(),
                        rv: LdRef {
                            array: self.name.clone(),
                            ld: ld.number,
                        },
                    })
                    .cloned()
            })
            .flatten();
        let mv_ld = match &ddr_slot {
            Some(_) => Some(self.ld(role.mv.ld)?.clone()),
            None => None,
        };
        let _mg = match &mv_ld {
            Some(m) => Some(m.io.lock().await),
            None => None,
        };
        let _g = ld.io.lock().await;
        let (b0, b1) = self.blocks(off, len);
        let pending: Vec<u64> = match &ddr_slot {
            Some(s) => {
                let r = lock(&s.rec);
                if r.state.sync == SyncState::SepExec {
                    (b0..b1).filter(|&b| r.copy.get(b)).collect()
                } else {
                    vec![]
                }
            }
            None => vec![],
        };
        match write {
            None => {
                let mut data = ld.read_at(&self.name, off, len)?;
                if let Some(m) = &mv_ld {
                    for b in pending {
                        let src = m.read_at(&self.name, b * self.block_bytes, self.block_bytes)?;
                        overlay(&mut data, off, &src, b * self.block_bytes);
                    }
                }
                Ok(Some(data))
            }
            Some(data) => {
                if let (Some(m), Some(s)) = (&mv_ld, &ddr_slot) {
                    for b in pending {
                        let boff = b * self.block_bytes;
                        let src = m.read_at(&self.name, boff, self.block_bytes)?;
                        ld.write_at(&self.name, boff, &src)?;
                        let mut r = lock(&s.rec);
                        if r.copy.clear(b) {
                            r.copied_blocks += 1;
                        }
                    }
                }
                ld.write_at(&self.name, off, data)?;
                let new = {
                    let mut roles = lock(&self.roles);
                    roles
                        .get_mut(&ld.number)
                        .map(|r| r.dirty.set_range(b0, b1))
                        .unwrap_or(0)
                };
                if new > 0 {
                    self.persist_role(ld.number)?;
                    self.flush().await?;
                }
                if let Some(s) = &ddr_slot {
                    s.wake.notify_one();
                }
                Ok(None)
            }
        }
    }

    async fn host_write(self: &Arc<Self>, host: &str, n: u32, off: u64, data: &[u8]) -> Result<()> {
        self.check_open()?;
        let ld = self.ld(n)?.clone();
        self.check_host(&ld, host)?;
        let len = data.len() as u64;
        self.check_range(&ld, off, len)?;
        if let Some(c) = self.copy_slot(n) {
            return self.copy_host_write(&c, &ld, off, data).await;
        }
        let role = lock(&self.roles).get(&n).cloned();
        if let Some(role) = role {
            if role.access != RvAccess::Rw {
                return Err(ArrayError::refused(
                    Rule::RvAccess,
                    format!(
                        "LD {}:{n} is an RV with access {}: no writes",
                        self.name, role.access
                    ),
                ));
            }
            return self
                .rv_host_io(&ld, &role, off, len, Some(data))
                .await
                .map(|_| ());
        }
        let (b0, b1) = self.blocks(off, len);
        let _g = ld.io.lock().await;
        let slots = self.pairs_of_mv(n);
        // Before the write: keep images that must not see it.
        for slot in &slots {
            let (st, id, pending) = {
                let r = lock(&slot.rec);
                let p: Vec<u64> = (b0..b1).filter(|&b| r.copy.get(b)).collect();
                (r.state, r.id.clone(), p)
            };
            if st.abnormal_suspend || pending.is_empty() {
                continue;
            }
            let dir = match st.sync {
                // Copy-before-write: the RV gets the separate instant's block first.
                SyncState::SepExec => Dir::MvToRv,
                // Copy-on-write from the RV: the MV must hold the restored block before a
                // partial write lands on it.
                SyncState::RstExec => Dir::RvToMv,
                _ => continue,
            };
            let mut res: Result<()> = Ok(());
            for &b in &pending {
                let boff = b * self.block_bytes;
                // The same move the copy engine makes (we hold the MV's I/O lock, as it does).
                res = self.copy_run(&id, &ld, &dir, boff, self.block_bytes).await;
                if res.is_err() {
                    break;
                }
                let mut rec = lock(&slot.rec);
                if rec.copy.clear(b) {
                    rec.copied_blocks += 1;
                }
            }
            if let Err(e) = res {
                // The pair leaves its copy state (fault/suspend); the MV write goes on.
                self.after_copy_error(slot, &e).await;
            }
        }
        self.before_parent_write(&ld, off, len, None).await?;
        ld.write_at(&self.name, off, data)?;
        // After the write: mirror it or record it, per state and copy control.
        let mut need_flush = false;
        for slot in &slots {
            enum Then {
                Nothing,
                Mirror,
            }
            let then = {
                let mut r = lock(&slot.rec);
                let st = r.state;
                let backlog_max = self.backlog_max;
                match st.sync {
                    SyncState::Separated
                    | SyncState::Cancel
                    | SyncState::Fault
                    | SyncState::SepExec => {
                        need_flush |= r.mv_dirty.set_range(b0, b1) > 0;
                        Then::Nothing
                    }
                    SyncState::RstExec if st.activity == Activity::RestoreProtect => {
                        need_flush |= r.mv_dirty.set_range(b0, b1) > 0;
                        Then::Nothing
                    }
                    SyncState::RstExec => Then::Mirror,
                    _ if st.abnormal_suspend => {
                        need_flush |= r.copy.set_range(b0, b1) > 0;
                        Then::Nothing
                    }
                    SyncState::RplExec => {
                        need_flush |= r.copy.set_range(b0, b1) > 0;
                        Then::Nothing
                    }
                    SyncState::RplSync | SyncState::RstSync => match st.copy_control {
                        CopyControl::Sync => Then::Mirror,
                        CopyControl::Background => {
                            need_flush |= r.copy.set_range(b0, b1) > 0;
                            Then::Nothing
                        }
                        CopyControl::SemiSync => {
                            let new = (b0..b1).filter(|&b| !r.copy.get(b)).count() as u64;
                            if r.copy.count() + new <= backlog_max {
                                need_flush |= r.copy.set_range(b0, b1) > 0;
                                r.backlog_high_water_blocks =
                                    r.backlog_high_water_blocks.max(r.copy.count());
                                Then::Nothing
                            } else {
                                Then::Mirror
                            }
                        }
                    },
                }
            };
            match then {
                Then::Nothing => slot.wake.notify_one(),
                Then::Mirror => {
                    let id = lock(&slot.rec).id.clone();
                    if let Err(e) = self.rv_write(&id, off, data).await {
                        {
                            let mut r = lock(&slot.rec);
                            r.copy.set_range(b0, b1);
                        }
                        self.after_copy_error(slot, &e).await;
                        need_flush = true;
                    }
                }
            }
            if need_flush {
                self.persist_pair(slot, true)?;
            }
        }
        if need_flush {
            self.flush().await?;
        }
        Ok(())
    }

    // ---- control ---------------------------------------------------------------------------

    async fn pair_set(self: &Arc<Self>, id: &PairId) -> Result<PairInfo> {
        self.check_open()?;
        let _op = self.op_lock.lock().await;
        if id.mv.array != self.name {
            return Err(ArrayError::invalid(format!(
                "pair {id}: send it to the MV's array {}, this is {}",
                id.mv.array, self.name
            )));
        }
        let mv = self.ld(id.mv.ld)?.clone();
        self.check_pair_mv_vs_copies(id)?;
        if id.mv == id.rv {
            return Err(ArrayError::refused(
                Rule::OneRolePerLd,
                format!("{id}: MV and RV are the same LD"),
            ));
        }
        if lock(&self.pairs).contains_key(id) {
            return Err(ArrayError::refused(
                Rule::OneRolePerLd,
                format!("pair {id} is already set"),
            ));
        }
        if let Some(role) = lock(&self.roles).get(&id.mv.ld) {
            let ddr = role.mv.array == self.name || id.kind() == PairKind::Ddr;
            return Err(ArrayError::refused(
                if ddr {
                    Rule::SingleDdrLayer
                } else {
                    Rule::OneRolePerLd
                },
                format!("MV {} is already the RV of {}", id.mv, role.mv),
            ));
        }
        let existing: Vec<PairId> = lock(&self.pairs)
            .keys()
            .filter(|p| p.mv == id.mv)
            .cloned()
            .collect();
        if existing.len() as u32 >= crate::MAX_RVS_PER_MV {
            return Err(ArrayError::refused(
                Rule::MaxRvsPerMv,
                format!("MV {} already has {} RVs", id.mv, existing.len()),
            ));
        }
        let ddr = existing
            .iter()
            .filter(|p| p.kind() == PairKind::Ddr)
            .count() as u32;
        if id.kind() == PairKind::Ddr && ddr >= crate::MAX_DDR_RVS_PER_MV {
            return Err(ArrayError::refused(
                Rule::MaxDdrRvsPerMv,
                format!("MV {} already has {ddr} DDR RVs", id.mv),
            ));
        }
        let mut arrays: std::collections::BTreeSet<&str> =
            existing.iter().map(|p| p.rv.array.as_str()).collect();
        arrays.insert(&id.rv.array);
        if arrays.len() as u32 > crate::MAX_RV_ARRAYS_PER_MV {
            return Err(ArrayError::refused(
                Rule::MaxArraysPerMv,
                format!("RVs of MV {} would span arrays {arrays:?}", id.mv),
            ));
        }
        if id.kind() == PairKind::Rdr {
            self.peer_of(&id.rv.array)?;
        }
        self.to_rv(
            &id.rv.array,
            PeerRequest::Claim {
                rv: id.rv.ld,
                mv: id.mv.clone(),
                capacity_bytes: mv.capacity_bytes,
                format: mv.format.clone(),
            },
        )
        .await?;
        let slot = Arc::new(PairSlot {
            rec: Mutex::new(PairRec::new(
                id.clone(),
                mv.capacity_bytes / self.block_bytes,
            )),
            wake: Notify::new(),
            stop: AtomicBool::new(false),
            engine: Mutex::new(None),
            access_push: tokio::sync::Mutex::new(()),
        });
        lock(&self.pairs).insert(id.clone(), slot.clone());
        self.persist_pair_durable(&slot).await?;
        Inner::start_engine(self, &slot);
        let info = self.info_of(&slot);
        self.emit(id, Some(info.state), "pair set");
        Ok(info)
    }

    async fn pair_unset(self: &Arc<Self>, id: &PairId) -> Result<()> {
        self.check_open()?;
        let _op = self.op_lock.lock().await;
        let slot = self.slot(id)?;
        {
            let r = lock(&slot.rec);
            if !r.is_separated_family() {
                return Err(ArrayError::refused(
                    Rule::UnsetOnlyWhenSeparated,
                    format!("pair {id} is {}", r.state),
                ));
            }
        }
        self.to_rv(
            &id.rv.array,
            PeerRequest::Release {
                rv: id.rv.ld,
                mv: id.mv.clone(),
            },
        )
        .await?;
        lock(&self.pairs).remove(id);
        slot.stop.store(true, Ordering::SeqCst);
        slot.wake.notify_one();
        self.pairs_tree
            .remove(id.to_string())
            .map_err(|e| self.meta_err(e))?;
        self.flush().await?;
        self.emit(id, None, "pair unset");
        Ok(())
    }

    async fn operate(
        self: &Arc<Self>,
        id: &PairId,
        what: &str,
        needs_rv_dirty: bool,
        f: impl Fn(&mut PairRec, &Bitmap) -> Result<()>,
    ) -> Result<PairInfo> {
        self.check_open()?;
        let _op = self.op_lock.lock().await;
        let slot = self.slot(id)?;
        self.check_pair_op_vs_copies(id, what)?;
        let blocks = lock(&slot.rec).copy.len();
        // Dry run first so a refused operation does not consume the RV's difference record.
        {
            let mut trial = lock(&slot.rec).clone();
            f(&mut trial, &Bitmap::new(blocks))?;
        }
        let resuming = lock(&slot.rec).state.abnormal_suspend;
        let rv_dirty = if needs_rv_dirty && !resuming {
            self.take_rv_dirty(id, blocks).await?
        } else {
            if needs_rv_dirty && id.kind() == PairKind::Rdr {
                // Resuming needs the link; say so instead of resuming into another suspend.
                self.peer_of(&id.rv.array)?.1.cross(&id.rv.array, 0).await?;
            }
            Bitmap::new(blocks)
        };
        {
            let mut r = lock(&slot.rec);
            f(&mut r, &rv_dirty)?;
        }
        self.persist_pair_durable(&slot).await?;
        self.push_access(&slot).await;
        slot.wake.notify_one();
        let info = self.info_of(&slot);
        self.emit(id, Some(info.state), what);
        Ok(info)
    }

    async fn wait(
        self: &Arc<Self>,
        id: &PairId,
        cond: WaitCondition,
        timeout_ms: u64,
    ) -> Result<PairInfo> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut rx = self.events.subscribe();
        loop {
            let slot = self.slot(id)?;
            let info = self.info_of(&slot);
            match wait_reached(cond, &info.state) {
                Some(true) => {
                    // The engine makes a state visible before it has pushed the matching RV
                    // access; a waiter that returned then could find the RV still `nr`. Pushing
                    // here (ordered with the engine's push) means a reached state is in force.
                    self.push_access(&slot).await;
                    return Ok(info);
                }
                Some(false) => {
                    return Err(ArrayError::WrongState {
                        pair: id.to_string(),
                        state: info.state.to_string(),
                        op: format!("wait {cond:?}"),
                        needs: "a state from which the condition is reachable".into(),
                    });
                }
                None => {}
            }
            tokio::select! {
                _ = rx.recv() => {}
                _ = tokio::time::sleep(crate::WAIT_RECHECK) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ArrayError::Timeout { what: format!("{id} to reach {cond:?}"), timeout_ms });
                }
            }
        }
    }

    async fn fault(self: &Arc<Self>, f: &Fault) -> Result<()> {
        match f {
            Fault::LdFailure { ld } => self.ld(*ld)?.failed.store(true, Ordering::SeqCst),
            Fault::LdRepair { ld } => self.ld(*ld)?.failed.store(false, Ordering::SeqCst),
            Fault::LinkDown { peer } => {
                self.peer_of(peer)?.1.up.store(false, Ordering::SeqCst);
                let slots: Vec<_> = lock(&self.pairs)
                    .iter()
                    .filter(|(k, _)| &k.rv.array == peer)
                    .map(|(_, v)| v.clone())
                    .collect();
                for s in slots {
                    let changed = lock(&s.rec).enter_abnormal_suspend();
                    if changed {
                        self.persist_pair_durable(&s).await?;
                        let (id, st) = {
                            let r = lock(&s.rec);
                            (r.id.clone(), r.state)
                        };
                        self.emit(&id, Some(st), "link fault: abnormal suspend");
                    }
                }
            }
            Fault::LinkUp { peer } => {
                self.peer_of(peer)?.1.up.store(true, Ordering::SeqCst);
                let slots: Vec<_> = lock(&self.pairs)
                    .iter()
                    .filter(|(k, _)| &k.rv.array == peer)
                    .map(|(_, v)| v.clone())
                    .collect();
                for s in slots {
                    self.push_access(&s).await;
                }
            }
        }
        Ok(())
    }
}

/// Copies `src` (which starts at absolute offset `src_off`) over the overlapping part of `dst`
/// (which starts at `dst_off`).
fn overlay(dst: &mut [u8], dst_off: u64, src: &[u8], src_off: u64) {
    let lo = dst_off.max(src_off);
    let hi = (dst_off + dst.len() as u64).min(src_off + src.len() as u64);
    if lo >= hi {
        return;
    }
    let d = (lo - dst_off) as usize..(hi - dst_off) as usize;
    let s = (lo - src_off) as usize..(hi - src_off) as usize;
    dst[d].copy_from_slice(&src[s]);
}

#[async_trait::async_trait]
impl Array for SoftwareArray {
    async fn info(&self) -> Result<ArrayInfo> {
        let i = &self.inner;
        Ok(ArrayInfo {
            name: i.name.clone(),
            block_bytes: i.block_bytes,
            links: i
                .peers
                .iter()
                .map(|(n, (_, l))| LinkInfo {
                    peer: n.clone(),
                    latency_ms: l.latency_ms.load(Ordering::Relaxed),
                    bandwidth_bytes_per_s: l.bandwidth_bytes_per_s.load(Ordering::Relaxed),
                    up: l.up.load(Ordering::SeqCst),
                })
                .collect(),
        })
    }

    async fn ld_list(&self) -> Result<Vec<LdInfo>> {
        let i = &self.inner;
        let roles = lock(&i.roles).clone();
        let pairs: Vec<PairId> = lock(&i.pairs).keys().cloned().collect();
        Ok(i.lds
            .values()
            .map(|l| LdInfo {
                number: l.number,
                name: l.name.clone(),
                capacity_bytes: l.capacity_bytes,
                format: l.format.clone(),
                hosts: l.hosts.clone(),
                role: match roles.get(&l.number) {
                    Some(r) => LdRole::Rv {
                        mv: r.mv.clone(),
                        access: r.access,
                    },
                    None => {
                        let rvs = pairs.iter().filter(|p| p.mv.ld == l.number).count() as u32;
                        if rvs > 0 {
                            LdRole::Mv { rvs }
                        } else {
                            LdRole::None
                        }
                    }
                },
                failed: l.failed.load(Ordering::SeqCst),
                copy_role: i.copy_role_of(l.number),
            })
            .collect())
    }

    async fn pair_set(&self, id: &PairId) -> Result<PairInfo> {
        self.inner.pair_set(id).await
    }

    async fn pair_unset(&self, id: &PairId) -> Result<()> {
        self.inner.pair_unset(id).await
    }

    async fn pair_list(&self) -> Result<Vec<PairInfo>> {
        let slots: Vec<_> = lock(&self.inner.pairs).values().cloned().collect();
        Ok(slots.iter().map(|s| self.inner.info_of(s)).collect())
    }

    async fn pair_query(&self, id: &PairId) -> Result<PairInfo> {
        let s = self.inner.slot(id)?;
        Ok(self.inner.info_of(&s))
    }

    async fn replicate(&self, id: &PairId, o: &ReplicateOptions) -> Result<PairInfo> {
        let info = self
            .inner
            .operate(id, "replicate", true, |r, d| r.begin_replicate(o, d))
            .await?;
        match o.wait_timeout_ms {
            Some(t) => self.inner.wait(id, WaitCondition::Sync, t).await,
            None => Ok(info),
        }
    }

    async fn separate(&self, id: &PairId, o: &SeparateOptions) -> Result<PairInfo> {
        let info = self
            .inner
            .operate(id, "separate", false, |r, _| r.begin_separate(o))
            .await?;
        match o.wait_timeout_ms {
            Some(t) => self.inner.wait(id, WaitCondition::Sep, t).await,
            None => Ok(info),
        }
    }

    async fn restore(&self, id: &PairId, o: &RestoreOptions) -> Result<PairInfo> {
        let info = self
            .inner
            .operate(id, "restore", true, |r, d| r.begin_restore(o, d))
            .await?;
        match o.wait_timeout_ms {
            Some(t) => self.inner.wait(id, WaitCondition::Done, t).await,
            None => Ok(info),
        }
    }

    async fn forced_separate(&self, id: &PairId) -> Result<PairInfo> {
        self.inner
            .operate(id, "forced separate", false, |r, _| r.enter_cancel())
            .await
    }

    async fn wait(&self, id: &PairId, cond: WaitCondition, timeout_ms: u64) -> Result<PairInfo> {
        self.inner.wait(id, cond, timeout_ms).await
    }

    async fn read(&self, host: &str, ld: u32, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.host_read(host, ld, offset, len).await
    }

    async fn write(&self, host: &str, ld: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.inner.host_write(host, ld, offset, data).await
    }

    async fn inject_fault(&self, fault: &Fault) -> Result<()> {
        self.inner.fault(fault).await
    }

    async fn events(&self) -> Result<BoxStream<'static, ArrayEvent>> {
        Ok(broadcast_stream(self.inner.events.subscribe()))
    }

    async fn peer(&self, req: PeerRequest) -> Result<PeerReply> {
        self.inner.peer_op(req).await
    }

    async fn copy_create(&self, parent: u32, copy: u32, attached: bool) -> Result<CopyInfo> {
        self.inner.copy_create(parent, copy, attached).await
    }

    async fn copy_attach(&self, copy: u32) -> Result<CopyInfo> {
        self.inner.copy_attach(copy).await
    }

    async fn copy_detach(&self, copy: u32) -> Result<CopyInfo> {
        self.inner.copy_detach(copy).await
    }

    async fn copy_delete(&self, copy: u32) -> Result<()> {
        self.inner.copy_delete(copy).await
    }

    async fn copy_to_parent(&self, copy: u32, wait_timeout_ms: Option<u64>) -> Result<CopyInfo> {
        self.inner.copy_to_parent(copy, wait_timeout_ms).await
    }

    async fn copy_list(&self) -> Result<Vec<CopyInfo>> {
        Ok(self.inner.copy_list())
    }
}

/// Turns a broadcast receiver into a stream; a slow reader skips what it missed.
pub(crate) fn broadcast_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> BoxStream<'static, T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(v) => return Some((v, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }))
}
