//! The host crate's one error type. Variants are sorted by what the caller does next; every
//! variant names the volume (or file, or command) concerned and says what to do about it.

use serde::{Deserialize, Serialize};

/// A process or configured application that keeps a volume busy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id, or `None` for an application the agent knows by name (sim, or a hook).
    pub pid: Option<u32>,
    /// Process command name or application name.
    pub name: String,
    /// What it holds: an open file, a working directory, a mapping, the device itself.
    pub what: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "{} (pid {pid}, {})", self.name, self.what),
            None => write!(f, "{} ({})", self.name, self.what),
        }
    }
}

fn list(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything a host operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum HostError {
    /// The config (file or section) is invalid; `field` names where.
    #[error("host config {source_name}: {field}: {reason}")]
    Config {
        source_name: String,
        field: String,
        reason: String,
    },
    /// No volume of that name on this host.
    #[error(
        "no volume named {volume:?} on this host (known: {known}); check the name with `volume list`"
    )]
    UnknownVolume { volume: String, known: String },
    /// The mount point does not exist (or is not a directory).
    #[error(
        "mount point {mount_point} for volume {volume} does not exist or is not a directory; create it first"
    )]
    MountPointMissing { volume: String, mount_point: String },
    /// The volume (or its device) is mounted somewhere other than where it was asked for.
    #[error("volume {volume} is already mounted at {mounted_at}; unmount it there first")]
    MountedElsewhere { volume: String, mounted_at: String },
    /// Another device is mounted on the requested mount point.
    #[error(
        "mount point {mount_point} is already used by {other}; unmount that first or pick another mount point"
    )]
    MountPointBusy { mount_point: String, other: String },
    /// The file system carries the identity (UUID) of one already mounted here: an RV copy of
    /// an MV. Mount it with a new identity (ext4) or ignoring the duplicate (XFS nouuid).
    #[error(
        "volume {volume} has file-system id {fs_id}, already mounted from {other}: if {volume} is a copy, mount it with --identity new (or ignore-duplicate); if it is the production volume, unmount the copy first or mount with --identity ignore-duplicate (never give the production volume a new identity)"
    )]
    DuplicateIdentity {
        volume: String,
        fs_id: String,
        other: String,
    },
    /// Unmount refused because something holds the volume (the seeds' "access refused").
    #[error(
        "volume {volume} is busy, held by: {}; stop them (stop hook) or unmount with --force",
        list(holders)
    )]
    Busy {
        volume: String,
        holders: Vec<Holder>,
    },
    /// The operation is not allowed in the volume's current state (e.g. write to an unmounted
    /// volume, thaw of a volume not frozen, mount of a frozen one).
    #[error("volume {volume}: {operation} refused: {state}")]
    WrongState {
        volume: String,
        operation: String,
        state: String,
    },
    /// The volume is not mounted, and the operation needs it mounted: mount it first (a host
    /// that has just booted may not have mounted it yet: asking again later is safe, nothing
    /// was touched).
    #[error("volume {volume}: {operation} refused: not mounted (mount it first)")]
    NotMounted { volume: String, operation: String },
    /// A rule refused the request (e.g. extension beyond the S4 ceiling).
    #[error("volume {volume}: refused by {rule}: {reason}")]
    Refused {
        volume: String,
        rule: String,
        reason: String,
    },
    /// The quiesce the caller refers to is no longer held: the agent resumed the volume by
    /// itself (deadline, or restart), or it was released. A copy separated after `resumed_at`
    /// is NOT a consistent static point.
    #[error("volume {volume}: quiesce {quiesce_id} is no longer held: {reason}")]
    QuiesceLost {
        volume: String,
        quiesce_id: u64,
        reason: String,
    },
    /// The volume has no such hook in node.toml: add one, or do not ask for it.
    #[error(
        "volume {volume} has no {hook} hook; add `{hook} = {{ command = [..] }}` to the volume in node.toml"
    )]
    NoHook { volume: String, hook: String },
    /// A configured hook exited unsuccessfully.
    #[error("volume {volume}: {hook} hook {command:?} failed with {status}: {stderr_tail}")]
    HookFailed {
        volume: String,
        hook: String,
        command: String,
        status: String,
        stderr_tail: String,
    },
    /// A hook or system command did not finish in time and was killed; its effect is unknown.
    #[error(
        "volume {volume}: {what} did not finish within {timeout_ms} ms and was killed; its effect is unknown, check the host"
    )]
    TimedOut {
        volume: String,
        what: String,
        timeout_ms: u64,
    },
    /// A system command or call failed; `detail` carries its output or errno.
    #[error("volume {volume}: {operation} failed: {detail}")]
    OsError {
        volume: String,
        operation: String,
        detail: String,
    },
    /// Reading or writing the block device failed; retry, or check the device / array path.
    #[error("device {device}: {operation} failed: {detail}")]
    Device {
        device: String,
        operation: String,
        detail: String,
    },
    /// The database refused or failed an operation of a database quiesce (connection,
    /// `pg_backup_start`); nothing stays in backup mode. Check the connection settings, the
    /// role's rights and the server's log.
    #[error("volume {volume}: {operation} failed: {detail}")]
    Database {
        volume: String,
        operation: String,
        detail: String,
    },
    /// The operation is not supported by this backend or file system.
    #[error("{operation} is not supported: {reason}")]
    Unsupported { operation: String, reason: String },
    /// The agent's journal failed; nothing was quiesced. Check the data directory's disk.
    #[error("agent journal: {0}")]
    Journal(String),
    /// The agent could not be reached, or answered with something unexpected; retry.
    #[error("host agent unreachable or failed ({0}); check the node is up and retry")]
    Unreachable(String),
}

impl From<stillpoint_storage::journal::JournalError> for HostError {
    fn from(e: stillpoint_storage::journal::JournalError) -> Self {
        HostError::Journal(e.to_string())
    }
}
