//! Host I/O on business copies and on their parents: reads and writes of an attached copy, a
//! parent's reads overlaid while it is copied back to, copy-before-write on a parent write, and
//! the background engine that fills copies and copies them back (see `copies` for the record
//! and its bitmaps' durability rules).

use super::copies::CopySlot;
use super::*;

impl Inner {
    /// Locks parent then copy and checks the copy is still this slot and attached.
    async fn lock_copy_for_io<'a>(
        &self,
        slot: &Arc<CopySlot>,
        p: &'a Ld,
        c: &'a Ld,
    ) -> Result<(
        tokio::sync::MutexGuard<'a, ()>,
        tokio::sync::MutexGuard<'a, ()>,
    )> {
        let pg = p.io.lock().await;
        let cg = c.io.lock().await;
        let current = lock(&self.copies)
            .get(&c.number)
            .is_some_and(|s| Arc::ptr_eq(s, slot));
        let r = lock(&slot.rec);
        if !current || r.state != CopyState::Attached {
            let state = if current {
                r.state.to_string()
            } else {
                "deleted".into()
            };
            return Err(ArrayError::refused(
                Rule::CopyAccess,
                format!(
                    "LD {}:{} is a business copy that is {state}: no host I/O until it is attached",
                    self.name, c.number
                ),
            ));
        }
        drop(r);
        Ok((pg, cg))
    }

    pub(super) async fn copy_host_read(
        &self,
        slot: &Arc<CopySlot>,
        c: &Arc<Ld>,
        off: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let parent = lock(&slot.rec).parent;
        let p = self.ld(parent)?.clone();
        let _g = self.lock_copy_for_io(slot, &p, c).await?;
        let mut data = c.read_at(&self.name, off, len)?;
        let (b0, b1) = self.blocks(off, len);
        let from_parent: Vec<u64> = {
            let r = lock(&slot.rec);
            (b0..b1).filter(|&b| r.pending.get(b)).collect()
        };
        for b in from_parent {
            let boff = b * self.block_bytes;
            let src = p.read_at(&self.name, boff, self.block_bytes)?;
            overlay(&mut data, off, &src, boff);
        }
        Ok(data)
    }

    pub(super) async fn copy_host_write(
        &self,
        slot: &Arc<CopySlot>,
        c: &Arc<Ld>,
        off: u64,
        data: &[u8],
    ) -> Result<()> {
        let len = data.len() as u64;
        let parent = lock(&slot.rec).parent;
        let p = self.ld(parent)?.clone();
        let _g = self.lock_copy_for_io(slot, &p, c).await?;
        let (b0, b1) = self.blocks(off, len);
        let pending: Vec<u64> = {
            let r = lock(&slot.rec);
            (b0..b1).filter(|&b| r.pending.get(b)).collect()
        };
        for &b in &pending {
            let boff = b * self.block_bytes;
            // A block the write covers whole needs nothing from the parent.
            if off <= boff && boff + self.block_bytes <= off + len {
                continue;
            }
            let src = p.read_at(&self.name, boff, self.block_bytes)?;
            c.write_at(&self.name, boff, &src)?;
        }
        c.write_at(&self.name, off, data)?;
        let changed = {
            let mut r = lock(&slot.rec);
            let mut changed = r.differ.set_range(b0, b1) > 0;
            for &b in &pending {
                changed |= r.pending.clear(b);
            }
            changed || r.relies_on_unsynced(b0, b1)
        };
        // The cleared bits say "the copy LD holds this block now": the write is acknowledged
        // only once that is on disk.
        if changed {
            self.persist_copy_durable(slot).await?;
        }
        Ok(())
    }

    /// A plain LD that became a business copy while the I/O waited for its lock must not be
    /// touched as a plain LD.
    fn still_plain(&self, ld: &Ld) -> Result<()> {
        if self.copy_slot(ld.number).is_some() {
            return Err(ArrayError::refused(
                Rule::CopyAccess,
                format!(
                    "LD {}:{} became a business copy while this I/O waited; retry",
                    self.name, ld.number
                ),
            ));
        }
        Ok(())
    }

    /// Parent reads while a copy is copied back: blocks not moved yet come from the copy LD.
    /// The caller holds the parent's I/O lock.
    pub(super) async fn parent_read_overlay(
        &self,
        p: &Ld,
        off: u64,
        data: &mut [u8],
    ) -> Result<()> {
        self.still_plain(p)?;
        let (b0, b1) = self.blocks(off, data.len() as u64);
        for s in self.copies_of_parent(p.number) {
            let (copy, blocks) = {
                let r = lock(&s.rec);
                if r.state != CopyState::CopyingToParent {
                    continue;
                }
                let v: Vec<u64> = (b0..b1).filter(|&b| r.to_parent.get(b)).collect();
                (r.copy, v)
            };
            if blocks.is_empty() {
                continue;
            }
            let c = self.ld(copy)?.clone();
            let _cg = c.io.lock().await;
            for b in blocks {
                let boff = b * self.block_bytes;
                let src = c.read_at(&self.name, boff, self.block_bytes)?;
                overlay(data, off, &src, boff);
            }
        }
        Ok(())
    }

    /// Runs before bytes land on a parent at `[off, off+len)`: keeps every attached copy's
    /// point in time (copy-before-write), pulls in blocks still to come from a copy being
    /// copied back, and records the change. `except` is the copy whose own copy-back is doing
    /// the write. The caller holds the parent's I/O lock.
    pub(super) async fn before_parent_write(
        &self,
        p: &Ld,
        off: u64,
        len: u64,
        except: Option<u32>,
    ) -> Result<()> {
        self.still_plain(p)?;
        let (b0, b1) = self.blocks(off, len);
        let mut flushed = Vec::new();
        for s in self.copies_of_parent(p.number) {
            let (copy, state, cbw, pull) = {
                let r = lock(&s.rec);
                if r.state == CopyState::Detached || Some(r.copy) == except {
                    continue;
                }
                let cbw: Vec<u64> = (b0..b1).filter(|&b| r.pending.get(b)).collect();
                let pull: Vec<u64> = (b0..b1).filter(|&b| r.to_parent.get(b)).collect();
                (r.copy, r.state, cbw, pull)
            };
            let c = self.ld(copy)?.clone();
            let _cg = c.io.lock().await;
            let mut cbw_err = None;
            for &b in &cbw {
                let boff = b * self.block_bytes;
                let r = p
                    .read_at(&self.name, boff, self.block_bytes)
                    .and_then(|d| c.write_at(&self.name, boff, &d));
                if let Err(e) = r {
                    cbw_err = Some(e);
                    break;
                }
            }
            if let Some(e) = cbw_err {
                if state == CopyState::Attached {
                    // The copy can no longer keep its point in time. The parent's host comes
                    // first, as with a pair's copy fault: the copy is discarded, the write
                    // goes on.
                    tracing::warn!(array = %self.name, copy, error = %e, "copy-before-write failed: business copy detached");
                    {
                        let mut r = lock(&s.rec);
                        r.discard();
                        r.start_op("detach (copy fault)", true);
                    }
                    self.persist_copy(&s)?;
                    flushed.push(s.clone());
                    self.copy_changed(&s, "detached after a copy fault");
                    continue;
                }
                // Copying back: the parent's content lives partly on this copy; without it the
                // parent cannot take the write.
                return Err(e);
            }
            for &b in &pull {
                let boff = b * self.block_bytes;
                if off <= boff && boff + self.block_bytes <= off + len {
                    continue;
                }
                let d = c.read_at(&self.name, boff, self.block_bytes)?;
                p.write_at(&self.name, boff, &d)?;
            }
            let changed = {
                let mut r = lock(&s.rec);
                let mut changed = r.differ.set_range(b0, b1) > 0;
                for &b in &cbw {
                    changed |= r.pending.clear(b);
                }
                for &b in &pull {
                    changed |= r.to_parent.clear(b);
                }
                changed || r.relies_on_unsynced(b0, b1)
            };
            if changed {
                self.persist_copy(&s)?;
                flushed.push(s.clone());
            }
        }
        if !flushed.is_empty() {
            self.flush().await?;
            // The caller holds the parent's lock, which the background copy needs to clear
            // bits: the snapshots just flushed hold every clear made so far.
            for s in flushed {
                lock(&s.rec).unsynced = None;
            }
        }
        Ok(())
    }

    // ---- background copy -------------------------------------------------------------------

    pub(super) fn start_copy_engine(this: &Arc<Self>, slot: &Arc<CopySlot>) {
        let h = tokio::spawn(Inner::copy_engine(this.clone(), slot.clone()));
        *lock(&slot.engine) = Some(h);
    }

    /// Fills an attached copy from its parent, or moves a copy back to its parent, at the
    /// array's copy pace. Copying back comes first; the fill resumes after it.
    async fn copy_engine(this: Arc<Self>, slot: Arc<CopySlot>) {
        let mut cursor = 0u64;
        let mut last_persist = tokio::time::Instant::now();
        loop {
            let (run_blocks_max, _) = this.run_shape();
            if slot.stop.load(Ordering::SeqCst) || this.closed.load(Ordering::SeqCst) {
                return;
            }
            enum Step {
                Idle,
                Finished(&'static str),
                Run { back: bool, start: u64 },
            }
            let (parent, copy, step) = {
                let mut r = lock(&slot.rec);
                let step = match r.state {
                    CopyState::CopyingToParent => match r.to_parent.next_set(cursor) {
                        Some(start) => Step::Run { back: true, start },
                        None => {
                            r.state = CopyState::Attached;
                            r.end_op();
                            Step::Finished("copy to parent complete")
                        }
                    },
                    CopyState::Attached => match r.pending.next_set(cursor) {
                        Some(start) => Step::Run { back: false, start },
                        None if r
                            .last_op
                            .as_ref()
                            .is_some_and(|l| l.ended_unix_ms.is_none()) =>
                        {
                            r.end_op();
                            Step::Finished("copy fully independent of its parent")
                        }
                        None => Step::Idle,
                    },
                    CopyState::Detached => Step::Idle,
                };
                (r.parent, r.copy, step)
            };
            let (back, start) = match step {
                Step::Idle => {
                    let _ = tokio::time::timeout(crate::ENGINE_IDLE_RECHECK, slot.wake.notified())
                        .await;
                    continue;
                }
                Step::Finished(what) => {
                    if let Err(e) = this.persist_copy_durable(&slot).await {
                        tracing::error!(array = %this.name, copy, error = %e, "cannot persist business copy");
                    }
                    this.copy_changed(&slot, what);
                    continue;
                }
                Step::Run { back, start } => (back, start),
            };
            let (Ok(p), Ok(c)) = (this.ld(parent).cloned(), this.ld(copy).cloned()) else {
                return;
            };
            let res = {
                let _pg = p.io.lock().await;
                let _cg = c.io.lock().await;
                if slot.stop.load(Ordering::SeqCst) {
                    return;
                }
                // Re-read the run under the locks: host writes may have taken blocks.
                let n = {
                    let r = lock(&slot.rec);
                    let bits = if back { &r.to_parent } else { &r.pending };
                    let mut n = 0;
                    while n < run_blocks_max && bits.get(start + n) {
                        n += 1;
                    }
                    n
                };
                let (off, len) = (start * this.block_bytes, n * this.block_bytes);
                let moved = if n == 0 {
                    Ok(())
                } else if back {
                    match c.read_at(&this.name, off, len) {
                        Ok(d) => match this.before_parent_write(&p, off, len, Some(copy)).await {
                            Ok(()) => p.write_at(&this.name, off, &d),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    }
                } else {
                    p.read_at(&this.name, off, len)
                        .and_then(|d| c.write_at(&this.name, off, &d))
                };
                moved.map(|_| {
                    let mut r = lock(&slot.rec);
                    for b in start..start + n {
                        if back {
                            r.to_parent.clear(b);
                        } else {
                            r.pending.clear(b);
                        }
                        r.lazily_cleared(b);
                    }
                    n
                })
            };
            match res {
                Ok(n) => {
                    cursor = start + n.max(1);
                    this.pace(n * this.block_bytes).await;
                    if last_persist.elapsed() >= crate::COPY_PERSIST_INTERVAL {
                        // Lazy, like pairs: a lost clear only recopies blocks whose source is
                        // unchanged; writes that rely on a clear flush it first (`unsynced`).
                        let _ = this.persist_copy(&slot);
                        last_persist = tokio::time::Instant::now();
                    }
                }
                Err(e) => {
                    tracing::warn!(array = %this.name, copy, error = %e, "business copy background copy failed; retrying");
                    let _ = tokio::time::timeout(crate::ENGINE_IDLE_RECHECK, slot.wake.notified())
                        .await;
                }
            }
        }
    }
}
