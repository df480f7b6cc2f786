//! PostgreSQL as a quiesce method: the connection settings a group member carries, their
//! checks, and what a backup job carries from the release on the business node to the RV mount
//! on the backup node.
//!
//! The static point is PostgreSQL's online backup mode: the business node's agent runs
//! `pg_backup_start` in a session it holds open through the separate and `pg_backup_stop` in
//! the same session at the release. The stop returns the `backup_label` (and tablespace map)
//! the copy needs; the release's [`crate::job::StepResult`] carries them through the log, and
//! the RV mount writes them into the copy's data directory with a recovery configuration that
//! replays the WAL archive up to the end of the backup, before anything starts on the copy.
//!
//! Why an archive: the separate comes between start and stop, so the copy's own `pg_wal` ends
//! before the end-of-backup record that `pg_backup_stop` writes. PostgreSQL refuses to open a
//! copy with a `backup_label` whose WAL ends there ("WAL ends before end of online backup"):
//! the WAL written until the stop must come from the archive. A member without one is refused
//! here; `quiesce = "freeze"` needs none (the copy is crash-consistent by design and PostgreSQL
//! recovers it from its own WAL).

use serde::{Deserialize, Serialize};

/// How the business node's agent reaches the database, and where the copy's data directory
/// and WAL archive are on the backup node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresQuiesce {
    /// A host name or address, or a Unix socket directory (an absolute path).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    /// Optional (a local socket with peer or trust authentication needs none). Kept in the
    /// replicated inventory: prefer an authentication that needs no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The data directory relative to the RV's mount point (e.g. `pgdata`; `.` for the root).
    pub data_dir: String,
    /// The WAL archive as the backup node reads it (the directory the business node's
    /// `archive_command` copies into, shared or replicated there).
    pub wal_archive_dir: String,
}

impl std::fmt::Debug for PostgresQuiesce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresQuiesce")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("data_dir", &self.data_dir)
            .field("wal_archive_dir", &self.wal_archive_dir)
            .finish()
    }
}

impl PostgresQuiesce {
    /// Every rule the settings break, as `(field, rule)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.host.trim().is_empty() {
            out.push((
                "host",
                "give a host name, an address, or a socket directory".into(),
            ));
        }
        if self.port == 0 {
            out.push(("port", "a port above 0".into()));
        }
        if self.user.trim().is_empty() {
            out.push(("user", "give the role the agent connects as".into()));
        }
        if self.database.trim().is_empty() {
            out.push(("database", "give a database to connect to".into()));
        }
        let rel = std::path::Path::new(&self.data_dir);
        if self.data_dir.is_empty()
            || rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            out.push((
                "data_dir",
                format!(
                    "{:?} must be relative to the RV's mount point, without `..` (e.g. \"pgdata\", or \".\" for the root)",
                    self.data_dir
                ),
            ));
        }
        if !self.wal_archive_dir.starts_with('/') {
            out.push((
                "wal_archive_dir",
                format!(
                    "{:?} must be an absolute path on the backup node: the copy's recovery replays the WAL written until pg_backup_stop from it (without an archive use quiesce = \"freeze\")",
                    self.wal_archive_dir
                ),
            ));
        }
        if self
            .wal_archive_dir
            .chars()
            .any(|c| matches!(c, '\'' | '"' | '%' | '\\' | '\n'))
        {
            out.push((
                "wal_archive_dir",
                "may not contain quotes, backslashes, `%` or newlines (it goes into restore_command)"
                    .into(),
            ));
        }
        out
    }
}

/// What `pg_backup_stop` returned: the files the copy needs before PostgreSQL starts on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupLabel {
    /// The `backup_label` file's contents.
    pub label_file: String,
    /// The `tablespace_map` file's contents; empty when there are no tablespaces.
    #[serde(default)]
    pub tablespace_map: String,
    /// The backup's end as PostgreSQL printed it (`0/3000100`).
    #[serde(default)]
    pub stop_lsn: String,
}

/// What an RV mount writes into a copy made in online backup mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresCopy {
    /// The data directory relative to the RV's mount point.
    pub data_dir: String,
    pub wal_archive_dir: String,
    pub label: BackupLabel,
    /// The job that made the copy, named in what is written.
    pub job_id: u64,
}
