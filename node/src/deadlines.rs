//! How long each kind of request may take, on the agent and in the client, in one place.
//!
//! The rule: the client waits longer than the agent works on a request. The agent bounds its
//! own wait and answers before the client gives up — done, refused, or "outcome unknown" naming
//! what did not finish (a membership change that did not commit, a learner that did not catch
//! up) — so the operator learns what the agent knows. The client gives up first only when the
//! agent stopped answering altogether (paused, overloaded, cut off); it then says the outcome is
//! unknown too, since the request may have reached the agent. Either way the CLI exits 5: query
//! the state (`stillpoint cluster status`) before retrying.

use std::time::Duration;

/// Agent: a proposal may wait this long to commit and apply.
pub const PROPOSE_MS: u64 = 30_000;

/// Agent: adding a member — the learner's catch-up, then its promotion unless it stays a
/// learner — may take this long. Catching up a far-behind learner ships a snapshot and the log
/// since; on a LAN that is seconds for a control-plane state of megabytes.
pub const ADD_MEMBER_MS: u64 = 120_000;

/// Agent: promoting or removing a member (a joint-consensus change: two log entries) may take
/// this long to commit.
pub const MEMBERSHIP_CHANGE_MS: u64 = 30_000;

/// Client: how much longer than the agent's own bound a client waits, so the agent's answer
/// crosses the network (and a busy agent finishes its reply) before the client gives up.
pub const CLIENT_MARGIN_MS: u64 = 5_000;

/// Agent: the gRPC server cancels any request still running after this long; above every
/// bound above, so it never cuts one of them short.
pub const SERVER_REQUEST_CAP_MS: u64 = ADD_MEMBER_MS + CLIENT_MARGIN_MS;

/// How long a client waits for an answer to a request the agent bounds by `agent_ms`.
pub fn client_wait(agent_ms: u64) -> Duration {
    Duration::from_millis(agent_ms + CLIENT_MARGIN_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_outwaits_the_agent_and_the_server_cap_outwaits_both() {
        for agent_ms in [PROPOSE_MS, ADD_MEMBER_MS, MEMBERSHIP_CHANGE_MS] {
            assert!(client_wait(agent_ms) > Duration::from_millis(agent_ms));
            assert!(SERVER_REQUEST_CAP_MS >= agent_ms + CLIENT_MARGIN_MS);
        }
    }
}
