//! The crate's one error type, sorted by what the operator or caller should do next.

use std::path::PathBuf;

use crate::data_dir::DataDirIdentity;

/// Why the data dir could not be used. Every variant names the data dir, so a message read in a
/// log tells the operator which directory on which host to look at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk refused an operation (permissions, full disk, missing parent, I/O error): fix the
    /// directory or the disk, then start the agent again.
    #[error(
        "data dir {path}: cannot {action}: {detail}; check that it is writable, not full and the disk is healthy"
    )]
    Io {
        path: PathBuf,
        /// What was being done, e.g. "open the sled database" or "flush to disk".
        action: String,
        detail: String,
    },

    /// Another process (normally another stillpoint agent) holds the data dir's lock: stop it, or
    /// give this agent its own data dir.
    #[error(
        "data dir {path} is in use by another process (its lock is held); stop the other stillpoint agent or use another data dir"
    )]
    InUse { path: PathBuf },

    /// The data dir was created by another node or for another cluster. Nothing was written
    /// (the identity is read before the database is opened). Point the agent at its own data
    /// dir, or remove this one on purpose if it really is stale.
    #[error(
        "data dir {path} belongs to {found}, but this agent is node {wanted_node_id}{}; refusing to use it: point the agent at its own data dir, or remove this one on purpose",
        wanted_cluster_id.as_ref().map(|c| format!(" of cluster {c:?}")).unwrap_or_default()
    )]
    ForeignDataDir {
        path: PathBuf,
        /// Identity found on disk.
        found: DataDirIdentity,
        /// The node id the agent is configured as.
        wanted_node_id: u64,
        /// The cluster id the agent is configured for, if any.
        wanted_cluster_id: Option<String>,
    },

    /// The data dir is missing, empty, or holds a database without an identity: this node's
    /// state is not there. Nothing was created or written. A brand-new node is started once
    /// with `--new`; an existing member must get its own data back (mount the disk, fix the
    /// path, restore it), or be removed from the cluster and added again under a new node id.
    #[error(
        "data dir {path} {state}: node {node_id}'s state is not there, and an agent never starts a member from an empty data dir. If this is a brand-new node, start it once with `stillpoint agent --config FILE --new`. If node {node_id} is an existing member, check that its disk is mounted and data_dir is right, or restore the disk; if its data is lost, remove it (`stillpoint cluster remove {node_id}`) and add this server again under a new node_id"
    )]
    NotInitialized {
        path: PathBuf,
        node_id: u64,
        /// What was found, e.g. "does not exist" or "is empty".
        state: String,
    },

    /// Bytes on disk cannot be decoded. The dir is damaged (or was written by a newer stillpoint):
    /// do not edit it by hand; move it aside and let the node rejoin and receive a snapshot from
    /// its peers, or restore it from a backup.
    #[error(
        "data dir {path}: {what} is corrupt: {detail}; move the data dir aside and let this node rejoin its cluster (it receives a snapshot from the leader)"
    )]
    Corrupt {
        path: PathBuf,
        /// Which record, e.g. "log entry at index 42" or "vote".
        what: String,
        detail: String,
    },

    /// A value could not be encoded for storage. A bug in a type's serde implementation (for
    /// example a map whose keys serde_json cannot represent); report it.
    #[error(
        "data dir {path}: cannot encode {what}: {detail}; this is a bug in the type's serialization, please report it"
    )]
    Encode {
        path: PathBuf,
        what: String,
        detail: String,
    },

    /// A flush to disk did not finish in time. Whether the data reached the disk is unknown: the
    /// disk is stalled or overloaded; check it, then restart the agent (openraft stops the node on
    /// this error rather than acknowledge something that may not be durable).
    #[error(
        "data dir {path}: flush to disk did not finish within {timeout_ms} ms; outcome unknown, check the disk"
    )]
    FlushTimeout { path: PathBuf, timeout_ms: u64 },

    /// The caller asked for a store handle of another type than the one already open on this
    /// data dir: one process must use one type config and one state type per data dir.
    #[error(
        "data dir {path}: {what} is already open with other types; use one type config per data dir"
    )]
    WrongTypes { path: PathBuf, what: String },
}

impl Error {
    /// Maps a sled error, saying what was being attempted.
    pub(crate) fn sled(path: &std::path::Path, action: &str, err: sled::Error) -> Error {
        match err {
            sled::Error::Corruption { at, .. } => Error::Corrupt {
                path: path.to_path_buf(),
                what: "the sled database".to_string(),
                detail: format!("sled reports corruption at {at:?} while trying to {action}"),
            },
            // sled 0.34 reports a held lock as an `Io` error with this text (see
            // `Config::try_lock`); the `second_open_is_refused_as_in_use` test pins it.
            sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => {
                Error::InUse {
                    path: path.to_path_buf(),
                }
            }
            other => Error::Io {
                path: path.to_path_buf(),
                action: action.to_string(),
                detail: other.to_string(),
            },
        }
    }
}
