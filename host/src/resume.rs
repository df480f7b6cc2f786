//! Ending quiesces: the deadline watchdog, the automatic resume (bounded retries, a start hook
//! that keeps failing ends the quiesce with that outcome), undoing a quiesce, ending what a
//! dead agent left running, hooks recorded while they run, and journal writes kept off the
//! async runtime. Methods of the agent's shared state ([`Inner`]); see `agent` for the rest.

use std::sync::Arc;
use std::time::Duration;

use stillpoint_storage::journal::{AttentionRecord, Journal, ProcessRecord, ProcessRole};

use crate::agent::{Inner, lock_std, past_deadline};
use crate::api::{HookKind, HookOutput, MountRequest, QuiesceKind, QuiesceRecord, ResumeRecord};
use crate::config::VolumeConfig;
use crate::error::HostError;
use crate::guard::{self, Ended};
use crate::limits::{
    JOURNAL_WRITE_TIMEOUT_MS, RESUME_ATTEMPTS_MAX, RESUME_RETRY_MS, RESUME_RETRY_MS_MAX,
    START_HOOK_ATTEMPTS_MAX,
};
use crate::process::{self, left_ms, now_boot_ms, now_unix_ms};

/// Why undoing a quiesce failed.
pub(crate) enum ResumeFailed {
    /// The volume itself could not be resumed (thaw or mount): still quiesced.
    Volume(HostError),
    /// The volume is mounted again, but the start hook failed: applications are not running.
    StartHook(HostError),
}

impl From<HostError> for ResumeFailed {
    fn from(e: HostError) -> Self {
        ResumeFailed::Volume(e)
    }
}

impl From<ResumeFailed> for HostError {
    fn from(e: ResumeFailed) -> Self {
        match e {
            ResumeFailed::Volume(e) | ResumeFailed::StartHook(e) => e,
        }
    }
}

/// What undoing a quiesce did.
pub(crate) struct Resumed {
    pub start_hook: Option<HookOutput>,
    /// The freeze guard had already thawed by itself (its deadline, or a signal): the
    /// quiesce did not hold until now.
    pub guard_thawed_first: bool,
    /// A PostgreSQL quiesce: what `pg_backup_stop` returned.
    pub backup_label: Option<crate::postgres::BackupLabel>,
    /// Why the quiesce was found not holding when it was undone: a PostgreSQL backup that
    /// ended without its stop, a frozen file system something else thawed.
    pub lost: Option<String>,
}

/// The resume log entry for quiesce `r`, logged as it is made.
pub(crate) fn resume_record(
    r: &QuiesceRecord,
    reason: &str,
    error: Option<String>,
) -> ResumeRecord {
    let (volume, quiesce_id) = (&r.volume, r.quiesce_id);
    match &error {
        None => tracing::warn!(%volume, quiesce_id, reason, "resumed the volume by itself"),
        Some(e) => tracing::error!(%volume, quiesce_id, reason, error = %e,
            "resuming the volume did not fully succeed"),
    }
    ResumeRecord {
        volume: volume.clone(),
        quiesce_id,
        kind: r.kind.clone(),
        owner: r.owner.clone(),
        taken_at_unix_ms: r.taken_at_unix_ms,
        resumed_at_unix_ms: now_unix_ms(),
        reason: reason.to_string(),
        error,
    }
}

impl Inner {
    /// Runs a journal write (sled flush + fdatasync) on the blocking pool, bounded by
    /// [`JOURNAL_WRITE_TIMEOUT_MS`]: a slow disk never stalls the runtime's workers, and a
    /// write that does not complete in time is an error (treat it as not written).
    pub(crate) async fn jw<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Journal) -> Result<T, stillpoint_storage::journal::JournalError>
        + Send
        + 'static,
    ) -> Result<T, HostError> {
        let journal = self.journal.clone();
        let task = tokio::task::spawn_blocking(move || write(&journal));
        match tokio::time::timeout(Duration::from_millis(JOURNAL_WRITE_TIMEOUT_MS), task).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(e)) => Err(HostError::Journal(format!(
                "the journal write's task failed: {e}"
            ))),
            Err(_) => Err(HostError::Journal(format!(
                "a journal write did not complete within {JOURNAL_WRITE_TIMEOUT_MS} ms (treat it as not written); check the disk holding the agent's data directory"
            ))),
        }
    }

    pub(crate) async fn put_quiesce(&self, rec: &QuiesceRecord) -> Result<(), HostError> {
        let rec = rec.clone();
        self.jw(move |j| j.put_quiesce(&rec)).await
    }

    pub(crate) async fn remove_quiesce(
        &self,
        volume: &str,
    ) -> Result<Option<QuiesceRecord>, HostError> {
        let volume = volume.to_string();
        self.jw(move |j| j.remove_quiesce(&volume)).await
    }

    pub(crate) async fn push_resume(&self, rec: &ResumeRecord) -> Result<(), HostError> {
        let rec = rec.clone();
        self.jw(move |j| j.push_resume(&rec)).await
    }

    pub(crate) async fn put_quiesce_with_process(
        &self,
        rec: &QuiesceRecord,
        process: Option<&ProcessRecord>,
    ) -> Result<(), HostError> {
        let (rec, process) = (rec.clone(), process.cloned());
        self.jw(move |j| j.put_quiesce_with_process(&rec, process.as_ref()))
            .await
    }

    pub(crate) async fn put_process(&self, rec: &ProcessRecord) -> Result<(), HostError> {
        let rec = rec.clone();
        self.jw(move |j| j.put_process(&rec)).await
    }

    pub(crate) async fn remove_process(&self, pid: u32) -> Result<(), HostError> {
        self.jw(move |j| j.remove_process(pid)).await
    }

    pub(crate) async fn remove_attention(
        &self,
        volume: &str,
    ) -> Result<Option<AttentionRecord>, HostError> {
        let volume = volume.to_string();
        self.jw(move |j| j.remove_attention(&volume)).await
    }

    /// Sleeps until the quiesce's deadline (re-reading it, since extensions move it) and
    /// resumes the volume if the quiesce is still held then.
    pub(crate) async fn watch(self: Arc<Self>, volume: String, quiesce_id: u64) {
        let mut journal_errors = 0;
        loop {
            let rec = match self.journal.quiesce(&volume) {
                Ok(Some(r)) if r.quiesce_id == quiesce_id => r,
                Ok(_) => return,
                Err(e) => {
                    journal_errors += 1;
                    tracing::error!(%volume, error = %e, "watchdog cannot read the journal");
                    if journal_errors > RESUME_ATTEMPTS_MAX {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(RESUME_RETRY_MS)).await;
                    continue;
                }
            };
            let left = left_ms(&rec);
            if left == 0 {
                let reason = format!(
                    "deadline passed: quiesced by {} for {} ms (limit {} ms incl. {} ms extension) \
                     with neither release nor extension",
                    rec.owner,
                    rec.held_ms(now_boot_ms(), now_unix_ms()),
                    rec.limit_ms(),
                    rec.extended_ms_total
                );
                self.auto_resume(&volume, quiesce_id, &reason, RESUME_ATTEMPTS_MAX)
                    .await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(left)).await;
        }
    }

    /// Resumes a quiesce nobody released, logging it in the journal. Returns the resume
    /// record, or `None` if the quiesce was no longer held.
    pub(crate) async fn auto_resume(
        &self,
        volume: &str,
        quiesce_id: u64,
        reason: &str,
        attempts: u32,
    ) -> Option<ResumeRecord> {
        let mut last_err: Option<HostError> = None;
        let mut rec = None;
        let mut start_hook_failures = 0;
        let mut pause_ms = RESUME_RETRY_MS;
        for attempt in 1..=attempts.max(1) {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                pause_ms = (pause_ms * 2).min(RESUME_RETRY_MS_MAX);
            }
            let lock = match self.lock_of(volume) {
                Ok(l) => l,
                Err(e) => {
                    // The volume left the config; the record can only be reported.
                    last_err = Some(e);
                    rec = self.journal.quiesce(volume).ok().flatten();
                    break;
                }
            };
            let _g = lock.lock().await;
            rec = match self.journal.quiesce(volume) {
                Ok(Some(r)) if r.quiesce_id == quiesce_id => Some(r),
                Ok(_) => return None,
                Err(e) => {
                    last_err = Some(e.into());
                    continue;
                }
            };
            let Some(r) = rec.as_ref() else { continue };
            match self.resume(r).await {
                Ok(_) => {
                    let out = resume_record(r, reason, None);
                    match self.end_quiesce(r, Some(&out), None).await {
                        Ok(()) => return Some(out),
                        Err(e) => last_err = Some(e),
                    }
                }
                Err(ResumeFailed::StartHook(e)) => {
                    start_hook_failures += 1;
                    tracing::warn!(%volume, attempt, error = %e, "start hook failed during the automatic resume");
                    if start_hook_failures < START_HOOK_ATTEMPTS_MAX {
                        last_err = Some(e);
                        continue;
                    }
                    // Bounded: the volume is mounted; end the quiesce with that outcome.
                    match self
                        .end_with_start_hook_failure(r, &e, start_hook_failures, Some(reason))
                        .await
                    {
                        Ok(out) => return out,
                        Err(j) => last_err = Some(j),
                    }
                }
                Err(ResumeFailed::Volume(e)) => {
                    tracing::warn!(%volume, attempt, error = %e, "automatic resume failed");
                    last_err = Some(e);
                }
            }
        }
        let r = rec?;
        Some(
            self.log_resume(&r, reason, last_err.map(|e| e.to_string()))
                .await,
        )
    }

    /// Ends a quiesce whose volume is mounted again but whose start hook kept failing: the
    /// record is removed (every command works on the volume again) and the outcome waits on
    /// the volume for an operator's acknowledgement. With `auto_reason` (the agent resumed it
    /// by itself), the resume log gets the outcome too, and its record is returned.
    pub(crate) async fn end_with_start_hook_failure(
        &self,
        r: &QuiesceRecord,
        e: &HostError,
        attempts: u32,
        auto_reason: Option<&str>,
    ) -> Result<Option<ResumeRecord>, HostError> {
        let outcome = format!(
            "resumed (mounted again) but the start hook failed ({attempts} attempt(s)): {e}; \
             the applications are not running: start them, then acknowledge with `stillpoint volume ack --node <node> {}`",
            r.volume
        );
        let attention = AttentionRecord {
            volume: r.volume.clone(),
            quiesce_id: r.quiesce_id,
            at_unix_ms: now_unix_ms(),
            message: outcome.clone(),
        };
        let logged = auto_reason.map(|reason| resume_record(r, reason, Some(outcome.clone())));
        self.end_quiesce(r, logged.as_ref(), Some(attention))
            .await?;
        tracing::error!(volume = %r.volume, quiesce_id = r.quiesce_id, %outcome, "quiesce ended with a failed start hook");
        Ok(logged)
    }

    /// Ends a quiesce record in one journal write: first the resume log entry and the
    /// attention record (if any), then the removal, so whoever sees the quiesce gone also
    /// sees why.
    pub(crate) async fn end_quiesce(
        &self,
        r: &QuiesceRecord,
        logged: Option<&ResumeRecord>,
        attention: Option<AttentionRecord>,
    ) -> Result<(), HostError> {
        let (logged, volume) = (logged.cloned(), r.volume.clone());
        self.jw(move |j| {
            if let Some(l) = &logged {
                j.push_resume(l)?;
            }
            if let Some(a) = &attention {
                j.put_attention(a)?;
            }
            j.remove_quiesce(&volume)
        })
        .await?;
        lock_std(&self.armed).remove(&r.quiesce_id);
        Ok(())
    }

    /// Logs (and journals) that the agent resumed a quiesce by itself.
    pub(crate) async fn log_resume(
        &self,
        r: &QuiesceRecord,
        reason: &str,
        error: Option<String>,
    ) -> ResumeRecord {
        let out = resume_record(r, reason, error);
        if let Err(e) = self.push_resume(&out).await {
            tracing::error!(volume = %r.volume, error = %e, "cannot log the automatic resume");
        }
        out
    }

    /// Undoes a quiesce: thaw, or remount and start the applications. Idempotent.
    pub(crate) async fn resume(&self, rec: &QuiesceRecord) -> Result<Resumed, ResumeFailed> {
        let cfg = self.cfg(&rec.volume)?;
        match &rec.kind {
            QuiesceKind::Freeze => {
                let held = lock_std(&self.guards).remove(&rec.quiesce_id);
                let Some(g) = held else {
                    // No guard of ours (sim, or the agent restarted and ended it): thaw.
                    self.backend.thaw(cfg).await?;
                    return Ok(Resumed {
                        start_hook: None,
                        guard_thawed_first: false,
                        backup_label: None,
                        lost: None,
                    });
                };
                let (pid, ticks) = (g.pid, g.start_ticks);
                let ended = tokio::task::spawn_blocking(move || g.thaw())
                    .await
                    .unwrap_or_else(|e| Ended::Silent(format!("the thaw task failed: {e}")));
                let guard_thawed_first = ended == Ended::ByItself;
                if let Ended::Silent(why) = &ended {
                    // The guard was killed or is stuck: thaw ourselves (it froze for us).
                    tracing::warn!(volume = %rec.volume, pid, reason = %why, "freeze guard silent; thawing directly");
                }
                if !matches!(ended, Ended::Thawed | Ended::FoundThawed) {
                    self.backend.thaw(cfg).await?;
                }
                // The guard holds the file system's root open until it exits: wait for that,
                // so an unmount right after the release is not refused as busy.
                if !crate::process::wait_gone(pid, ticks).await {
                    tracing::warn!(volume = %rec.volume, pid, "the freeze guard did not exit after thawing");
                }
                if let Err(e) = self.remove_process(pid).await {
                    tracing::warn!(volume = %rec.volume, pid, error = %e, "cannot forget the freeze guard in the journal");
                }
                Ok(Resumed {
                    start_hook: None,
                    guard_thawed_first,
                    backup_label: None,
                    lost: (ended == Ended::FoundThawed).then(|| {
                        "the volume was found not frozen at the release: something else thawed it while the quiesce was to hold (an `fsfreeze -u`, another tool, or the freeze guard of an agent that died)".to_string()
                    }),
                })
            }
            QuiesceKind::Unmount {
                mount_point,
                apps_stopped,
            } => {
                // The production volume's remount wins: a copy carrying its identity that was
                // mounted meanwhile does not keep it out (XFS: nouuid; ext4 needs nothing).
                let production = MountRequest {
                    identity: crate::api::MountIdentity::IgnoreDuplicate,
                    ..MountRequest::default()
                };
                self.backend.mount(cfg, mount_point, &production).await?;
                let start_hook = if *apps_stopped && cfg.start.is_some() {
                    Some(
                        self.hook(cfg, HookKind::Start, None)
                            .await
                            .map_err(ResumeFailed::StartHook)?,
                    )
                } else {
                    None
                };
                Ok(Resumed {
                    start_hook,
                    guard_thawed_first: false,
                    backup_label: None,
                    lost: None,
                })
            }
            QuiesceKind::HooksOnly => {
                let start_hook = self
                    .hook(cfg, HookKind::Start, None)
                    .await
                    .map_err(ResumeFailed::StartHook)?;
                Ok(Resumed {
                    start_hook: Some(start_hook),
                    guard_thawed_first: false,
                    backup_label: None,
                    lost: None,
                })
            }
            QuiesceKind::Postgresql { server } => {
                // The backup lives in this process's session: stop it there, or it is lost.
                let held = lock_std(&self.pg_sessions).remove(&rec.quiesce_id);
                let (backup_label, lost) = match held {
                    Some(session) => match session.stop().await {
                        Ok(label) => (Some(label), None),
                        Err(why) => (None, Some(why)),
                    },
                    None => (
                        None,
                        Some(format!(
                            "no session holds the online backup on {server} in this agent (it restarted): PostgreSQL ended the backup with the session"
                        )),
                    ),
                };
                Ok(Resumed {
                    start_hook: None,
                    guard_thawed_first: false,
                    backup_label,
                    lost,
                })
            }
        }
    }

    /// Ends what a dead agent left running, before anything else is done: freeze guards are
    /// asked to thaw (SIGTERM; they thaw by the descriptor they froze) and waited for.
    pub(crate) async fn end_orphans(&self) -> Result<(), HostError> {
        for p in self.journal.processes()? {
            if p.quiesce_id
                .is_some_and(|id| lock_std(&self.armed).contains(&id))
            {
                continue;
            }
            if guard::same_process(p.pid, p.start_ticks) {
                let signal = match p.role {
                    ProcessRole::FreezeGuard => libc::SIGTERM,
                    ProcessRole::Hook { .. } => libc::SIGKILL,
                };
                let target = match p.role {
                    ProcessRole::FreezeGuard => p.pid as i32,
                    // A hook leads its own process group: end all of it.
                    ProcessRole::Hook { .. } => -(p.pid as i32),
                };
                tracing::warn!(volume = %p.volume, pid = p.pid, role = ?p.role, "ending a process left by an agent that died");
                // SAFETY: kill(2) on a process (group) we recorded and identified by start time.
                unsafe { libc::kill(target, signal) };
                let gone = crate::process::wait_gone(p.pid, p.start_ticks).await;
                if !gone {
                    tracing::error!(volume = %p.volume, pid = p.pid, "process left by a dead agent does not end");
                }
            }
            self.remove_process(p.pid).await?;
        }
        self.end_unrecorded_guards().await;
        Ok(())
    }

    /// Ends the freeze guards of a dead agent that its journal does not name (it died between
    /// forking the guard and recording it), found by the volume roots they hold: left alone,
    /// one would thaw, at its deadline, whatever freeze holds the volume then.
    async fn end_unrecorded_guards(&self) {
        // Only the linux backend forks guards.
        if self.config.backend != crate::config::BackendKind::Linux {
            return;
        }
        let mount_points: Vec<String> = self
            .config
            .volumes
            .iter()
            .map(|v| v.mount_point.clone())
            .collect();
        let found = tokio::task::spawn_blocking(move || {
            // As the kernel names the root a guard holds: symlinks resolved.
            let resolved: Vec<String> = mount_points
                .iter()
                .map(|mp| {
                    std::fs::canonicalize(mp)
                        .ok()
                        .and_then(|p| p.to_str().map(str::to_string))
                        .unwrap_or_else(|| mp.clone())
                })
                .collect();
            let mps: Vec<&str> = resolved.iter().map(String::as_str).collect();
            guard::guards_holding(&mps)
        })
        .await
        .unwrap_or_default();
        for (pid, ticks, mount_point) in found {
            tracing::warn!(pid, %mount_point, "ending a freeze guard left by an agent that died before recording it");
            // SAFETY: kill(2) on a guard identified by its name, the root it holds and its
            // start time; SIGTERM makes it thaw by the descriptor it froze, and exit.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            if !crate::process::wait_gone(pid, ticks).await {
                tracing::error!(pid, %mount_point, "a freeze guard left by a dead agent does not end");
            }
        }
    }

    /// Runs a configured hook for at most its timeout, or until `deadline_boot_ms` (boot clock) if that
    /// comes first (a stop hook inside a quiesce window).
    pub(crate) async fn hook(
        &self,
        cfg: &VolumeConfig,
        kind: HookKind,
        deadline_boot_ms: Option<u64>,
    ) -> Result<HookOutput, HostError> {
        let hook = match kind {
            HookKind::Stop => cfg.stop.as_ref(),
            HookKind::Start => cfg.start.as_ref(),
        };
        let Some(hook) = hook else {
            return Err(HostError::NoHook {
                volume: cfg.name.clone(),
                hook: kind.as_str().into(),
            });
        };
        let timeout_ms = match deadline_boot_ms {
            Some(d) => hook.timeout_ms.min(d.saturating_sub(now_boot_ms())),
            None => hook.timeout_ms,
        };
        if timeout_ms == 0 {
            return Err(past_deadline(&cfg.name, &format!("{} hook", kind.as_str())));
        }
        let capped = timeout_ms < hook.timeout_ms;
        if let Some(app) = &hook.app {
            return self.backend.run_app(cfg, app, kind, timeout_ms).await;
        }
        let argv = hook.command.clone().unwrap_or_default();
        let running = process::start(&cfg.name, &format!("{} hook", kind.as_str()), &argv)?;
        // Recorded while it runs, so an agent that dies meanwhile has it (and its whole
        // process group) ended by its successor before that runs anything.
        let record = ProcessRecord {
            pid: running.pid,
            start_ticks: guard::start_ticks(running.pid).unwrap_or(0),
            volume: cfg.name.clone(),
            quiesce_id: None,
            role: ProcessRole::Hook {
                kind: kind.as_str().into(),
            },
            started_at_unix_ms: now_unix_ms(),
        };
        if let Err(e) = self.put_process(&record).await {
            running.kill_group();
            return Err(e);
        }
        // Nothing may outlive a stop hook; a start hook may leave the application running.
        let finished = running.finish(timeout_ms, kind == HookKind::Stop).await;
        if let Err(e) = self.remove_process(record.pid).await {
            tracing::warn!(volume = %cfg.name, pid = record.pid, error = %e, "cannot forget the finished hook in the journal");
        }
        let out = match finished {
            Err(HostError::TimedOut { .. }) if capped => {
                return Err(past_deadline(
                    &cfg.name,
                    &format!("{} hook (killed at the deadline)", kind.as_str()),
                ));
            }
            other => other?,
        };
        if out.exit_code != Some(0) {
            return Err(HostError::HookFailed {
                volume: cfg.name.clone(),
                hook: kind.as_str().into(),
                command: out.command.clone(),
                status: match out.exit_code {
                    Some(c) => format!("exit code {c}"),
                    None => "a signal".into(),
                },
                stderr_tail: process::tail(&out.stderr, 400),
            });
        }
        Ok(out)
    }
}
