//! The peer side: the link to other arrays, requests sent to an RV's array, and the RV role
//! this array plays for MVs elsewhere (or on itself, for DDR).

use super::*;

/// Link between this array and a peer: latency, bandwidth and up/down, applied to every
/// replication request that crosses it.
#[derive(Debug)]
pub struct Link {
    pub(super) up: AtomicBool,
    pub(super) latency_ms: AtomicU64,
    pub(super) bandwidth_bytes_per_s: AtomicU64,
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

    /// Carries `bytes` from array `from` to its peer `peer`: waits the link's latency and
    /// transfer time, or fails with [`ArrayError::PeerUnreachable`] while the link is down.
    pub(super) async fn cross(&self, from: &str, peer: &str, bytes: u64) -> Result<()> {
        let down = || ArrayError::PeerUnreachable {
            array: from.into(),
            peer: peer.into(),
            detail: "the link is down".into(),
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

impl Inner {
    pub(super) fn peer_of(&self, array: &str) -> Result<(&Arc<dyn Array>, &Arc<Link>)> {
        self.peers.get(array).map(|(a, l)| (a, l)).ok_or_else(|| {
            ArrayError::not_found(format!("peer array {array} (no link configured)"))
        })
    }

    /// Sends a peer request to the RV's array: directly for DDR, over the link for RDR.
    pub(super) async fn to_rv(
        self: &Arc<Self>,
        rv_array: &str,
        req: PeerRequest,
    ) -> Result<PeerReply> {
        if rv_array == self.name {
            return self.peer_op(req).await;
        }
        let (arr, link) = self.peer_of(rv_array)?;
        let bytes = match &req {
            PeerRequest::Write { data, .. } => data.len() as u64,
            PeerRequest::Read { len, .. } => *len,
            _ => 0,
        };
        link.cross(&self.name, rv_array, bytes).await?;
        let unreachable = |detail: String| ArrayError::PeerUnreachable {
            array: self.name.clone(),
            peer: rv_array.into(),
            detail,
        };
        match tokio::time::timeout(crate::PEER_CALL_TIMEOUT, arr.peer(req)).await {
            // The remote array not reached (its process down, or not answering over the
            // link): for whoever called this array, that is the link's fault, not this
            // array's.
            Ok(Err(ArrayError::Unreachable { target, detail })) => {
                Err(unreachable(format!("{target}: {detail}")))
            }
            Ok(r) => r,
            Err(_) => Err(unreachable(format!(
                "no answer within {:?}",
                crate::PEER_CALL_TIMEOUT
            ))),
        }
    }

    pub(super) async fn peer_op(&self, req: PeerRequest) -> Result<PeerReply> {
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
                let hosts_in = |a: RvAccess| matches!(a, RvAccess::Rw | RvAccess::Ro);
                let opening = {
                    let roles = lock(&self.roles);
                    let r = roles.get(&rv).filter(|r| r.mv == mv).ok_or_else(|| {
                        ArrayError::not_found(format!("RV role of {}:{rv} for {mv}", self.name))
                    })?;
                    !hosts_in(r.access) && hosts_in(access)
                };
                if opening {
                    // Pushes of one pair are ordered (its push lock): the access read above is
                    // still the RV's, so no host is in yet.
                    self.audit_rv_opened(rv, access).await;
                }
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

    pub(super) fn check_range(&self, ld: &Ld, off: u64, len: u64) -> Result<()> {
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

    pub(super) async fn rv_write(
        self: &Arc<Self>,
        id: &PairId,
        off: u64,
        data: &[u8],
    ) -> Result<()> {
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

    pub(super) async fn rv_read(
        self: &Arc<Self>,
        id: &PairId,
        off: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
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

    pub(super) async fn push_access(self: &Arc<Self>, slot: &PairSlot) {
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

    pub(super) async fn take_rv_dirty(
        self: &Arc<Self>,
        id: &PairId,
        blocks: u64,
    ) -> Result<Bitmap> {
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
    pub(super) fn on_copy_error(&self, slot: &PairSlot, e: &ArrayError) -> Option<&'static str> {
        let mut r = lock(&slot.rec);
        match e {
            ArrayError::Unreachable { .. } | ArrayError::PeerUnreachable { .. }
                if r.id.kind() == PairKind::Rdr =>
            {
                r.enter_abnormal_suspend()
                    .then_some("link fault: abnormal suspend")
            }
            ArrayError::DeviceFailed { .. } | ArrayError::Io { .. } => {
                r.enter_fault();
                Some("copy fault: failure separation")
            }
            _ => None,
        }
    }

    pub(super) async fn after_copy_error(self: &Arc<Self>, slot: &PairSlot, e: &ArrayError) {
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
}
