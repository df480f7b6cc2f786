//! The copy engine: one task per pair moving the `copy` bitmap's blocks between MV and RV.

use super::*;

pub(super) enum Dir {
    MvToRv,
    RvToMv,
}

impl Inner {
    pub(super) fn start_engine(this: &Arc<Self>, slot: &Arc<PairSlot>) {
        let h = tokio::spawn(Inner::engine(this.clone(), slot.clone()));
        *lock(&slot.engine) = Some(h);
    }

    /// Copies one run between the MV and the RV; the caller holds the MV's I/O lock. A DDR run
    /// goes file to file on a blocking thread (it can take milliseconds; the runtime's workers
    /// stay free for host I/O on other LDs); an RDR run crosses the link.
    pub(super) async fn copy_run(
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
    pub(super) fn run_shape(&self) -> (u64, u64) {
        let pace = self.pace_bytes_per_s.load(Ordering::SeqCst);
        let mut run_bytes = crate::COPY_RUN_BYTES_MAX;
        if pace > 0 {
            // Keep each paced run short so the pace is smooth and writes are not starved.
            run_bytes = run_bytes.min(pace / 10);
        }
        ((run_bytes / self.block_bytes).max(1), pace)
    }

    pub(super) async fn engine(this: Arc<Self>, slot: Arc<PairSlot>) {
        let mut cursor = 0u64;
        let mut last_persist = tokio::time::Instant::now();
        let mut last_intent_clear = tokio::time::Instant::now();
        loop {
            if slot.stop.load(Ordering::SeqCst) || this.closed.load(Ordering::SeqCst) {
                return;
            }
            if last_intent_clear.elapsed() >= crate::WRITE_INTENT_CLEAR_INTERVAL {
                this.clear_write_intent(&slot).await;
                last_intent_clear = tokio::time::Instant::now();
            }
            let mut completed = None;
            let plan = {
                let mut r = lock(&slot.rec);
                let dir = match r.state.sync {
                    // A suspended separate retries by itself: the link may be back.
                    SyncState::SepExec => Some(Dir::MvToRv),
                    _ if r.state.abnormal_suspend => None,
                    SyncState::RstExec => Some(Dir::RvToMv),
                    SyncState::RplExec | SyncState::RplSync | SyncState::RstSync => {
                        Some(Dir::MvToRv)
                    }
                    _ => None,
                };
                match dir {
                    None => None,
                    Some(d) => match r.copy.next_set(cursor) {
                        Some(b) => Some((d, b, r.id.clone())),
                        None => {
                            if r.complete_copy() {
                                r.state.abnormal_suspend = false;
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
            let (run_blocks_max, _) = this.run_shape();
            let res = if id.kind() == PairKind::Rdr && matches!(dir, Dir::MvToRv) {
                this.send_run(&slot, &id, &mv, start, run_blocks_max).await
            } else {
                this.local_run(&slot, &id, &mv, &dir, start, run_blocks_max)
                    .await
            };
            match res {
                Ok(n) => {
                    cursor = start + n.max(1);
                    let resumed = n > 0 && {
                        let mut r = lock(&slot.rec);
                        std::mem::replace(&mut r.state.abnormal_suspend, false)
                    };
                    if resumed {
                        // The link is back: the suspended separate goes on by itself.
                        let _ = this.persist_pair_durable(&slot).await;
                        let st = lock(&slot.rec).state;
                        this.emit(&id, Some(st), "link back: separate resumes");
                    }
                    // Look for what is left right after the run, before pacing: a writer that
                    // keeps dirtying one block would otherwise dirty it again during every
                    // pause, and a paced copy would never see the difference drained (sync,
                    // or a separate's end, never reached). Drained: the loop completes at once.
                    let drained = lock(&slot.rec).copy.count() == 0;
                    if !drained {
                        this.pace(n * this.block_bytes).await;
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

    /// Length of the run starting at `start`: consecutive blocks still set in `copy`.
    fn run_len(slot: &PairSlot, start: u64, run_blocks_max: u64) -> u64 {
        let r = lock(&slot.rec);
        let mut n = 0;
        while n < run_blocks_max && r.copy.get(start + n) {
            n += 1;
        }
        n
    }

    /// A run that moves data on this array (DDR) or into the MV (restore): under the MV's I/O
    /// lock from start to end, so no host write interleaves.
    async fn local_run(
        self: &Arc<Self>,
        slot: &PairSlot,
        id: &PairId,
        mv: &Arc<Ld>,
        dir: &Dir,
        start: u64,
        run_blocks_max: u64,
    ) -> Result<u64> {
        let _g = mv.io.lock().await;
        // Re-read the run under the MV lock: a copy-before-write may have taken blocks.
        let n = Self::run_len(slot, start, run_blocks_max);
        if n == 0 {
            return Ok(0);
        }
        let (off, len) = (start * self.block_bytes, n * self.block_bytes);
        self.copy_run(id, mv, dir, off, len).await?;
        let mut rec = lock(&slot.rec);
        for b in start..start + n {
            rec.copy.clear(b);
        }
        rec.copied_blocks += n;
        Ok(n)
    }

    /// An RDR run MV→RV: the MV's I/O lock is held only to read the blocks, not while they
    /// cross the link, so host writes go on at local speed. A host write to a block of the run
    /// meanwhile re-marks it (`PairRec::note_write`): the run does not clear it and the block
    /// is sent again with its newer content.
    async fn send_run(
        self: &Arc<Self>,
        slot: &PairSlot,
        id: &PairId,
        mv: &Arc<Ld>,
        start: u64,
        run_blocks_max: u64,
    ) -> Result<u64> {
        let (n, data) = {
            let _g = mv.io.lock().await;
            let n = Self::run_len(slot, start, run_blocks_max);
            if n == 0 {
                return Ok(0);
            }
            let data = mv.read_at(&self.name, start * self.block_bytes, n * self.block_bytes)?;
            let mut r = lock(&slot.rec);
            r.run = Some((start, start + n));
            r.rerun.clear();
            (n, data)
        };
        let sent = self.rv_write(id, start * self.block_bytes, &data).await;
        let mut rec = lock(&slot.rec);
        rec.run = None;
        let rerun = std::mem::take(&mut rec.rerun);
        sent?;
        for b in start..start + n {
            if !rerun.contains(&b) && rec.copy.clear(b) {
                rec.copied_blocks += 1;
            }
        }
        Ok(n)
    }

    /// Clears the write-intent bits of a pair (lazily persisted, like md's bitmap daemon): the
    /// MV's I/O lock excludes a mirrored write in flight, so every set bit's write is complete
    /// on both sides or recorded in `copy`.
    async fn clear_write_intent(self: &Arc<Self>, slot: &PairSlot) {
        if lock(&slot.rec).intent.count() == 0 {
            return;
        }
        let mv_ld = lock(&slot.rec).id.mv.ld;
        let Ok(mv) = self.ld(mv_ld).cloned() else {
            return;
        };
        let _g = mv.io.lock().await;
        lock(&slot.rec).intent.clear_all();
        let _ = self.persist_pair(slot, false);
    }

    /// Sleeps so that all copies of the array together keep to the copy pace (bytes/s): each
    /// run books its share of one array-wide schedule.
    pub(super) async fn pace(&self, bytes: u64) {
        let pace = self.pace_bytes_per_s.load(Ordering::SeqCst);
        if pace == 0 || bytes == 0 {
            return;
        }
        let until = {
            let mut next = lock(&self.pace_next);
            let now = tokio::time::Instant::now();
            // Idle time is not saved up for a burst later.
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / pace as f64);
            *next
        };
        tokio::time::sleep_until(until).await;
    }
}
