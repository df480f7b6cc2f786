//! The workload application and its verifier: how the project proves an RV copy consistent.
//!
//! The workload writes **records** into fixed slots after the sim superblock: record `n` lives
//! at `SIM_BLOCK_BYTES + n * RECORD_BYTES`, carries a magic, its sequence number `n`, a
//! payload derived from `n` and a CRC-32 over both. Slots straddle cache blocks on purpose, so
//! a copy taken while some blocks were still in the write-back cache shows records with one
//! half on disk: torn.
//!
//! The verifier reads any [`BlockDevice`] (an MV through its cache, an RV, a file) slot by slot
//! and reports the last record of the intact prefix, the count of intact records, every torn
//! or corrupt record, and every empty slot below the highest written one (a record lost while
//! a later one survived).
//!
//! The workload **recovers** its volume when it first starts in an agent's life (after a
//! restart, a crash of its host, or a restore), and when it starts again after a run that
//! ended on an error, as an application writing a log does: it keeps the intact prefix,
//! clears everything written after it (torn records, holes, and records that survived past a
//! hole because the lost write-back cache evicted at random), flushes, and continues after
//! the prefix. A run ends on an error when the device refuses a write (the array process
//! died, or the host was cut off from it): the block the cache was writing back then is lost,
//! and the records in it are torn or missing. So a crashed business server's MV, or one whose
//! writes failed, is damaged only until its application starts again (a start hook after the
//! next quiesce, or the host's boot), and a copy made after that is a clean prefix. A copy made
//! in between (a quiesce of an MV whose application is down) is a faithful copy of the damage.
//! The recovery is the run's first work. The start waits for it (at most
//! `RECOVERY_WAIT_MS`), as an application's start script returns once the application is up,
//! so whoever started it sees it writing; but a start never fails for it: a volume that
//! cannot be read (the array still gone) ends that run on the error, and the next start
//! recovers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use crate::device::BlockDevice;
use crate::error::HostError;
use crate::limits::SIM_BLOCK_BYTES;
use crate::sim::{SimApp, SimBackend, SimHandle};

/// Longest a start waits for its volume's recovery before it returns (the recovery goes on).
const RECOVERY_WAIT_MS: u64 = 10_000;
/// Size of one record slot. Not a divisor of the cache block, so records straddle blocks.
pub const RECORD_BYTES: u64 = 1536;
const MAGIC: &[u8; 4] = b"SPWR";
const HEADER_BYTES: usize = 16;
/// Slots read per device request while verifying.
const VERIFY_BATCH_SLOTS: u64 = 512;

/// Byte offset of record `seq`.
pub fn record_offset(seq: u64) -> u64 {
    SIM_BLOCK_BYTES + seq * RECORD_BYTES
}

/// Number of record slots a device of `capacity_bytes` holds.
pub fn slots(capacity_bytes: u64) -> u64 {
    capacity_bytes.saturating_sub(SIM_BLOCK_BYTES) / RECORD_BYTES
}

/// The exact bytes of record `seq`.
pub fn record_bytes(seq: u64) -> Vec<u8> {
    let mut r = vec![0u8; RECORD_BYTES as usize];
    r[..4].copy_from_slice(MAGIC);
    r[4..12].copy_from_slice(&seq.to_le_bytes());
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in r[HEADER_BYTES..].iter_mut() {
        // xorshift: cheap, seq-dependent, never all zero.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let crc = crc(&r);
    r[12..16].copy_from_slice(&crc.to_le_bytes());
    r
}

fn crc(r: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&r[4..12]);
    h.update(&r[HEADER_BYTES..]);
    h.finalize()
}

/// A record the verifier found damaged or missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    /// Slot index = the sequence number the record there must carry.
    pub slot: u64,
    pub offset: u64,
    pub reason: String,
}

/// What the verifier found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub slots_total: u64,
    /// Records whose magic, sequence and checksum are right.
    pub intact_count: u64,
    /// Last record of the unbroken intact prefix 0..=n (`None`: record 0 is not intact).
    pub last_intact_seq: Option<u64>,
    /// Highest intact record anywhere.
    pub highest_intact_seq: Option<u64>,
    /// Slots holding something that is not an intact record: torn or corrupt.
    pub torn: Vec<BadRecord>,
    /// Empty slots below the highest non-empty slot: records lost while later ones survived.
    pub gaps: Vec<BadRecord>,
}

impl VerifyReport {
    /// The copy is a consistent prefix of what was written: nothing torn, nothing missing.
    pub fn is_consistent(&self) -> bool {
        self.torn.is_empty() && self.gaps.is_empty()
    }

    /// The highest slot holding anything: an intact record, or a torn or corrupt one.
    pub fn highest_used_slot(&self) -> Option<u64> {
        self.torn
            .iter()
            .map(|b| b.slot)
            .chain(self.highest_intact_seq)
            .max()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} intact records, last intact {}, {} torn/corrupt, {} missing",
            self.intact_count,
            self.last_intact_seq
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            self.torn.len(),
            self.gaps.len()
        )?;
        if let Some(t) = self.torn.first() {
            write!(
                f,
                " (first torn: record {} at byte {}: {})",
                t.slot, t.offset, t.reason
            )?;
        }
        Ok(())
    }
}

/// Classifies one slot: `Ok(true)` intact, `Ok(false)` empty, `Err(reason)` torn/corrupt.
fn classify(slot: u64, r: &[u8]) -> Result<bool, String> {
    if r.iter().all(|&b| b == 0) {
        return Ok(false);
    }
    if &r[..4] != MAGIC {
        return Err("header missing (only part of the record reached the disk)".into());
    }
    let seq = u64::from_le_bytes(r[4..12].try_into().unwrap_or([0; 8]));
    if seq != slot {
        return Err(format!("carries sequence {seq}"));
    }
    let stored = u32::from_le_bytes(r[12..16].try_into().unwrap_or([0; 4]));
    if stored != crc(r) {
        return Err("checksum mismatch (record torn)".into());
    }
    Ok(true)
}

/// Reads every slot of `dev` and reports what it holds.
pub async fn verify(dev: &dyn BlockDevice) -> Result<VerifyReport, HostError> {
    let slots_total = slots(dev.capacity_bytes().await?);
    let mut rep = VerifyReport {
        slots_total,
        intact_count: 0,
        last_intact_seq: None,
        highest_intact_seq: None,
        torn: vec![],
        gaps: vec![],
    };
    let mut prefix_open = true;
    let mut empties: Vec<BadRecord> = vec![];
    let mut slot = 0;
    while slot < slots_total {
        let n = VERIFY_BATCH_SLOTS.min(slots_total - slot);
        let buf = dev
            .read_at(record_offset(slot), (n * RECORD_BYTES) as usize)
            .await?;
        for (i, r) in buf.chunks_exact(RECORD_BYTES as usize).enumerate() {
            let s = slot + i as u64;
            let bad = |reason: String| BadRecord {
                slot: s,
                offset: record_offset(s),
                reason,
            };
            match classify(s, r) {
                Ok(true) => {
                    rep.intact_count += 1;
                    rep.highest_intact_seq = Some(s);
                    if prefix_open {
                        rep.last_intact_seq = Some(s);
                    }
                    rep.gaps.append(&mut empties);
                }
                Ok(false) => {
                    prefix_open = false;
                    empties.push(bad("empty slot below later records".into()));
                }
                Err(reason) => {
                    prefix_open = false;
                    rep.gaps.append(&mut empties);
                    rep.torn.push(bad(reason));
                }
            }
        }
        slot += n;
    }
    Ok(rep)
}

/// Clears every slot after the intact prefix that holds anything (torn, corrupt, or an intact
/// record past a hole) and flushes; returns the next sequence number to write. A volume that
/// is a clean prefix is left untouched.
async fn recover(handle: &SimHandle) -> Result<u64, HostError> {
    let rep = verify(handle).await?;
    let next = rep.last_intact_seq.map_or(0, |s| s + 1);
    let Some(last_used) = rep.highest_used_slot().filter(|&l| l >= next) else {
        return Ok(next);
    };
    let zeros = vec![0u8; (VERIFY_BATCH_SLOTS * RECORD_BYTES) as usize];
    let mut slot = next;
    while slot <= last_used {
        let n = VERIFY_BATCH_SLOTS.min(last_used + 1 - slot);
        handle
            .write_at(record_offset(slot), &zeros[..(n * RECORD_BYTES) as usize])
            .await?;
        slot += n;
    }
    handle.fsync().await?;
    tracing::info!(
        next,
        cleared_slots = last_used + 1 - next,
        torn = rep.torn.len(),
        "workload recovered its volume: the damaged tail after the intact prefix is cleared"
    );
    Ok(next)
}

#[async_trait]
impl BlockDevice for SimHandle {
    fn name(&self) -> String {
        "sim volume handle".into()
    }
    async fn capacity_bytes(&self) -> Result<u64, HostError> {
        Ok(SimHandle::capacity_bytes(self))
    }
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, HostError> {
        SimHandle::read_at(self, offset, len).await
    }
    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), HostError> {
        SimHandle::write_at(self, offset, data).await
    }
}

struct Running {
    stop_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), HostError>>,
}

/// The workload application: writes sequenced, checksummed records to the volume mounted at
/// its mount point while running. Register it with [`SimBackend::register_app`] and name it in
/// a volume's stop/start hooks.
pub struct Workload {
    sim: Arc<SimBackend>,
    mount_point: String,
    name: String,
    /// Stop writing (but stay running, holding the volume) after this many records in total.
    records_max: Option<u64>,
    /// Pause between records; `None` writes as fast as the volume takes them.
    pace: Option<std::time::Duration>,
    /// Sequence number of the next record, once known.
    next_seq: Arc<AtomicU64>,
    /// Recover the volume before the next run writes: set until the first start has
    /// recovered, and again whenever a run ended on an error (a write the device refused).
    recover_on_start: Arc<AtomicBool>,
    running: Mutex<Option<Running>>,
    /// How long a stop takes (the writer keeps writing meanwhile), in ms.
    stop_delay_ms: AtomicU64,
}

/// `next_seq` value meaning "not known yet": no run has recovered the volume.
const UNKNOWN: u64 = u64::MAX;

impl Workload {
    pub fn new(
        sim: Arc<SimBackend>,
        mount_point: &str,
        name: &str,
        records_max: Option<u64>,
        pace: Option<std::time::Duration>,
    ) -> Arc<Workload> {
        Arc::new(Workload {
            sim,
            mount_point: mount_point.into(),
            name: name.into(),
            records_max,
            pace,
            next_seq: Arc::new(AtomicU64::new(UNKNOWN)),
            recover_on_start: Arc::new(AtomicBool::new(true)),
            running: Mutex::new(None),
            stop_delay_ms: AtomicU64::new(0),
        })
    }

    /// Makes every later stop take `ms` milliseconds before the writer stops (a slow stop
    /// hook, as an application finishing its work).
    pub fn set_stop_delay_ms(&self, ms: u64) {
        self.stop_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Creates and registers one workload per application name that a volume's hooks name
    /// with `app = "..."`, writing to that volume's mount point: what a sim agent needs before
    /// [`crate::Agent::start`]. Returns them by application name.
    pub fn register_for(
        sim: &Arc<SimBackend>,
        config: &crate::config::HostConfig,
    ) -> Vec<(String, Arc<Workload>)> {
        let pace = config
            .sim
            .workload_pace_ms
            .map(std::time::Duration::from_millis);
        let mut out: Vec<(String, Arc<Workload>)> = Vec::new();
        for v in &config.volumes {
            for hook in [&v.stop, &v.start].into_iter().flatten() {
                let Some(app) = &hook.app else { continue };
                if out.iter().any(|(name, _)| name == app) {
                    continue;
                }
                let w = Workload::new(sim.clone(), &v.mount_point, app, None, pace);
                w.set_stop_delay_ms(config.sim.workload_stop_ms);
                sim.register_app(app, w.clone());
                out.push((app.clone(), w));
            }
        }
        out
    }

    /// Records written so far in total (the next sequence number), once the first run has
    /// recovered the volume.
    pub fn records_written(&self) -> Option<u64> {
        match self.next_seq.load(Ordering::SeqCst) {
            UNKNOWN => None,
            n => Some(n),
        }
    }

    /// Whether the writer is running.
    pub async fn is_running(&self) -> bool {
        self.running
            .lock()
            .await
            .as_ref()
            .is_some_and(|r| !r.task.is_finished())
    }
}

#[async_trait]
impl SimApp for Workload {
    async fn start(&self) -> Result<String, HostError> {
        let mut running = self.running.lock().await;
        if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return Ok(format!("{} already running", self.name));
        }
        let handle = self.sim.open(&self.mount_point, &self.name).await?;
        // First start in this process's life (after a restore, a restart, or a crash), or the
        // last run ended on an error (its device refused a write: the array died or was cut
        // off, and a block the write-back cache was writing back is lost): the run recovers
        // first, as a log-writing application does, before it writes anything.
        let recover_first = self.recover_on_start.load(Ordering::SeqCst);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let next_seq = self.next_seq.clone();
        let recover_on_start = self.recover_on_start.clone();
        let limit = self
            .records_max
            .unwrap_or(u64::MAX)
            .min(slots(handle.capacity_bytes()));
        let pace = self.pace;
        let (recovered_tx, recovered_rx) = tokio::sync::oneshot::channel::<Result<u64, String>>();
        let task = tokio::spawn(async move {
            let result = async {
                if recover_first {
                    // Keep the intact prefix, clear the damaged tail (torn records, holes, and
                    // records that survived past a hole), make that durable, and continue
                    // after the prefix. A recovery that fails ends the run on its error and
                    // leaves the flag set, so the next start recovers again.
                    let recovered = recover(&handle).await;
                    let _ = recovered_tx.send(match &recovered {
                        Ok(next) => Ok(*next),
                        Err(e) => Err(e.to_string()),
                    });
                    let next = recovered?;
                    next_seq.store(next, Ordering::SeqCst);
                    recover_on_start.store(false, Ordering::SeqCst);
                }
                loop {
                    if *stop_rx.borrow() {
                        return Ok(());
                    }
                    let seq = next_seq.load(Ordering::SeqCst);
                    if seq >= limit {
                        // Idle but running (and holding the volume) until stopped.
                        let _ = stop_rx.wait_for(|s| *s).await;
                        return Ok(());
                    }
                    handle
                        .write_at(record_offset(seq), &record_bytes(seq))
                        .await?;
                    next_seq.store(seq + 1, Ordering::SeqCst);
                    match pace {
                        Some(p) => {
                            let _ = tokio::time::timeout(p, stop_rx.wait_for(|s| *s)).await;
                        }
                        None => tokio::task::yield_now().await,
                    }
                }
            }
            .await;
            if result.is_err() {
                recover_on_start.store(true, Ordering::SeqCst);
            }
            handle.close().await;
            result
        });
        *running = Some(Running { stop_tx, task });
        if recover_first {
            // The start returns once the volume is recovered, as an application's start
            // script returns once it is up (so whoever started it sees it writing), but never
            // fails for it: a recovery that fails or takes longer than
            // [`RECOVERY_WAIT_MS`] is said, and the run goes on (or ends) on its own.
            let waited = tokio::time::timeout(
                std::time::Duration::from_millis(RECOVERY_WAIT_MS),
                recovered_rx,
            )
            .await;
            return Ok(match waited {
                Ok(Ok(Ok(next))) => format!(
                    "{} started at record {next} after recovering its volume",
                    self.name
                ),
                Ok(Ok(Err(e))) => format!(
                    "{} started, but recovering its volume failed ({e}); it stopped and \
                     recovers again at its next start",
                    self.name
                ),
                Ok(Err(_)) | Err(_) => {
                    format!("{} started; it is still recovering its volume", self.name)
                }
            });
        }
        Ok(format!(
            "{} started at record {}",
            self.name,
            self.next_seq.load(Ordering::SeqCst)
        ))
    }

    async fn stop(&self) -> Result<String, HostError> {
        let delay_ms = self.stop_delay_ms.load(Ordering::SeqCst);
        if delay_ms > 0 && self.is_running().await {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        }
        let Some(r) = self.running.lock().await.take() else {
            return Ok(format!("{} not running", self.name));
        };
        r.stop_tx.send_replace(true);
        let outcome = r.task.await.map_err(|e| HostError::WrongState {
            volume: self.mount_point.clone(),
            operation: format!("stop {}", self.name),
            state: format!("writer task failed: {e}"),
        })?;
        let written = self.next_seq.load(Ordering::SeqCst);
        match outcome {
            Ok(()) => Ok(format!("{} stopped after record {}", self.name, written)),
            Err(e) => Ok(format!("{} had stopped on error: {e}", self.name)),
        }
    }
}

/// What [`run_on_device`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRun {
    /// Records on the volume after the run (next sequence number).
    pub records_total: u64,
    /// Whether the cache was flushed before the volume was let go.
    pub flushed: bool,
    /// The verifier's view of the device afterwards.
    pub device_report: VerifyReport,
}

/// Runs the workload against `device` outside any agent (demos, `stillpoint workload`):
/// formats it if asked, writes `records` more records through a sim volume, then flushes and
/// unmounts, or with `flush = false` drops the volume with its write-back cache still dirty
/// (what a crash, or a separate without flush, leaves on the device).
pub async fn run_on_device(
    device: Arc<dyn BlockDevice>,
    records: u64,
    format: bool,
    flush: bool,
    seed: u64,
) -> Result<WorkloadRun, HostError> {
    use crate::backend::Backend;
    if format {
        SimBackend::format(device.as_ref()).await?;
    }
    let before = verify(device.as_ref()).await?;
    let start = before.last_intact_seq.map(|s| s + 1).unwrap_or(0);
    let sim = SimBackend::new(seed);
    sim.attach("local", device.clone()).await?;
    let mount_point = "/local";
    sim.add_mount_point(mount_point);
    let cfg = crate::config::VolumeConfig {
        name: "local".into(),
        ld: Some("local".into()),
        device: None,
        mount_point: mount_point.into(),
        fs: crate::config::FsType::Sim,
        mount_options: vec![],
        freeze_ms_max: crate::limits::FREEZE_MS_MAX_DEFAULT,
        unmount_ms_max: crate::limits::UNMOUNT_MS_MAX_DEFAULT,
        extend_ms_max_total: crate::limits::EXTEND_MS_MAX_TOTAL_DEFAULT,
        delayed_write_wait_ms: crate::limits::DELAYED_WRITE_WAIT_MS_DEFAULT,
        stop: None,
        start: None,
    };
    sim.mount(&cfg, mount_point, &crate::api::MountRequest::default())
        .await?;
    let w = Workload::new(
        sim.clone(),
        mount_point,
        "workload",
        Some(start.saturating_add(records)),
        None,
    );
    w.start().await?;
    let target = start
        .saturating_add(records)
        .min(slots(device.capacity_bytes().await?));
    // Bounded: the writer stops at `target` (or on error, which ends the task).
    while w.records_written().unwrap_or(0) < target && w.is_running().await {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    w.stop().await?;
    if flush {
        sim.unmount(&cfg, false).await?;
    }
    Ok(WorkloadRun {
        records_total: w.records_written().unwrap_or(start),
        flushed: flush,
        device_report: verify(device.as_ref()).await?,
    })
}
