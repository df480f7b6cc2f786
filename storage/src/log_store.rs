//! The raft log, vote and committed id, in two sled trees.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::codec::{decode, encode, index_key, key_index};
use crate::store::{Disk, StoreTypeConfig, TREE_LOG, TREE_LOG_META};
use crate::tuning::LOG_READ_ENTRIES_MAX;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The raft log store of one data dir: log entries keyed by big-endian index (so sled's order is
/// log order), plus the vote, the committed log id and the last purged log id.
///
/// Cheap to clone; clones share the same trees. It is its own [`RaftLogReader`].
pub struct LogStore<C> {
    disk: Disk,
    /// Entries, key = big-endian index, value = serde_json of `openraft::Entry<C>`.
    log: sled::Tree,
    /// Vote, committed and last purged log ids, serde_json each.
    meta: sled::Tree,
    _types: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            disk: self.disk.clone(),
            log: self.log.clone(),
            meta: self.meta.clone(),
            _types: PhantomData,
        }
    }
}

impl<C> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.disk.path)
            .finish()
    }
}

impl<C: StoreTypeConfig> LogStore<C> {
    pub(crate) fn open(disk: Disk) -> Result<Self, Error> {
        Ok(LogStore {
            log: disk.tree(TREE_LOG)?,
            meta: disk.tree(TREE_LOG_META)?,
            disk,
            _types: PhantomData,
        })
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8], what: &str) -> Result<Option<T>, Error> {
        let bytes = self
            .meta
            .get(key)
            .map_err(|e| Error::sled(&self.disk.path, &format!("read the {what}"), e))?;
        bytes.map(|b| decode(&self.disk.path, what, &b)).transpose()
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        what: &str,
        value: &T,
    ) -> Result<(), Error> {
        let bytes = encode(&self.disk.path, what, value)?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| Error::sled(&self.disk.path, &format!("write the {what}"), e))?;
        Ok(())
    }

    fn last_purged(&self) -> Result<Option<LogId<u64>>, Error> {
        self.read_meta(KEY_LAST_PURGED, "last purged log id")
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<Entry<C>, Error> {
        let index = key_index(&self.disk.path, key)?;
        let what = format!("raft log entry at index {index}");
        let entry: Entry<C> = decode(&self.disk.path, &what, value)?;
        if entry.log_id.index != index {
            return Err(Error::Corrupt {
                path: self.disk.path.to_path_buf(),
                what,
                detail: format!("it holds the entry of index {}", entry.log_id.index),
            });
        }
        Ok(entry)
    }

    /// Entries in `range`, at most `count_max`, never below the purge point: a purge interrupted
    /// by a crash may leave purged entries behind, and they must stay invisible.
    fn entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        count_max: u64,
    ) -> Result<Vec<Entry<C>>, Error> {
        let purged_floor = self.last_purged()?.map(|id| id.index);
        let start = match (range.start_bound(), purged_floor) {
            (Bound::Included(&s), Some(p)) if s <= p => Bound::Excluded(p),
            (Bound::Excluded(&s), Some(p)) if s < p => Bound::Excluded(p),
            (Bound::Unbounded, Some(p)) => Bound::Excluded(p),
            (Bound::Included(&s), _) => Bound::Included(s),
            (Bound::Excluded(&s), _) => Bound::Excluded(s),
            (Bound::Unbounded, None) => Bound::Unbounded,
        };
        let end = range.end_bound().cloned();
        if range_is_empty(start, end) {
            return Ok(Vec::new());
        }
        let keys = (start.map(index_key), end.map(index_key));
        let mut out = Vec::new();
        for item in self.log.range(keys) {
            if out.len() as u64 >= count_max {
                break;
            }
            let (key, value) =
                item.map_err(|e| Error::sled(&self.disk.path, "read raft log entries", e))?;
            out.push(self.decode_entry(&key, &value)?);
        }
        Ok(out)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<u64>>, Error> {
        let last = self
            .log
            .last()
            .map_err(|e| Error::sled(&self.disk.path, "read the last raft log entry", e))?;
        last.map(|(key, value)| self.decode_entry(&key, &value).map(|e| e.log_id))
            .transpose()
    }

    /// Removes log keys in `range` in one atomic batch, so no crash leaves a hole inside the log.
    fn remove_range(
        &self,
        range: (Bound<[u8; 8]>, Bound<[u8; 8]>),
        action: &str,
    ) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(range).keys() {
            let key = key.map_err(|e| Error::sled(&self.disk.path, action, e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| Error::sled(&self.disk.path, action, e))
    }
}

/// Whether a range of indexes contains nothing (so sled is never handed an inverted range, which
/// it rejects with a panic).
fn range_is_empty(start: Bound<u64>, end: Bound<u64>) -> bool {
    let first = match start {
        Bound::Included(s) => s,
        Bound::Excluded(s) => match s.checked_add(1) {
            Some(f) => f,
            None => return true,
        },
        Bound::Unbounded => 0,
    };
    match end {
        Bound::Included(e) => first > e,
        Bound::Excluded(e) => first >= e,
        Bound::Unbounded => false,
    }
}

fn read_logs_err(e: Error) -> StorageError<u64> {
    StorageIOError::read_logs(&e).into()
}

fn write_logs_err(e: Error) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

impl<C: StoreTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<u64>> {
        self.entries(range, u64::MAX).map_err(read_logs_err)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<C>>, StorageError<u64>> {
        self.entries(start..end, LOG_READ_ENTRIES_MAX)
            .map_err(read_logs_err)
    }
}

impl<C: StoreTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let last_purged_log_id = self.last_purged().map_err(read_logs_err)?;
        let last_entry = self.last_entry_log_id().map_err(read_logs_err)?;
        // An entry at or below the purge point is a leftover of an interrupted purge.
        let last_log_id = match (last_entry, last_purged_log_id) {
            (Some(entry), Some(purged)) if entry.index <= purged.index => Some(purged),
            (Some(entry), _) => Some(entry),
            (None, purged) => purged,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let err = |e: Error| StorageError::from(StorageIOError::write_vote(&e));
        self.write_meta(KEY_VOTE, "vote", vote).map_err(err)?;
        // Raft's safety rests on a vote never being forgotten once granted: flush before return.
        self.disk.flush().await.map_err(err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.read_meta(KEY_VOTE, "vote")
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Not flushed: a committed id lost in a crash only means re-applying less on restart;
        // the next flush (any append or vote) carries it.
        let result = match &committed {
            Some(id) => self.write_meta(KEY_COMMITTED, "committed log id", id),
            None => self
                .meta
                .remove(KEY_COMMITTED)
                .map(|_| ())
                .map_err(|e| Error::sled(&self.disk.path, "clear the committed log id", e)),
        };
        result.map_err(write_logs_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.read_meta(KEY_COMMITTED, "committed log id")
            .map_err(read_logs_err)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let what = format!("raft log entry {}", entry.log_id);
            let bytes = encode(&self.disk.path, &what, &entry).map_err(|e| {
                StorageError::from(StorageIOError::write_log_entry(entry.log_id, &e))
            })?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        // One batch: the entries become readable together, and a crash keeps all or none of them.
        self.log
            .apply_batch(batch)
            .map_err(|e| Error::sled(&self.disk.path, "append raft log entries", e))
            .map_err(write_logs_err)?;
        // The callback is what lets openraft acknowledge the entries to the leader, so it fires
        // only once they are on disk.
        match self.disk.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_logs_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.remove_range(
            (Bound::Included(index_key(log_id.index)), Bound::Unbounded),
            "truncate the raft log",
        )
        .map_err(write_logs_err)?;
        // Flushed so that entries the leader told us to drop cannot come back after a crash
        // ahead of the entries that replace them; truncation is rare, the cost is negligible.
        self.disk.flush().await.map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let previous = self.last_purged().map_err(write_logs_err)?;
        if previous.is_none_or(|p| p < log_id) {
            // The purge point first: once it is recorded, leftovers below it are invisible, so a
            // crash between the two writes cannot resurrect purged entries.
            self.write_meta(KEY_LAST_PURGED, "last purged log id", &log_id)
                .map_err(write_logs_err)?;
        }
        self.remove_range(
            (Bound::Unbounded, Bound::Included(index_key(log_id.index))),
            "purge the raft log",
        )
        .map_err(write_logs_err)
    }
}
