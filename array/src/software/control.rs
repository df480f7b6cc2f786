//! Control operations on pairs: set, unset, replicate/separate/restore (one at a time under
//! the operation lock, with their rule checks), waiting for a state, and fault injection.

use super::*;

impl Inner {
    /// Sets the pair, to its end even if the caller goes away (as [`Inner::operate`]): the RV
    /// claimed, the pair in memory, persisted, its engine started and announced — or none of
    /// it past a refusal.
    pub(super) async fn pair_set(self: &Arc<Self>, id: &PairId) -> Result<PairInfo> {
        let (this, pair) = (self.clone(), id.clone());
        tokio::spawn(async move { this.pair_set_once(&pair).await })
            .await
            .unwrap_or_else(|e| {
                Err(ArrayError::OutcomeUnknown {
                    op: format!("pair set {id}"),
                    detail: format!("the operation's task ended abnormally: {e}; query the pair"),
                })
            })
    }

    /// Unsets the pair, to its end even if the caller goes away (as [`Inner::pair_set`]).
    pub(super) async fn pair_unset(self: &Arc<Self>, id: &PairId) -> Result<()> {
        let (this, pair) = (self.clone(), id.clone());
        tokio::spawn(async move { this.pair_unset_once(&pair).await })
            .await
            .unwrap_or_else(|e| {
                Err(ArrayError::OutcomeUnknown {
                    op: format!("pair unset {id}"),
                    detail: format!("the operation's task ended abnormally: {e}; query the pair"),
                })
            })
    }

    async fn pair_set_once(self: &Arc<Self>, id: &PairId) -> Result<PairInfo> {
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

    async fn pair_unset_once(self: &Arc<Self>, id: &PairId) -> Result<()> {
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

    /// Runs a pair operation to its end even if the caller goes away: once `f` has changed
    /// the record in memory, the change must be persisted, pushed to the RV's access and
    /// announced (event, audit line). A served array's caller goes away whenever its client
    /// dies or times out (the RPC's future is dropped), so the operation runs detached.
    pub(super) async fn operate(
        self: &Arc<Self>,
        id: &PairId,
        what: &str,
        fence: Option<FenceToken>,
        needs_rv_dirty: bool,
        f: impl Fn(&mut PairRec, &Bitmap) -> Result<()> + Send + Sync + 'static,
    ) -> Result<PairInfo> {
        let (this, pair, operation) = (self.clone(), id.clone(), what.to_string());
        let detached = tokio::spawn(async move {
            let outcome = this
                .operate_once(&pair, &operation, fence, needs_rv_dirty, f)
                .await;
            if let Err(e) = &outcome {
                this.audit.record(super::audit::AuditEvent::PairRefused {
                    pair,
                    operation,
                    error: e.to_string(),
                    fence,
                });
            }
            outcome
        });
        detached.await.unwrap_or_else(|e| {
            Err(ArrayError::OutcomeUnknown {
                op: format!("{what} {id}"),
                detail: format!("the operation's task ended abnormally: {e}; query the pair"),
            })
        })
    }

    async fn operate_once(
        self: &Arc<Self>,
        id: &PairId,
        what: &str,
        fence: Option<FenceToken>,
        needs_rv_dirty: bool,
        f: impl Fn(&mut PairRec, &Bitmap) -> Result<()>,
    ) -> Result<PairInfo> {
        self.check_open()?;
        let _op = self.op_lock.lock().await;
        let slot = self.slot(id)?;
        self.check_pair_op_vs_copies(id, what)?;
        self.check_pair_op_vs_siblings(id, what)?;
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
                self.peer_of(&id.rv.array)?
                    .1
                    .cross(&self.name, &id.rv.array, 0)
                    .await?;
            }
            Bitmap::new(blocks)
        };
        let restoring = {
            let mut r = lock(&slot.rec);
            f(&mut r, &rv_dirty)?;
            (r.state.sync == SyncState::RstExec).then(|| r.copy.clone())
        };
        if let Some(restored) = restoring {
            // Every block the restore brings into the MV differs from the other RVs of the MV
            // (all separated, by rule): durable as their MV-side difference before it lands.
            for s in self.pairs_of_mv(id.mv.ld) {
                if !Arc::ptr_eq(&s, &slot) {
                    lock(&s.rec).mv_dirty.union_with(&restored);
                    self.persist_pair(&s, false)?;
                }
            }
        }
        self.persist_pair_durable(&slot).await?;
        self.push_access(&slot).await;
        slot.wake.notify_one();
        let info = self.info_of(&slot);
        self.emit_fenced(id, Some(info.state), what, fence);
        Ok(info)
    }

    /// A restore writes the MV beneath every other pair of it: it starts only when all of them
    /// are separated (so at most one restore runs per MV), and while it copies no other pair may
    /// start copying the half-restored MV.
    pub(super) fn check_pair_op_vs_siblings(&self, id: &PairId, what: &str) -> Result<()> {
        for s in self.pairs_of_mv(id.mv.ld) {
            let r = lock(&s.rec);
            if &r.id == id {
                continue;
            }
            if what == "restore" && !r.is_separated_family() {
                return Err(ArrayError::refused(
                    Rule::RestoreNeedsOtherPairsSeparated,
                    format!(
                        "restore of {id} needs every other pair of MV {} separated; {} is {}",
                        id.mv, r.id, r.state
                    ),
                ));
            }
            if what == "replicate" && r.state.sync == SyncState::RstExec {
                return Err(ArrayError::refused(
                    Rule::RestoreNeedsOtherPairsSeparated,
                    format!(
                        "MV {} is being restored from {} ({}); replicate {id} once it is done",
                        id.mv, r.id.rv, r.state
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) async fn wait(
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

    pub(super) async fn fault(self: &Arc<Self>, f: &Fault) -> Result<()> {
        match f {
            Fault::LdFailure { ld } => self.ld(*ld)?.failed.store(true, Ordering::SeqCst),
            Fault::LdRepair { ld } => self.ld(*ld)?.failed.store(false, Ordering::SeqCst),
            Fault::CopyPace { bytes_per_s } => {
                self.pace_bytes_per_s.store(*bytes_per_s, Ordering::SeqCst)
            }
            Fault::SeparateDelay { ms } => self.separate_delay_ms.store(*ms, Ordering::SeqCst),
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
                    // A suspended separate resumes by itself now.
                    s.wake.notify_one();
                }
            }
        }
        Ok(())
    }
}
