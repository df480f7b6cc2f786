//! PostgreSQL's online backup mode as a quiesce, and what a copy made in it needs before
//! PostgreSQL starts on it.
//!
//! The quiesce opens a session (`tokio-postgres`, under connect and statement timeouts), runs
//! `pg_backup_start(label, fast => true)` and keeps that session for the whole window: the
//! backup lives exactly as long as the session. The release runs `pg_backup_stop()` in the same
//! session and returns its `backup_label` and `tablespace_map`. A session that ended meanwhile
//! (the agent died, the connection dropped, `pg_terminate_backend`) ended the backup with it:
//! PostgreSQL aborts a non-exclusive backup whose session goes away, and the stop then fails in
//! a closed session, so the release reports the quiesce lost, never a label it does not have.
//!
//! A copy separated between start and stop ends its own WAL before the end-of-backup record
//! the stop writes, so PostgreSQL can only open it by replaying the WAL archive up to that
//! record. [`prepare_copy`] writes the label, the tablespace map, `recovery.signal` and a
//! recovery configuration (restore from the archive, stop at the end of the backup, promote,
//! and no archiving by the copy into the production archive) into the copy's data directory.
//! The quiesce refuses a server whose `archive_mode` is off: its copy could never be opened.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::error::HostError;
use crate::limits::{PG_CONNECT_TIMEOUT_MS, PG_STATEMENT_TIMEOUT_MS};

/// Where the agent connects for a PostgreSQL quiesce.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresConnect {
    /// A host name or address, or a Unix socket directory (an absolute path).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for PostgresConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConnect")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl PostgresConnect {
    /// `host:port/database`, for messages and the quiesce record.
    pub fn server(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }
}

/// What `pg_backup_stop` returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupLabel {
    /// The `backup_label` file's contents.
    pub label_file: String,
    /// The `tablespace_map` file's contents; empty without tablespaces.
    pub tablespace_map: String,
    /// Where the backup ended in the WAL (`0/3000100`).
    pub stop_lsn: String,
}

/// A session in online backup mode. Dropping it closes the connection, which ends the backup.
pub(crate) struct Session {
    client: tokio_postgres::Client,
    connection: JoinHandle<()>,
    server: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn db_err(volume: &str, operation: &str, detail: impl std::fmt::Display) -> HostError {
    HostError::Database {
        volume: volume.into(),
        operation: operation.into(),
        detail: detail.to_string(),
    }
}

/// A tokio-postgres error with the server's message when there is one.
fn pg_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Runs one statement's future under `timeout_ms`.
async fn bounded<T>(
    volume: &str,
    what: &str,
    timeout_ms: u64,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, HostError> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(db_err(volume, what, pg_detail(&e))),
        Err(_) => Err(HostError::TimedOut {
            volume: volume.into(),
            what: what.into(),
            timeout_ms,
        }),
    }
}

impl Session {
    /// Connects and puts the server in online backup mode under `label`, within `window_ms`.
    /// On error nothing stays in backup mode (the session, if any, is closed).
    pub(crate) async fn start(
        volume: &str,
        c: &PostgresConnect,
        label: &str,
        window_ms: u64,
    ) -> Result<Session, HostError> {
        let server = c.server();
        let mut config = tokio_postgres::Config::new();
        config
            .host(&c.host)
            .port(c.port)
            .user(&c.user)
            .dbname(&c.database)
            .application_name("stillpoint")
            .connect_timeout(Duration::from_millis(PG_CONNECT_TIMEOUT_MS));
        if let Some(p) = &c.password {
            config.password(p);
        }
        let connect_ms = PG_CONNECT_TIMEOUT_MS.min(window_ms.max(1));
        let (client, connection) = bounded(
            volume,
            &format!("connecting to PostgreSQL at {server}"),
            connect_ms,
            config.connect(tokio_postgres::NoTls),
        )
        .await?;
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the PostgreSQL session of a quiesce ended");
            }
        });
        let session = Session {
            client,
            connection,
            server,
        };
        let statement_ms = PG_STATEMENT_TIMEOUT_MS.min(window_ms.max(1));
        let what = |s: &str| format!("{s} on PostgreSQL at {}", session.server);
        session
            .client
            .batch_execute(&format!("SET statement_timeout = {statement_ms}"))
            .await
            .map_err(|e| db_err(volume, &what("SET statement_timeout"), pg_detail(&e)))?;
        let archive_mode: String = bounded(
            volume,
            &what("reading archive_mode"),
            statement_ms,
            session
                .client
                .query_one("SELECT current_setting('archive_mode')", &[]),
        )
        .await?
        .get(0);
        if archive_mode == "off" {
            return Err(HostError::Refused {
                volume: volume.into(),
                rule: "PostgreSQL online backup needs a WAL archive".into(),
                reason: format!(
                    "archive_mode is off on {}: a copy separated inside pg_backup_start..pg_backup_stop can only be opened by replaying the WAL archive up to the end of the backup; turn archiving on, or use quiesce = \"freeze\" (crash-consistent by design)",
                    session.server
                ),
            });
        }
        bounded(
            volume,
            &what("pg_backup_start"),
            statement_ms,
            session
                .client
                .query_one("SELECT pg_backup_start($1, true)::text", &[&label]),
        )
        .await?;
        Ok(session)
    }

    /// Ends the backup in this session: its label, or why the backup was lost (the session
    /// ended, or the server refused the stop — e.g. no backup in progress any more).
    pub(crate) async fn stop(self) -> Result<BackupLabel, String> {
        if self.client.is_closed() {
            return Err(format!(
                "the session holding the online backup on {} had ended (connection lost or terminated): PostgreSQL aborted the backup with it",
                self.server
            ));
        }
        // The start's statement timeout was cut to its window; the stop (which waits for the
        // archive) gets the full bound.
        let q = async {
            self.client
                .batch_execute(&format!(
                    "SET statement_timeout = {PG_STATEMENT_TIMEOUT_MS}"
                ))
                .await?;
            self.client
                .query_one(
                    "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(true)",
                    &[],
                )
                .await
        };
        match tokio::time::timeout(Duration::from_millis(PG_STATEMENT_TIMEOUT_MS), q).await {
            Ok(Ok(row)) => Ok(BackupLabel {
                stop_lsn: row.get(0),
                label_file: row.get(1),
                tablespace_map: row.get(2),
            }),
            Ok(Err(e)) => Err(format!(
                "pg_backup_stop in the session holding the online backup on {} failed ({}): the backup did not hold",
                self.server,
                pg_detail(&e)
            )),
            Err(_) => Err(format!(
                "pg_backup_stop on {} did not answer within {PG_STATEMENT_TIMEOUT_MS} ms (is the WAL archive keeping up?); the session is closed, which ends the backup",
                self.server
            )),
        }
    }
}

/// Writes `contents` to `dir/name` durably (temporary file, fsync, rename), owned like `dir`
/// and readable by its owner only, as PostgreSQL wants its files.
fn write_owned(dir: &Path, name: &str, contents: &[u8], uid: u32, gid: u32) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.stillpoint-tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The line that marks a copy's recovery settings as written for job `job_id`.
pub fn copy_marker(job_id: u64) -> String {
    format!("# stillpoint: recovery of the copy made by job {job_id}")
}

/// Prepares the copy in `data_dir` (on the mounted RV) to be opened as the online backup it
/// is: writes `backup_label`, `tablespace_map` (when non-empty), `recovery.signal`, and appends
/// to `postgresql.auto.conf` a restore from `wal_archive_dir` that stops at the end of the
/// backup and promotes, with archiving off (a copy must not write into the production's
/// archive), and removes the production server's `postmaster.pid` and `postmaster.opts`.
/// Idempotent: returns `false` without touching anything if the settings for `job_id` are
/// already there (they are written last). Blocking: run it on the blocking pool.
pub fn prepare_copy(
    volume: &str,
    data_dir: &Path,
    label: &BackupLabel,
    wal_archive_dir: &str,
    job_id: u64,
) -> Result<bool, HostError> {
    let err = |what: &str, e: std::io::Error| HostError::OsError {
        volume: volume.into(),
        operation: format!("{what} in {}", data_dir.display()),
        detail: e.to_string(),
    };
    if !data_dir.join("PG_VERSION").is_file() {
        return Err(HostError::WrongState {
            volume: volume.into(),
            operation: "write the PostgreSQL backup label".into(),
            state: format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION): check the member's postgresql.data_dir",
                data_dir.display()
            ),
        });
    }
    let auto_conf = data_dir.join("postgresql.auto.conf");
    let current = match std::fs::read_to_string(&auto_conf) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(err("read postgresql.auto.conf", e)),
    };
    let marker = copy_marker(job_id);
    if current.lines().any(|l| l == marker) {
        return Ok(false);
    }
    // The server's lock files describe the production server, not this copy: PostgreSQL's
    // backup instructions leave them out (a live process with the recorded pid on this host
    // would keep the copy from starting).
    for stale in ["postmaster.pid", "postmaster.opts"] {
        match std::fs::remove_file(data_dir.join(stale)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&format!("remove {stale}"), e)),
        }
    }
    let md = std::fs::metadata(data_dir).map_err(|e| err("stat", e))?;
    let (uid, gid) = (md.uid(), md.gid());
    write_owned(
        data_dir,
        "backup_label",
        label.label_file.as_bytes(),
        uid,
        gid,
    )
    .map_err(|e| err("write backup_label", e))?;
    if !label.tablespace_map.is_empty() {
        write_owned(
            data_dir,
            "tablespace_map",
            label.tablespace_map.as_bytes(),
            uid,
            gid,
        )
        .map_err(|e| err("write tablespace_map", e))?;
    }
    write_owned(data_dir, "recovery.signal", b"", uid, gid)
        .map_err(|e| err("write recovery.signal", e))?;
    let mut conf = current;
    if !conf.is_empty() && !conf.ends_with('\n') {
        conf.push('\n');
    }
    conf.push_str(&format!(
        "{marker}\nrestore_command = 'cp \"{wal_archive_dir}/%f\" \"%p\"'\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\narchive_mode = 'off'\n"
    ));
    write_owned(data_dir, "postgresql.auto.conf", conf.as_bytes(), uid, gid)
        .map_err(|e| err("write postgresql.auto.conf", e))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("fsync", e))?;
    Ok(true)
}
