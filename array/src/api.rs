//! The array interface every driver implements (software array, remote client).

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::types::*;

/// What the coordinator, agents and hosts need from any disk array.
///
/// Pair operations are sent to the array holding the pair's MV. Every operation that changes a
/// pair returns the pair's state right after the array accepted it (or after the requested wait).
/// A timeout of the transport is reported as [`crate::ArrayError::OutcomeUnknown`] for operations
/// that change state: query before retrying.
#[async_trait::async_trait]
pub trait Array: Send + Sync + 'static {
    /// Name, block size and links of this array.
    async fn info(&self) -> Result<ArrayInfo>;
    /// Inventory: every LD with capacity, format, access list and current role.
    async fn ld_list(&self) -> Result<Vec<LdInfo>>;
    /// Sets a pair (MV on this array). Refusals name the pairing rule broken.
    async fn pair_set(&self, id: &PairId) -> Result<PairInfo>;
    /// Unsets a pair; only while separated (separated, cancel or fault).
    async fn pair_unset(&self, id: &PairId) -> Result<()>;
    /// Every pair whose MV is on this array.
    async fn pair_list(&self) -> Result<Vec<PairInfo>>;
    /// One pair's state, counters and last operation.
    async fn pair_query(&self, id: &PairId) -> Result<PairInfo>;
    /// Replicate MV→RV (from separated, cancel, fault; or resume an abnormal suspend).
    async fn replicate(&self, id: &PairId, opts: &ReplicateOptions) -> Result<PairInfo>;
    /// Separate (from rpl/exec, rpl/sync, rst/sync).
    async fn separate(&self, id: &PairId, opts: &SeparateOptions) -> Result<PairInfo>;
    /// Replicate or separate on behalf of the holder of `fence`: refused (rule
    /// `fencing-token`) when a newer token has already acted on the pair; accepted, the token
    /// becomes the pair's floor, durably, with the operation. Unfenced operations (operators)
    /// neither check nor move the floor.
    async fn fenced(&self, id: &PairId, fence: &FenceToken, op: &FencedOp) -> Result<PairInfo>;
    /// Restore RV→MV (from separated).
    async fn restore(&self, id: &PairId, opts: &RestoreOptions) -> Result<PairInfo>;
    /// Forced separate (state cancel) from any replicate/restore state, at once.
    async fn forced_separate(&self, id: &PairId) -> Result<PairInfo>;
    /// Waits until the pair meets `cond`; `WrongState` if it can no longer get there,
    /// `Timeout` after `timeout_ms`.
    async fn wait(&self, id: &PairId, cond: WaitCondition, timeout_ms: u64) -> Result<PairInfo>;
    /// Reads `len` bytes of LD `ld` at `offset` on behalf of `host` (access list and RV access
    /// enforced).
    async fn read(&self, host: &str, ld: u32, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Writes `data` to LD `ld` at `offset` on behalf of `host`; returns once the pair's copy
    /// control is satisfied (sync: on MV and RV).
    async fn write(&self, host: &str, ld: u32, offset: u64, data: &[u8]) -> Result<()>;
    /// Injects or clears a fault.
    async fn inject_fault(&self, fault: &Fault) -> Result<()>;
    /// A stream of pair and business-copy state changes from now on.
    async fn events(&self) -> Result<BoxStream<'static, ArrayEvent>>;
    /// Array-to-array requests (RV side of RDR pairs). Not for hosts or operators.
    async fn peer(&self, req: PeerRequest) -> Result<PeerReply>;

    /// Creates a point-in-time business copy of LD `parent` on LD `copy` (both on this array).
    /// Attached: the copy presents the parent's content of this instant at once (the data moves
    /// in the background); detached: the relationship exists but the copy holds no data.
    /// Refusals name the rule (same capacity and format, one role per LD, no copy of a copy,
    /// parent not an RV).
    async fn copy_create(&self, parent: u32, copy: u32, attached: bool) -> Result<CopyInfo>;
    /// Makes the copy again: its point in time becomes now (from attached or detached).
    async fn copy_attach(&self, copy: u32) -> Result<CopyInfo>;
    /// Discards the copy's data; the LD keeps its number and relationship but refuses host I/O.
    async fn copy_detach(&self, copy: u32) -> Result<CopyInfo>;
    /// Ends the relationship and discards the data; the LD is a plain, empty LD again.
    async fn copy_delete(&self, copy: u32) -> Result<()>;
    /// Restores the parent from the copy: parent reads see the copy's content at once, the
    /// data moves in the background and the copy returns to attached when done. With
    /// `wait_timeout_ms`, returns when done (or `Timeout`; the copy goes on).
    async fn copy_to_parent(&self, copy: u32, wait_timeout_ms: Option<u64>) -> Result<CopyInfo>;
    /// Every business copy on this array.
    async fn copy_list(&self) -> Result<Vec<CopyInfo>>;
}

/// What an MV's array asks of the RV's array. Replication I/O bypasses the access list and the
/// RV access restriction (the array itself writes the RV), but not an LD failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Take LD `rv` as RV of `mv`, checking capacity, format and roles.
    Claim {
        rv: u32,
        mv: LdRef,
        capacity_bytes: u64,
        format: String,
    },
    /// Give the RV role up (pair unset).
    Release { rv: u32, mv: LdRef },
    /// Set the RV access restriction.
    SetAccess {
        rv: u32,
        mv: LdRef,
        access: RvAccess,
    },
    /// Hand over and forget the blocks hosts changed on the RV since separation.
    TakeDirty { rv: u32, mv: LdRef },
    /// Replication write.
    Write { rv: u32, offset: u64, data: Vec<u8> },
    /// Replication read (restore).
    Read { rv: u32, offset: u64, len: u64 },
}

/// Answers to [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerReply {
    /// Done.
    Ok,
    /// Block indexes changed on the RV.
    Dirty(Vec<u64>),
    /// Data read.
    Data(Vec<u8>),
}
