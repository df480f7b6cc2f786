//! The data dir: one sled database per agent, its identity, and the handles raft uses.

use std::any::Any;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{Entry, RaftTypeConfig};

use crate::Error;
use crate::log_store::LogStore;
use crate::state::StateMachineData;
use crate::state_machine::StateMachineStore;
use crate::tuning::{
    BACKGROUND_FLUSH_MS, CACHE_BYTES, FLUSH_TIMEOUT_MS, OPEN_IN_USE_PAUSE_MS, OPEN_IN_USE_RETRY_MS,
};

/// Tree of raft log entries, keyed by big-endian index.
pub(crate) const TREE_LOG: &str = "raft/log";
/// Tree of the log store's own records: vote, committed, last purged.
pub(crate) const TREE_LOG_META: &str = "raft/log_meta";
/// Tree of the state machine: applied state and current snapshot.
pub(crate) const TREE_STATE_MACHINE: &str = "raft/state_machine";

/// The openraft type configurations this store can persist: node ids are `u64`, nodes are
/// any [`openraft::Node`] (stored as JSON inside membership), entries are openraft's own and snapshots are in-memory JSON bytes.
///
/// Implemented for every matching [`RaftTypeConfig`]; never implement it by hand.
pub trait StoreTypeConfig:
    RaftTypeConfig<NodeId = u64, Entry = Entry<Self>, SnapshotData = Cursor<Vec<u8>>>
{
}

impl<C> StoreTypeConfig for C where
    C: RaftTypeConfig<NodeId = u64, Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>
{
}

/// What the log and state-machine handles share: the database and where it lives.
#[derive(Clone)]
pub(crate) struct Disk {
    pub(crate) path: Arc<Path>,
    pub(crate) db: sled::Db,
    sync: Arc<FileSync>,
}

/// What it takes to make sled's writes reach the platter, not just the kernel.
///
/// sled 0.34's `flush` ends in `sync_file_range` on Linux: it neither writes file metadata nor
/// flushes the disk's volatile cache, and it leaves values over sled's blob threshold (about
/// 128 KiB, e.g. a large snapshot) in files it never syncs. So after every sled flush the store
/// `fdatasync`s the database file itself, and `fsync`s any blob file (and the blob directory)
/// it has not yet seen at its current length.
struct FileSync {
    /// sled's main file, `<dir>/db`, opened once for `fdatasync`.
    db_file: std::fs::File,
    /// Blob files already synced, with the length they had just before their sync. sled writes
    /// a blob once, front to back, so a file seen again at the same length needs nothing more.
    synced_blob_lens: Mutex<HashMap<OsString, u64>>,
}

impl FileSync {
    fn open(dir: &Path) -> Result<FileSync, Error> {
        let io = |action: &str, e: std::io::Error| Error::Io {
            path: dir.to_path_buf(),
            action: action.to_string(),
            detail: e.to_string(),
        };
        let db_file = std::fs::File::open(dir.join(SLED_DB_FILE))
            .map_err(|e| io("open sled's db file", e))?;
        // Make the files sled just created (db, conf, blobs/) findable after a power cut.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the data dir", e))?;
        Ok(FileSync {
            db_file,
            synced_blob_lens: Mutex::new(HashMap::new()),
        })
    }

    fn sync(&self, dir: &Path) -> std::io::Result<()> {
        let blobs = dir.join(SLED_BLOB_DIR);
        match std::fs::read_dir(&blobs) {
            Ok(entries) => {
                let mut synced = self
                    .synced_blob_lens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let mut seen = HashMap::with_capacity(synced.len());
                let mut any_new = false;
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let file = match std::fs::File::open(entry.path()) {
                        Ok(file) => file,
                        // sled removed a replaced blob between the listing and now.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    let len = file.metadata()?.len();
                    if synced.get(&name) != Some(&len) {
                        file.sync_all()?;
                        any_new = true;
                    }
                    seen.insert(name, len);
                }
                if any_new {
                    std::fs::File::open(&blobs)?.sync_all()?;
                }
                // Forget blobs sled has deleted, so the map stays as small as the directory.
                *synced = seen;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.db_file.sync_data()
    }
}

/// sled 0.34's main file inside the data dir.
const SLED_DB_FILE: &str = "db";
/// sled 0.34's directory of large values inside the data dir.
const SLED_BLOB_DIR: &str = "blobs";

impl Disk {
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, Error> {
        self.db
            .open_tree(name)
            .map_err(|e| Error::sled(&self.path, &format!("open tree {name}"), e))
    }

    /// Makes every write issued so far durable, or says it could not. Waits at most
    /// [`FLUSH_TIMEOUT_MS`]: a stalled disk must surface as an error, not as a hung raft node.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let timeout = Duration::from_millis(FLUSH_TIMEOUT_MS);
        let this = self.clone();
        let durable = async move {
            // sled 0.34's `flush_async` can leave concurrent callers never woken (sled issues
            // #1241 and #1308; seen here as a hung flush): its blocking `flush`, on the
            // blocking pool, is safe from many tasks at once and batches them.
            let db = this.db.clone();
            tokio::task::spawn_blocking(move || db.flush())
                .await
                .map_err(|e| Error::Io {
                    path: this.path_buf(),
                    action: "flush to disk".to_string(),
                    detail: format!("the flush task failed: {e}"),
                })?
                .map_err(|e| Error::sled(&this.path, "flush to disk", e))?;
            let (sync, path) = (this.sync.clone(), this.path.clone());
            tokio::task::spawn_blocking(move || sync.sync(&path))
                .await
                .map_err(|e| Error::Io {
                    path: this.path_buf(),
                    action: "sync to disk".to_string(),
                    detail: format!("the sync task failed: {e}"),
                })?
                .map_err(|e| Error::Io {
                    path: this.path_buf(),
                    action: "sync to disk".to_string(),
                    detail: e.to_string(),
                })
        };
        match tokio::time::timeout(timeout, durable).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::FlushTimeout {
                path: self.path_buf(),
                timeout_ms: FLUSH_TIMEOUT_MS,
            }),
        }
    }

    /// The blocking twin of [`Disk::flush`], for callers outside an async runtime.
    pub(crate) fn flush_blocking(&self) -> Result<(), Error> {
        self.db
            .flush()
            .map_err(|e| Error::sled(&self.path, "flush to disk", e))?;
        self.sync.sync(&self.path).map_err(|e| Error::Io {
            path: self.path_buf(),
            action: "sync to disk".to_string(),
            detail: e.to_string(),
        })
    }

    fn path_buf(&self) -> std::path::PathBuf {
        self.path.to_path_buf()
    }
}

/// One agent's durable state: a single sled database in the data dir, holding the raft log, the
/// vote, the state machine and its snapshot, and (in trees of its own) the local step journal.
pub struct Store {
    disk: Disk,
    /// The one state-machine handle of this process, so that every caller of
    /// [`Store::state_machine_store`] sees the same in-memory state (a second independent copy
    /// would miss the first one's applies).
    state_machine: Mutex<Option<Box<dyn Any + Send + Sync>>>,
}

impl Store {
    /// Opens (creating if absent) the data dir. sled locks the dir, so a second process gets
    /// [`Error::InUse`] (after retrying for up to 2 s, which covers sled's threads letting go
    /// after an in-process restart; this blocks the calling thread); any other failure names
    /// the dir.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            action: "create the data dir".to_string(),
            detail: e.to_string(),
        })?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(Some(BACKGROUND_FLUSH_MS));
        let deadline = Instant::now() + Duration::from_millis(OPEN_IN_USE_RETRY_MS);
        let db = loop {
            match config
                .open()
                .map_err(|e| Error::sled(dir, "open the sled database", e))
            {
                Err(Error::InUse { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(OPEN_IN_USE_PAUSE_MS));
                }
                other => break other?,
            }
        };
        let sync = Arc::new(FileSync::open(dir)?);
        Ok(Store {
            disk: Disk {
                path: Arc::from(dir),
                db,
                sync,
            },
            state_machine: Mutex::new(None),
        })
    }

    /// The data dir this store was opened on.
    pub fn path(&self) -> &Path {
        &self.disk.path
    }

    /// The database, for components that keep their own trees in it (the step journal).
    pub fn db(&self) -> &sled::Db {
        &self.disk.db
    }

    /// The agent's local journal in this data dir, with every write fdatasync'ed before the
    /// call returns (see [`crate::journal`]).
    pub fn journal(&self) -> Result<crate::journal::Journal, crate::journal::JournalError> {
        crate::journal::Journal::open_with(&self.disk.db, Some(self.disk.clone()))
    }

    /// The raft log store (entries, vote, committed id). Handles are cheap clones over the same
    /// trees, so calling this more than once is fine.
    pub fn log_store<C>(&self) -> Result<LogStore<C>, Error>
    where
        C: StoreTypeConfig,
    {
        LogStore::open(self.disk.clone())
    }

    /// The state-machine store, loaded from disk on the first call; later calls return the same
    /// handle (with the same in-memory state). Asking again with other `C`/`S` is refused with
    /// [`Error::WrongTypes`].
    pub fn state_machine_store<C, S>(&self) -> Result<StateMachineStore<C, S>, Error>
    where
        C: StoreTypeConfig,
        S: StateMachineData<C>,
    {
        // A poisoned lock only means another thread panicked while holding it; the Option inside
        // is still either empty or a complete handle.
        let mut slot = self
            .state_machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = slot.as_ref() {
            return existing
                .downcast_ref::<StateMachineStore<C, S>>()
                .cloned()
                .ok_or_else(|| Error::WrongTypes {
                    path: self.disk.path.to_path_buf(),
                    what: "the state machine store".to_string(),
                });
        }
        let store = StateMachineStore::<C, S>::open(self.disk.clone())?;
        *slot = Some(Box::new(store.clone()));
        Ok(store)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.disk.path)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many tasks flushing at once all finish. With sled's `flush_async` this hung at once:
    /// concurrent callers were never woken, so the raft node's flush timed out and stopped it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.disk.tree("t").unwrap();
        for round in 0..20u32 {
            let tasks: Vec<_> = (0..16u32)
                .map(|t| {
                    let (disk, tree) = (store.disk.clone(), tree.clone());
                    tokio::spawn(async move {
                        tree.insert(format!("{round}-{t}"), vec![0u8; 200]).unwrap();
                        disk.flush().await
                    })
                })
                .collect();
            let all = async {
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(20), all)
                .await
                .unwrap_or_else(|_| {
                    panic!("round {round}: 16 concurrent flushes did not all finish within 20 s")
                });
        }
    }
}
