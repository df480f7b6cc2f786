//! The crate's one error type. Variants are sorted by what the caller should do next.

use serde::{Deserialize, Serialize};

/// A pairing or I/O rule of the array. A refusal always names the rule it enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// MV and RV (or a parent and its business copy) must have the same capacity.
    SameCapacity,
    /// MV and RV (or a parent and its business copy) must have the same OS/format type.
    SameFormat,
    /// One MV has at most [`crate::MAX_RVS_PER_MV`] RVs.
    MaxRvsPerMv,
    /// One MV has at most [`crate::MAX_DDR_RVS_PER_MV`] RVs on its own array (DDR).
    MaxDdrRvsPerMv,
    /// The RVs of one MV are spread over at most [`crate::MAX_RV_ARRAYS_PER_MV`] arrays.
    MaxArraysPerMv,
    /// DDR is a single layer: an RV is never the MV of a DDR pair and vice versa.
    SingleDdrLayer,
    /// An LD plays one role at a time: an RV belongs to exactly one pair and is never an MV; a
    /// business copy LD belongs to exactly one parent and is never an MV, an RV or a parent.
    OneRolePerLd,
    /// A pair is unset only while separated (separated, cancel or fault).
    UnsetOnlyWhenSeparated,
    /// Semi-sync copy control exists only for remote (RDR) pairs.
    SemiSyncRdrOnly,
    /// `rvuse immediate` is offered for DDR pairs only by this array (see crate caveats).
    RvuseImmediateDdrOnly,
    /// The host is not on the LD's access list.
    AccessList,
    /// The RV access restriction (`nr`, `na`, `ro`) forbids this I/O.
    RvAccess,
    /// The access requested for an operation is not one the seed allows for it
    /// (replicate/restore: `nr` or `ro`; separate: `rw` or `ro`).
    AccessForOperation,
    /// A business copy's parent is never itself a business copy (no copy of a copy).
    NoCopyOfCopy,
    /// A business copy's parent is never an RV: replication writes to an RV bypass the
    /// copy-before-write that keeps the copy's point in time.
    CopyParentNotRv,
    /// Host I/O on a business copy needs it attached (detached: no data; copying to parent:
    /// frozen until the parent holds its content).
    CopyAccess,
    /// A copy to the parent needs every pair of the parent separated (separated, cancel,
    /// fault): a replicating or restoring pair would copy a half-restored parent.
    CopyToParentNeedsSeparatedPairs,
    /// A pair restore onto an MV that has attached business copies is refused: the restore
    /// writes the MV beneath the copies' copy-before-write.
    PairRestoreNeedsDetachedCopies,
    /// A restore needs every other pair of its MV separated (separated, cancel, fault), so at
    /// most one restore runs per MV and no other pair mirrors or copies the MV meanwhile; the
    /// blocks it restores become MV-side differences of those other pairs.
    RestoreNeedsOtherPairsSeparated,
    /// A fenced pair operation whose token is older than the newest token that acted on the
    /// pair: a newer attempt, job or leader has taken over (see [`crate::FenceToken`]).
    FencingToken,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Rule::SameCapacity => "same-capacity",
            Rule::SameFormat => "same-format",
            Rule::MaxRvsPerMv => "max-4-rvs-per-mv",
            Rule::MaxDdrRvsPerMv => "max-3-ddr-rvs-per-mv",
            Rule::MaxArraysPerMv => "max-2-arrays-per-mv",
            Rule::SingleDdrLayer => "single-ddr-layer",
            Rule::OneRolePerLd => "one-role-per-ld",
            Rule::UnsetOnlyWhenSeparated => "unset-only-when-separated",
            Rule::FencingToken => "fencing-token",
            Rule::SemiSyncRdrOnly => "semi-sync-rdr-only",
            Rule::RvuseImmediateDdrOnly => "rvuse-immediate-ddr-only",
            Rule::AccessList => "access-list",
            Rule::RvAccess => "rv-access",
            Rule::AccessForOperation => "access-for-operation",
            Rule::NoCopyOfCopy => "no-copy-of-a-copy",
            Rule::CopyParentNotRv => "copy-parent-not-rv",
            Rule::CopyAccess => "copy-access",
            Rule::CopyToParentNeedsSeparatedPairs => "copy-to-parent-needs-separated-pairs",
            Rule::PairRestoreNeedsDetachedCopies => "pair-restore-needs-detached-copies",
            Rule::RestoreNeedsOtherPairsSeparated => "restore-needs-other-pairs-separated",
        };
        f.write_str(s)
    }
}

/// Everything that can go wrong, phrased as what the caller should do next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ArrayError {
    /// Refused by a rule; retrying the same request is pointless.
    #[error("refused by rule {rule}: {detail}")]
    Refused { rule: Rule, detail: String },
    /// The pair is in a state the operation does not start from; query, then choose another op.
    #[error("wrong state: pair {pair} is {state}; {op} needs {needs}")]
    WrongState {
        pair: String,
        state: String,
        op: String,
        needs: String,
    },
    /// The business copy is in a state the operation does not start from; list the copies,
    /// then choose another operation.
    #[error("wrong state: business copy {copy} is {state}; {op} needs {needs}")]
    CopyWrongState {
        copy: String,
        state: String,
        op: String,
        needs: String,
    },
    /// The named object does not exist; check the name.
    #[error("not found: {what}")]
    NotFound { what: String },
    /// The target could not be reached and nothing was done; retry later.
    #[error("unreachable: {target}: {detail}; nothing was changed, retry later")]
    Unreachable { target: String, detail: String },
    /// This array could not reach the remote array of an RDR pair: the link between them is
    /// down, or the remote array does not answer. Nothing was changed (a pair that was copying
    /// is in abnormal suspend, its MV's writes kept as differences); retry once the link is
    /// back. Unlike [`ArrayError::Unreachable`], the array called did answer: sending the
    /// same request again before the link is back gets the same answer.
    #[error(
        "array {array} cannot reach its remote array {peer} (the RDR link is down or {peer} does not answer): {detail}; nothing was changed, retry once the link is back"
    )]
    PeerUnreachable {
        array: String,
        peer: String,
        detail: String,
    },
    /// The request may or may not have taken effect; query the state before any retry.
    #[error("outcome unknown: {op}: {detail}; query the pair state before retrying")]
    OutcomeUnknown { op: String, detail: String },
    /// The operation was accepted but the awaited condition was not reached in time.
    #[error("timed out after {timeout_ms} ms waiting for {what}; the operation continues")]
    Timeout { what: String, timeout_ms: u64 },
    /// The request itself is malformed; fix the named field.
    #[error("invalid input: {detail}")]
    InvalidInput { detail: String },
    /// The configuration file is wrong; fix the named file and field.
    #[error("config {path}: {detail}")]
    Config { path: String, detail: String },
    /// Persistent metadata cannot be read; the array stops instead of starting empty.
    #[error(
        "metadata corrupt in {path}: {detail}; the array refuses to start rather than forget pairs"
    )]
    CorruptMetadata { path: String, detail: String },
    /// The array cannot start: its data dir or listen address is unusable (missing
    /// permission, not a directory, address in use); fix the named path or address.
    #[error("cannot start: {what}: {detail}")]
    CannotStart { what: String, detail: String },
    /// A logical disk failed (injected or real disk error); repair it, then re-replicate.
    #[error("LD {ld} of array {array} failed: {detail}")]
    DeviceFailed {
        array: String,
        ld: u32,
        detail: String,
    },
    /// Local disk I/O failed; the array's data dir needs attention.
    #[error("disk I/O on {path}: {detail}")]
    Io { path: String, detail: String },
}

impl ArrayError {
    pub(crate) fn refused(rule: Rule, detail: impl Into<String>) -> Self {
        ArrayError::Refused {
            rule,
            detail: detail.into(),
        }
    }
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        ArrayError::InvalidInput {
            detail: detail.into(),
        }
    }
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        ArrayError::NotFound { what: what.into() }
    }
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        ArrayError::Io {
            path: path.display().to_string(),
            detail: e.to_string(),
        }
    }
}

/// Short alias used throughout the crate.
pub type Result<T, E = ArrayError> = std::result::Result<T, E>;
