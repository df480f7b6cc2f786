//! Host reads and writes on MVs and RVs: access checks, copy-before-write, and mirroring or
//! recording each write per pair state and copy control.

use super::*;

impl Inner {
    pub(super) fn check_host(&self, ld: &Ld, host: &str) -> Result<()> {
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

    pub(super) fn pairs_of_mv(&self, ld: u32) -> Vec<Arc<PairSlot>> {
        lock(&self.pairs)
            .iter()
            .filter(|(k, _)| k.mv.ld == ld)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub(super) async fn host_read(
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
            let outcome = if !matches!(role.access, RvAccess::Rw | RvAccess::Ro) {
                Err(ArrayError::refused(
                    Rule::RvAccess,
                    format!(
                        "LD {}:{n} is an RV with access {}: no reads",
                        self.name, role.access
                    ),
                ))
            } else {
                self.rv_host_io(&ld, &role, off, len, None)
                    .await
                    .map(|d| d.unwrap_or_default())
            };
            return self.audit_rv_io(host, n, false, role.access, outcome);
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
    pub(super) async fn rv_host_io(
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
                let mut moved = false;
                if let (Some(m), Some(s)) = (&mv_ld, &ddr_slot) {
                    for b in pending {
                        let boff = b * self.block_bytes;
                        let src = m.read_at(&self.name, boff, self.block_bytes)?;
                        ld.write_at(&self.name, boff, &src)?;
                        let mut r = lock(&s.rec);
                        if r.copy.clear(b) {
                            r.copied_blocks += 1;
                            moved = true;
                        }
                    }
                }
                // Write intent on the RV side: the dirty bit is durable before the write lands,
                // and so are cleared copy bits (else the engine would copy over the write).
                let new = {
                    let mut roles = lock(&self.roles);
                    roles
                        .get_mut(&ld.number)
                        .map(|r| r.dirty.set_range(b0, b1))
                        .unwrap_or(0)
                };
                if new > 0 || moved {
                    self.persist_role(ld.number)?;
                    if let Some(s) = &ddr_slot {
                        self.persist_pair(s, false)?;
                    }
                    self.flush().await?;
                }
                ld.write_at(&self.name, off, data)?;
                if let Some(s) = &ddr_slot {
                    s.wake.notify_one();
                }
                Ok(None)
            }
        }
    }

    pub(super) async fn host_write(
        self: &Arc<Self>,
        host: &str,
        n: u32,
        off: u64,
        data: &[u8],
    ) -> Result<()> {
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
            let outcome = if role.access != RvAccess::Rw {
                Err(ArrayError::refused(
                    Rule::RvAccess,
                    format!(
                        "LD {}:{n} is an RV with access {}: no writes",
                        self.name, role.access
                    ),
                ))
            } else {
                self.rv_host_io(&ld, &role, off, len, Some(data))
                    .await
                    .map(|_| ())
            };
            return self.audit_rv_io(host, n, true, role.access, outcome);
        }
        let (b0, b1) = self.blocks(off, len);
        let _g = ld.io.lock().await;
        let slots = self.pairs_of_mv(n);
        // Before the write: keep images that must not see it.
        let mut need_flush = self.copy_before_write(&slots, &ld, b0, b1).await?;
        // Write intent: every bit that tells a later copy about this write is set and durable
        // before the write lands on the MV (bits already set cost nothing).
        let mut mirror = Vec::new();
        for slot in &slots {
            let (then, new) = lock(&slot.rec).mark_host_write(b0, b1, self.backlog_max);
            if new > 0 || need_flush {
                self.persist_pair(slot, false)?;
            }
            need_flush |= new > 0;
            match then {
                WriteThen::Record => slot.wake.notify_one(),
                WriteThen::Mirror => mirror.push(slot),
            }
        }
        if need_flush {
            self.flush().await?;
        }
        self.before_parent_write(&ld, off, len, None).await?;
        ld.write_at(&self.name, off, data)?;
        self.audit_mv_write(host, &ld);
        // After the write: mirror it where the state and copy control say so.
        for slot in mirror {
            let id = lock(&slot.rec).id.clone();
            if let Err(e) = self.rv_write(&id, off, data).await {
                lock(&slot.rec).mirror_failed(b0, b1);
                // The pair leaves its copy state (suspend/fault) and is persisted durably; the
                // intent bit covers the block until then.
                self.after_copy_error(slot, &e).await;
            }
        }
        Ok(())
    }

    /// Copy-before-write for the blocks `[b0, b1)` a host write is about to change: a pair in
    /// `sep/exec` first gets the separate instant's block on the RV; a pair in `rst/exec`
    /// first pulls the restored block into the MV (a partial write must land on it). When the
    /// move fails the write is refused: the old block is still needed elsewhere. Returns true
    /// when bits were cleared (the caller flushes before the write lands: a crash must not let
    /// the engine move the block again over the write).
    async fn copy_before_write(
        self: &Arc<Self>,
        slots: &[Arc<PairSlot>],
        ld: &Arc<Ld>,
        b0: u64,
        b1: u64,
    ) -> Result<bool> {
        let mut moved = false;
        for slot in slots {
            let (st, id, pending) = {
                let r = lock(&slot.rec);
                let p: Vec<u64> = (b0..b1).filter(|&b| r.copy.get(b)).collect();
                (r.state, r.id.clone(), p)
            };
            let dir = match st.sync {
                _ if pending.is_empty() => continue,
                // Also when suspended: the write must not overwrite the separate instant.
                SyncState::SepExec => Dir::MvToRv,
                SyncState::RstExec => Dir::RvToMv,
                _ => continue,
            };
            for &b in &pending {
                let boff = b * self.block_bytes;
                // The same move the copy engine makes (we hold the MV's I/O lock, as it does).
                if let Err(e) = self.copy_run(&id, ld, &dir, boff, self.block_bytes).await {
                    self.after_copy_error(slot, &e).await;
                    if lock(&slot.rec).copy.get(b) {
                        return Err(e);
                    }
                    // The pair left its copy state (fault): the block is a difference now.
                    continue;
                }
                let mut rec = lock(&slot.rec);
                if rec.copy.clear(b) {
                    rec.copied_blocks += 1;
                    moved = true;
                }
            }
        }
        Ok(moved)
    }
}

/// Copies `src` (which starts at absolute offset `src_off`) over the overlapping part of `dst`
/// (which starts at `dst_off`).
pub(super) fn overlay(dst: &mut [u8], dst_off: u64, src: &[u8], src_off: u64) {
    let lo = dst_off.max(src_off);
    let hi = (dst_off + dst.len() as u64).min(src_off + src.len() as u64);
    if lo >= hi {
        return;
    }
    let d = (lo - dst_off) as usize..(hi - dst_off) as usize;
    let s = (lo - src_off) as usize..(hi - src_off) as usize;
    dst[d].copy_from_slice(&src[s]);
}
