//! The agent's host half: [`Agent`] implements [`Host`] over a backend, adding what every
//! backend needs: quiesce records in the journal, the deadline watchdog, hooks, and undo when
//! a quiesce fails half-way (the watchdog, resume, hooks and journal writes are in `resume`).
//!
//! A quiesce's life: the record is written (durably) *before* the volume is touched, the
//! volume is quiesced, a watchdog task sleeps until the deadline. Release or the watchdog
//! resume the volume and only then remove the record. An agent that dies in between finds the
//! record on its next start and resumes the volume at once: it cannot vouch that the quiesce
//! held while it was down, so the owner's later release is answered with
//! [`HostError::QuiesceLost`] and the copy is not recorded as consistent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use stillpoint_storage::journal::{Journal, ProcessRecord, ProcessRole};
use tokio::sync::Mutex;
use tokio::task::AbortHandle;

use crate::api::{
    CheckReport, HookKind, HookOutput, Host, MountRequest, QuiesceKind, QuiesceMode, QuiesceRecord,
    QuiesceRequest, ReleaseReport, ResumeRecord, VolumeInfo,
};
use crate::backend::Backend;
use crate::config::{BackendKind, HostConfig, VolumeConfig};
use crate::error::{Holder, HostError};
use crate::guard::Guard;
use crate::postgres::Session;
use crate::process::{deadline_boot_ms, left_ms, now_boot_ms, now_unix_ms};
use crate::resume::{ResumeFailed, resume_record};
use crate::sim::SimBackend;

/// Which backend an [`Agent`] drives.
pub enum Engine {
    /// The sim host (its LDs attached by the caller).
    Sim(Arc<SimBackend>),
    /// This Linux machine.
    Linux,
    /// This Linux machine, with array LDs attached as loop devices over FUSE files: volumes
    /// that name an `ld` and no `device` use them.
    LinuxLds(Arc<dyn crate::lds::LdPath>),
}

pub(crate) struct Inner {
    pub(crate) config: HostConfig,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) journal: Journal,
    /// One lock per volume: operations on a volume (including the watchdog's resume) never
    /// interleave.
    pub(crate) locks: HashMap<String, Arc<Mutex<()>>>,
    /// Quiesce ids this process took or re-armed, so `recover` leaves them alone.
    pub(crate) armed: StdMutex<HashSet<u64>>,
    /// Freeze guards of the freezes this process holds, by quiesce id.
    pub(crate) guards: StdMutex<HashMap<u64, Guard>>,
    /// PostgreSQL sessions in online backup mode this process holds, by quiesce id.
    pub(crate) pg_sessions: StdMutex<HashMap<u64, Session>>,
    /// Quiesce ids found in the journal at start: taken by a previous run of the agent, which
    /// died at an unknown point of them (before or after the flush, while they held or not).
    /// Their owner's release is told they were lost, whatever state they are in by then.
    pub(crate) inherited: StdMutex<HashSet<u64>>,
}

/// The host operations of one agent. Construct with [`Agent::start`]; use as `Arc<dyn Host>`.
/// Dropping it stops its watchdogs (as a crash would); quiesces it held stay in the journal
/// and are resumed by the next `start`.
pub struct Agent {
    inner: Arc<Inner>,
    watchdogs: Watchdogs,
}

/// Abort handles of the watchdog tasks, so dropping the agent stops them. Held apart from
/// `Inner` (which the tasks hold) so there is no reference cycle.
type Watchdogs = Arc<StdMutex<Vec<AbortHandle>>>;

impl Drop for Agent {
    fn drop(&mut self) {
        for h in lock_std(&self.watchdogs).drain(..) {
            h.abort();
        }
    }
}

/// Starts the watchdog of a quiesce.
fn arm(inner: &Arc<Inner>, dogs: &Watchdogs, volume: &str, quiesce_id: u64) {
    lock_std(&inner.armed).insert(quiesce_id);
    let task = tokio::spawn(inner.clone().watch(volume.to_string(), quiesce_id));
    let mut dogs = lock_std(dogs);
    // Forget finished watchdogs so the list does not grow without bound.
    dogs.retain(|h| !h.is_finished());
    dogs.push(task.abort_handle());
}

/// The error of a quiesce that could not be complete before its deadline.
pub(crate) fn past_deadline(volume: &str, what: &str) -> HostError {
    HostError::Refused {
        volume: volume.into(),
        rule: "S4 (quiesce deadline)".into(),
        reason: format!(
            "{what} was not done before the quiesce's deadline; the quiesce is undone (ask for a longer limit, or make the stop hook faster)"
        ),
    }
}

/// A join error of a detached operation as a host error.
fn detached_failed(volume: &str, operation: &str, e: tokio::task::JoinError) -> HostError {
    HostError::OsError {
        volume: volume.into(),
        operation: operation.into(),
        detail: format!("the operation's task failed: {e}; check `volume list` for its state"),
    }
}

pub(crate) fn lock_std<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// Validates `config` and resumes every volume `journal` says is still quiesced (an agent
    /// that died mid-quiesce). The agent passes [`stillpoint_storage::Store::journal`], whose
    /// writes are fdatasync'ed.
    pub async fn start(
        config: HostConfig,
        journal: Journal,
        engine: Engine,
    ) -> Result<Arc<Agent>, HostError> {
        config.validate("host config")?;
        let backend: Arc<dyn Backend> = match (engine, config.backend) {
            (Engine::Sim(sim), BackendKind::Sim) => {
                for v in &config.volumes {
                    sim.add_mount_point(&v.mount_point);
                }
                sim
            }
            (Engine::Linux, BackendKind::Linux) => Arc::new(crate::linux::LinuxBackend::new()),
            (Engine::LinuxLds(lds), BackendKind::Linux) => {
                Arc::new(crate::linux::LinuxBackend::with_lds(lds))
            }
            (_, kind) => {
                return Err(HostError::Config {
                    source_name: "host config".into(),
                    field: "host.backend".into(),
                    reason: format!("config says {kind:?} but the agent was given another engine"),
                });
            }
        };
        let locks = config
            .volumes
            .iter()
            .map(|v| (v.name.clone(), Arc::new(Mutex::new(()))))
            .collect();
        let agent = Arc::new(Agent {
            inner: Arc::new(Inner {
                journal,
                config,
                backend,
                locks,
                armed: StdMutex::new(HashSet::new()),
                guards: StdMutex::new(HashMap::new()),
                pg_sessions: StdMutex::new(HashMap::new()),
                inherited: StdMutex::new(HashSet::new()),
            }),
            watchdogs: Arc::new(StdMutex::new(Vec::new())),
        });
        // Before anything else runs: what a dead agent left running (freeze guards, hooks).
        agent.inner.end_orphans().await?;
        agent.recover().await?;
        Ok(agent)
    }

    /// Resumes every quiesce in the journal that this process did not take: they were left
    /// by an agent that died. Returns what it did (also in [`Host::resumes`]).
    pub async fn recover(&self) -> Result<Vec<ResumeRecord>, HostError> {
        let mut done = Vec::new();
        for rec in self.inner.journal.quiesces()? {
            if lock_std(&self.inner.armed).contains(&rec.quiesce_id) {
                continue;
            }
            lock_std(&self.inner.inherited).insert(rec.quiesce_id);
            let reason = format!(
                "the agent restarted while the volume was quiesced by {} (since {} ms, deadline {} ms); \
                 it cannot vouch the quiesce held while it was down, so it resumed the volume",
                rec.owner, rec.taken_at_unix_ms, rec.deadline_unix_ms
            );
            if let Some(r) = self
                .inner
                .auto_resume(&rec.volume, rec.quiesce_id, &reason, 1)
                .await
            {
                if r.error.is_some() {
                    // Keep trying in the background; the record stays until it works.
                    self.arm(&rec.volume, rec.quiesce_id);
                }
                done.push(r);
            }
        }
        Ok(done)
    }

    fn arm(&self, volume: &str, quiesce_id: u64) {
        arm(&self.inner, &self.watchdogs, volume, quiesce_id);
    }
}

impl Inner {
    pub(crate) fn cfg(&self, volume: &str) -> Result<&VolumeConfig, HostError> {
        self.config.volume(volume)
    }

    pub(crate) fn lock_of(&self, volume: &str) -> Result<Arc<Mutex<()>>, HostError> {
        self.cfg(volume)?;
        Ok(self.locks[volume].clone())
    }

    fn refuse_if_quiesced(&self, volume: &str, operation: &str) -> Result<(), HostError> {
        if let Some(q) = self.journal.quiesce(volume)? {
            return Err(HostError::WrongState {
                volume: volume.into(),
                operation: operation.into(),
                state: format!(
                    "quiesced ({:?}) by {} as quiesce {}; release it (thaw) instead",
                    q.kind, q.owner, q.quiesce_id
                ),
            });
        }
        Ok(())
    }

    async fn info(&self, cfg: &VolumeConfig) -> Result<VolumeInfo, HostError> {
        let quiesce = self.journal.quiesce(&cfg.name)?;
        let mut info = VolumeInfo {
            name: cfg.name.clone(),
            ld: cfg.ld.clone(),
            device: cfg.device.clone().or(cfg.ld.clone()).unwrap_or_default(),
            mount_point: cfg.mount_point.clone(),
            fs: cfg.fs.as_str().into(),
            fs_id: None,
            mounted_at: None,
            holders: vec![],
            quiesce,
            problem: None,
        };
        match self.backend.inspect(cfg).await {
            Ok(seen) => {
                info.device = seen.device;
                info.fs = seen.fs;
                info.fs_id = seen.fs_id;
                info.mounted_at = seen.mounted_at;
                info.holders = seen.holders;
            }
            Err(e) => info.problem = Some(e.to_string()),
        }
        if let Some(a) = self.journal.attention(&cfg.name)? {
            let note = format!("ATTENTION (since {} ms): {}", a.at_unix_ms, a.message);
            info.problem = Some(match info.problem.take() {
                Some(p) => format!("{note}; {p}"),
                None => note,
            });
        }
        Ok(info)
    }
}

#[async_trait]
impl Host for Agent {
    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, HostError> {
        let mut out = Vec::new();
        for cfg in &self.inner.config.volumes {
            out.push(self.inner.info(cfg).await?);
        }
        Ok(out)
    }

    async fn volume(&self, volume: &str) -> Result<VolumeInfo, HostError> {
        let cfg = self.inner.cfg(volume)?;
        self.inner.info(cfg).await
    }

    async fn flush(&self, volume: &str) -> Result<(), HostError> {
        let cfg = self.inner.cfg(volume)?;
        let lock = self.inner.lock_of(volume)?;
        let _g = lock.lock().await;
        if let Some(q) = self.inner.journal.quiesce(volume)? {
            // Freeze wrote everything back and holds writers; syncfs on a frozen file system
            // may block until thaw. Unmounted: nothing is buffered.
            tracing::debug!(
                volume,
                quiesce_id = q.quiesce_id,
                "flush of a quiesced volume: nothing to do"
            );
            return Ok(());
        }
        self.inner.backend.flush(cfg).await
    }

    async fn unmount(&self, volume: &str, force: bool) -> Result<Vec<Holder>, HostError> {
        let cfg = self.inner.cfg(volume)?;
        let lock = self.inner.lock_of(volume)?;
        let _g = lock.lock().await;
        self.inner.refuse_if_quiesced(volume, "unmount")?;
        self.inner.backend.unmount(cfg, force).await
    }

    async fn mount(&self, volume: &str, request: &MountRequest) -> Result<VolumeInfo, HostError> {
        let cfg = self.inner.cfg(volume)?;
        let lock = self.inner.lock_of(volume)?;
        let _g = lock.lock().await;
        self.inner.refuse_if_quiesced(volume, "mount")?;
        let mp = request
            .mount_point
            .clone()
            .unwrap_or_else(|| cfg.mount_point.clone());
        self.inner.backend.mount(cfg, &mp, request).await?;
        self.inner.info(cfg).await
    }

    async fn quiesce(&self, req: &QuiesceRequest) -> Result<QuiesceRecord, HostError> {
        // Detached: a caller that goes away (a cancelled RPC) must not leave a volume
        // quiesced without its watchdog, nor a quiesce half taken.
        let (inner, dogs, r) = (self.inner.clone(), self.watchdogs.clone(), req.clone());
        tokio::spawn(async move { quiesce_detached(&inner, &dogs, &r).await })
            .await
            .map_err(|e| detached_failed(&req.volume, "quiesce", e))?
    }

    async fn extend(
        &self,
        volume: &str,
        quiesce_id: u64,
        extra_ms: u64,
    ) -> Result<QuiesceRecord, HostError> {
        let inner = &self.inner;
        let cfg = inner.cfg(volume)?;
        let lock = inner.lock_of(volume)?;
        let _g = lock.lock().await;
        let Some(mut rec) = inner.journal.quiesce(volume)? else {
            return Err(inner.lost(volume, quiesce_id)?);
        };
        if rec.quiesce_id != quiesce_id {
            return Err(inner.lost(volume, quiesce_id)?);
        }
        if left_ms(&rec) == 0 {
            return Err(HostError::Refused {
                volume: volume.into(),
                rule: "S4 (deadline passed)".into(),
                reason: "the deadline has passed and the agent is resuming the volume".into(),
            });
        }
        let total = rec.extended_ms_total.saturating_add(extra_ms);
        if total > cfg.extend_ms_max_total {
            return Err(HostError::Refused {
                volume: volume.into(),
                rule: "S4 (extension ceiling)".into(),
                reason: format!(
                    "extensions would total {total} ms, the volume allows {} ms",
                    cfg.extend_ms_max_total
                ),
            });
        }
        rec.extended_ms_total = total;
        rec.deadline_unix_ms += extra_ms;
        // The guard first: if it already thawed, the quiesce is lost, whatever the journal says.
        let held = lock_std(&inner.guards).remove(&quiesce_id);
        if let Some(g) = held {
            let deadline = deadline_boot_ms(&rec);
            let (g, told) = tokio::task::spawn_blocking(move || {
                let told = g.extend(deadline);
                (g, told)
            })
            .await
            .map_err(|e| detached_failed(volume, "extend", e))?;
            lock_std(&inner.guards).insert(quiesce_id, g);
            if let Err(ended) = told {
                let reason = format!(
                    "the freeze guard could not be extended ({ended:?}); the volume was thawed"
                );
                let old = inner.journal.quiesce(volume)?.unwrap_or(rec);
                inner.resume(&old).await?;
                let logged = resume_record(&old, &reason, None);
                inner.end_quiesce(&old, Some(&logged), None).await?;
                return Err(HostError::QuiesceLost {
                    volume: volume.into(),
                    quiesce_id,
                    reason,
                });
            }
        }
        inner.put_quiesce(&rec).await?;
        Ok(rec)
    }

    async fn release(
        &self,
        volume: &str,
        quiesce_id: Option<u64>,
    ) -> Result<ReleaseReport, HostError> {
        let (inner, v) = (self.inner.clone(), volume.to_string());
        tokio::spawn(async move { release_detached(&inner, &v, quiesce_id).await })
            .await
            .map_err(|e| detached_failed(volume, "release", e))?
    }

    async fn rescan(&self) -> Result<Vec<VolumeInfo>, HostError> {
        self.inner.backend.rescan().await?;
        self.list_volumes().await
    }

    async fn check(&self, volume: &str, repair: bool) -> Result<CheckReport, HostError> {
        let cfg = self.inner.cfg(volume)?;
        let lock = self.inner.lock_of(volume)?;
        let _g = lock.lock().await;
        self.inner.refuse_if_quiesced(volume, "check")?;
        self.inner.backend.check(cfg, repair).await
    }

    async fn run_hook(&self, volume: &str, hook: HookKind) -> Result<HookOutput, HostError> {
        let cfg = self.inner.cfg(volume)?;
        self.inner.hook(cfg, hook, None).await
    }

    async fn quiesces(&self) -> Result<Vec<QuiesceRecord>, HostError> {
        Ok(self.inner.journal.quiesces()?)
    }

    async fn resumes(&self) -> Result<Vec<ResumeRecord>, HostError> {
        Ok(self.inner.journal.resumes()?)
    }

    async fn acknowledge(&self, volume: &str) -> Result<Option<String>, HostError> {
        self.inner.cfg(volume)?;
        Ok(self
            .inner
            .remove_attention(volume)
            .await?
            .map(|a| a.message))
    }
}

impl Inner {
    /// The error for a quiesce that is no longer held, with the reason from the resume log.
    fn lost(&self, volume: &str, quiesce_id: u64) -> Result<HostError, HostError> {
        let reason = self
            .journal
            .resumes()?
            .into_iter()
            .rev()
            .find(|r| r.volume == volume && r.quiesce_id == quiesce_id)
            .map(|r| {
                format!(
                    "the agent resumed it by itself at {} ms: {}",
                    r.resumed_at_unix_ms, r.reason
                )
            })
            .unwrap_or_else(|| "it was released, or never taken on this host".into());
        Ok(HostError::QuiesceLost {
            volume: volume.into(),
            quiesce_id,
            reason,
        })
    }
}

/// Unmounts a volume for a quiesce. A stop hook usually signals the application and returns
/// while it is still exiting, so a busy volume is tried again, with a growing pause, until
/// `wait_until_boot_ms` (boot clock; 0: once); then the last refusal (naming the holders)
/// stands.
async fn unmount_once_stopped(
    backend: &dyn Backend,
    cfg: &VolumeConfig,
    wait_until_boot_ms: u64,
) -> Result<(), HostError> {
    let mut pause_ms = crate::limits::HOLDER_EXIT_POLL_MS;
    loop {
        match backend.unmount(cfg, false).await {
            Err(HostError::Busy { .. }) if now_boot_ms() + pause_ms < wait_until_boot_ms => {
                tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
                pause_ms = (pause_ms * 2).min(crate::limits::HOLDER_EXIT_POLL_MS_MAX);
            }
            other => return other.map(|_| ()),
        }
    }
}

/// The body of [`Host::quiesce`], run on its own task.
async fn quiesce_detached(
    inner: &Arc<Inner>,
    dogs: &Watchdogs,
    req: &QuiesceRequest,
) -> Result<QuiesceRecord, HostError> {
    let cfg = inner.cfg(&req.volume)?;
    let lock = inner.lock_of(&req.volume)?;
    let _g = lock.lock().await;
    inner.refuse_if_quiesced(&req.volume, "quiesce")?;
    let max_ms = match req.mode {
        QuiesceMode::Freeze => cfg.freeze_ms_max,
        QuiesceMode::Unmount | QuiesceMode::Postgresql(_) | QuiesceMode::HooksOnly => {
            cfg.unmount_ms_max
        }
    };
    if req.mode == QuiesceMode::HooksOnly && (cfg.stop.is_none() || cfg.start.is_none()) {
        return Err(HostError::Refused {
            volume: req.volume.clone(),
            rule: "hooks only".into(),
            reason: "a hooks-only quiesce needs both a stop and a start hook on the volume (its [[host.volumes]] stop and start); without them nothing brings the application to a static point".into(),
        });
    }
    let limit_ms = req.limit_ms.unwrap_or(max_ms);
    if limit_ms == 0 || limit_ms > max_ms {
        return Err(HostError::Refused {
            volume: req.volume.clone(),
            rule: "S4 (quiesce limit)".into(),
            reason: format!(
                "asked for {limit_ms} ms, the volume allows 1..={max_ms} ms ({:?})",
                req.mode
            ),
        });
    }
    let seen = inner.backend.inspect(cfg).await?;
    let Some(mounted_at) = seen.mounted_at else {
        return Err(HostError::NotMounted {
            volume: req.volume.clone(),
            operation: "quiesce".into(),
        });
    };
    let kind = match &req.mode {
        QuiesceMode::Freeze => QuiesceKind::Freeze,
        QuiesceMode::Unmount => QuiesceKind::Unmount {
            mount_point: mounted_at,
            apps_stopped: cfg.stop.is_some(),
        },
        QuiesceMode::Postgresql(c) => QuiesceKind::Postgresql { server: c.server() },
        QuiesceMode::HooksOnly => QuiesceKind::HooksOnly,
    };
    let now = now_unix_ms();
    let now_boot = now_boot_ms();
    let rec = QuiesceRecord {
        volume: req.volume.clone(),
        quiesce_id: inner.journal.next_id()?,
        kind,
        owner: req.owner.clone(),
        taken_at_unix_ms: now,
        deadline_unix_ms: now + limit_ms,
        extended_ms_total: 0,
        taken_at_boot_ms: now_boot,
    };
    // A freeze's guard is forked before anything is recorded, and freezes only once it is
    // journaled with the quiesce (one flush): an agent killed in between leaves a guard that
    // exits unfrozen, never one that freezes unrecorded (see `crate::guard`).
    let mut pending = match req.mode {
        QuiesceMode::Freeze => {
            inner
                .backend
                .prepare_freeze(cfg, deadline_boot_ms(&rec))
                .await?
        }
        _ => None,
    };
    let guard_rec = pending.as_ref().map(|p| ProcessRecord {
        pid: p.pid(),
        start_ticks: p.start_ticks(),
        volume: rec.volume.clone(),
        quiesce_id: Some(rec.quiesce_id),
        role: ProcessRole::FreezeGuard,
        started_at_unix_ms: now_unix_ms(),
    });
    // Durable before the volume is touched: a crash from here on is resumed at start.
    inner
        .put_quiesce_with_process(&rec, guard_rec.as_ref())
        .await?;
    let acted: Result<(), HostError> = async {
        match &req.mode {
            QuiesceMode::Freeze => {
                let frozen = inner
                    .backend
                    .freeze(cfg, deadline_boot_ms(&rec), pending.take())
                    .await?;
                if let Some(g) = frozen {
                    lock_std(&inner.guards).insert(rec.quiesce_id, g);
                }
                Ok(())
            }
            QuiesceMode::Unmount => {
                if cfg.stop.is_some() {
                    inner
                        .hook(cfg, HookKind::Stop, Some(deadline_boot_ms(&rec)))
                        .await?;
                }
                inner.backend.flush(cfg).await?;
                // Without a stop hook nothing of ours will make a holder go: one attempt.
                let wait_until_boot_ms = match cfg.stop {
                    Some(_) => deadline_boot_ms(&rec)
                        .min(now_boot_ms().saturating_add(crate::limits::HOLDER_EXIT_WAIT_MS)),
                    None => 0,
                };
                unmount_once_stopped(inner.backend.as_ref(), cfg, wait_until_boot_ms).await
            }
            QuiesceMode::HooksOnly => {
                inner
                    .hook(cfg, HookKind::Stop, Some(deadline_boot_ms(&rec)))
                    .await?;
                inner.backend.flush(cfg).await
            }
            QuiesceMode::Postgresql(c) => {
                let label = format!("stillpoint quiesce {} ({})", rec.quiesce_id, rec.owner);
                let window_ms = left_ms(&rec);
                let session = Session::start(&req.volume, c, &label, window_ms).await?;
                lock_std(&inner.pg_sessions).insert(rec.quiesce_id, session);
                Ok(())
            }
        }?;
        // S4: a quiesce that was not complete before its deadline is no quiesce.
        if left_ms(&rec) == 0 {
            return Err(past_deadline(&req.volume, "the quiesce"));
        }
        Ok(())
    }
    .await;
    if let Err(e) = acted {
        // A failed freeze froze nothing of ours (a refusal, e.g. EBUSY because another tool
        // froze it, is left alone; a freeze still in the kernel is undone by its guard). A
        // guard that froze before a later step failed is in `guards`: resume thaws through it.
        let froze = lock_std(&inner.guards).contains_key(&rec.quiesce_id);
        let undo = match req.mode {
            QuiesceMode::Unmount | QuiesceMode::Postgresql(_) | QuiesceMode::HooksOnly => inner
                .resume(&rec)
                .await
                .map(|_| ())
                .map_err(HostError::from),
            QuiesceMode::Freeze if froze => inner
                .resume(&rec)
                .await
                .map(|_| ())
                .map_err(HostError::from),
            QuiesceMode::Freeze => Ok(()),
        };
        match undo {
            Ok(_) => {
                if let Some(p) = guard_rec.as_ref().filter(|_| !froze) {
                    // Its guard never froze and has exited (or exits at its deadline).
                    inner.remove_process(p.pid).await?;
                }
                inner.remove_quiesce(&req.volume).await?;
            }
            Err(undo) => {
                tracing::error!(volume = %req.volume, error = %undo,
                    "undo of a failed quiesce failed; the watchdog keeps trying");
                arm(inner, dogs, &req.volume, rec.quiesce_id);
            }
        }
        return Err(e);
    }
    arm(inner, dogs, &req.volume, rec.quiesce_id);
    Ok(rec)
}

/// The body of [`Host::release`], run on its own task so a resume is never left half done.
async fn release_detached(
    inner: &Arc<Inner>,
    volume: &str,
    quiesce_id: Option<u64>,
) -> Result<ReleaseReport, HostError> {
    inner.cfg(volume)?;
    let lock = inner.lock_of(volume)?;
    let _g = lock.lock().await;
    let rec = match (inner.journal.quiesce(volume)?, quiesce_id) {
        (Some(r), Some(id)) if r.quiesce_id != id => return Err(inner.lost(volume, id)?),
        (Some(r), _) => r,
        (None, Some(id)) => return Err(inner.lost(volume, id)?),
        (None, None) => {
            return Err(HostError::WrongState {
                volume: volume.into(),
                operation: "release".into(),
                state: "not quiesced by this agent".into(),
            });
        }
    };
    let resumed = match inner.resume(&rec).await {
        Ok(r) => r,
        Err(ResumeFailed::StartHook(e)) => {
            // Mounted again; a start hook that fails must not leave a quiesce nobody can clear.
            inner.end_with_start_hook_failure(&rec, &e, 1, None).await?;
            return Err(e);
        }
        Err(ResumeFailed::Volume(e)) => return Err(e),
    };
    if lock_std(&inner.inherited).remove(&rec.quiesce_id) {
        // Taken by a previous run of this agent that died holding it: nobody can vouch that
        // it reached its static point (the flush) or held while the agent was down, even if
        // resuming it at the start failed and the record stayed until this release.
        let reason = "the agent restarted while the volume was quiesced (it could not resume it at start); it cannot vouch the quiesce held";
        let logged = resume_record(&rec, reason, None);
        inner.end_quiesce(&rec, Some(&logged), None).await?;
        return Err(HostError::QuiesceLost {
            volume: volume.into(),
            quiesce_id: rec.quiesce_id,
            reason: reason.into(),
        });
    }
    if let Some(reason) = resumed.lost {
        // The database's backup ended without its stop (no label), or the freeze was undone
        // by something else: no static point.
        let logged = resume_record(&rec, &reason, None);
        inner.end_quiesce(&rec, Some(&logged), None).await?;
        return Err(HostError::QuiesceLost {
            volume: volume.into(),
            quiesce_id: rec.quiesce_id,
            reason,
        });
    }
    if resumed.guard_thawed_first {
        // The guard reached the deadline (or was told to stop) before this release: the
        // quiesce did not hold until now, so the copy is not a static point.
        let reason = "the freeze guard thawed the volume by itself (deadline reached, or it was signalled) before the release arrived";
        let logged = resume_record(&rec, reason, None);
        inner.end_quiesce(&rec, Some(&logged), None).await?;
        return Err(HostError::QuiesceLost {
            volume: volume.into(),
            quiesce_id: rec.quiesce_id,
            reason: reason.into(),
        });
    }
    inner.end_quiesce(&rec, None, None).await?;
    Ok(ReleaseReport {
        volume: volume.into(),
        quiesce_id: rec.quiesce_id,
        held_ms: rec.held_ms(now_boot_ms(), now_unix_ms()),
        start_hook: resumed.start_hook,
        backup_label: resumed.backup_label,
    })
}
