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
