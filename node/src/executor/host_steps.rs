//! Host steps: what the agent of a business or backup node does on its own host half for a
//! step. Each is idempotent: sent again after it took effect, it reports the effect.

use std::collections::VecDeque;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use stillpoint_coordinator::inventory::QuiesceMethod;
use stillpoint_coordinator::job::wire::{StepOrder, quiesce_owner};
use stillpoint_coordinator::job::{FencingToken, StepCall, StepResult};
use stillpoint_coordinator::postgres::{BackupLabel, PostgresCopy};
use stillpoint_host::{
    HookKind, Host, HostError, MountIdentity, MountRequest, PostgresConnect, QuiesceMode,
    QuiesceRequest,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Executor, StepEnd};

/// Longest one host call may take before its effect is taken as unknown. Generous: host calls
/// carry their own bounds (hooks, system commands), this only guards against a call that hangs.
pub const HOST_CALL_MS: u64 = 3_600_000;

/// How many lines of a backup command's stderr a failure reports.
pub const STDERR_TAIL_LINES: usize = 20;

/// Longest line of stderr kept (a command printing binary junk does not fill the journal).
const STDERR_LINE_BYTES_MAX: usize = 512;

/// A host error as a step's end: a timeout's effect is unknown; anything else the host refused
/// or failed, having undone what it started.
fn host_end(what: &str, e: HostError) -> StepEnd {
    match e {
        HostError::TimedOut { .. } | HostError::Unreachable(_) => {
            StepEnd::Unknown(format!("{what}: {e}"))
        }
        e => StepEnd::Failed(format!("{what}: {e}")),
    }
}

/// Runs one host call under [`HOST_CALL_MS`].
async fn call<T>(what: &str, f: impl Future<Output = Result<T, HostError>>) -> Result<T, StepEnd> {
    match tokio::time::timeout(Duration::from_millis(HOST_CALL_MS), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(host_end(what, e)),
        Err(_) => Err(StepEnd::Unknown(format!(
            "{what} did not finish within {HOST_CALL_MS} ms"
        ))),
    }
}

/// The owner prefix every attempt of the step shares (see [`quiesce_owner`]).
fn step_owner_prefix(token: &FencingToken) -> String {
    format!("job {} step {} attempt ", token.job_id, token.step_index)
}

pub(crate) async fn run(exec: &Executor, order: &StepOrder) -> StepEnd {
    let host = match exec.host() {
        Ok(h) => h.as_ref(),
        Err(e) => return StepEnd::Failed(e),
    };
    let d = &order.dispatch;
    let result = match &d.call {
        StepCall::FreeRv { volume } => free_rv(host, &volume.volume).await,
        StepCall::Quiesce {
            volume,
            method,
            limit_ms,
        } => quiesce(host, &volume.volume, method, *limit_ms, &d.token).await,
        StepCall::Release { volume, .. } => release(host, &volume.volume, d.quiesce_id).await,
        StepCall::MountRv { volume } => {
            mount_rv(
                host,
                &volume.volume,
                d.check_first,
                d.postgres_copy.as_deref(),
            )
            .await
        }
        StepCall::RunBackup {
            command,
            timeout_ms,
        } => run_backup(command, *timeout_ms).await,
        StepCall::SetPair { .. }
        | StepCall::Replicate { .. }
        | StepCall::Separate { .. }
        | StepCall::AwaitSeparated { .. } => {
            Err(StepEnd::Failed("an array step is not a host step".into()))
        }
    };
    match result {
        Ok(r) => StepEnd::Done(r),
        Err(end) => end,
    }
}

/// Backup node: stop the RV's users (its volume's stop hook, when one is configured), flush
/// and unmount the RV (not forced: a busy RV fails naming its holders).
async fn free_rv(host: &dyn Host, volume: &str) -> Result<StepResult, StepEnd> {
    let info = call(&format!("reading RV {volume}"), host.volume(volume)).await?;
    if info.mounted_at.is_none() {
        return Ok(StepResult::RvFreed);
    }
    rv_users(host, volume, HookKind::Stop).await?;
    call(&format!("flushing RV {volume}"), host.flush(volume)).await?;
    call(
        &format!("unmounting RV {volume}"),
        host.unmount(volume, false),
    )
    .await?;
    Ok(StepResult::RvFreed)
}

/// Business node: quiesce the MV under this attempt's owner, with the step's deadline. A
/// quiesce an attempt of this step already holds on the volume is reported, not taken twice.
async fn quiesce(
    host: &dyn Host,
    volume: &str,
    method: &QuiesceMethod,
    limit_ms: u64,
    token: &FencingToken,
) -> Result<StepResult, StepEnd> {
    let mode = match method {
        QuiesceMethod::Unmount => QuiesceMode::Unmount,
        QuiesceMethod::Freeze => QuiesceMode::Freeze,
        QuiesceMethod::Postgresql(pg) => QuiesceMode::Postgresql(PostgresConnect {
            host: pg.host.clone(),
            port: pg.port,
            user: pg.user.clone(),
            database: pg.database.clone(),
            password: pg.password.clone(),
        }),
        QuiesceMethod::HooksOnly => QuiesceMode::HooksOnly,
    };
    let held = call(&format!("listing quiesces of {volume}"), host.quiesces()).await?;
    let owner = quiesce_owner(token);
    if let Some(q) = held.iter().find(|q| q.volume == volume && q.owner == owner) {
        return Ok(StepResult::Quiesced {
            quiesce_id: q.quiesce_id,
        });
    }
    // An earlier attempt of this step still holds the volume (its reply was lost and asking
    // found it not done, or the agent restarted under it): nobody vouches for that quiesce,
    // so it is ended and a fresh one taken under this attempt, never adopted.
    let prefix = step_owner_prefix(token);
    if let Some(q) = held
        .iter()
        .find(|q| q.volume == volume && q.owner.starts_with(&prefix))
    {
        let ended = host.release(volume, Some(q.quiesce_id)).await;
        tracing::warn!(volume, quiesce_id = q.quiesce_id, owner = %q.owner, ?ended, "ended an earlier attempt's quiesce before quiescing again");
    }
    let request = QuiesceRequest {
        volume: volume.to_string(),
        mode,
        limit_ms: Some(limit_ms),
        owner: quiesce_owner(token),
    };
    // A business host that has just booted answers before its fstab and init system have
    // mounted the MV: the host refuses such a quiesce before touching anything, so it is
    // asked again until the MV is mounted (bounded).
    let mounted_by = tokio::time::Instant::now() + Duration::from_millis(MV_MOUNTED_WAIT_MS);
    let rec = loop {
        let what = format!("quiescing MV {volume}");
        match tokio::time::timeout(Duration::from_millis(HOST_CALL_MS), host.quiesce(&request))
            .await
        {
            Ok(Ok(rec)) => break rec,
            Ok(Err(HostError::NotMounted { .. })) if tokio::time::Instant::now() < mounted_by => {
                tracing::debug!(volume, "the MV is not mounted yet; asking again");
                tokio::time::sleep(Duration::from_millis(MV_MOUNTED_RETRY_MS)).await;
            }
            Ok(Err(HostError::NotMounted { .. })) => {
                return Err(StepEnd::Failed(format!(
                    "{what}: the MV is still not mounted after waiting {MV_MOUNTED_WAIT_MS} ms: mount it (and start its application) before backing it up"
                )));
            }
            Ok(Err(e)) => return Err(host_end(&what, e)),
            Err(_) => {
                return Err(StepEnd::Unknown(format!(
                    "{what} did not finish within {HOST_CALL_MS} ms"
                )));
            }
        }
    };
    Ok(StepResult::Quiesced {
        quiesce_id: rec.quiesce_id,
    })
}

/// How long a quiesce waits for its MV to be mounted.
const MV_MOUNTED_WAIT_MS: u64 = 30_000;
/// Pause between two tries while waiting for it.
const MV_MOUNTED_RETRY_MS: u64 = 200;

/// Business node: end the quiesce the step's quiesce took. A quiesce the host no longer holds
/// (it resumed the volume by itself: deadline, restart) did not hold throughout.
async fn release(
    host: &dyn Host,
    volume: &str,
    quiesce_id: Option<u64>,
) -> Result<StepResult, StepEnd> {
    let Some(id) = quiesce_id else {
        return Err(StepEnd::Failed(format!(
            "release of MV {volume}: the order names no quiesce id (its quiesce step has no result)"
        )));
    };
    let what = format!("releasing quiesce {id} of MV {volume}");
    match tokio::time::timeout(
        Duration::from_millis(HOST_CALL_MS),
        host.release(volume, Some(id)),
    )
    .await
    {
        Ok(Ok(report)) => Ok(StepResult::Released {
            held_throughout: true,
            backup_label: report.backup_label.map(|l| BackupLabel {
                label_file: l.label_file,
                tablespace_map: l.tablespace_map,
                stop_lsn: l.stop_lsn,
            }),
        }),
        Ok(Err(HostError::QuiesceLost { reason, .. })) => {
            tracing::warn!(volume, quiesce_id = id, %reason, "the quiesce did not hold until its release");
            Ok(StepResult::Released {
                held_throughout: false,
                backup_label: None,
            })
        }
        Ok(Err(e)) => Err(host_end(&what, e)),
        Err(_) => Err(StepEnd::Unknown(format!(
            "{what} did not finish within {HOST_CALL_MS} ms"
        ))),
    }
}

/// Backup node: rescan (the RV's LD becomes visible once separated), check and repair first
/// when asked, then mount with a new file-system identity (the RV is a copy of its MV).
/// How long an RV mount waits for the RV's LD to become visible after its pair separated.
const RV_VISIBLE_WAIT_MS: u64 = 30_000;
/// Pause between two rescans while waiting for it.
const RV_VISIBLE_RETRY_MS: u64 = 200;

async fn mount_rv(
    host: &dyn Host,
    volume: &str,
    check_first: bool,
    postgres: Option<&PostgresCopy>,
) -> Result<StepResult, StepEnd> {
    // The array opens the RV to its hosts as it separates, and a host sees that by rescanning;
    // the array may lag its pair state by a moment, so look again (bounded) before failing.
    let visible_by = tokio::time::Instant::now() + Duration::from_millis(RV_VISIBLE_WAIT_MS);
    let info = loop {
        call("rescanning devices", host.rescan()).await?;
        let info = call(&format!("reading RV {volume}"), host.volume(volume)).await?;
        match &info.problem {
            None => break info,
            Some(problem) if tokio::time::Instant::now() >= visible_by => {
                return Err(StepEnd::Failed(format!(
                    "RV {volume} is not usable on this host {RV_VISIBLE_WAIT_MS} ms after its pair separated: {problem}"
                )));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(RV_VISIBLE_RETRY_MS)).await,
        }
    };
    if let Some(mounted_at) = &info.mounted_at {
        // Mounted by an earlier attempt: finish what it may not have (the label is written
        // once per job: a copy already set up is left alone).
        if let Some(pg) = postgres {
            write_postgres_copy(volume, mounted_at, pg).await?;
        }
        rv_users(host, volume, HookKind::Start).await?;
        return Ok(StepResult::RvMounted { repaired: false });
    }
    let mut repaired = false;
    if check_first {
        let report = call(
            &format!("checking and repairing RV {volume}"),
            host.check(volume, true),
        )
        .await?;
        if !report.clean {
            return Err(StepEnd::Failed(format!(
                "the file system of RV {volume} is not clean after repair: {}",
                report.output.trim()
            )));
        }
        repaired = report.repaired;
    }
    let mounted = call(
        &format!("mounting RV {volume} with a new identity"),
        host.mount(
            volume,
            &MountRequest {
                mount_point: None,
                identity: MountIdentity::New,
                read_only: false,
            },
        ),
    )
    .await?;
    if let Some(pg) = postgres {
        let Some(mounted_at) = mounted.mounted_at else {
            return Err(StepEnd::Failed(format!(
                "RV {volume} does not show as mounted right after its mount; the PostgreSQL backup label was not written"
            )));
        };
        write_postgres_copy(volume, &mounted_at, pg).await?;
    }
    rv_users(host, volume, HookKind::Start).await?;
    Ok(StepResult::RvMounted { repaired })
}

/// Backup node: the RV's users (a tape backup agent, a reporting database) are started by the
/// RV volume's start hook once the copy is mounted, and stopped by its stop hook before it is
/// unmounted; a volume without that hook has none to run. The hooks must be idempotent: an
/// attempt sent again after an unknown outcome runs them again.
async fn rv_users(host: &dyn Host, volume: &str, kind: HookKind) -> Result<(), StepEnd> {
    let what = match kind {
        HookKind::Start => format!("starting the users of RV {volume} (start hook)"),
        HookKind::Stop => format!("stopping the users of RV {volume} (stop hook)"),
    };
    call(&what, async {
        match host.run_hook(volume, kind).await {
            Ok(_) | Err(HostError::NoHook { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await
}

/// Writes the online backup's label and recovery settings into the copy's data directory on
/// the mounted RV, before anything starts on it (on the blocking pool, bounded).
async fn write_postgres_copy(
    volume: &str,
    mounted_at: &str,
    pg: &PostgresCopy,
) -> Result<(), StepEnd> {
    let data_dir = std::path::Path::new(mounted_at).join(&pg.data_dir);
    let label = stillpoint_host::BackupLabel {
        label_file: pg.label.label_file.clone(),
        tablespace_map: pg.label.tablespace_map.clone(),
        stop_lsn: pg.label.stop_lsn.clone(),
    };
    let (v, archive, job) = (volume.to_string(), pg.wal_archive_dir.clone(), pg.job_id);
    let shown = data_dir.display().to_string();
    let task = tokio::task::spawn_blocking(move || {
        stillpoint_host::prepare_copy(&v, &data_dir, &label, &archive, job)
    });
    let limit_ms = stillpoint_host::limits::PG_COPY_WRITE_TIMEOUT_MS;
    match tokio::time::timeout(Duration::from_millis(limit_ms), task).await {
        Ok(Ok(Ok(written))) => {
            tracing::info!(volume, data_dir = %shown, written, "PostgreSQL copy prepared (backup label, recovery to the end of the backup)");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(StepEnd::Failed(format!(
            "writing the PostgreSQL backup label into RV {volume} ({shown}): {e}"
        ))),
        Ok(Err(e)) => Err(StepEnd::Failed(format!(
            "writing the PostgreSQL backup label into RV {volume}: the task failed: {e}"
        ))),
        Err(_) => Err(StepEnd::Unknown(format!(
            "writing the PostgreSQL backup label into RV {volume} ({shown}) did not finish within {limit_ms} ms"
        ))),
    }
}

/// Backup node: runs the backup command (no shell), killed after `timeout_ms`. Exit 0 is done;
/// anything else fails naming the exit status and the end of its stderr.
pub async fn run_backup(command: &[String], timeout_ms: u64) -> Result<StepResult, StepEnd> {
    let Some((program, args)) = command.split_first() else {
        return Err(StepEnd::Failed("the backup command is empty".into()));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            StepEnd::Failed(format!("cannot start the backup command {program:?}: {e}"))
        })?;
    let stderr = child.stderr.take();
    let tail = tokio::spawn(async move {
        let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
        let Some(stderr) = stderr else {
            return tail;
        };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(mut line)) = lines.next_line().await {
            if line.len() > STDERR_LINE_BYTES_MAX {
                let mut cut = STDERR_LINE_BYTES_MAX;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail
    });
    let status = match tokio::time::timeout(Duration::from_millis(timeout_ms), child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            return Err(StepEnd::Failed(format!(
                "waiting for the backup command {program:?} failed: {e}"
            )));
        }
        Err(_) => {
            let _ = child.kill().await;
            tail.abort();
            return Err(StepEnd::Failed(format!(
                "the backup command {program:?} did not finish within {timeout_ms} ms and was killed"
            )));
        }
    };
    // The pipe closes when the command exits (unless a child of it keeps it open): bounded.
    let mut tail = tail;
    let tail = match tokio::time::timeout(Duration::from_secs(5), &mut tail).await {
        Ok(Ok(lines)) => lines,
        _ => {
            tail.abort();
            VecDeque::new()
        }
    };
    let tail: Vec<String> = tail.into_iter().collect();
    match status.code() {
        Some(0) => Ok(StepResult::BackupRan { exit_code: 0 }),
        Some(code) => Err(StepEnd::Failed(format!(
            "the backup command {program:?} exited with code {code}; stderr ends: {}",
            tail.join("\n")
        ))),
        None => Err(StepEnd::Failed(format!(
            "the backup command {program:?} was ended by a signal ({status}); stderr ends: {}",
            tail.join("\n")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use stillpoint_coordinator::postgres::{BackupLabel, PostgresCopy};

    use super::*;

    fn copy(job_id: u64) -> PostgresCopy {
        PostgresCopy {
            data_dir: "pgdata".into(),
            wal_archive_dir: "/backup/wal".into(),
            label: BackupLabel {
                label_file: "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
                    .into(),
                tablespace_map: "16385 /srv/ts1\n".into(),
                stop_lsn: "0/2000100".into(),
            },
            job_id,
        }
    }

    #[tokio::test]
    async fn the_rv_mount_writes_the_orders_label_and_recovery_settings_once() {
        let mp = tempfile::tempdir().unwrap();
        let data = mp.path().join("pgdata");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(data.join("postmaster.pid"), "4242\n").unwrap();
        std::fs::write(data.join("postgresql.auto.conf"), "work_mem = '8MB'").unwrap();
        let at = mp.path().to_str().unwrap();
        write_postgres_copy("rv", at, &copy(7)).await.unwrap();
        let read = |f: &str| std::fs::read_to_string(data.join(f)).unwrap();
        assert_eq!(read("backup_label"), copy(7).label.label_file);
        assert_eq!(read("tablespace_map"), copy(7).label.tablespace_map);
        assert_eq!(read("recovery.signal"), "");
        assert!(!data.join("postmaster.pid").exists());
        let conf = read("postgresql.auto.conf");
        assert!(conf.starts_with("work_mem = '8MB'\n"), "{conf}");
        for line in [
            "# stillpoint: recovery of the copy made by job 7",
            "restore_command = 'cp \"/backup/wal/%f\" \"%p\"'",
            "recovery_target = 'immediate'",
            "recovery_target_action = 'promote'",
            "archive_mode = 'off'",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line:?} missing from {conf}"
            );
        }
        // A repeated mount (the step sent again) writes nothing more, even after PostgreSQL
        // renamed the label while recovering.
        std::fs::rename(data.join("backup_label"), data.join("backup_label.old")).unwrap();
        write_postgres_copy("rv", at, &copy(7)).await.unwrap();
        assert!(!data.join("backup_label").exists());
        assert_eq!(read("postgresql.auto.conf"), conf);
    }

    #[tokio::test]
    async fn a_data_dir_that_is_not_postgresqls_fails_the_mount_naming_it() {
        let mp = tempfile::tempdir().unwrap();
        let end = write_postgres_copy("rv", mp.path().to_str().unwrap(), &copy(1))
            .await
            .unwrap_err();
        match end {
            StepEnd::Failed(why) => {
                assert!(
                    why.contains("pgdata") && why.contains("PG_VERSION"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
