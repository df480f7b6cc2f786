//! Faults on an array process: SIGKILL and a restart on the same data dir and address
//! ([`FaultKind::KillArray`]), or SIGSTOP and SIGCONT ([`FaultKind::PauseArray`]), of `A1`,
//! or, on a site with RDR pairs, of the remote array `A2` one time in three ([`which`]).
//!
//! A1 down or stopped: every MV's writes and every array step wait or fail (the window's
//! target is `A1`, which excuses every host's stalls). A2 down or stopped: A1 cannot reach the
//! RV of an RDR pair, as when the link is down (RDR pairs copying suspend; a suspended
//! separate refuses the RDR MVs' writes to blocks it has not copied yet), so the window's
//! targets are `A2` and the RDR pairs' business nodes, as for `rdr-link-down`
//! ([`super::excuse`]). A stopped array answers nothing and loses nothing: calls to it wait
//! (or time out and are asked about again) and go on once it runs.

use std::time::Duration;

use stillpoint_node::demo::site::{A1, A2};

use super::faults::{Harness, RESTART_TIMEOUT};
use super::records::now_ms;
use super::schedule::{FaultKind, PlannedFault};

/// The array an array-process fault of number `pick` strikes: A2 one time in three on a site
/// with RDR pairs, A1 otherwise.
pub fn which(pick: u64, has_rdr: bool) -> &'static str {
    if has_rdr && pick.is_multiple_of(3) {
        A2
    } else {
        A1
    }
}

impl Harness {
    /// Kills or stops the array [`which`] says for the hold, then restarts or continues it;
    /// records the window.
    pub(super) async fn array_process_fault(&mut self, f: &PlannedFault) {
        let array = which(f.pick, self.site.layout.has_rdr());
        let targets = if array == A2 {
            self.a2_and_rdr_business_nodes()
        } else {
            vec![A1.to_string()]
        };
        let start_ms = now_ms();
        match f.kind {
            FaultKind::PauseArray => {
                if let Err(e) = self.site.signal_array(array, "STOP") {
                    self.note(format!("SIGSTOP the array {array} failed: {e}"));
                    return;
                }
                self.note(format!("SIGSTOP the array {array} for {} ms", f.hold_ms));
                tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
                match self.site.signal_array(array, "CONT") {
                    Ok(()) => self.note(format!("SIGCONT the array {array}")),
                    Err(e) => self.note(format!("SIGCONT the array {array} failed: {e}")),
                }
            }
            _ => {
                self.site.kill_array_of(array).await;
                self.note(format!("SIGKILL the array {array} for {} ms", f.hold_ms));
                tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
                let restarted =
                    tokio::time::timeout(RESTART_TIMEOUT, self.site.restart_array_of(array)).await;
                match restarted {
                    Ok(Ok(())) => self.note(format!("array {array} restarted")),
                    Ok(Err(e)) => self.note(format!("array {array} restart failed: {e}")),
                    Err(_) => self.note(format!("array {array} restart timed out")),
                }
            }
        }
        self.window(f.kind, targets, start_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a2_is_struck_a_third_of_the_time_and_only_on_a_site_that_has_it() {
        let on_rdr = (0..3_000u64).filter(|p| which(*p, true) == A2).count();
        assert_eq!(on_rdr, 1_000);
        assert!((0..3_000u64).all(|p| which(p, false) == A1));
    }
}
