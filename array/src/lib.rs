//! # stillpoint-array: disk arrays, and the software array that behaves like one
//!
//! stillpoint drives disk arrays: it sets pairs of logical disks (LDs), replicates master
//! volumes (MV) to replication volumes (RV), separates them at a static point and restores them.
//! This crate holds the interface every array driver implements ([`Array`]) and the **software
//! array** ([`SoftwareArray`]): the embedded default used by tests, the demo and sites without a
//! real array. It is not a mock. Each LD is a sparse file holding real bytes; pairs copy those
//! bytes; what the array says is on a volume is what a host reads back.
//!
//! ## How the software array works
//!
//! - **Data.** LD `n` lives in `data_dir/ld-n.img`, created sparse at its capacity. Hosts read
//!   and write through the data API ([`Array::read`], [`Array::write`]) with their host name; the
//!   array enforces the LD's access list and, for RVs, the RV access restriction (`nr`/`na`: no
//!   I/O, `ro`: no writes). LDs are tracked in blocks (`block_bytes`, default 64 KiB).
//! - **Pairs.** A pair lives on the MV's array as a record with two bitmaps: `copy` (blocks still
//!   to copy in the direction the state implies) and `mv_dirty` (blocks the MV changed while
//!   separated). The RV's array keeps an RV role per LD with its own dirty bitmap (blocks hosts
//!   changed on the RV). Replicate and restore copy the union of both sides, so a differential
//!   copy touches only blocks that differ, and RV-side changes are overwritten. The state machine
//!   (activity, sync state, copy control, RV access, abnormal suspend) is an enum with named
//!   transitions that check their preconditions; see [`SyncState`] for the transition table and
//!   [`Rule`] for the pairing rules (same capacity and format, ≤ 4 RVs per MV, ≤ 3 DDR RVs,
//!   ≤ 2 arrays, a single DDR layer, one role per LD, unset only when separated, a restore
//!   only while every other pair of its MV is separated: one restore per MV at a time, no
//!   replicate of a sibling while it copies, and the restored blocks become MV-side
//!   differences of every sibling pair).
//! - **Copy engine.** One tokio task per pair walks the `copy` bitmap in runs of up to
//!   [`COPY_RUN_BYTES_MAX`]. The configured `copy_pace_bytes_per_s` is the array's: all its
//!   pairs and business copies together keep to it, each run booking its share of one
//!   array-wide schedule ([`SoftwareArray::set_copy_pace`] changes it while running); the
//!   engine looks whether anything is left right after a run and pauses only if so, or a
//!   writer that keeps dirtying one block would dirty it again in every pause and a paced
//!   copy would never drain. A DDR run moves file to file
//!   inside the kernel (`copy_file_range`, as `cp` does) on a blocking thread, holding the MV's
//!   I/O lock, as does a restore run. An RDR run MV→RV holds the MV's I/O lock only to read its
//!   blocks, not while they cross the link, so background and semi-sync writes return at local
//!   speed; a host write to a block of a run in flight re-marks it (the run does not clear its
//!   bit and the block is sent again with its newer content). When the bitmap empties in an `exec`
//!   state the pair moves on (`rpl/exec`→`rpl/sync`, `sep/exec`→`separated`, `rst/exec`→
//!   `rst/sync` or, for protect, `separated`).
//! - **Copy control.** In `rpl/sync`, a sync pair writes MV and RV before acknowledging; a
//!   background pair marks the block and lets the engine reflect it; a semi-sync pair (RDR only)
//!   marks blocks until `semi_sync_backlog_blocks_max` are pending and writes synchronously
//!   beyond that, so the backlog never exceeds the bound (its high-water mark is reported).
//! - **Point in time.** A separate fixes the separate instant: blocks not yet reflected are
//!   finished in `sep/exec` and an MV write to such a block first copies the old block to the RV
//!   (copy-before-write). With `rvuse immediate` the RV is usable at once; its reads of pending
//!   blocks come from the MV, which still holds the separate-instant content for them. Restore
//!   mirrors that: MV reads of blocks still to restore come from the RV, and an MV write to such
//!   a block first pulls the RV block in.
//! - **Business copies.** A point-in-time copy of a parent LD on another LD of the same array
//!   (the HP Business Copy model: create attached or detached, attach, detach, delete, copy to
//!   parent; states in [`CopyState`]). Creating or attaching moves no data: the copy's record
//!   marks every block as still living on the parent (`pending`), so it takes milliseconds
//!   whatever the LD's size. Copy reads of pending blocks come from the parent; a parent write
//!   to a pending block first copies the old block to the copy LD (copy-before-write); a copy
//!   write to one first pulls the rest of the block in. A background task fills the remaining
//!   blocks at the copy pace until the copy is independent. Copy to parent moves the blocks
//!   changed on either side since the point in time (`differ`) back; parent reads of blocks not
//!   moved yet come from the copy (as with a pair restore), and a parent write first pulls the
//!   block in. Detach and delete discard the copy's bytes (the LD file becomes sparse zeros).
//!   Rules ([`Rule`]): same capacity and format; one role per LD (a copy is never an MV, RV,
//!   parent or another parent's copy); no copy of a copy; a parent is never an RV (replication
//!   writes would bypass the copy-before-write) but may be an MV; a copy to the parent needs
//!   the parent's pairs separated, and its blocks are added to their MV differences; a pair
//!   restore onto a parent with attached copies is refused. Operations from the wrong state
//!   fail with [`ArrayError::CopyWrongState`] naming the copy's state; host I/O on a detached
//!   copy (or one copying to its parent) is refused by rule `copy-access`.
//! - **Persistence.** Pair records and RV roles are JSON in sled (`data_dir/meta`). Host writes
//!   follow a write-intent discipline, as Linux md's write-intent bitmap does: every bit that
//!   tells a later copy about a write (`mv_dirty`, `copy`, the RV role's dirty bitmap, and for
//!   a mirrored write the pair's `intent` bitmap) is set and flushed *before* the write lands
//!   on the LD; a bit already set costs no flush, so the price is one metadata flush per newly
//!   dirtied block, not per write. `intent` marks blocks a mirrored (sync) write may have
//!   reached on one side only; the engine clears it lazily every
//!   [`WRITE_INTENT_CLEAR_INTERVAL`] while no write is in flight, and on start every bit
//!   left in it becomes a block to copy (or an MV-side difference) again. Copy-before-write
//!   clears are flushed before the write too, so a restart never copies an old block over a
//!   newer one. Bits the engine clears are persisted lazily ([`COPY_PERSIST_INTERVAL`]), so a
//!   killed array recopies at most a few runs and never forgets a difference (tested by
//!   killing `stillpoint array serve` with SIGKILL at random moments, `node/tests/array_crash.rs`). On start, every record is validated; a record that does not
//!   decode or does not fit the configured LDs stops the array with
//!   [`ArrayError::CorruptMetadata`] instead of starting empty. Copies that were running resume.
//!   Business copy records (sled tree `copies`) are stricter, because a *cleared* `pending` or
//!   `to_parent` bit tells readers where the data is: a clear made by a host write is flushed
//!   before the write lands (parent) or is acknowledged (copy); clears made by the background
//!   copy are lazy and remembered, and a write to such a block flushes them first.
//! - **RDR.** An array reaches its peers through a [`Link`] with latency, bandwidth and up/down
//!   state; peers are in-process arrays ([`PeerHandle`]) or served arrays named in the config
//!   (reached with [`RemoteArray`]). The RV's array serves array-to-array requests
//!   ([`PeerRequest`]). A link fault puts copying pairs into abnormal suspend; MV writes go on
//!   and accumulate in `copy`; a replicate once the link is back resumes them. A separate
//!   suspended in `sep/exec` needs no operation: its engine retries and the separate completes
//!   once the link is back (after a restart too); forced separate ends it at once (`cancel`).
//!   Copy-before-write is never skipped: while the RV cannot be reached, a host write to a
//!   block the separate has not copied yet is refused (`PeerUnreachable`, nothing changed) rather
//!   than overwriting the separate instant's data.
//! - **Events.** [`Array::events`] streams every pair state change ([`PairEvent`]) and every
//!   business-copy state change ([`CopyEvent`]) from the moment of subscription; a subscriber
//!   that falls more than [`EVENT_CHANNEL_CAPACITY`] behind skips ahead (query to resync).
//! - **Audit log.** With `audit_log = true` the array appends a JSON line ([`AuditLine`]) to
//!   `data_dir/audit.log` for every pair state change, every pair operation it refused, every
//!   host I/O attempt on an RV (with the RV's access at that instant) and, sampled every
//!   [`AUDIT_MV_WRITE_SAMPLE_MS`], host writes on other LDs: a record of what the array saw
//!   for referees outside the cluster (the chaos harness). A pair operation that came with a
//!   fencing token (a job's step) names it on its line, accepted or refused, so a referee can
//!   judge who acted on a pair and in what order. Sequence numbers continue across
//!   restarts; lines survive a killed process, not a power cut (not fsynced).
//! - **Operations finish without their caller.** A pair operation (set, unset, replicate,
//!   separate, restore, forced separate) runs as its own task: a caller that goes away (a
//!   served array's client dies or times out, dropping the RPC) cannot leave a record changed
//!   in memory but not persisted, its RV access not pushed or its event not sent — nor an RV
//!   claimed for a pair that was never set.
//! - **Faults.** [`Fault`] injects an LD failure (a pair whose copy hits it goes to `fault`,
//!   RV access `na`), a link down/up, a copy pace (slow copies until set back to 0; not
//!   persisted), or a separate delay (every separate held that long before it is admitted, a
//!   slow array that keeps a backup's freeze window open; not persisted), through the API and
//!   the CLI. While an RDR pair's remote array cannot be reached (link down, or the remote
//!   array not answering), operations that need it fail with the typed `PeerUnreachable`
//!   (the array answered; nothing was changed) rather than `Unreachable` (the array itself
//!   was not reached).
//! - **Serving.** [`serve`] runs a software array behind a gRPC service (`stillpoint.array`);
//!   [`RemoteArray`] implements [`Array`] against it with identical errors and states. Host
//!   reads and writes take the array's **data path** instead ([`DataClient`]: length-prefixed
//!   frames on plain TCP, on the same port; the server tells the two apart by a connection's
//!   first four bytes). Over gRPC each LD write was copied three more times and every
//!   connection was driven by one task per side; ext4 on an LD wrote about twice as fast
//!   once that was gone (`cargo bench -p stillpoint-node --bench lds`). The gRPC `Read` and
//!   `Write` calls stay for other clients.
//! - **CLI.** [`cli`] has the clap commands `array`, `ld`, `pair` and `copy` with their exit
//!   codes.
//!
//! ## CAVEATS (not handled yet)
//!
//! - Business copies live on their parent's array; there are no remote copies, no limit on
//!   copies per parent, and no copy of an RV. While a copy is copied to its parent the copy
//!   refuses host I/O, and no other copy of that parent can be attached, created or copied
//!   back.
//! - A copy-before-write that fails on the copy LD detaches the copy (its point in time is
//!   lost; the parent's write goes on). A failed copy LD during a copy to the parent fails
//!   parent I/O to the blocks not moved yet until the LD is repaired.
//! - Delete discards the copy's data (the seed's delete removes the LUN; here LDs come from
//!   the config, so the LD stays, empty).
//! - `rvuse immediate` is refused for RDR pairs (rule `rvuse-immediate-ddr-only`): the RV's
//!   array would need to read pending blocks back from the MV's array.
//! - The control messages on the wire are JSON of this crate's types inside protobuf `bytes`;
//!   other languages would need the JSON shapes. No TLS yet.
//! - Durability is against process kills, not power loss of the data files: LD data is written
//!   with `pwrite` and not fsynced per write.
//! - Taking the RV's difference record at replicate/restore clears it on the RV side before the
//!   MV side has persisted the merge; a crash in that window loses RV-side differences.
//! - Host I/O on an LD takes one lock per LD; concurrent I/O to one LD is serialised.
//! - While an RDR separate is suspended in `sep/exec`, host writes to the MV blocks it has not
//!   copied yet are refused until the link is back or the pair is force-separated.
//! - If the link is down when a pair's RV access changes, the RV keeps its old access until the
//!   link comes back (re-pushed on link up).

mod api;
mod bitmap;
pub mod cli;
mod config;
mod data;
mod error;
mod pair;
mod remote;
mod server;
mod software;
mod types;
mod wire;

pub use api::{Array, PeerReply, PeerRequest};
pub use config::{ArrayConfig, LdConfig, PeerConfig, example_config};
pub use data::DataClient;
pub use error::{ArrayError, Result, Rule};
pub use remote::RemoteArray;
pub use server::{serve, serve_array, serve_when_open};
pub use software::{
    AUDIT_MV_WRITE_SAMPLE_MS, AUDIT_RV_HEAD_BYTES_MAX, AuditEvent, AuditLine, Link, PeerHandle,
    SoftwareArray,
};
pub use types::*;

use std::time::Duration;

/// Default unit of difference tracking and copying.
pub const DEFAULT_BLOCK_BYTES: u64 = 64 * 1024;
/// Default semi-sync backlog bound in blocks.
pub const DEFAULT_SEMI_SYNC_BACKLOG_BLOCKS_MAX: u64 = 64;
/// Seed rule: RVs per MV.
pub const MAX_RVS_PER_MV: u32 = 4;
/// Seed rule: DDR RVs per MV at a time.
pub const MAX_DDR_RVS_PER_MV: u32 = 3;
/// Seed rule: arrays the RVs of one MV may be spread over.
pub const MAX_RV_ARRAYS_PER_MV: u32 = 2;
/// Largest contiguous run the copy engine moves under one lock hold.
pub const COPY_RUN_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// How often a running copy persists its cleared bits.
pub const COPY_PERSIST_INTERVAL: Duration = Duration::from_millis(200);
/// How often a pair's write-intent bits are cleared (lazily persisted) once their writes are
/// complete; a block written again within it costs no metadata flush.
pub const WRITE_INTENT_CLEAR_INTERVAL: Duration = Duration::from_secs(2);
/// How long an idle copy engine sleeps before rechecking without a wake-up.
pub const ENGINE_IDLE_RECHECK: Duration = Duration::from_millis(500);
/// How often a waiter rechecks the state even without an event.
pub const WAIT_RECHECK: Duration = Duration::from_millis(200);
/// Longest wait a caller may ask for (7 days): every user-given duration is checked against it
/// before anything is applied, so no deadline computation can overflow.
pub const WAIT_TIMEOUT_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

/// Refuses a wait longer than [`WAIT_TIMEOUT_MS_MAX`] as bad input.
pub(crate) fn check_wait_ms(ms: Option<u64>) -> Result<()> {
    match ms {
        Some(t) if t > WAIT_TIMEOUT_MS_MAX => Err(ArrayError::InvalidInput {
            detail: format!(
                "wait timeout {t} ms exceeds the maximum of {WAIT_TIMEOUT_MS_MAX} ms (7 days)"
            ),
        }),
        _ => Ok(()),
    }
}

/// Largest single host read or write.
pub const IO_BYTES_MAX: u64 = 32 * 1024 * 1024;
/// Bound on one array-to-array request.
pub const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a flush of the array's metadata (sled) may take before the operation fails.
pub const METADATA_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect timeout of gRPC clients.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one gRPC call, on top of any wait the call asks for.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 flow-control windows of the array's gRPC server and clients (per stream, per
/// connection). hyper's defaults (1 MiB on the server) let one 1 MiB write (a peer's copy, or
/// host I/O from a client of the gRPC `Write`) fill the whole connection window, so concurrent
/// writes waited for window updates in turn.
pub const H2_STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// Largest HTTP/2 frame the array's server and clients accept. h2's default (16 KiB) cut a
/// 1 MiB write into 64 frames, each handled and appended to the message buffer on its own.
pub const H2_MAX_FRAME_BYTES: u32 = 1024 * 1024;
/// Events (pair and business copy) buffered per subscriber before a slow one skips.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;
