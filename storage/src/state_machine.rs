//! The state machine store: the applied state in memory, and the current snapshot on disk.
//!
//! Applying an entry changes the in-memory state in place and writes nothing: its cost is what
//! the command changes, not the size of the state (which grows with job history). Durability
//! comes from the raft log and the snapshot, as in openraft's own examples: every applied entry
//! is in the log (flushed and fdatasync'ed before it was acknowledged), the log is purged only
//! up to the current snapshot, and the snapshot holds the whole state up to its last log id. A
//! restarted store starts from its snapshot, and openraft re-applies the committed entries
//! after it (the log store keeps the committed log id), so `apply` runs at most once per entry
//! per process and the state after restart is the state before it.

use std::fmt::Debug;
use std::io::Cursor;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::codec::{decode, encode};
use crate::state::StateMachineData;
use crate::store::{Disk, StoreTypeConfig, TREE_STATE_MACHINE};

/// Where earlier stores wrote the whole state after every apply. Read no more; removed
/// at open (the snapshot and the log hold everything it held).
const KEY_LEGACY_STATE: &[u8] = b"state";
/// The current snapshot: `[meta length: u32 BE][meta JSON][data]`, one value so it is read and
/// replaced atomically.
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// Version of the state record and of the snapshot data (the same JSON document). Bump it when
/// the layout changes, and teach the decoder to read the old one.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// How the applied state is written: also the snapshot data format.
#[derive(Serialize)]
#[serde(bound = "S: Serialize")]
struct RecordRef<'a, N: openraft::Node, S> {
    format_version: u32,
    last_applied: &'a Option<LogId<u64>>,
    last_membership: &'a StoredMembership<u64, N>,
    state: &'a S,
}

/// How the applied state is read back.
#[derive(Deserialize)]
#[serde(bound = "S: Deserialize<'de>")]
struct Record<N: openraft::Node, S> {
    format_version: u32,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, N>,
    state: S,
}

/// The in-memory applied state.
#[derive(Clone, Default)]
struct Applied<N: openraft::Node, S> {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, N>,
    data: S,
}

impl<N: openraft::Node, S: Serialize> Applied<N, S> {
    fn encode(&self, path: &Path) -> Result<Vec<u8>, Error> {
        let record = RecordRef {
            format_version: SNAPSHOT_FORMAT_VERSION,
            last_applied: &self.last_applied,
            last_membership: &self.last_membership,
            state: &self.data,
        };
        encode(path, "the state machine", &record)
    }
}

fn decode_record<N: openraft::Node, S: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &str,
    bytes: &[u8],
) -> Result<Applied<N, S>, Error> {
    let record: Record<N, S> = decode(path, what, bytes)?;
    if record.format_version != SNAPSHOT_FORMAT_VERSION {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: what.to_string(),
            detail: format!(
                "format version {} is not the {SNAPSHOT_FORMAT_VERSION} this stillpoint reads (written by another version?)",
                record.format_version
            ),
        });
    }
    Ok(Applied {
        last_applied: record.last_applied,
        last_membership: record.last_membership,
        data: record.state,
    })
}

fn frame_snapshot<N: openraft::Node>(
    path: &Path,
    meta: &SnapshotMeta<u64, N>,
    data: &[u8],
) -> Result<Vec<u8>, Error> {
    let meta_bytes = encode(path, "snapshot meta", meta)?;
    let meta_len = u32::try_from(meta_bytes.len()).map_err(|_| Error::Encode {
        path: path.to_path_buf(),
        what: "snapshot meta".to_string(),
        detail: format!(
            "{} bytes does not fit the u32 length prefix",
            meta_bytes.len()
        ),
    })?;
    let mut framed = Vec::with_capacity(4 + meta_bytes.len() + data.len());
    framed.extend_from_slice(&meta_len.to_be_bytes());
    framed.extend_from_slice(&meta_bytes);
    framed.extend_from_slice(data);
    Ok(framed)
}

fn unframe_snapshot<N: openraft::Node>(
    path: &Path,
    framed: &[u8],
) -> Result<StoredSnapshot<N>, Error> {
    let corrupt = |detail: String| Error::Corrupt {
        path: path.to_path_buf(),
        what: "the current snapshot".to_string(),
        detail,
    };
    let (len_bytes, rest) = framed.split_first_chunk::<4>().ok_or_else(|| {
        corrupt(format!(
            "{} bytes is too short for its header",
            framed.len()
        ))
    })?;
    let meta_len = u32::from_be_bytes(*len_bytes) as usize;
    if rest.len() < meta_len {
        return Err(corrupt(format!(
            "header announces {meta_len} bytes of meta, only {} follow",
            rest.len()
        )));
    }
    let (meta_bytes, data) = rest.split_at(meta_len);
    let meta = decode(path, "the current snapshot's meta", meta_bytes)?;
    Ok((meta, data.to_vec()))
}

/// A snapshot as kept on disk: its meta and its data.
type StoredSnapshot<N> = (SnapshotMeta<u64, N>, Vec<u8>);

struct Inner<N: openraft::Node, S> {
    disk: Disk,
    tree: sled::Tree,
    applied: RwLock<Applied<N, S>>,
    /// Serialises snapshot writes (build and install may overlap), so the newer snapshot wins.
    snapshot_write: tokio::sync::Mutex<()>,
}

/// The state machine store of one data dir: applies committed entries to `S`, persists the state
/// together with its last applied log id and membership, builds, installs and keeps the current
/// snapshot.
///
/// Cheap to clone (an `Arc` inside); clones share one in-memory state. It is its own
/// [`RaftSnapshotBuilder`].
pub struct StateMachineStore<C: StoreTypeConfig, S> {
    inner: Arc<Inner<C::Node, S>>,
    _types: PhantomData<fn() -> C>,
}

impl<C: StoreTypeConfig, S> Clone for StateMachineStore<C, S> {
    fn clone(&self) -> Self {
        StateMachineStore {
            inner: self.inner.clone(),
            _types: PhantomData,
        }
    }
}

impl<C: StoreTypeConfig, S> Debug for StateMachineStore<C, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("path", &self.inner.disk.path)
            .finish()
    }
}

impl<C: StoreTypeConfig, S> StateMachineStore<C, S> {
    /// Read access to the current applied state, for queries. No I/O; holds a read lock for the
    /// duration of `f`, so keep `f` short.
    pub fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.read_applied().data)
    }

    /// The log id of the last entry applied to the state `read` sees.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.read_applied().last_applied
    }

    // A poisoned lock means a panic while holding it; every writer swaps in a fully built value,
    // so what the lock holds is still a consistent state.
    fn read_applied(&self) -> RwLockReadGuard<'_, Applied<C::Node, S>> {
        self.inner.applied.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_applied(&self) -> RwLockWriteGuard<'_, Applied<C::Node, S>> {
        self.inner
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl<C, S> StateMachineStore<C, S>
where
    C: StoreTypeConfig,
    S: StateMachineData<C>,
{
    pub(crate) fn open(disk: Disk) -> Result<Self, Error> {
        let path = disk.path.clone();
        let tree = disk.tree(TREE_STATE_MACHINE)?;
        let read = |key: &[u8], what: &str| {
            tree.get(key)
                .map_err(|e| Error::sled(&path, &format!("read {what}"), e))
        };
        let applied: Applied<C::Node, S> = match read(KEY_SNAPSHOT, "the current snapshot")? {
            Some(framed) => {
                let (_meta, data) = unframe_snapshot::<C::Node>(&path, &framed)?;
                decode_record(&path, "the current snapshot's data", &data)?
            }
            None => Applied::default(),
        };
        if read(KEY_LEGACY_STATE, "the legacy state record")?.is_some() {
            tree.remove(KEY_LEGACY_STATE)
                .map_err(|e| Error::sled(&path, "remove the legacy state record", e))?;
        }
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                disk,
                tree,
                applied: RwLock::new(applied),
                snapshot_write: tokio::sync::Mutex::new(()),
            }),
            _types: PhantomData,
        })
    }

    fn path(&self) -> &Path {
        &self.inner.disk.path
    }

    /// Applies `entries` to the in-memory state, in place, under the write lock: readers see
    /// the state before or after the batch, never inside it. Nothing is written (see the module
    /// docs for where durability comes from). Infallible: `apply` is a pure function whose
    /// refusals are responses, not errors.
    fn apply_entries(&self, entries: impl Iterator<Item = Entry<C>>) -> Vec<C::R> {
        let mut applied = self.write_applied();
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let response = match entry.payload {
                EntryPayload::Blank => S::response_for_non_command(&log_id),
                EntryPayload::Normal(command) => {
                    let a = &mut *applied;
                    a.data
                        .apply(&log_id, a.last_membership.membership(), &command)
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(log_id), membership);
                    S::response_for_non_command(&log_id)
                }
            };
            applied.last_applied = Some(log_id);
            responses.push(response);
        }
        responses
    }

    fn current_snapshot(&self) -> Result<Option<StoredSnapshot<C::Node>>, Error> {
        let framed = self
            .inner
            .tree
            .get(KEY_SNAPSHOT)
            .map_err(|e| Error::sled(self.path(), "read the current snapshot", e))?;
        framed
            .map(|f| unframe_snapshot(self.path(), &f))
            .transpose()
    }
}

fn write_snapshot_err<N: openraft::Node>(
    meta: &SnapshotMeta<u64, N>,
    e: Error,
) -> StorageError<u64> {
    StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
}

impl<C, S> RaftSnapshotBuilder<C> for StateMachineStore<C, S>
where
    C: StoreTypeConfig,
    S: StateMachineData<C>,
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        // A copy taken under the read lock (memory speed), encoded outside it on the blocking
        // pool: applies wait only for the copy, never for the encoding (seconds for a large
        // job history), and the async runtime is not held by it either.
        let applied = self.read_applied().clone();
        let (last_applied, last_membership) =
            (applied.last_applied, applied.last_membership.clone());
        let path = self.path().to_path_buf();
        let data = tokio::task::spawn_blocking(move || applied.encode(&path))
            .await
            .map_err(|e| {
                StorageIOError::read_state_machine(&std::io::Error::other(format!(
                    "encoding the snapshot failed: {e}"
                )))
            })?
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        // sled's id generator is crash-safe and monotonic: ids stay unique across restarts even
        // when two snapshots cover the same log id.
        let sequence = self
            .inner
            .disk
            .db
            .generate_id()
            .map_err(|e| Error::sled(self.path(), "number the snapshot", e))
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let snapshot_id = match &last_applied {
            Some(id) => format!("{}-{}-{sequence}", id.leader_id, id.index),
            None => format!("empty-{sequence}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        {
            let _writer = self.inner.snapshot_write.lock().await;
            let existing = self
                .current_snapshot()
                .map_err(|e| write_snapshot_err(&meta, e))?;
            // A snapshot installed from the leader while this one was being built may be newer;
            // the current snapshot only ever moves forward.
            if existing.is_none_or(|(old, _)| old.last_log_id <= meta.last_log_id) {
                let framed = frame_snapshot(self.path(), &meta, &data)
                    .map_err(|e| write_snapshot_err(&meta, e))?;
                self.inner
                    .tree
                    .insert(KEY_SNAPSHOT, framed)
                    .map_err(|e| Error::sled(self.path(), "write the snapshot", e))
                    .map_err(|e| write_snapshot_err(&meta, e))?;
                // Durable before openraft purges the log entries this snapshot replaces.
                self.inner
                    .disk
                    .flush()
                    .await
                    .map_err(|e| write_snapshot_err(&meta, e))?;
            }
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<C, S> RaftStateMachine<C> for StateMachineStore<C, S>
where
    C: StoreTypeConfig,
    S: StateMachineData<C>,
{
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, C::Node>), StorageError<u64>> {
        let applied = self.read_applied();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<C::R>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.apply_entries(entries.into_iter()))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, C::Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let what = format!("snapshot {} received from the leader", meta.snapshot_id);
        let installed: Applied<C::Node, S> =
            decode_record(self.path(), &what, &data).map_err(|e| write_snapshot_err(meta, e))?;
        if installed.last_applied != meta.last_log_id
            || installed.last_membership != meta.last_membership
        {
            return Err(write_snapshot_err(
                meta,
                Error::Corrupt {
                    path: self.path().to_path_buf(),
                    what,
                    detail: format!(
                        "its data covers up to {:?} with membership {:?}, its meta says {:?} and {:?}",
                        installed.last_applied,
                        installed.last_membership,
                        meta.last_log_id,
                        meta.last_membership
                    ),
                },
            ));
        }
        let framed =
            frame_snapshot(self.path(), meta, &data).map_err(|e| write_snapshot_err(meta, e))?;
        let _writer = self.inner.snapshot_write.lock().await;
        {
            // The snapshot is the state's durable form: written first, then made current.
            let mut current = self.write_applied();
            self.inner
                .tree
                .insert(KEY_SNAPSHOT, framed)
                .map_err(|e| Error::sled(self.path(), "install the snapshot", e))
                .map_err(|e| write_snapshot_err(meta, e))?;
            *current = installed;
        }
        self.inner
            .disk
            .flush()
            .await
            .map_err(|e| write_snapshot_err(meta, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        let current = self
            .current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
