//! Who a data dir belongs to, decided before anything in it is opened for writing.
//!
//! The identity lives in a small JSON file of its own, [`IDENTITY_FILE`], beside sled's files
//! rather than inside the database: opening sled rewrites its files, so an identity stored in
//! sled could only be checked after a foreign dir had already been written to. Here the file is
//! read first, the decision is made by a pure function ([`check`]), and sled is opened only on a
//! dir that is this node's own.
//!
//! A data dir is created only by an explicit act ([`create`], `stillpoint agent --new`), which
//! draws the dir's **incarnation**: a random number that names this copy of the node's state.
//! A missing or empty dir is never adopted silently ([`Error::NotInitialized`]): an empty dir is
//! what a typo in the path, a disk that failed to mount or a replaced disk look like, and an
//! agent that started there would vote as if it had never promised anything.
//!
//! Writes replace the file atomically (temporary file, fsync, rename, fsync of the dir), so a
//! crash leaves the old identity or the new one, never a torn one.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::codec::{decode, encode};

/// The identity file inside a data dir.
pub const IDENTITY_FILE: &str = "stillpoint-identity.json";
/// Files sled creates in a data dir: their presence without an identity file means the dir
/// holds a database nobody can vouch for.
const SLED_FILES: [&str; 3] = ["db", "conf", "blobs"];

/// Who a data dir belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDirIdentity {
    /// The raft node id of the agent that owns the dir.
    pub node_id: u64,
    /// The cluster the node belongs to; `None` until it has joined or initialised one.
    pub cluster_id: Option<String>,
    /// Drawn at random when the dir was created ([`create`]); never changes afterwards. The
    /// cluster records it for every member and refuses raft messages from or for another one.
    pub incarnation: u64,
}

impl fmt::Display for DataDirIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cluster_id {
            Some(cluster) => write!(
                f,
                "node {} of cluster {cluster:?} (incarnation {:016x})",
                self.node_id, self.incarnation
            ),
            None => write!(
                f,
                "node {} (no cluster recorded yet; incarnation {:016x})",
                self.node_id, self.incarnation
            ),
        }
    }
}

/// What [`inspect`] found at a data dir path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDirState {
    /// Nothing at the path.
    Missing,
    /// A directory without an identity file and without sled files (it may hold unrelated
    /// entries such as a file system's `lost+found`).
    Empty,
    /// sled files without an identity file: damaged, or written by something else.
    Unstamped,
    /// A stillpoint data dir.
    Stamped(DataDirIdentity),
}

impl DataDirState {
    /// How the state reads in an error message.
    pub fn describe(&self) -> &'static str {
        match self {
            DataDirState::Missing => "does not exist",
            DataDirState::Empty => "is empty",
            DataDirState::Unstamped => "holds a database but no stillpoint identity file",
            DataDirState::Stamped(_) => "belongs to a stillpoint node",
        }
    }
}

/// Looks at `dir` without writing anything.
pub fn inspect(dir: &Path) -> Result<DataDirState, Error> {
    let io = |action: &str, e: std::io::Error| Error::Io {
        path: dir.to_path_buf(),
        action: action.to_string(),
        detail: e.to_string(),
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DataDirState::Missing),
        Err(e) => return Err(io("look at the data dir", e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                action: "use the data dir".to_string(),
                detail: "it is not a directory".to_string(),
            });
        }
        Ok(_) => {}
    }
    let file = dir.join(IDENTITY_FILE);
    match std::fs::read(&file) {
        Ok(bytes) => Ok(DataDirState::Stamped(decode(
            dir,
            "the data dir identity file",
            &bytes,
        )?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if SLED_FILES.iter().any(|f| dir.join(f).exists()) {
                Ok(DataDirState::Unstamped)
            } else {
                Ok(DataDirState::Empty)
            }
        }
        Err(e) => Err(io("read the data dir identity file", e)),
    }
}

/// Decides whether an agent configured as node `node_id` (of cluster `cluster_id`, when the
/// config names one) may use a dir in `state`. Pure: the caller has already read the dir.
pub fn check(
    dir: &Path,
    state: &DataDirState,
    node_id: u64,
    cluster_id: Option<&str>,
) -> Result<DataDirIdentity, Error> {
    match state {
        DataDirState::Stamped(found) => {
            let cluster_conflict = matches!(
                (&found.cluster_id, cluster_id),
                (Some(a), Some(b)) if a != b
            );
            if found.node_id != node_id || cluster_conflict {
                return Err(Error::ForeignDataDir {
                    path: dir.to_path_buf(),
                    found: found.clone(),
                    wanted_node_id: node_id,
                    wanted_cluster_id: cluster_id.map(str::to_string),
                });
            }
            Ok(found.clone())
        }
        other => Err(Error::NotInitialized {
            path: dir.to_path_buf(),
            node_id,
            state: other.describe().to_string(),
        }),
    }
}

/// The explicit act that makes a brand-new node: creates `dir` if needed and stamps it for
/// `node_id` with `incarnation` (drawn at random by the caller). Idempotent for the same node:
/// a dir already stamped for it is returned unchanged. Refuses, writing nothing, a dir stamped
/// for another node or cluster, or one holding a database without an identity.
pub fn create(
    dir: &Path,
    node_id: u64,
    cluster_id: Option<&str>,
    incarnation: u64,
) -> Result<(DataDirIdentity, bool), Error> {
    let state = inspect(dir)?;
    match &state {
        DataDirState::Stamped(_) => {
            return check(dir, &state, node_id, cluster_id).map(|i| (i, false));
        }
        DataDirState::Unstamped => {
            return Err(Error::NotInitialized {
                path: dir.to_path_buf(),
                node_id,
                state: state.describe().to_string(),
            });
        }
        DataDirState::Missing | DataDirState::Empty => {}
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        action: "create the data dir".to_string(),
        detail: e.to_string(),
    })?;
    let identity = DataDirIdentity {
        node_id,
        cluster_id: cluster_id.map(str::to_string),
        incarnation,
    };
    write(dir, &identity)?;
    Ok((identity, true))
}

/// Records that the node of this dir joined `cluster_id`. A dir already in that cluster is left
/// alone; one in another cluster is refused ([`Error::ForeignDataDir`]), writing nothing.
pub fn record_cluster(dir: &Path, cluster_id: &str) -> Result<DataDirIdentity, Error> {
    let state = inspect(dir)?;
    let DataDirState::Stamped(found) = &state else {
        return Err(Error::Io {
            path: dir.to_path_buf(),
            action: "record the cluster id".to_string(),
            detail: format!(
                "the data dir {} (was it removed under the running agent?)",
                state.describe()
            ),
        });
    };
    let current = check(dir, &state, found.node_id, Some(cluster_id))?;
    if current.cluster_id.as_deref() == Some(cluster_id) {
        return Ok(current);
    }
    let next = DataDirIdentity {
        cluster_id: Some(cluster_id.to_string()),
        ..current
    };
    write(dir, &next)?;
    Ok(next)
}

/// Replaces the identity file atomically and durably.
fn write(dir: &Path, identity: &DataDirIdentity) -> Result<(), Error> {
    let io = |action: &str, e: std::io::Error| Error::Io {
        path: dir.to_path_buf(),
        action: action.to_string(),
        detail: e.to_string(),
    };
    let bytes = encode(dir, "the data dir identity", identity)?;
    let tmp: PathBuf = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("write the identity file", e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write the identity file", e))?;
    std::fs::rename(&tmp, dir.join(IDENTITY_FILE)).map_err(|e| io("write the identity file", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync the data dir", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_dir_is_refused_and_only_create_stamps_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let e = check(&dir, &inspect(&dir).unwrap(), 1, None).unwrap_err();
        assert!(matches!(e, Error::NotInitialized { .. }), "{e}");
        assert!(!dir.exists(), "inspecting creates nothing");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(inspect(&dir).unwrap(), DataDirState::Empty);
        let (made, created) = create(&dir, 1, None, 42).unwrap();
        assert!(created);
        assert_eq!(made.incarnation, 42);
        // Idempotent for the same node: the first incarnation stays.
        let (again, created) = create(&dir, 1, None, 43).unwrap();
        assert!(!created);
        assert_eq!(again.incarnation, 42);
        assert_eq!(check(&dir, &inspect(&dir).unwrap(), 1, None).unwrap(), made);
    }

    #[test]
    fn another_node_or_cluster_is_refused_and_the_cluster_is_recorded_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        create(dir, 7, None, 1).unwrap();
        let e = check(dir, &inspect(dir).unwrap(), 8, None).unwrap_err();
        assert!(
            e.to_string().contains("node 7") && e.to_string().contains("node 8"),
            "{e}"
        );
        record_cluster(dir, "site-a").unwrap();
        let e = record_cluster(dir, "site-b").unwrap_err();
        assert!(matches!(e, Error::ForeignDataDir { .. }), "{e}");
        let found = check(dir, &inspect(dir).unwrap(), 7, None).unwrap();
        assert_eq!(found.cluster_id.as_deref(), Some("site-a"));
        let e = check(dir, &inspect(dir).unwrap(), 7, Some("site-b")).unwrap_err();
        assert!(
            e.to_string().contains("site-a") && e.to_string().contains("site-b"),
            "{e}"
        );
    }

    #[test]
    fn a_database_without_identity_and_a_damaged_identity_are_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("db"), b"x").unwrap();
        assert_eq!(inspect(root.path()).unwrap(), DataDirState::Unstamped);
        assert!(create(root.path(), 1, None, 1).is_err());
        std::fs::write(root.path().join(IDENTITY_FILE), b"{\"node_id\":").unwrap();
        let e = inspect(root.path()).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(create(root.path(), 1, None, 1).is_err());
        assert_eq!(
            std::fs::read(root.path().join(IDENTITY_FILE)).unwrap(),
            b"{\"node_id\":",
            "the damaged file is left for inspection"
        );
    }
}
