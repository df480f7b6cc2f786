//! The pair state machine: one persisted record per pair on the MV's array, with named
//! transitions that check their preconditions. No I/O happens here; the software array calls
//! these under the pair's lock and persists the record afterwards.
//!
//! Invariant while separated (separated, cancel, fault): every block where MV and RV may differ
//! is in `mv_dirty` (MV side) or in the RV role's dirty bitmap (RV side). Replicate and restore
//! copy the union, so nothing that differs is ever skipped.

use serde::{Deserialize, Serialize};

use crate::bitmap::Bitmap;
use crate::error::{ArrayError, Result, Rule};
use crate::types::*;

/// What follows a host write on the MV for one pair.
pub(crate) enum WriteThen {
    /// Recorded in a bitmap; the copy engine or a later replicate moves it.
    Record,
    /// Written to the RV too before the host gets its answer.
    Mirror,
}

/// Persisted state of one pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PairRec {
    pub id: PairId,
    pub state: PairState,
    /// Blocks still to copy in the direction the state implies (RV→MV in rst/exec, else MV→RV).
    pub copy: Bitmap,
    /// Blocks the MV changed (or that were left uncopied) while separated.
    pub mv_dirty: Bitmap,
    /// Write intent (as Linux md's write-intent bitmap): blocks a mirrored host write may have
    /// reached on one side only. Set and flushed before the MV write lands, cleared lazily by
    /// the engine once no write is in flight; on open every bit becomes a difference again
    /// (`recover_intent`). Records from before this field load it empty.
    #[serde(default)]
    pub intent: Bitmap,
    /// Blocks `[start, end)` of the run the engine is sending without the MV's I/O lock.
    #[serde(skip)]
    pub run: Option<(u64, u64)>,
    /// Blocks of that run a host write touched meanwhile: the run must not clear them.
    #[serde(skip)]
    pub rerun: Vec<u64>,
    /// RV access to apply when a `sep/exec` with rvuse complete finishes.
    pub access_after_separate: RvAccess,
    /// Whether the running separate was `rvuse immediate`.
    pub rv_use: RvUse,
    pub copy_total_blocks: u64,
    pub copied_blocks: u64,
    pub backlog_high_water_blocks: u64,
    pub last_op: Option<LastOperation>,
    /// The newest fencing token that acted on the pair ([`FenceToken`]). Records from before
    /// this field load it empty.
    #[serde(default)]
    pub fence_floor: Option<FenceToken>,
    /// The token of the last replicate or separate; `None` when an operator's unfenced
    /// command did it (or none was done yet).
    #[serde(default)]
    pub acted_by: Option<FenceToken>,
}

fn wrong(rec: &PairRec, op: &str, needs: &str) -> ArrayError {
    ArrayError::WrongState {
        pair: rec.id.to_string(),
        state: rec.state.to_string(),
        op: op.into(),
        needs: needs.into(),
    }
}

impl PairRec {
    /// A new pair starts separated with every block different: nothing was ever copied.
    pub fn new(id: PairId, blocks: u64) -> Self {
        PairRec {
            id,
            state: PairState {
                activity: Activity::Separate,
                sync: SyncState::Separated,
                abnormal_suspend: false,
                copy_control: CopyControl::Sync,
                rv_access: RvAccess::Rw,
            },
            copy: Bitmap::new(blocks),
            mv_dirty: Bitmap::full(blocks),
            intent: Bitmap::new(blocks),
            run: None,
            rerun: Vec::new(),
            access_after_separate: RvAccess::Rw,
            rv_use: RvUse::Complete,
            copy_total_blocks: 0,
            copied_blocks: 0,
            backlog_high_water_blocks: 0,
            last_op: Some(LastOperation {
                op: "set".into(),
                started_unix_ms: now_unix_ms(),
                ended_unix_ms: Some(now_unix_ms()),
            }),
            fence_floor: None,
            acted_by: None,
        }
    }

    /// Fencing: refuses `fence` when a newer token already acted on the pair, else makes it
    /// the floor. No token (an operator's command) passes and leaves the floor as it is.
    /// Either way the pair records who acts on it ([`PairRec::acted_by`]).
    pub fn admit(&mut self, fence: Option<&FenceToken>) -> Result<()> {
        let Some(token) = fence else {
            self.acted_by = None;
            return Ok(());
        };
        if let Some(floor) = &self.fence_floor
            && token < floor
        {
            return Err(ArrayError::refused(
                Rule::FencingToken,
                format!(
                    "pair {}: the operation of {token} is older than {floor}, which already acted on the pair (a newer attempt, job or leader took over)",
                    self.id
                ),
            ));
        }
        self.fence_floor = Some(*token);
        self.acted_by = Some(*token);
        Ok(())
    }

    pub fn is_separated_family(&self) -> bool {
        matches!(
            self.state.sync,
            SyncState::Separated | SyncState::Cancel | SyncState::Fault
        )
    }

    fn start_op(&mut self, op: &str) {
        self.last_op = Some(LastOperation {
            op: op.into(),
            started_unix_ms: now_unix_ms(),
            ended_unix_ms: None,
        });
    }

    fn end_op(&mut self) {
        if let Some(l) = self.last_op.as_mut() {
            l.ended_unix_ms.get_or_insert(now_unix_ms());
        }
    }

    /// Replicate from a separated state (or resume an abnormally suspended replicate).
    /// `rv_dirty` are the blocks the RV side changed while separated; they are overwritten.
    pub fn begin_replicate(&mut self, o: &ReplicateOptions, rv_dirty: &Bitmap) -> Result<()> {
        let resuming = self.state.abnormal_suspend
            && matches!(self.state.sync, SyncState::RplExec | SyncState::RplSync);
        if !self.is_separated_family() && !resuming {
            return Err(wrong(
                self,
                "replicate",
                "separated, cancel, fault or abnormal suspend",
            ));
        }
        check_access_for_copy(o.rv_access, "replicate")?;
        check_copy_control(self.id.kind(), o.copy_control)?;
        if !resuming {
            match o.range {
                CopyRange::Difference => {
                    self.copy.union_with(&self.mv_dirty);
                    self.copy.union_with(rv_dirty);
                }
                CopyRange::Whole => {
                    let n = self.copy.len();
                    self.copy.set_range(0, n);
                }
            }
            self.mv_dirty.clear_all();
            self.copied_blocks = 0;
            self.copy_total_blocks = self.copy.count();
            self.backlog_high_water_blocks = 0;
        }
        self.state = PairState {
            activity: Activity::Replicate,
            sync: if self.copy.count() == 0 {
                SyncState::RplSync
            } else {
                SyncState::RplExec
            },
            abnormal_suspend: false,
            copy_control: o.copy_control,
            rv_access: o.rv_access,
        };
        self.start_op("replicate");
        if self.state.sync == SyncState::RplSync {
            self.end_op();
        }
        Ok(())
    }

    /// Separate from replicate (or restore-update) states. The blocks still to copy at this
    /// instant are finished in `sep/exec`; MV writes from now on only mark `mv_dirty`.
    pub fn begin_separate(&mut self, o: &SeparateOptions) -> Result<()> {
        if self.state.abnormal_suspend {
            return Err(wrong(
                self,
                "separate",
                "a pair not in abnormal suspend (use forced separate)",
            ));
        }
        if !matches!(
            self.state.sync,
            SyncState::RplExec | SyncState::RplSync | SyncState::RstSync
        ) {
            return Err(wrong(self, "separate", "rpl/exec, rpl/sync or rst/sync"));
        }
        if !matches!(o.rv_access, RvAccess::Rw | RvAccess::Ro) {
            return Err(ArrayError::refused(
                Rule::AccessForOperation,
                format!("separate sets RV access rw or ro, not {}", o.rv_access),
            ));
        }
        if o.rv_use == RvUse::Immediate && self.id.kind() == PairKind::Rdr {
            return Err(ArrayError::refused(
                Rule::RvuseImmediateDdrOnly,
                format!("pair {} is remote; separate with rvuse complete", self.id),
            ));
        }
        self.start_op("separate");
        self.rv_use = o.rv_use;
        self.access_after_separate = o.rv_access;
        self.state.activity = Activity::Separate;
        if self.copy.count() == 0 {
            self.state.sync = SyncState::Separated;
            self.state.rv_access = o.rv_access;
            self.end_op();
        } else {
            self.state.sync = SyncState::SepExec;
            if o.rv_use == RvUse::Immediate {
                self.state.rv_access = o.rv_access;
            }
        }
        Ok(())
    }

    /// Restore from separated: the differing blocks flow RV→MV.
    pub fn begin_restore(&mut self, o: &RestoreOptions, rv_dirty: &Bitmap) -> Result<()> {
        if self.state.sync != SyncState::Separated {
            return Err(wrong(self, "restore", "separated"));
        }
        check_access_for_copy(o.rv_access, "restore")?;
        check_copy_control(self.id.kind(), o.copy_control)?;
        self.copy.union_with(&self.mv_dirty);
        self.copy.union_with(rv_dirty);
        self.mv_dirty.clear_all();
        self.copied_blocks = 0;
        self.copy_total_blocks = self.copy.count();
        self.start_op("restore");
        self.state = PairState {
            activity: match o.mode {
                RestoreMode::Update => Activity::RestoreUpdate,
                RestoreMode::Protect => Activity::RestoreProtect,
            },
            sync: SyncState::RstExec,
            abnormal_suspend: false,
            copy_control: o.copy_control,
            rv_access: o.rv_access,
        };
        if self.copy.count() == 0 {
            self.complete_copy();
        }
        Ok(())
    }

    /// After a crash: a block in `intent` may hold a mirrored write on one side only. It
    /// becomes a block to copy (copying states) or an MV-side difference (separated states).
    /// Returns true when anything changed.
    pub fn recover_intent(&mut self) -> bool {
        let n = self.intent.len();
        if self.intent.count() == 0 {
            return false;
        }
        let intent = std::mem::replace(&mut self.intent, Bitmap::new(n));
        if self.is_separated_family() {
            self.mv_dirty.union_with(&intent);
        } else {
            self.copy.union_with(&intent);
            if self.state.sync == SyncState::SepExec {
                // Kept as a difference too: the block may have changed after the separate.
                self.mv_dirty.union_with(&intent);
            }
        }
        true
    }

    /// A host write touched `[b0, b1)`: blocks of the run in flight must be sent again.
    pub fn note_write(&mut self, b0: u64, b1: u64) {
        if let Some((r0, r1)) = self.run {
            self.rerun.extend(b0.max(r0)..b1.min(r1));
        }
    }

    /// Records a host write to `[b0, b1)` before it lands on the MV and says what follows it.
    /// Returns how many bits became set: if any, the record must be durable before the write
    /// lands (write intent); bits already set need no flush.
    pub fn mark_host_write(&mut self, b0: u64, b1: u64, backlog_max: u64) -> (WriteThen, u64) {
        use SyncState::*;
        self.note_write(b0, b1);
        let st = self.state;
        match st.sync {
            Separated | Cancel | Fault | SepExec => {
                (WriteThen::Record, self.mv_dirty.set_range(b0, b1))
            }
            RstExec if st.activity == Activity::RestoreProtect => {
                (WriteThen::Record, self.mv_dirty.set_range(b0, b1))
            }
            RstExec => (WriteThen::Mirror, self.intent.set_range(b0, b1)),
            _ if st.abnormal_suspend => (WriteThen::Record, self.copy.set_range(b0, b1)),
            RplExec => (WriteThen::Record, self.copy.set_range(b0, b1)),
            RplSync | RstSync => match st.copy_control {
                CopyControl::Sync => (WriteThen::Mirror, self.intent.set_range(b0, b1)),
                CopyControl::Background => (WriteThen::Record, self.copy.set_range(b0, b1)),
                CopyControl::SemiSync => {
                    let new = (b0..b1).filter(|&b| !self.copy.get(b)).count() as u64;
                    if self.copy.count() + new <= backlog_max {
                        let set = self.copy.set_range(b0, b1);
                        self.backlog_high_water_blocks =
                            self.backlog_high_water_blocks.max(self.copy.count());
                        (WriteThen::Record, set)
                    } else {
                        (WriteThen::Mirror, self.intent.set_range(b0, b1))
                    }
                }
            },
        }
    }

    /// A mirrored write did not reach the RV: the blocks still differ.
    pub fn mirror_failed(&mut self, b0: u64, b1: u64) {
        if self.state.sync == SyncState::RstExec {
            // `copy` runs RV→MV here; the MV-side difference is kept for the next copy.
            self.mv_dirty.set_range(b0, b1);
        } else {
            self.copy.set_range(b0, b1);
        }
    }

    /// Forced separate: stop at once; whatever was not copied counts as difference. Also the
    /// way out of a separate that cannot finish (`sep/exec`, e.g. with the link down).
    pub fn enter_cancel(&mut self) -> Result<()> {
        if !matches!(
            self.state.sync,
            SyncState::RplExec
                | SyncState::RplSync
                | SyncState::RstExec
                | SyncState::RstSync
                | SyncState::SepExec
        ) {
            return Err(wrong(
                self,
                "forced separate",
                "rpl/exec, rpl/sync, sep/exec, rst/exec or rst/sync",
            ));
        }
        self.start_op("forced-separate");
        self.drop_copy_into_difference();
        self.state.activity = Activity::Separate;
        self.state.sync = SyncState::Cancel;
        self.state.abnormal_suspend = false;
        self.state.rv_access = RvAccess::Rw;
        self.end_op();
        Ok(())
    }

    /// Failure separation after a copy fault on the RV.
    pub fn enter_fault(&mut self) {
        self.drop_copy_into_difference();
        self.state.activity = Activity::Separate;
        self.state.sync = SyncState::Fault;
        self.state.abnormal_suspend = false;
        self.state.rv_access = RvAccess::Na;
        self.end_op();
    }

    /// A link fault suspends copying of an RDR pair; nothing else changes.
    pub fn enter_abnormal_suspend(&mut self) -> bool {
        let copying = matches!(
            self.state.sync,
            SyncState::RplExec | SyncState::RplSync | SyncState::RstSync | SyncState::SepExec
        );
        if copying && !self.state.abnormal_suspend {
            self.state.abnormal_suspend = true;
            return true;
        }
        false
    }

    fn drop_copy_into_difference(&mut self) {
        let n = self.copy.len();
        let copy = std::mem::replace(&mut self.copy, Bitmap::new(n));
        self.mv_dirty.union_with(&copy);
    }

    /// Called by the copy engine when the copy bitmap is empty in an `exec` state.
    /// Returns true when the state changed.
    pub fn complete_copy(&mut self) -> bool {
        match self.state.sync {
            SyncState::RplExec => self.state.sync = SyncState::RplSync,
            SyncState::SepExec => {
                self.state.sync = SyncState::Separated;
                self.state.rv_access = self.access_after_separate;
            }
            SyncState::RstExec if self.state.activity == Activity::RestoreUpdate => {
                self.state.sync = SyncState::RstSync
            }
            SyncState::RstExec => {
                self.state.activity = Activity::Separate;
                self.state.sync = SyncState::Separated;
                self.state.rv_access = RvAccess::Rw;
            }
            _ => return false,
        }
        self.end_op();
        true
    }

    pub fn info(&self, block_bytes: u64) -> PairInfo {
        let separated = self.is_separated_family();
        PairInfo {
            id: self.id.clone(),
            kind: self.id.kind(),
            state: self.state,
            separate_diff_blocks: if separated { self.mv_dirty.count() } else { 0 },
            copy_diff_blocks: self.copy.count(),
            copy_total_blocks: self.copy_total_blocks.max(self.copy.count()),
            copied_blocks: self.copied_blocks,
            block_bytes,
            backlog_high_water_blocks: self.backlog_high_water_blocks,
            last_op: self.last_op.clone(),
            acted_by: self.acted_by,
        }
    }
}

fn check_access_for_copy(a: RvAccess, op: &str) -> Result<()> {
    if matches!(a, RvAccess::Nr | RvAccess::Ro) {
        Ok(())
    } else {
        Err(ArrayError::refused(
            Rule::AccessForOperation,
            format!("{op} keeps the RV nr or ro while copying, not {a}"),
        ))
    }
}

fn check_copy_control(kind: PairKind, cc: CopyControl) -> Result<()> {
    if cc == CopyControl::SemiSync && kind == PairKind::Ddr {
        return Err(ArrayError::refused(
            Rule::SemiSyncRdrOnly,
            "semi-sync needs a remote (RDR) pair; use sync or background",
        ));
    }
    Ok(())
}

/// Checks a wait condition against a state: Some(true) reached, Some(false) can no longer be
/// reached without another operation, None keep waiting.
pub(crate) fn wait_reached(cond: WaitCondition, s: &PairState) -> Option<bool> {
    use SyncState::*;
    if s.abnormal_suspend && s.sync == SepExec && cond != WaitCondition::Sync {
        // A suspended separate finishes by itself once the link is back.
        return None;
    }
    if s.abnormal_suspend {
        // Nothing moves until a replicate after the link is back.
        return Some(cond == WaitCondition::Done);
    }
    match cond {
        WaitCondition::Sync => match s.sync {
            RplSync | RstSync => Some(true),
            RplExec | RstExec if !s.abnormal_suspend => None,
            _ => Some(false),
        },
        WaitCondition::Sep => match s.sync {
            Separated => Some(true),
            SepExec | RstExec if !s.abnormal_suspend => None,
            _ => Some(false),
        },
        WaitCondition::Done => match s.sync {
            RplExec | SepExec | RstExec if !s.abnormal_suspend => None,
            _ => Some(true),
        },
    }
}
