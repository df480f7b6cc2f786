//! The `clock-step` fault: one agent's wall clock jumps forward or back, as an NTP step or
//! an operator's `date -s` moves a server's clock, and jumps back at the end of the hold.
//!
//! The machine's clock is shared by every process of the site (and the harness), so it is
//! never touched. A test build of `stillpoint` (`--features fault-injection`; its
//! `--version` says so) reads an offset for its wall clock from the file the site names
//! for each agent ([`LocalSite::switches_path`]); the harness writes that file. With a
//! production build the fault is skipped, saying why.
//!
//! What the product promises under it: nothing that decides safety or a deadline reads the
//! wall clock. Quiesce deadlines (S4) run on the machine's boot clock, the leader's step
//! deadlines on its lead's clock (the wall clock read once when it began leading), Raft's
//! timers on tokio's monotonic clock, and the copy label (S3) on the order of
//! acknowledgements. Only stamps move: a job's timeline stamped by a stepped leader, a
//! journal's times. The checkers therefore never trust a stamp beyond what the harness saw
//! itself (see [`super::observe::end_instant`]), and a step excuses no write stall.

use std::path::Path;

use stillpoint_node::demo::site::LocalSite;

use super::faults::Harness;
use super::observe::with;
use super::records::now_ms;
use super::schedule::PlannedFault;

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

/// Sets agent `slot`'s clock offset (0: its clock as the machine's); written whole (a
/// temporary file renamed over), so the agent never reads half a file.
fn set_offset(site: &LocalSite, slot: usize, offset_ms: i64) -> std::io::Result<()> {
    let path = site.switches_path(slot);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("clock_offset_ms = {offset_ms}\n"))?;
    std::fs::rename(&tmp, &path)
}

impl Harness {
    /// Steps one agent's clock for the hold: the leader's a third of the time, a business
    /// node's (where quiesce deadlines run) a third, any agent's otherwise.
    pub(super) async fn strike_clock_step(&mut self, f: &PlannedFault, leader: Option<usize>) {
        if let Some(why) = &self.clock_steps_unavailable {
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

    /// Every agent's clock as the machine's.
    pub(super) fn heal_clocks(&mut self) {
        if self.clock_steps_unavailable.is_some() {
            return;
        }
        for slot in 0..self.agents() {
            if let Err(e) = set_offset(&self.site, slot, 0) {
                self.note(format!(
                    "heal: clock of {} not reset: {e}",
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
