//! The control messages carried (as JSON) inside the gRPC `Call` rpc, shared by the server and
//! [`crate::RemoteArray`]. Conversions live here and nowhere else.

use serde::{Deserialize, Serialize};

use crate::api::{PeerReply, PeerRequest};
use crate::error::ArrayError;
use crate::types::*;

/// One control operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    Info,
    LdList,
    PairSet(PairId),
    PairUnset(PairId),
    PairList,
    PairQuery(PairId),
    Replicate(PairId, ReplicateOptions),
    Separate(PairId, SeparateOptions),
    Fenced(PairId, FenceToken, FencedOp),
    Restore(PairId, RestoreOptions),
    ForcedSeparate(PairId),
    Wait(PairId, WaitCondition, u64),
    Fault(Fault),
    Peer(PeerRequest),
    CopyCreate {
        parent: u32,
        copy: u32,
        attached: bool,
    },
    CopyAttach(u32),
    CopyDetach(u32),
    CopyDelete(u32),
    CopyToParent(u32, Option<u64>),
    CopyList,
}

impl Call {
    /// Whether the call changes state (a transport failure then leaves the outcome unknown).
    pub(crate) fn mutates(&self) -> bool {
        !matches!(
            self,
            Call::Info
                | Call::LdList
                | Call::PairList
                | Call::PairQuery(_)
                | Call::Wait(..)
                | Call::CopyList
        )
    }
    /// How long the server may legitimately take (waits included).
    pub(crate) fn wait_ms(&self) -> u64 {
        match self {
            Call::Replicate(_, o) => o.wait_timeout_ms.unwrap_or(0),
            Call::Separate(_, o) => o.wait_timeout_ms.unwrap_or(0),
            Call::Fenced(_, _, op) => op.wait_timeout_ms().unwrap_or(0),
            Call::Restore(_, o) => o.wait_timeout_ms.unwrap_or(0),
            Call::Wait(_, _, t) => *t,
            Call::CopyToParent(_, t) => t.unwrap_or(0),
            _ => 0,
        }
    }
}

/// Answer to a [`Call`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    Info(ArrayInfo),
    Lds(Vec<LdInfo>),
    Pair(PairInfo),
    Pairs(Vec<PairInfo>),
    Done,
    Peer(PeerReply),
    Copy(CopyInfo),
    Copies(Vec<CopyInfo>),
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain data types to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(b: &[u8], what: &str) -> Result<T, ArrayError> {
    serde_json::from_slice(b)
        .map_err(|e| ArrayError::invalid(format!("malformed {what} on the wire: {e}")))
}

pub(crate) fn error_json(e: &ArrayError) -> String {
    String::from_utf8(encode(e)).unwrap_or_default()
}
