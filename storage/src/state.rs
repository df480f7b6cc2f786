//! The contract between the state-machine store and the application state it persists.

use openraft::{LogId, Membership, RaftTypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Application state replicated by Raft and persisted by [`crate::StateMachineStore`].
///
/// The store owns durability (snapshots, the last applied log id); the implementor owns meaning.
/// `apply` must be deterministic: same state + same command gives the same new state and response
/// on every replica, so it must not read clocks, draw random numbers or do I/O. Anything
/// time- or id-dependent is stamped into the command by the proposer before it is proposed.
pub trait StateMachineData<C>:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
where
    C: RaftTypeConfig,
{
    /// Applies one committed command and returns the response the proposer receives.
    /// `membership` is the membership in effect at this entry (the last membership entry
    /// applied before it), the same on every replica, so rules may depend on who is a member.
    fn apply(
        &mut self,
        log_id: &LogId<C::NodeId>,
        membership: &Membership<C::NodeId, C::Node>,
        command: &C::D,
    ) -> C::R;

    /// The response recorded for a log entry that carries no command (a blank entry a new
    /// leader commits, or a membership change).
    fn response_for_non_command(log_id: &LogId<C::NodeId>) -> C::R;
}
