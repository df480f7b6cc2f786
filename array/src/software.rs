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
use crate::pair::{PairRec, WriteThen, wait_reached};
use crate::types::*;

mod audit;
mod control;
mod copies;
mod copies_io;
mod engine;
mod host_io;
mod ld;
mod peer;

pub use audit::{AUDIT_MV_WRITE_SAMPLE_MS, AUDIT_RV_HEAD_BYTES_MAX, AuditEvent, AuditLine};
use engine::Dir;
use host_io::overlay;
use ld::Ld;
pub use peer::{Link, PeerHandle};

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
    /// How long every separate waits before it is admitted (`Fault::SeparateDelay`; 0: none).
    separate_delay_ms: AtomicU64,
    /// When the array-wide copy schedule has room for the next run (see `pace`).
    pace_next: Mutex<tokio::time::Instant>,
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
    /// The audit log (`audit_log = true`), or nothing.
    audit: audit::Audit,
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
        let unusable = |path: &std::path::Path, e: std::io::Error| ArrayError::CannotStart {
            what: format!("data dir {}", cfg.data_dir.display()),
            detail: format!("{}: {e}", path.display()),
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| unusable(&cfg.data_dir, e))?;
        let mut lds = BTreeMap::new();
        for l in &cfg.lds {
            let path = cfg.data_dir.join(format!("ld-{}.img", l.number));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| unusable(&path, e))?;
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
                    audit_sampled_ms: AtomicU64::new(0),
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
            let mut rec: PairRec =
                serde_json::from_slice(&v).map_err(|e| corrupt(format!("pairs/{key}: {e}")))?;
            let Some(l) = lds.get(&rec.id.mv.ld) else {
                return Err(corrupt(format!("pairs/{key}: MV LD is not in the config")));
            };
            if rec.intent.len() == 0 {
                rec.intent = Bitmap::new(blocks_of(l));
            }
            for b in [&rec.copy, &rec.mv_dirty, &rec.intent] {
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
        let audit = if cfg.audit_log {
            audit::Audit::open(
                cfg.data_dir.join("audit.log"),
                cfg.audit_mv_write_sample_ms,
                cfg.audit_rv_head_bytes,
            )?
        } else {
            audit::Audit::disabled()
        };
        let inner = Arc::new(Inner {
            name: cfg.name.clone(),
            block_bytes: cfg.block_bytes,
            pace_bytes_per_s: AtomicU64::new(cfg.copy_pace_bytes_per_s),
            pace_next: Mutex::new(tokio::time::Instant::now()),
            separate_delay_ms: AtomicU64::new(0),
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
            audit,
        });
        let slots: Vec<_> = lock(&inner.pairs).values().cloned().collect();
        for s in &slots {
            // A crash may have cut mirrored writes short: their blocks become differences,
            // durable before any host write can land (write intent).
            if lock(&s.rec).recover_intent() {
                inner.persist_pair_durable(s).await?;
            }
        }
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

    /// Changes the array's copy pace from the next run on (the config's `copy_pace_bytes_per_s`,
    /// shared by all pairs and business copies of the array together; 0 copies as fast as the
    /// disk goes). Not persisted: a restart takes the configured pace again.
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

    /// Makes the metadata written so far durable, bounded by [`crate::METADATA_FLUSH_TIMEOUT`].
    /// sled 0.34's `flush_async` can leave concurrent callers never woken (sled issues #1241
    /// and #1308: eight pairs separating at once hung here), so its blocking `flush` runs on
    /// the blocking pool, which is safe from many tasks at once and batches them.
    async fn flush(&self) -> Result<()> {
        let db = self.db.clone();
        let flushed = tokio::time::timeout(
            crate::METADATA_FLUSH_TIMEOUT,
            tokio::task::spawn_blocking(move || db.flush()),
        )
        .await
        .map_err(|_| ArrayError::Timeout {
            what: format!("flushing the metadata in {}", self.db_path.display()),
            timeout_ms: crate::METADATA_FLUSH_TIMEOUT.as_millis() as u64,
        })?
        .map_err(|e| self.meta_err(format!("the flush task failed: {e}")))?;
        flushed.map_err(|e| self.meta_err(e))?;
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
        self.emit_fenced(id, state, reason, None)
    }

    /// [`Inner::emit`] for an operation that came with `fence` (its audit line names it).
    fn emit_fenced(
        &self,
        id: &PairId,
        state: Option<PairState>,
        reason: &str,
        fence: Option<FenceToken>,
    ) {
        self.audit.record(audit::AuditEvent::Pair {
            pair: id.clone(),
            state,
            reason: reason.into(),
            fence,
        });
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
        self.replicate_fenced(id, o, None).await
    }

    async fn separate(&self, id: &PairId, o: &SeparateOptions) -> Result<PairInfo> {
        self.separate_fenced(id, o, None).await
    }

    async fn fenced(&self, id: &PairId, fence: &FenceToken, op: &FencedOp) -> Result<PairInfo> {
        match op {
            FencedOp::Replicate(o) => self.replicate_fenced(id, o, Some(fence)).await,
            FencedOp::Separate(o) => self.separate_fenced(id, o, Some(fence)).await,
        }
    }

    async fn restore(&self, id: &PairId, o: &RestoreOptions) -> Result<PairInfo> {
        crate::check_wait_ms(o.wait_timeout_ms)?;
        let info = self
            .inner
            .operate(id, "restore", None, true, {
                let o = o.clone();
                move |r, d| r.begin_restore(&o, d)
            })
            .await?;
        match o.wait_timeout_ms {
            Some(t) => self.inner.wait(id, WaitCondition::Done, t).await,
            None => Ok(info),
        }
    }

    async fn forced_separate(&self, id: &PairId) -> Result<PairInfo> {
        self.inner
            .operate(id, "forced separate", None, false, |r, _| r.enter_cancel())
            .await
    }

    async fn wait(&self, id: &PairId, cond: WaitCondition, timeout_ms: u64) -> Result<PairInfo> {
        crate::check_wait_ms(Some(timeout_ms))?;
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
        crate::check_wait_ms(wait_timeout_ms)?;
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

impl SoftwareArray {
    async fn replicate_fenced(
        &self,
        id: &PairId,
        o: &ReplicateOptions,
        fence: Option<&FenceToken>,
    ) -> Result<PairInfo> {
        crate::check_wait_ms(o.wait_timeout_ms)?;
        let info = self
            .inner
            .operate(id, "replicate", fence.copied(), true, {
                let (o, fence) = (o.clone(), fence.copied());
                move |r, d| {
                    r.admit(fence.as_ref())?;
                    r.begin_replicate(&o, d)
                }
            })
            .await?;
        match o.wait_timeout_ms {
            Some(t) => self.inner.wait(id, WaitCondition::Sync, t).await,
            None => Ok(info),
        }
    }

    async fn separate_fenced(
        &self,
        id: &PairId,
        o: &SeparateOptions,
        fence: Option<&FenceToken>,
    ) -> Result<PairInfo> {
        crate::check_wait_ms(o.wait_timeout_ms)?;
        let delay_ms = self.inner.separate_delay_ms.load(Ordering::SeqCst);
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let info = self
            .inner
            .operate(id, "separate", fence.copied(), false, {
                let (o, fence) = (o.clone(), fence.copied());
                move |r, _| {
                    r.admit(fence.as_ref())?;
                    r.begin_separate(&o)
                }
            })
            .await?;
        match o.wait_timeout_ms {
            Some(t) => self.inner.wait(id, WaitCondition::Sep, t).await,
            None => Ok(info),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many tasks flushing the metadata at once all finish. With sled's `flush_async` they
    /// hung at once (never woken), which left eight pairs separating at once without answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_metadata_flushes_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArrayConfig {
            name: "A".into(),
            data_dir: dir.path().join("A"),
            listen: "127.0.0.1:0".into(),
            block_bytes: crate::DEFAULT_BLOCK_BYTES,
            copy_pace_bytes_per_s: 0,
            semi_sync_backlog_blocks_max: 4,
            lds: vec![],
            peers: vec![],
            audit_log: false,
            audit_mv_write_sample_ms: crate::AUDIT_MV_WRITE_SAMPLE_MS,
            audit_rv_head_bytes: 0,
        };
        let array = SoftwareArray::open(&cfg, vec![]).await.unwrap();
        for round in 0..20u32 {
            let tasks: Vec<_> = (0..16u32)
                .map(|t| {
                    let inner = array.inner.clone();
                    tokio::spawn(async move {
                        inner
                            .db
                            .insert(format!("test-{round}-{t}"), vec![0u8; 200])
                            .unwrap();
                        inner.flush().await
                    })
                })
                .collect();
            let all = async {
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(20), all)
                .await
                .unwrap_or_else(|_| {
                    panic!("round {round}: 16 concurrent metadata flushes did not all finish within 20 s")
                });
        }
    }
}
