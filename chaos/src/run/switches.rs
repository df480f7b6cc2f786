//! Faults struck inside an agent through the fault switches of a test build of `stillpoint`
//! (`--features fault-injection`; its `--version` says so): it reads them from the file the
//! site names for each agent ([`LocalSite::switches_path`]), which the harness writes. With a
//! production build these faults are skipped, saying why.
//!
//! ## `clock-step`
//! One agent's wall clock jumps forward or back, as an NTP step or an operator's `date -s`
//! moves a server's clock, and jumps back at the end of the hold. The machine's clock is
//! shared by every process of the site (and the harness), so it is never touched: the agent
//! adds the offset to its own wall clock.
//!
//! What the product promises under it: nothing that decides safety or a deadline reads the
//! wall clock. Quiesce deadlines (S4) run on the machine's boot clock, the leader's step
//! deadlines on its lead's clock (the wall clock read once when it began leading), Raft's
//! timers on tokio's monotonic clock, and the copy label (S3) on the order of
//! acknowledgements. Only stamps move: a job's timeline stamped by a stepped leader, a
//! journal's times. The checkers therefore never trust a stamp beyond what the harness saw
//! itself (see [`super::observe::end_instant`]), and a step excuses no write stall.
//!
//! ## `mv-hook-fails`, `mv-hook-hangs`, `mv-holder`
//! The applications on one business node's MVs will not let go when their stop hook asks:
//! the hook fails, or hangs until the agent kills it at its timeout, or the application stops
//! writing but keeps its volume open so the unmount is refused as busy. The sim backend's
//! applications live in the agent, so only a switch in the agent can make them do it.
//!
//! What the product promises: the static point by unmount fails within its window and is
//! undone (the volume mounted, the application started: S4, no stall excused), the failure
//! names its cause, and the job re-runs the round or ends failed with that reason (S7); no
//! copy is labelled consistent from a round whose quiesce failed (S3).

use std::path::Path;

use stillpoint_node::demo::site::LocalSite;

use super::faults::Harness;
use super::observe::with;
use super::records::now_ms;
use super::schedule::{FaultKind, PlannedFault};

/// The smallest and largest step, in ms.
const STEP_MS_MIN: u64 = 5_000;
const STEP_MS_MAX: u64 = 300_000;

/// Why the agents of `bin` cannot have their clocks stepped, or `None` if they can.
pub async fn unavailable(bin: &Path) -> Option<String> {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(bin).arg("--version").output(),
    )
    .await;
    match out {
        Ok(Ok(o)) if String::from_utf8_lossy(&o.stdout).contains("fault-injection") => None,
        Ok(Ok(o)) => Some(format!(
            "{} is not a test build (its --version: {:?}); build it with \
             `cargo build --release -p stillpoint-node --bin stillpoint --features fault-injection`",
            bin.display(),
            String::from_utf8_lossy(&o.stdout).trim()
        )),
        Ok(Err(e)) => Some(format!("cannot run {} --version: {e}", bin.display())),
        Err(_) => Some(format!(
            "{} --version did not answer in 30 s",
            bin.display()
        )),
    }
}

/// The step a fault's `pick` draws: 5 s to 5 min, forward or back.
pub fn step_ms(pick: u64) -> i64 {
    let size = STEP_MS_MIN + (pick / 2) % (STEP_MS_MAX - STEP_MS_MIN + 1);
    if pick.is_multiple_of(2) {
        -(size as i64)
    } else {
        size as i64
    }
}

/// Sets agent `slot`'s switches to `text` (empty: none on); written whole (a temporary file
/// renamed over), so the agent never reads half a file. Faults strike one at a time, so one
/// switch is on at most.
fn set_switches(site: &LocalSite, slot: usize, text: &str) -> std::io::Result<()> {
    let path = site.switches_path(slot);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

fn set_offset(site: &LocalSite, slot: usize, offset_ms: i64) -> std::io::Result<()> {
    set_switches(site, slot, &format!("clock_offset_ms = {offset_ms}\n"))
}

impl Harness {
    /// Steps one agent's clock for the hold: the leader's a third of the time, a business
    /// node's (where quiesce deadlines run) a third, any agent's otherwise.
    pub(super) async fn strike_clock_step(&mut self, f: &PlannedFault, leader: Option<usize>) {
        if let Some(why) = &self.switches_unavailable {
            let why = why.clone();
            with(&self.records, |r| r.skipped.push((f.kind, why)));
            return;
        }
        let n = self.agents();
        let business: Vec<usize> = (0..n)
            .filter(|s| self.site.name(*s).starts_with("db"))
            .collect();
        let slot = match (f.pick % 3, leader) {
            (0, Some(l)) => l,
            (1, _) if !business.is_empty() => business[((f.pick / 3) as usize) % business.len()],
            _ => ((f.pick / 3) % n as u64) as usize,
        };
        let name = self.site.name(slot);
        let offset_ms = step_ms(f.pick / 5);
        let start_ms = now_ms();
        if let Err(e) = set_offset(&self.site, slot, offset_ms) {
            self.note(format!("clock step of {name} failed: {e}"));
            return;
        }
        self.note(format!(
            "clock of {name} stepped {offset_ms:+} ms for {} ms{}",
            f.hold_ms,
            if Some(slot) == leader {
                " (the leader)"
            } else {
                ""
            }
        ));
        tokio::time::sleep(std::time::Duration::from_millis(f.hold_ms)).await;
        match set_offset(&self.site, slot, 0) {
            Ok(()) => self.note(format!("clock of {name} stepped back")),
            Err(e) => self.note(format!(
                "clock of {name} not stepped back ({e}); the heal retries"
            )),
        }
        self.window(f.kind, vec![name], start_ms);
    }

    /// Makes the applications on one business node's MVs refuse, hang or hold on when
    /// their stop hook runs, for the hold.
    pub(super) async fn strike_app_stop(&mut self, f: &PlannedFault) {
        if let Some(why) = &self.switches_unavailable {
            let why = why.clone();
            with(&self.records, |r| r.skipped.push((f.kind, why)));
            return;
        }
        let business: Vec<usize> = (0..self.agents())
            .filter(|s| self.site.name(*s).starts_with("db"))
            .collect();
        if business.is_empty() {
            with(&self.records, |r| {
                r.skipped.push((f.kind, "no business node".into()))
            });
            return;
        }
        let slot = business[(f.pick % business.len() as u64) as usize];
        let name = self.site.name(slot);
        let app_stop = match f.kind {
            FaultKind::MvHookFails => "fails",
            FaultKind::MvHookHangs => "hangs",
            _ => "holds",
        };
        let start_ms = now_ms();
        if let Err(e) = set_switches(&self.site, slot, &format!("app_stop = \"{app_stop}\"\n")) {
            self.note(format!("app_stop switch of {name} failed: {e}"));
            return;
        }
        self.note(format!(
            "the applications on {name}'s MVs {app_stop} when asked to stop, for {} ms",
            f.hold_ms
        ));
        tokio::time::sleep(std::time::Duration::from_millis(f.hold_ms)).await;
        match set_switches(&self.site, slot, "") {
            Ok(()) => self.note(format!("the applications on {name}'s MVs stop again")),
            Err(e) => self.note(format!(
                "app_stop switch of {name} not lifted ({e}); the heal retries"
            )),
        }
        self.window(f.kind, vec![name], start_ms);
    }

    /// Every switch off: each agent's clock as the machine's, its applications stopping.
    pub(super) fn heal_switches(&mut self) {
        if self.switches_unavailable.is_some() {
            return;
        }
        for slot in 0..self.agents() {
            if let Err(e) = set_switches(&self.site, slot, "") {
                self.note(format!(
                    "heal: switches of {} not lifted: {e}",
                    self.site.name(slot)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_both_ways_within_their_bounds() {
        let steps: Vec<i64> = (0..1000).map(step_ms).collect();
        assert!(steps.iter().any(|s| *s < 0) && steps.iter().any(|s| *s > 0));
        for s in steps {
            let size = s.unsigned_abs();
            assert!((STEP_MS_MIN..=STEP_MS_MAX).contains(&size), "{s}");
        }
    }
}
