//! Point-in-time business copies on the software array (the HP Business Copy model).
//!
//! A copy record lives in sled (`copies`, keyed by the copy LD) with three block bitmaps:
//!
//! - `pending`: copy blocks whose content is still the parent's on-disk block. The parent has
//!   not been written there since the point in time, so reading the parent *is* reading the
//!   copy. A parent write to such a block first copies the old block to the copy LD
//!   (copy-before-write); the background fill empties the bitmap at the array's copy pace.
//! - `differ`: blocks written on either side since the point in time; what a copy to the
//!   parent has to move. Disjoint from `pending`.
//! - `to_parent`: blocks still to move copy→parent while copying to the parent. Parent reads
//!   of them come from the copy LD; a parent write first pulls the block in. Disjoint from
//!   `pending`.
//!
//! Durability works the other way round from pairs for `pending` and `to_parent`: a *cleared*
//! bit tells readers the data is now elsewhere, so a clear must be on disk before the write
//! that relies on it lands (parent write after copy-before-write) or is acknowledged (copy
//! write). The background tasks clear bits lazily and remember them in `unsynced`; a write to
//! such a block flushes the record first. A bit that
//! becomes set in `differ` is flushed before the write that set it lands.
//!
//! Locks: an operation that touches several LDs takes the parent's I/O lock first, then copy
//! locks. Every path that holds two copy locks at once holds the parent's lock too, so the
//! order between copies never matters.

use super::*;

/// Persisted state of one business copy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct CopyRec {
    pub(super) parent: u32,
    pub(super) copy: u32,
    pub(super) state: CopyState,
    pit_unix_ms: Option<u64>,
    pub(super) pending: Bitmap,
    pub(super) differ: Bitmap,
    pub(super) to_parent: Bitmap,
    pub(super) last_op: Option<LastOperation>,
    /// Blocks whose `pending`/`to_parent` bit the background copy cleared and no flush has
    /// covered yet. Memory only: after a restart those bits are simply set again.
    #[serde(skip)]
    pub(super) unsynced: Option<Bitmap>,
}

impl CopyRec {
    pub(super) fn lazily_cleared(&mut self, b: u64) {
        let n = self.pending.len();
        self.unsynced.get_or_insert_with(|| Bitmap::new(n)).set(b);
    }

    /// Whether a write to `[b0, b1)` relies on a clear that is not on disk yet.
    pub(super) fn relies_on_unsynced(&self, b0: u64, b1: u64) -> bool {
        self.unsynced
            .as_ref()
            .is_some_and(|u| (b0..b1).any(|b| u.get(b)))
    }

    pub(super) fn start_op(&mut self, op: &str, ended: bool) {
        let now = now_unix_ms();
        self.last_op = Some(LastOperation {
            op: op.into(),
            started_unix_ms: now,
            ended_unix_ms: ended.then_some(now),
        });
    }

    pub(super) fn end_op(&mut self) {
        if let Some(l) = self.last_op.as_mut() {
            l.ended_unix_ms.get_or_insert(now_unix_ms());
        }
    }

    pub(super) fn discard(&mut self) {
        self.pending.clear_all();
        self.differ.clear_all();
        self.to_parent.clear_all();
        self.pit_unix_ms = None;
        self.state = CopyState::Detached;
    }

    /// New point in time: every block reads from the parent until copied.
    fn snapshot(&mut self) {
        let n = self.pending.len();
        self.pending.set_range(0, n);
        self.differ.clear_all();
        self.to_parent.clear_all();
        self.pit_unix_ms = Some(now_unix_ms());
        self.state = CopyState::Attached;
    }
}

fn not_copying_back(state: CopyState) -> bool {
    state != CopyState::CopyingToParent
}

/// Reason of the event a delete emits (its state is `None`).
const COPY_DELETED: &str = "deleted";

pub(super) struct CopySlot {
    pub(super) rec: Mutex<CopyRec>,
    pub(super) wake: Notify,
    pub(super) stop: AtomicBool,
    pub(super) engine: Mutex<Option<tokio::task::JoinHandle<()>>>,
    changed: tokio::sync::watch::Sender<()>,
}

impl CopySlot {
    fn new(rec: CopyRec) -> Arc<CopySlot> {
        Arc::new(CopySlot {
            rec: Mutex::new(rec),
            wake: Notify::new(),
            stop: AtomicBool::new(false),
            engine: Mutex::new(None),
            changed: tokio::sync::watch::channel(()).0,
        })
    }
}

fn wrong(r: &CopyRec, array: &str, op: &str, needs: &str) -> ArrayError {
    ArrayError::CopyWrongState {
        copy: format!("{array}:{}", r.copy),
        state: r.state.to_string(),
        op: op.into(),
        needs: needs.into(),
    }
}

/// Reads and checks every copy record; anything that does not fit the configured LDs or the
/// pair roles is corrupt metadata.
pub(super) fn load(
    tree: &sled::Tree,
    lds: &BTreeMap<u32, Arc<Ld>>,
    block_bytes: u64,
    rvs: &BTreeMap<u32, RoleRec>,
    mvs: &std::collections::BTreeSet<u32>,
    corrupt: impl Fn(String) -> ArrayError,
) -> Result<BTreeMap<u32, Arc<CopySlot>>> {
    let mut recs: BTreeMap<u32, CopyRec> = BTreeMap::new();
    for kv in tree.iter() {
        let (k, v) = kv.map_err(|e| corrupt(e.to_string()))?;
        let key = String::from_utf8_lossy(&k).to_string();
        let bad = |d: String| corrupt(format!("copies/{key}: {d}"));
        let rec: CopyRec = serde_json::from_slice(&v).map_err(|e| bad(e.to_string()))?;
        if key.parse::<u32>().ok() != Some(rec.copy) {
            return Err(bad(format!("key does not name copy LD {}", rec.copy)));
        }
        let (Some(p), Some(c)) = (lds.get(&rec.parent), lds.get(&rec.copy)) else {
            return Err(bad("parent or copy LD is not in the config".into()));
        };
        if rec.parent == rec.copy || p.capacity_bytes != c.capacity_bytes {
            return Err(bad(
                "parent and copy are the same LD or differ in size".into()
            ));
        }
        let blocks = p.capacity_bytes / block_bytes;
        for b in [&rec.pending, &rec.differ, &rec.to_parent] {
            b.validate(blocks).map_err(&bad)?;
        }
        let empty = rec.pending.count() + rec.differ.count() + rec.to_parent.count() == 0;
        if rec.state == CopyState::Detached && !empty {
            return Err(bad("detached copy with block bitmaps".into()));
        }
        for ld in [rec.parent, rec.copy] {
            if rvs.contains_key(&ld) || (ld == rec.copy && mvs.contains(&ld)) {
                return Err(bad(format!("LD {ld} also has a pair role")));
            }
        }
        recs.insert(rec.copy, rec);
    }
    for r in recs.values() {
        if recs.contains_key(&r.parent) {
            return Err(corrupt(format!(
                "copies/{}: parent {} is itself a copy",
                r.copy, r.parent
            )));
        }
    }
    Ok(recs
        .into_iter()
        .map(|(k, r)| (k, CopySlot::new(r)))
        .collect())
}

impl Inner {
    pub(super) fn copy_slot(&self, ld: u32) -> Option<Arc<CopySlot>> {
        lock(&self.copies).get(&ld).cloned()
    }

    fn copy_slot_or_404(&self, ld: u32) -> Result<Arc<CopySlot>> {
        self.ld(ld)?;
        self.copy_slot(ld)
            .ok_or_else(|| ArrayError::not_found(format!("business copy on LD {}:{ld}", self.name)))
    }

    pub(super) fn copies_of_parent(&self, parent: u32) -> Vec<Arc<CopySlot>> {
        lock(&self.copies)
            .values()
            .filter(|s| lock(&s.rec).parent == parent)
            .cloned()
            .collect()
    }

    pub(super) fn copy_role_of(&self, ld: u32) -> CopyRole {
        if let Some(s) = self.copy_slot(ld) {
            let r = lock(&s.rec);
            return CopyRole::Copy {
                parent: r.parent,
                state: r.state,
            };
        }
        match self.copies_of_parent(ld).len() as u32 {
            0 => CopyRole::None,
            copies => CopyRole::Parent { copies },
        }
    }

    fn copy_info(&self, r: &CopyRec) -> CopyInfo {
        let at = |ld| LdRef {
            array: self.name.clone(),
            ld,
        };
        CopyInfo {
            copy: at(r.copy),
            parent: at(r.parent),
            state: r.state,
            point_in_time_unix_ms: r.pit_unix_ms,
            parent_ref_blocks: r.pending.count(),
            to_parent_blocks: r.to_parent.count(),
            differ_blocks: r.differ.count(),
            block_bytes: self.block_bytes,
            last_op: r.last_op.clone(),
        }
    }

    pub(super) fn persist_copy(&self, slot: &CopySlot) -> Result<()> {
        let rec = lock(&slot.rec).clone();
        self.put_record(&self.copies_tree, rec.copy.to_string(), &rec)
    }

    pub(super) async fn persist_copy_durable(&self, slot: &CopySlot) -> Result<()> {
        self.persist_copy(slot)?;
        self.flush().await?;
        // Every caller holds the parent's I/O lock or is the background copy itself, so no
        // bit was cleared between the record's snapshot and the flush.
        lock(&slot.rec).unsynced = None;
        Ok(())
    }

    /// The copy's parent, if `op` is allowed in the copy's current state; else the wrong-state
    /// error naming that state and what `op` needs.
    fn parent_if(
        &self,
        slot: &CopySlot,
        op: &str,
        allowed: fn(CopyState) -> bool,
        needs: &str,
    ) -> Result<u32> {
        let r = lock(&slot.rec);
        if allowed(r.state) {
            Ok(r.parent)
        } else {
            Err(wrong(&r, &self.name, op, needs))
        }
    }

    /// Reports a state change: log, event stream, and the slot's own waiters.
    pub(super) fn copy_changed(&self, slot: &CopySlot, what: &str) {
        let info = self.copy_info(&lock(&slot.rec));
        tracing::info!(array = %self.name, copy = %info.copy, parent = %info.parent, state = %info.state, "business copy: {what}");
        // A deleted copy has no state any more; the event says so with `None`.
        let state = (what != COPY_DELETED).then_some(info.state);
        self.emit_copy(info.copy.ld, info.parent.ld, state, what);
        slot.changed.send_replace(());
    }

    /// Discards the copy LD's bytes: the file becomes sparse zeros again.
    fn discard_data(&self, ld: &Ld) -> Result<()> {
        ld.file
            .set_len(0)
            .and_then(|_| ld.file.set_len(ld.capacity_bytes))
            .map_err(|e| ArrayError::io(&ld.path, e))
    }

    // ---- rules shared with pairs -----------------------------------------------------------

    /// pair set: a business copy LD is never an MV.
    pub(super) fn check_pair_mv_vs_copies(&self, id: &PairId) -> Result<()> {
        if let Some(s) = self.copy_slot(id.mv.ld) {
            return Err(ArrayError::refused(
                Rule::OneRolePerLd,
                format!(
                    "MV {} is the business copy of LD {}",
                    id.mv,
                    lock(&s.rec).parent
                ),
            ));
        }
        Ok(())
    }

    /// RV claim: a business copy or a parent is never an RV. Called with `roles` locked.
    pub(super) fn check_rv_vs_copies(&self, rv: u32) -> Result<()> {
        if let Some(s) = self.copy_slot(rv) {
            return Err(ArrayError::refused(
                Rule::OneRolePerLd,
                format!(
                    "LD {}:{rv} is the business copy of LD {}",
                    self.name,
                    lock(&s.rec).parent
                ),
            ));
        }
        if !self.copies_of_parent(rv).is_empty() {
            return Err(ArrayError::refused(
                Rule::CopyParentNotRv,
                format!(
                    "LD {}:{rv} is the parent of business copies; replication writes would bypass their copy-before-write",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// Replicate and restore of a pair whose MV is a parent: nothing may copy a parent that is
    /// being restored from a copy, and a pair restore would write beneath attached copies.
    pub(super) fn check_pair_op_vs_copies(&self, id: &PairId, what: &str) -> Result<()> {
        if !matches!(what, "replicate" | "restore") {
            return Ok(());
        }
        for s in self.copies_of_parent(id.mv.ld) {
            let r = lock(&s.rec);
            match r.state {
                CopyState::CopyingToParent => {
                    return Err(wrong(
                        &r,
                        &self.name,
                        what,
                        "the copy to the parent to finish first",
                    ));
                }
                CopyState::Attached if what == "restore" => {
                    return Err(ArrayError::refused(
                        Rule::PairRestoreNeedsDetachedCopies,
                        format!(
                            "MV {} has the attached business copy {}:{}; detach or delete it first",
                            id.mv, self.name, r.copy
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A copy cannot be (re)made while its parent is being restored from a pair's RV or from
    /// another copy: the parent's on-disk blocks are not its content yet.
    fn check_parent_stable(&self, parent: u32, copy: u32, op: &str) -> Result<()> {
        for s in self.pairs_of_mv(parent) {
            let r = lock(&s.rec);
            if r.state.sync == SyncState::RstExec {
                return Err(ArrayError::WrongState {
                    pair: r.id.to_string(),
                    state: r.state.to_string(),
                    op: op.into(),
                    needs: "no restore copying into the parent".into(),
                });
            }
        }
        for s in self.copies_of_parent(parent) {
            let r = lock(&s.rec);
            if r.copy != copy && r.state == CopyState::CopyingToParent {
                return Err(wrong(
                    &r,
                    &self.name,
                    op,
                    "no other copy of the parent copying to it",
                ));
            }
        }
        Ok(())
    }

    // ---- control ---------------------------------------------------------------------------

    pub(super) async fn copy_create(
        self: &Arc<Self>,
        parent: u32,
        copy: u32,
        attached: bool,
    ) -> Result<CopyInfo> {
        self.check_open()?;
        let _op = self.op_lock.lock().await;
        let p = self.ld(parent)?.clone();
        let c = self.ld(copy)?.clone();
        let (pn, cn) = (
            format!("{}:{parent}", self.name),
            format!("{}:{copy}", self.name),
        );
        if parent == copy {
            return Err(ArrayError::refused(
                Rule::OneRolePerLd,
                format!("{pn} cannot be its own business copy"),
            ));
        }
        if p.capacity_bytes != c.capacity_bytes {
            return Err(ArrayError::refused(
                Rule::SameCapacity,
                format!(
                    "parent {pn} has {} bytes, copy {cn} has {}",
                    p.capacity_bytes, c.capacity_bytes
                ),
            ));
        }
        if p.format != c.format {
            return Err(ArrayError::refused(
                Rule::SameFormat,
                format!("parent {pn} is {}, copy {cn} is {}", p.format, c.format),
            ));
        }
        self.check_parent_stable(parent, copy, "copy create")?;
        let _pg = p.io.lock().await;
        let _cg = c.io.lock().await;
        let slot = {
            // Roles before copies, as in an RV claim, so neither can slip past the other.
            let roles = lock(&self.roles);
            let one_role = |d: String| Err(ArrayError::refused(Rule::OneRolePerLd, d));
            if let Some(r) = roles.get(&copy) {
                return one_role(format!("copy {cn} is the RV of {}", r.mv));
            }
            if roles.contains_key(&parent) {
                return Err(ArrayError::refused(
                    Rule::CopyParentNotRv,
                    format!(
                        "parent {pn} is an RV; replication writes would bypass the copy-before-write"
                    ),
                ));
            }
            if lock(&self.pairs).keys().any(|id| id.mv.ld == copy) {
                return one_role(format!("copy {cn} is the MV of a pair"));
            }
            let mut copies = lock(&self.copies);
            if let Some(s) = copies.get(&copy) {
                return one_role(format!(
                    "{cn} is already the business copy of {}:{}",
                    self.name,
                    lock(&s.rec).parent
                ));
            }
            if copies.contains_key(&parent) {
                return Err(ArrayError::refused(
                    Rule::NoCopyOfCopy,
                    format!("parent {pn} is itself a business copy"),
                ));
            }
            if copies.values().any(|s| lock(&s.rec).parent == copy) {
                return one_role(format!("copy {cn} is the parent of business copies"));
            }
            let blocks = p.capacity_bytes / self.block_bytes;
            let mut rec = CopyRec {
                parent,
                copy,
                state: CopyState::Detached,
                pit_unix_ms: None,
                pending: Bitmap::new(blocks),
                differ: Bitmap::new(blocks),
                to_parent: Bitmap::new(blocks),
                last_op: None,
                unsynced: None,
            };
            if attached {
                rec.snapshot();
                rec.start_op("create attached", false);
            } else {
                rec.start_op("create detached", true);
            }
            let slot = CopySlot::new(rec);
            copies.insert(copy, slot.clone());
            slot
        };
        let res = match self.persist_copy_durable(&slot).await {
            // A detached copy holds no data; an attached one reads everything from the parent
            // until copied, so the old bytes are never visible either way.
            Ok(()) if !attached => self.discard_data(&c),
            r => r,
        };
        if let Err(e) = res {
            lock(&self.copies).remove(&copy);
            let _ = self.copies_tree.remove(copy.to_string());
            return Err(e);
        }
        Inner::start_copy_engine(self, &slot);
        self.copy_changed(&slot, "created");
        Ok(self.copy_info(&lock(&slot.rec)))
    }

    pub(super) async fn copy_attach(self: &Arc<Self>, copy: u32) -> Result<CopyInfo> {
        self.check_open()?;
        let _op = self.op_lock.lock().await;
        let slot = self.copy_slot_or_404(copy)?;
        let parent = self.parent_if(&slot, "attach", not_copying_back, "attached or detached")?;
        self.check_parent_stable(parent, copy, "copy attach")?;
        let (p, c) = (self.ld(parent)?.clone(), self.ld(copy)?.clone());
        let _pg = p.io.lock().await;
        let _cg = c.io.lock().await;
        {
            let mut r = lock(&slot.rec);
            r.snapshot();
            r.start_op("attach", false);
        }
        self.persist_copy_durable(&slot).await?;
        slot.wake.notify_one();
        self.copy_changed(&slot, "attached");
        Ok(self.copy_info(&lock(&slot.rec)))
    }

    pub(super) async fn copy_detach(self: &Arc<Self>, copy: u32) -> Result<CopyInfo> {
        self.check_open()?;
        let _op = self.op_lock.lock().await;
        let slot = self.copy_slot_or_404(copy)?;
        let parent = self.parent_if(&slot, "detach", |s| s == CopyState::Attached, "attached")?;
        let (p, c) = (self.ld(parent)?.clone(), self.ld(copy)?.clone());
        let _pg = p.io.lock().await;
        let _cg = c.io.lock().await;
        {
            let mut r = lock(&slot.rec);
            r.discard();
            r.start_op("detach", true);
        }
        self.persist_copy_durable(&slot).await?;
        self.discard_data(&c)?;
        self.copy_changed(&slot, "detached");
        Ok(self.copy_info(&lock(&slot.rec)))
    }

    pub(super) async fn copy_delete(self: &Arc<Self>, copy: u32) -> Result<()> {
        self.check_open()?;
        let _op = self.op_lock.lock().await;
        let slot = self.copy_slot_or_404(copy)?;
        let parent = self.parent_if(&slot, "delete", not_copying_back, "attached or detached")?;
        let (p, c) = (self.ld(parent)?.clone(), self.ld(copy)?.clone());
        let _pg = p.io.lock().await;
        let _cg = c.io.lock().await;
        self.copies_tree
            .remove(copy.to_string())
            .map_err(|e| self.meta_err(e))?;
        self.flush().await?;
        lock(&self.copies).remove(&copy);
        slot.stop.store(true, Ordering::SeqCst);
        slot.wake.notify_one();
        self.discard_data(&c)?;
        self.copy_changed(&slot, COPY_DELETED);
        Ok(())
    }

    pub(super) async fn copy_to_parent(
        self: &Arc<Self>,
        copy: u32,
        wait_timeout_ms: Option<u64>,
    ) -> Result<CopyInfo> {
        self.check_open()?;
        let slot = {
            let _op = self.op_lock.lock().await;
            let slot = self.copy_slot_or_404(copy)?;
            let parent = {
                let r = lock(&slot.rec);
                if r.state != CopyState::Attached {
                    return Err(wrong(&r, &self.name, "copy to parent", "attached"));
                }
                r.parent
            };
            let pair_slots = self.pairs_of_mv(parent);
            for s in &pair_slots {
                let r = lock(&s.rec);
                if !r.is_separated_family() {
                    return Err(ArrayError::refused(
                        Rule::CopyToParentNeedsSeparatedPairs,
                        format!(
                            "parent {}:{parent} is the MV of pair {}, which is {}",
                            self.name, r.id, r.state
                        ),
                    ));
                }
            }
            self.check_parent_stable(parent, copy, "copy to parent")?;
            let (p, c) = (self.ld(parent)?.clone(), self.ld(copy)?.clone());
            let _pg = p.io.lock().await;
            let _cg = c.io.lock().await;
            let moved = {
                let mut r = lock(&slot.rec);
                let n = r.differ.len();
                r.to_parent = std::mem::replace(&mut r.differ, Bitmap::new(n));
                r.state = CopyState::CopyingToParent;
                r.start_op("copy to parent", false);
                r.to_parent.clone()
            };
            // The parent's pairs must learn which MV blocks the restore changes, or their next
            // differential replicate would skip them.
            for s in &pair_slots {
                lock(&s.rec).mv_dirty.union_with(&moved);
                self.persist_pair(s, true)?;
            }
            self.persist_copy_durable(&slot).await?;
            slot.wake.notify_one();
            self.copy_changed(&slot, "copying to parent");
            slot
        };
        match wait_timeout_ms {
            None => Ok(self.copy_info(&lock(&slot.rec))),
            Some(t) => self.wait_copy_to_parent(&slot, t).await,
        }
    }

    async fn wait_copy_to_parent(&self, slot: &CopySlot, timeout_ms: u64) -> Result<CopyInfo> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut rx = slot.changed.subscribe();
        loop {
            let info = self.copy_info(&lock(&slot.rec));
            if info.state != CopyState::CopyingToParent {
                return Ok(info);
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(crate::WAIT_RECHECK) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ArrayError::Timeout {
                        what: format!("business copy {} to finish copying to its parent", info.copy),
                        timeout_ms,
                    });
                }
            }
        }
    }

    pub(super) fn copy_list(&self) -> Vec<CopyInfo> {
        let slots: Vec<_> = lock(&self.copies).values().cloned().collect();
        slots
            .iter()
            .map(|s| self.copy_info(&lock(&s.rec)))
            .collect()
    }

    pub(super) async fn close_copies(&self) -> Result<()> {
        let slots: Vec<_> = lock(&self.copies).values().cloned().collect();
        for s in &slots {
            s.stop.store(true, Ordering::SeqCst);
            s.wake.notify_one();
            let h = lock(&s.engine).take();
            if let Some(h) = h {
                let _ = h.await;
            }
            self.persist_copy(s)?;
        }
        Ok(())
    }
}
