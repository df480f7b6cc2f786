//! Which faults excuse what the checkers ([`super::check`]) would otherwise judge: a damaged
//! copy (S3) when the fault may have damaged the MV itself, a write stall (S4) when the fault
//! struck the writer's own I/O path. Every other fault excuses nothing.
//!
//! The RDR link down ([`FaultKind::RdrLinkDown`]) is judged as the array failing the writes of
//! the business nodes whose MVs are of RDR pairs (its window's targets, beside `A2`): while a
//! separate the link suspended is in `sep/exec`, the MV's array refuses a host write to a
//! block it has not copied yet (copy-before-write cannot reach the RV; `stillpoint-array`'s
//! CAVEATS), so their writer can end on the error and its MV's tail be torn. Copying pairs in
//! abnormal suspend otherwise keep taking MV writes: nobody else is touched.
//!
//! A slow, lossy or delayed link ([`FaultKind::SlowLink`], [`FaultKind::LossyLink`],
//! [`FaultKind::DelayLink`]) is judged as a cut between a host and the array (`cut-array`)
//! when it harms the link an MV's writes take: the writer's own host's, or the array's (every
//! MV's writes pass it). A write there waits in the throttle's queue or the delay's hold, or
//! is dropped and sent again by TCP, so the application's writes crawl (a
//! stall the quiesce has no part in), and a write can fail: the array's data client bounds a
//! connect at 5 s and a call at 30 s (`stillpoint_array::CONNECT_TIMEOUT`, `CALL_TIMEOUT`), and
//! a SYN dropped twice (retried after 1 s, then 2 s more) outlasts the first. A failed write
//! ends the workload's writer and can leave its MV's tail torn, as a cut does. A link fault
//! anywhere else (the management or backup node's, a business node that is not the writer's)
//! touches no MV: it excuses nothing, and a stall it makes by delaying a quiesce's release is
//! still bounded by the host's own deadline.

use super::records::FaultWindow;
use super::schedule::FaultKind;

/// Whether `w` can leave the MV on `host` itself torn until its application starts again:
/// the host crashed (its agent killed: with the sim backend that is the host's reboot, its
/// write-back cache lost), or the host's writes failed (the array killed, the host cut from
/// the array, or the host's or the array's link slowed: the workload's writer ends on the
/// error, and the block its cache was writing back is lost). A paused agent loses nothing
/// (its writes wait); cuts between agents, slow copies, RV LD failures and the RVs' hooks do
/// not touch the MV.
pub fn damages_mv(w: &FaultWindow, host: &str) -> bool {
    let on = |name: &str| w.targets.iter().any(|t| t == name);
    match w.kind {
        // A2's window also names the RDR pairs' business nodes (`array_proc`).
        FaultKind::KillArray => on("A1") || on(host),
        // A stopped array refuses nothing: only A2 stopped past a peer call's bound could.
        FaultKind::PauseArray => on(host),
        k if k.is_link_fault() => on(host) || on("A1"),
        FaultKind::RdrLinkDown => on(host),
        FaultKind::CutArray
        | FaultKind::KillLeader
        | FaultKind::KillFollower
        | FaultKind::KillMany
        | FaultKind::KillQuiesced => on(host),
        _ => false,
    }
}

/// Whether `w` struck what stalls MV writes on `host` without any promise broken: the host's
/// own agent (with the sim backend its death is the host's reboot), the array, or the network
/// between the host and the array (cut, or slowed at either end). A cut between agents
/// excuses nothing: an MV's writes go to the array, and a quiesce whose release cannot arrive
/// ends at the host's own deadline. Nor do the array's slow copies, a failed RV LD or the RVs'
/// stop hook: the MVs' writes do not wait for any of them (a write mirrored to a failed RV
/// puts the pair in `fault` and lands). Nor does a step of the host's clock: its quiesce
/// deadlines run on a clock nobody steps. Nor do applications that will not let go of their
/// MV: the quiesce fails within its window and is undone.
pub fn excuses(w: &FaultWindow, host: &str) -> bool {
    excuses_on(w, host, false)
}

/// [`excuses`], on a site whose MVs are real file systems when `real_fs`: there a host's
/// agent is not in its writes' path (its LD path is a process of its own, which no fault
/// kills), so killing or stopping the agent excuses no stall. A quiesce it held ends at the
/// host's own deadline, which the limit covers.
pub fn excuses_on(w: &FaultWindow, host: &str, real_fs: bool) -> bool {
    let agent_fault = matches!(
        w.kind,
        FaultKind::KillLeader
            | FaultKind::KillFollower
            | FaultKind::KillMany
            | FaultKind::KillQuiesced
            | FaultKind::PauseLeader
            | FaultKind::PauseFollower
    );
    if real_fs && agent_fault {
        return false;
    }
    match w.kind {
        FaultKind::CutArray => w.targets.iter().any(|t| t == host),
        k if k.is_partition() => false,
        FaultKind::SlowCopy
        | FaultKind::RvLdFailure
        | FaultKind::RvHookFails
        | FaultKind::RvHookHangs
        | FaultKind::ClockStep
        | FaultKind::MvHookFails
        | FaultKind::MvHookHangs
        | FaultKind::MvHolder => false,
        k if k.is_link_fault() => w.targets.iter().any(|t| t == host || t == "A1"),
        FaultKind::RdrLinkDown => w.targets.iter().any(|t| t == host),
        _ => w.targets.iter().any(|t| t == host || t == "A1"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(target: &str) -> FaultWindow {
        FaultWindow {
            kind: FaultKind::SlowLink,
            targets: vec![target.into()],
            start_ms: 0,
            end_ms: 1,
        }
    }

    #[test]
    fn a_slow_link_excuses_only_the_mvs_whose_writes_take_it() {
        // The writer's own link, or the array's: its writes crawl and can time out.
        for target in ["db1", "A1"] {
            assert!(excuses(&slow(target), "db1"), "{target}");
            assert!(damages_mv(&slow(target), "db1"), "{target}");
        }
        // Anyone else's link carries none of db1's writes.
        for target in ["mgmt1", "backup1", "db2"] {
            assert!(!excuses(&slow(target), "db1"), "{target}");
            assert!(!damages_mv(&slow(target), "db1"), "{target}");
        }
    }
}
