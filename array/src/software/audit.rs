//! The audit log: what the array saw, in its own words, for a referee outside the cluster.
//!
//! With `audit_log = true` the array appends one JSON line ([`AuditLine`]) to
//! `data_dir/audit.log` for every pair state change (operations and the engine's own
//! transitions), every pair operation it refused, every host read or write attempted on an RV
//! (accepted or refused, with the RV access of that instant), and, at most once per
//! `audit_mv_write_sample_ms` (default [`AUDIT_MV_WRITE_SAMPLE_MS`]; 0: every one) per LD, a
//! host write that landed on a plain or master LD (so a reader can see how long an
//! application's writes stopped, and, unsampled, whether an MV was written between two other
//! lines). An MV write's line is written after the write landed and before it is answered,
//! under the LD's I/O lock. With `audit_rv_head_bytes` above 0, an RV opened to hosts (its
//! access going from `nr`/`na` to `rw`/`ro`, which is how a separate ends) has its first
//! bytes recorded ([`AuditEvent::RvOpened`]), read before the new access lets any host in: the
//! head of the copy exactly as the array cut it (for an RDR pair, on the RV's array). Lines carry a sequence number
//! that grows by one per line, across restarts (the next one continues after the last line
//! found in the file): a gap says lines were lost.
//!
//! A line is written with one `write` call on a file opened for appending, before the I/O or
//! operation it records is answered; it is not fsynced (it survives the array process being
//! killed, not the machine losing power). A line that cannot be written is reported in the
//! array's log and leaves a gap in the sequence, never stops the array.

use std::io::Write;

use super::*;

/// Writes to one plain or master LD are recorded at most this often (one line says "the
/// application was writing at this instant").
pub const AUDIT_MV_WRITE_SAMPLE_MS: u64 = 100;

/// Most bytes of an RV's head an [`AuditEvent::RvOpened`] line carries.
pub const AUDIT_RV_HEAD_BYTES_MAX: u64 = 65_536;

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    /// One more than the line before (across restarts).
    pub seq: u64,
    pub at_unix_ms: u64,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// What an audit line records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A pair's state changed (`state` is `None` once unset); `reason` names the operation or
    /// the engine's transition ("replicate", "separate", "copy complete", ...).
    Pair {
        pair: PairId,
        state: Option<PairState>,
        reason: String,
        /// The fencing token the operation came with (a job's step); `None` for an operator's
        /// command and for the array's own transitions. Lines from before this field load
        /// `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<FenceToken>,
    },
    /// A pair operation the array refused, with why (and the token it came with, if any).
    PairRefused {
        pair: PairId,
        operation: String,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<FenceToken>,
    },
    /// A host read or write on an LD that is an RV.
    RvIo {
        host: String,
        ld: u32,
        write: bool,
        accepted: bool,
        /// The RV access at that instant.
        access: RvAccess,
        /// Why it was refused (empty when accepted).
        error: String,
    },
    /// A host write landed on a plain or master LD (sampled, unless the sample interval is 0).
    MvWrite { host: String, ld: u32 },
    /// RV `ld` of this array opened to hosts with `access`; `head_hex` is its first
    /// `audit_rv_head_bytes` bytes (lower-case hex) read just before, or empty with `error`
    /// saying why they could not be read (a failed LD).
    RvOpened {
        ld: u32,
        access: RvAccess,
        head_hex: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        error: String,
    },
}

impl AuditEvent {
    /// The bytes of an [`AuditEvent::RvOpened`] line's head (`None` for other lines, or a head
    /// that is not valid hex).
    pub fn rv_head(&self) -> Option<Vec<u8>> {
        let AuditEvent::RvOpened { head_hex, .. } = self else {
            return None;
        };
        if head_hex.len() % 2 != 0 {
            return None;
        }
        (0..head_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(head_hex.get(i..i + 2)?, 16).ok())
            .collect()
    }
}

pub(super) struct Audit {
    out: Mutex<Option<AuditFile>>,
    /// See `ArrayConfig::audit_mv_write_sample_ms`.
    mv_write_sample_ms: u64,
    /// See `ArrayConfig::audit_rv_head_bytes`.
    rv_head_bytes: u64,
}

struct AuditFile {
    file: File,
    path: PathBuf,
    next_seq: u64,
}

impl Audit {
    pub(super) fn disabled() -> Audit {
        Audit {
            out: Mutex::new(None),
            mv_write_sample_ms: AUDIT_MV_WRITE_SAMPLE_MS,
            rv_head_bytes: 0,
        }
    }

    /// Opens (or creates) `path` for appending; the sequence continues after the last line
    /// that parses.
    pub(super) fn open(
        path: PathBuf,
        mv_write_sample_ms: u64,
        rv_head_bytes: u64,
    ) -> Result<Audit> {
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(ArrayError::io(&path, e)),
        };
        let next_seq = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<AuditLine>(l).ok())
            .map(|l| l.seq + 1)
            .unwrap_or(0);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ArrayError::io(&path, e))?;
        if !text.is_empty() && !text.ends_with('\n') {
            // A line cut short by a kill: end it so the next line parses on its own.
            file.write_all(b"\n")
                .map_err(|e| ArrayError::io(&path, e))?;
        }
        Ok(Audit {
            out: Mutex::new(Some(AuditFile {
                file,
                path,
                next_seq,
            })),
            mv_write_sample_ms,
            rv_head_bytes,
        })
    }

    pub(super) fn enabled(&self) -> bool {
        lock(&self.out).is_some()
    }

    pub(super) fn record(&self, event: AuditEvent) {
        let mut out = lock(&self.out);
        let Some(f) = out.as_mut() else { return };
        let seq = f.next_seq;
        f.next_seq += 1;
        let line = AuditLine {
            seq,
            at_unix_ms: now_unix_ms(),
            event,
        };
        let mut text = match serde_json::to_string(&line) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(seq, "audit line {seq} not written: {e}");
                return;
            }
        };
        text.push('\n');
        if let Err(e) = f.file.write_all(text.as_bytes()) {
            tracing::error!(
                seq,
                "audit line {seq} not written to {}: {e}",
                f.path.display()
            );
        }
    }
}

impl Inner {
    /// Records a host write on plain or master LD `ld`, at most once per sample interval
    /// (every one when it is 0).
    pub(super) fn audit_mv_write(&self, host: &str, ld: &Ld) {
        if !self.audit.enabled() {
            return;
        }
        let sample_ms = self.audit.mv_write_sample_ms;
        if sample_ms == 0 {
            self.audit.record(AuditEvent::MvWrite {
                host: host.into(),
                ld: ld.number,
            });
            return;
        }
        let now = now_unix_ms();
        let last = ld.audit_sampled_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < sample_ms {
            return;
        }
        if ld
            .audit_sampled_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.audit.record(AuditEvent::MvWrite {
                host: host.into(),
                ld: ld.number,
            });
        }
    }

    /// Records the head of RV `ld` as hosts are about to see it, when `access` opens it to
    /// them (see [`AuditEvent::RvOpened`]). Call before the new access takes effect.
    pub(super) async fn audit_rv_opened(&self, ld: u32, access: RvAccess) {
        let bytes = self.audit.rv_head_bytes;
        if bytes == 0 || !self.audit.enabled() {
            return;
        }
        let read = match self.ld(ld) {
            Ok(l) => {
                let (l, array) = (l.clone(), self.name.clone());
                tokio::task::spawn_blocking(move || {
                    l.read_at(&array, 0, bytes.min(l.capacity_bytes))
                })
                .await
                .unwrap_or_else(|e| {
                    Err(ArrayError::OutcomeUnknown {
                        op: format!("read the head of LD {ld}"),
                        detail: e.to_string(),
                    })
                })
            }
            Err(e) => Err(e),
        };
        let (head_hex, error) = match read {
            Ok(head) => (
                head.iter().map(|b| format!("{b:02x}")).collect(),
                String::new(),
            ),
            Err(e) => (String::new(), e.to_string()),
        };
        self.audit.record(AuditEvent::RvOpened {
            ld,
            access,
            head_hex,
            error,
        });
    }

    /// Records a host read or write on RV `ld` and passes its outcome through.
    pub(super) fn audit_rv_io<T>(
        &self,
        host: &str,
        ld: u32,
        write: bool,
        access: RvAccess,
        outcome: Result<T>,
    ) -> Result<T> {
        self.audit.record(AuditEvent::RvIo {
            host: host.into(),
            ld,
            write,
            accepted: outcome.is_ok(),
            access,
            error: outcome
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        });
        outcome
    }
}
