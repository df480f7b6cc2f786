//! Durable state of a stillpoint agent, on sled.
//!
//! Every agent keeps one data dir holding one [sled] database. This crate owns that database:
//! [`data_dir`] decides, before anything is opened for writing, whether the dir is this node's
//! own (its identity file names the node, its cluster and its incarnation), [`Store::open`]
//! locks it, and two handles give openraft what it persists: the [`LogStore`] (raft log, vote, committed
//! log id) and the [`StateMachineStore`] (the replicated application state `S`, the last applied
//! log id and membership, and the current snapshot). The agent's local step journal
//! ([`journal`]) keeps its own trees in the same database ([`Store::db`]).
//!
//! # Why openraft's v2 storage traits
//!
//! openraft 0.9 offers the v1 `RaftStorage` trait (one object for log and state machine, wrapped
//! by `Adaptor`) and the v2 pair [`openraft::storage::RaftLogStorage`] +
//! [`openraft::storage::RaftStateMachine`]. We implement v2 because:
//! - log and state machine are separate concerns with separate durability rules (below), and
//!   openraft drives them from separate tasks; one object would force one lock over both;
//! - v2's `append` takes a [`openraft::storage::LogFlushed`] callback, so the store tells
//!   openraft "durable" only after the data is on disk, and openraft acknowledges entries to the
//!   leader only then;
//! - v1 is deprecated (since 0.8.4, when the `storage-v2` feature is on, as here) and absent
//!   from the 0.10 line.
//!
//! # What is stored where
//!
//! The identity is not in sled: it is the file [`data_dir::IDENTITY_FILE`] ([`DataDirIdentity`]
//! as JSON), read before sled opens (and rewrites) its files.
//!
//! | tree                  | key                      | value (serde_json unless noted)              |
//! |-----------------------|--------------------------|----------------------------------------------|
//! | `raft/log`            | log index, `u64` BE      | `openraft::Entry<C>`                          |
//! | `raft/log_meta`       | `vote`, `committed`, `last_purged` | `Vote`, `LogId`, `LogId`            |
//! | `raft/state_machine`  | `state`                  | `{format_version, last_applied, last_membership, state}` |
//! | `raft/state_machine`  | `snapshot`               | `[u32 BE meta length][SnapshotMeta JSON][snapshot data]` |
//! | `journal/*`           | (see [`journal`])        |                                              |
//!
//! Log keys are big-endian so sled's byte order is log order. The snapshot data is the same
//! versioned JSON document as the `state` value ([`SNAPSHOT_FORMAT_VERSION`]), so installing a
//! snapshot is decoding one document, and a snapshot can be read with `jq`.
//!
//! # Durability
//!
//! sled buffers writes in memory; `flush` writes them out. On Linux sled 0.34's flush ends in
//! `sync_file_range`, which persists neither file metadata nor the disk's write cache, and large
//! values (over about 128 KiB) go to blob files sled never syncs. So every flush here is sled's
//! flush followed by `fdatasync` of sled's db file and `fsync` of any blob file not yet synced at
//! its current length, all under a 30 s bound after which the
//! outcome is reported unknown (`Error::FlushTimeout`) and openraft stops the node.
//!
//! - **Vote**: `save_vote` returns only after the flush. A granted vote is never forgotten.
//! - **Log entries**: `append` writes all entries of the call in one atomic batch (readable at
//!   once, all-or-nothing after a crash), flushes, and only then fires the `LogFlushed` callback.
//! - **Truncate** removes the tail in one batch and flushes (rare; keeps dropped entries from
//!   reappearing). **Purge** records the purge point first, then removes the prefix in one batch,
//!   without a flush: readers never look below the purge point, so a purge interrupted by a crash
//!   leaves invisible leftovers, and a purge lost in a crash is merely redone.
//! - **Committed** id (`save_committed`) is written without a flush: losing it only means openraft
//!   re-applies less on restart. Any later flush carries it.
//! - **State machine**: `apply` changes the in-memory state in place (under a write lock, so
//!   readers see it before or after a batch) and writes nothing: its cost is what the commands
//!   change, not the size of the state. The log and the snapshot are its durability, as in
//!   openraft's examples: every applied entry is in the durable log, the log is purged only up
//!   to the current snapshot, and the snapshot holds the state up to its last log id.
//! - **Snapshots**: `build_snapshot` serialises the state under the read lock, stores meta and
//!   data as one value and flushes before returning, so the snapshot is durable before openraft
//!   purges the log it replaces. The current snapshot only moves forward (a snapshot built while a
//!   newer one was installed is returned but not kept). `install_snapshot` checks the data
//!   against the meta, then writes it, makes it the state and flushes.
//! - **Restart**: the state machine starts from the current snapshot (or empty), and openraft
//!   re-applies the committed entries after it, from the log (the committed id is saved), so
//!   the state after a restart is the state before it, each entry applied once per process.
//!   The cost is re-applying up to `snapshot_after_logs` entries at start.
//!
//! Damaged bytes (undecodable entry, vote, state, snapshot, a key of the wrong size, an entry
//! under the wrong index, an unknown format version) become [`Error::Corrupt`], or openraft's
//! `StorageError` carrying that message, never a panic and never an empty store.
//!
//! # Identity and locking
//!
//! A data dir is made only by an explicit act ([`data_dir::create`], `stillpoint agent --new`),
//! which stamps it with the node id and a random incarnation. [`data_dir::inspect`] and
//! [`data_dir::check`] refuse, writing nothing, a missing or empty dir
//! ([`Error::NotInitialized`]: a typo, an unmounted or replaced disk) and a dir of another node
//! or cluster ([`Error::ForeignDataDir`]). The caller checks before [`Store::open`], so a
//! foreign dir is never touched by sled. sled holds an exclusive lock on the data dir: a second
//! agent on the same dir gets [`Error::InUse`]. `Store::open` retries a held lock for up to 2 s
//! first, because sled's background threads may still hold it for a moment after an in-process
//! restart.
//!
//! # CAVEATS (not handled yet)
//!
//! - `append` waits for its flush inline: openraft cannot overlap the next write with the
//!   previous fsync, so log throughput is one flush per append call (the `flush` bench measures
//!   it). Fine for a control plane; a flusher task would be the next step.
//! - Building a snapshot serialises the whole state under the read lock (applies wait for it);
//!   with a large job history that pause grows with the state.
//! - Snapshots live in memory (`Cursor<Vec<u8>>`), built, stored and sent whole.
//! - Two details of sled 0.34 are relied on and pinned by tests: the text of its lock error
//!   (mapped to `InUse`) and its file layout (`db`, `blobs/`) for the extra sync. A sled upgrade
//!   must re-check both.
//! - Recovery is tested after a process abort and after reopening; durability across a power
//!   cut (what the fsyncs are for) is argued, not tested: that needs a fault-injecting block
//!   device.
//! - No format migration: a `format_version` other than 1 is refused as corrupt. No checksums
//!   of our own beyond sled's CRCs.
//! - sled files are never compacted by us; space is reclaimed by sled's own segment cleaning.
//! - A flush is database-wide: raft flushes also make journal writes durable, and vice versa.
//! - `Store::open` and the [`data_dir`] functions are blocking calls (lock retry, fsync):
//!   call them at start-up or from `spawn_blocking`, not in a hot async path.
//! - One process uses one type config and one state type per data dir
//!   ([`Error::WrongTypes`] otherwise).

mod codec;
pub mod data_dir;
mod error;
mod log_store;
mod state;
mod state_machine;
mod store;
mod tuning;

pub mod journal;

pub use data_dir::{DataDirIdentity, DataDirState};
pub use error::Error;
pub use log_store::LogStore;
pub use state::StateMachineData;
pub use state_machine::{SNAPSHOT_FORMAT_VERSION, StateMachineStore};
pub use store::{Store, StoreTypeConfig};
