//! Domain types every array driver speaks: LDs, pairs, pair states, operation options, events.
//!
//! The facts encoded here come from the NEC ReplicationControl seed (chapters 1.4, 2.1, 2.2, 3.5,
//! 3.6) and the HP Business Copy seed, restated in our own words.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::ArrayError;

/// Identity and description of one array.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayInfo {
    /// Unique array name; RDR pairs name their RV's array by it.
    pub name: String,
    /// Unit of difference tracking and copying.
    pub block_bytes: u64,
    /// Arrays this one is linked to for RDR, with the link's current state.
    pub links: Vec<LinkInfo>,
}

/// State of the link from this array to a peer array.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Peer array name.
    pub peer: String,
    /// One-way delay added to every remote copy operation.
    pub latency_ms: u64,
    /// Bandwidth cap of the link; 0 means unlimited.
    pub bandwidth_bytes_per_s: u64,
    /// Whether the link carries traffic (false after an injected link fault).
    pub up: bool,
}

/// A logical disk (LD) as the array presents it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LdInfo {
    /// LD number, unique within the array.
    pub number: u32,
    /// Human name (the seeds' LD name, e.g. `DB_PRIMARY`).
    pub name: String,
    /// Capacity; a pair's MV and RV must be equal here.
    pub capacity_bytes: u64,
    /// OS/format type (e.g. `NX`, `WN`); a pair's MV and RV must be equal here.
    pub format: String,
    /// Hosts that may read/write the LD; `*` admits any host.
    pub hosts: Vec<String>,
    /// Role of the LD in pairs right now.
    pub role: LdRole,
    /// True after an injected (or real) failure of the LD.
    pub failed: bool,
    /// Role of the LD in business copies right now (independent of `role`: a pair's MV may
    /// also be the parent of business copies).
    #[serde(default)]
    pub copy_role: CopyRole,
}

/// What part an LD plays in point-in-time business copies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyRole {
    /// Neither a parent nor a business copy.
    #[default]
    None,
    /// Parent of this many business copies.
    Parent { copies: u32 },
    /// Business copy of the parent LD named, in the state given.
    Copy { parent: u32, state: CopyState },
}

/// What part an LD plays in replication. An LD has one role at a time (rule `one-role-per-ld`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LdRole {
    /// Not paired.
    None,
    /// MV of this many pairs (1..=4).
    Mv { rvs: u32 },
    /// RV of the pair whose MV is named, with the RV access restriction in force.
    Rv { mv: LdRef, access: RvAccess },
}

/// An LD anywhere in the site: array name plus LD number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LdRef {
    /// Array holding the LD.
    pub array: String,
    /// LD number within that array.
    pub ld: u32,
}

impl fmt::Display for LdRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.array, self.ld)
    }
}

impl LdRef {
    /// Parses `ARRAY:LD`, or a bare `LD` taken to be on `default_array`.
    pub fn parse(s: &str, default_array: &str) -> Result<LdRef, ArrayError> {
        let (array, ld) = match s.rsplit_once(':') {
            Some((a, l)) => (a.to_string(), l),
            None => (default_array.to_string(), s),
        };
        let ld = ld.trim().parse::<u32>().map_err(|_| {
            ArrayError::invalid(format!(
                "LD reference {s:?}: expected ARRAY:NUMBER or NUMBER"
            ))
        })?;
        if array.is_empty() {
            return Err(ArrayError::invalid(format!(
                "LD reference {s:?}: empty array name"
            )));
        }
        Ok(LdRef { array, ld })
    }
}

/// A pair is named by its MV and RV. Operations are sent to the MV's array.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PairId {
    /// Master volume.
    pub mv: LdRef,
    /// Replication volume (same array: DDR; other array: RDR).
    pub rv: LdRef,
}

impl fmt::Display for PairId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.mv, self.rv)
    }
}

impl PairId {
    /// DDR (same array) or RDR (remote array).
    pub fn kind(&self) -> PairKind {
        if self.mv.array == self.rv.array {
            PairKind::Ddr
        } else {
            PairKind::Rdr
        }
    }
}

/// Dynamic (same array) or remote (linked array) data replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairKind {
    /// Dynamic data replication: MV and RV in one array; a single layer only.
    Ddr,
    /// Remote data replication: RV in a linked array; subject to link faults.
    Rdr,
}

/// What the pair was last told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activity {
    /// MV content flows to the RV.
    Replicate,
    /// MV and RV are independent; differences are recorded on both sides.
    Separate,
    /// RV content flows back to the MV; later MV writes are mirrored to the RV.
    RestoreUpdate,
    /// RV content flows back to the MV; the RV is protected from later MV writes and the pair
    /// separates by itself when the copy completes.
    RestoreProtect,
}

/// Where the pair is in its copy. Transitions (all others are refused with `WrongState`):
///
/// - set → `separated` (every block counts as different until the first replicate);
/// - replicate: `separated|cancel|fault` (or any replicate state in abnormal suspend, to resume)
///   → `rpl/exec` → `rpl/sync` when the copy difference reaches zero;
/// - separate: `rpl/exec|rpl/sync|rst/sync` → `sep/exec` → `separated` once the differences of
///   the separate instant are on the RV (at once when there are none);
/// - restore: `separated` → `rst/exec` → `rst/sync` (update) or `separated` (protect);
/// - forced separate: `rpl/exec|rpl/sync|rst/exec|rst/sync` → `cancel` at once;
/// - a copy fault on the RV: any copying state → `fault` (failure separation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncState {
    /// `rpl/exec`: copying MV→RV.
    RplExec,
    /// `rpl/sync`: RV equals MV; MV writes are mirrored per the copy control.
    RplSync,
    /// `sep/exec`: separating; differences of the separate instant still being reflected.
    SepExec,
    /// `separated`: independent volumes.
    Separated,
    /// `rst/exec`: copying RV→MV.
    RstExec,
    /// `rst/sync`: MV equals RV after a restore(update); MV writes are mirrored.
    RstSync,
    /// `cancel`: forced separate; the RV is not guaranteed consistent.
    Cancel,
    /// `fault`: failure separation after a copy fault; the RV is not available.
    Fault,
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncState::RplExec => "rpl/exec",
            SyncState::RplSync => "rpl/sync",
            SyncState::SepExec => "sep/exec",
            SyncState::Separated => "separated",
            SyncState::RstExec => "rst/exec",
            SyncState::RstSync => "rst/sync",
            SyncState::Cancel => "cancel",
            SyncState::Fault => "fault",
        })
    }
}

/// How MV writes reach the RV while the pair replicates (seed 3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum CopyControl {
    /// Foreground: a write is acknowledged only after it is on MV and RV.
    Sync,
    /// RDR only: asynchronous up to a bounded backlog, synchronous beyond it.
    SemiSync,
    /// Asynchronous; differences are reflected at the array's copy pace.
    Background,
}

/// RV access restriction (seed 3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum RvAccess {
    /// Read/write.
    Rw,
    /// Read only.
    Ro,
    /// Not ready: neither reads nor writes (default while replicating or restoring).
    Nr,
    /// Not available: the LD is invalid (after a fault).
    Na,
}

impl fmt::Display for RvAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RvAccess::Rw => "rw",
            RvAccess::Ro => "ro",
            RvAccess::Nr => "nr",
            RvAccess::Na => "na",
        })
    }
}

/// Full state of a pair: activity + sync state + copy control + RV access + abnormal suspend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairState {
    /// Last operation's activity.
    pub activity: Activity,
    /// Copy progress state.
    pub sync: SyncState,
    /// RDR only: copying is suspended by a link fault; MV writes accumulate as differences.
    pub abnormal_suspend: bool,
    /// How MV writes reach the RV.
    pub copy_control: CopyControl,
    /// Access hosts have to the RV.
    pub rv_access: RvAccess,
}

impl fmt::Display for PairState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.sync)?;
        if self.abnormal_suspend {
            f.write_str("+abnormal-suspend")?;
        }
        Ok(())
    }
}

/// The last operation on a pair with its times (unix ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastOperation {
    /// `replicate`, `separate`, `restore`, `forced-separate`, `set`.
    pub op: String,
    /// When the array accepted it.
    pub started_unix_ms: u64,
    /// When its copy finished (None while running).
    pub ended_unix_ms: Option<u64>,
}

/// Everything a caller can learn about a pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairInfo {
    /// The pair.
    pub id: PairId,
    /// DDR or RDR.
    pub kind: PairKind,
    /// Current state.
    pub state: PairState,
    /// Blocks that differ since separation (MV or RV side changed). Meaningful while separated.
    pub separate_diff_blocks: u64,
    /// Blocks still to copy (replicate/restore/separate in progress, or background backlog).
    pub copy_diff_blocks: u64,
    /// Blocks the current copy had to do in total (for progress).
    pub copy_total_blocks: u64,
    /// Blocks copied by the current (or last) copy.
    pub copied_blocks: u64,
    /// Block size of the owning array.
    pub block_bytes: u64,
    /// Highest semi-sync backlog seen since the last replicate started, in blocks.
    pub backlog_high_water_blocks: u64,
    /// The last operation and its times.
    pub last_op: Option<LastOperation>,
    /// Who did the last replicate or separate: its fencing token, or `None` for an operator's
    /// unfenced command. A job step that finds the pair already separated uses it to tell its
    /// own separate from someone else's.
    #[serde(default)]
    pub acted_by: Option<FenceToken>,
}

impl PairInfo {
    /// Copy progress in percent (100 when nothing is left to copy).
    pub fn progress_percent(&self) -> f64 {
        if self.copy_total_blocks == 0 {
            return 100.0;
        }
        let done = self.copy_total_blocks.saturating_sub(self.copy_diff_blocks);
        100.0 * done as f64 / self.copy_total_blocks as f64
    }
}

/// Which blocks a replicate copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum CopyRange {
    /// Only blocks that differ (changed on MV or RV since separation). The default.
    Difference,
    /// Every block.
    Whole,
}

/// When the RV becomes usable after a separate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum RvUse {
    /// When the separate's copy completes (the default).
    Complete,
    /// At once: RV reads see the MV content of the separate instant while the copy finishes.
    Immediate,
}

/// Restore flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum RestoreMode {
    /// Later MV writes are mirrored to the RV; the pair stays in restore (rst/sync).
    Update,
    /// The RV is protected; the pair separates by itself when the copy completes.
    Protect,
}

/// Who asks for a pair operation, for fencing: a step of a stillpoint job (the Raft term it
/// was sent under, the job, the job's round, the step, the attempt). Ordered by those fields
/// in that order, which is the order one leader sends a job's operations on a pair in: the
/// array refuses an operation whose token is older than the newest token that already acted on
/// the pair, so an order that lingered on a cut-off control node never lands after a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FenceToken {
    pub term: u64,
    pub job: u64,
    #[serde(default)]
    pub round: u32,
    pub step: u32,
    pub attempt: u32,
}

impl std::fmt::Display for FenceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "term {} job {} round {} step {} attempt {}",
            self.term, self.job, self.round, self.step, self.attempt
        )
    }
}

/// A pair operation that carries a [`FenceToken`] ([`crate::Array::fenced`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FencedOp {
    Replicate(ReplicateOptions),
    Separate(SeparateOptions),
}

impl FencedOp {
    /// How long the operation may wait for its end state.
    pub fn wait_timeout_ms(&self) -> Option<u64> {
        match self {
            FencedOp::Replicate(o) => o.wait_timeout_ms,
            FencedOp::Separate(o) => o.wait_timeout_ms,
        }
    }
}

/// Options of Replicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateOptions {
    /// Difference (default) or whole.
    pub range: CopyRange,
    /// RV access during the replicate: `nr` (default) or `ro`.
    pub rv_access: RvAccess,
    /// Copy control for MV writes while replicating.
    pub copy_control: CopyControl,
    /// Wait until `rpl/sync` for at most this long.
    pub wait_timeout_ms: Option<u64>,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            range: CopyRange::Difference,
            rv_access: RvAccess::Nr,
            copy_control: CopyControl::Sync,
            wait_timeout_ms: None,
        }
    }
}

/// Options of Separate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeparateOptions {
    /// RV access once separated: `rw` (default) or `ro`.
    pub rv_access: RvAccess,
    /// When the RV becomes usable.
    pub rv_use: RvUse,
    /// Wait until `separated` for at most this long.
    pub wait_timeout_ms: Option<u64>,
}

impl Default for SeparateOptions {
    fn default() -> Self {
        SeparateOptions {
            rv_access: RvAccess::Rw,
            rv_use: RvUse::Complete,
            wait_timeout_ms: None,
        }
    }
}

/// Options of Restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOptions {
    /// Update or protect (the seed's default for the restore procedure is protect).
    pub mode: RestoreMode,
    /// RV access during the restore: `nr` (default) or `ro`.
    pub rv_access: RvAccess,
    /// Copy control for mirrored MV writes (update mode).
    pub copy_control: CopyControl,
    /// Wait until the copy completes (rst/sync or separated) for at most this long.
    pub wait_timeout_ms: Option<u64>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            mode: RestoreMode::Protect,
            rv_access: RvAccess::Nr,
            copy_control: CopyControl::Sync,
            wait_timeout_ms: None,
        }
    }
}

/// A state to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum WaitCondition {
    /// `rpl/sync` or `rst/sync`.
    Sync,
    /// `separated`.
    Sep,
    /// The running copy finished, whatever state that leaves the pair in (not `*/exec`).
    Done,
}

/// Faults that can be injected (and cleared) for tests, demos and chaos runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// The LD fails: every I/O to it errors; pairs copying to it go to `fault`.
    LdFailure { ld: u32 },
    /// The LD is repaired.
    LdRepair { ld: u32 },
    /// The link to the named peer array goes down.
    LinkDown { peer: String },
    /// The link to the named peer array comes back.
    LinkUp { peer: String },
    /// Every copy engine of the array moves at most this many bytes a second from its next
    /// run on (0: as fast as the disk goes): a slow copy. Not persisted (a restart takes the
    /// configured `copy_pace_bytes_per_s` again).
    CopyPace { bytes_per_s: u64 },
    /// Every separate the array is asked for from now on waits this long before it is
    /// admitted (0: none): a slow array, which keeps a backup's freeze window open that long.
    /// Not persisted.
    SeparateDelay { ms: u64 },
}

/// A pair state change, pushed to subscribers so they need not poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairEvent {
    /// Array that emitted it (the MV's array).
    pub array: String,
    /// The pair.
    pub pair: PairId,
    /// State after the change; `None` when the pair was unset.
    pub state: Option<PairState>,
    /// Why: the operation or the engine event that caused it.
    pub reason: String,
    /// When (unix ms).
    pub at_unix_ms: u64,
}

/// A business copy state change (create, attach, detach, delete, copy to parent and its end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyEvent {
    /// Array holding parent and copy.
    pub array: String,
    /// The copy's LD.
    pub copy: u32,
    /// Its parent's LD.
    pub parent: u32,
    /// State after the change; `None` when the copy was deleted.
    pub state: Option<CopyState>,
    /// Why: the operation or the engine event that caused it.
    pub reason: String,
    /// When (unix ms).
    pub at_unix_ms: u64,
}

/// What [`crate::Array::events`] streams: every pair and business-copy state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArrayEvent {
    Pair(PairEvent),
    Copy(CopyEvent),
}

impl ArrayEvent {
    /// The pair event, if this is one.
    pub fn pair(&self) -> Option<&PairEvent> {
        match self {
            ArrayEvent::Pair(e) => Some(e),
            ArrayEvent::Copy(_) => None,
        }
    }

    /// The business-copy event, if this is one.
    pub fn copy(&self) -> Option<&CopyEvent> {
        match self {
            ArrayEvent::Copy(e) => Some(e),
            ArrayEvent::Pair(_) => None,
        }
    }
}

/// State of a point-in-time business copy (HP Business Copy model).
///
/// - create attached → `attached` (the copy is the parent's image of the create instant);
///   create detached → `detached` (the LD keeps its number but holds no data and refuses I/O);
/// - attach: `attached|detached` → `attached` with a new point in time (now);
/// - detach: `attached` → `detached` (the data is discarded);
/// - delete: `attached|detached` → no relationship (the LD is a plain, empty LD again);
/// - copy to parent: `attached` → `copying-to-parent` → `attached` when the parent holds the
///   copy's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyState {
    /// The copy holds (or points at) the parent's image of its point in time; read/write.
    Attached,
    /// The copy holds no data; host I/O is refused until it is attached again.
    Detached,
    /// The parent is being restored from the copy; parent reads already see the copy's content.
    /// The copy refuses host I/O until this ends.
    CopyingToParent,
}

impl fmt::Display for CopyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyState::Attached => "attached",
            CopyState::Detached => "detached",
            CopyState::CopyingToParent => "copying-to-parent",
        })
    }
}

/// Everything a caller can learn about one business copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInfo {
    /// The business copy LD.
    pub copy: LdRef,
    /// Its parent LD (always on the same array).
    pub parent: LdRef,
    /// Current state.
    pub state: CopyState,
    /// The instant (unix ms) whose parent content the copy presents; None while detached.
    pub point_in_time_unix_ms: Option<u64>,
    /// Blocks whose copy content is still read from the parent (not yet copied to the copy LD).
    pub parent_ref_blocks: u64,
    /// Blocks still to copy from the copy to the parent (copying-to-parent only).
    pub to_parent_blocks: u64,
    /// Blocks changed on the parent or the copy since the point in time (what a copy to the
    /// parent would move).
    pub differ_blocks: u64,
    /// Block size of the owning array.
    pub block_bytes: u64,
    /// The last operation and its times.
    pub last_op: Option<LastOperation>,
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
