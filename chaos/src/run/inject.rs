//! Array and host-hook faults: what the arrays serve as faults (a slow copy pace, a failed
//! RV LD — on A2 for an RDR pair's RV —, the RDR link from A1 to A2 down) and a stop hook of
//! the backup node's RVs that refuses or hangs. Each is switched on
//! for its hold and off again; whatever could not be switched off is switched off again at the
//! heal ([`RvHook`], [`Harness::heal_injected`]).
//!
//! The hook is no backdoor in the product: it is an ordinary `command` stop hook of every RV
//! volume of `backup1` (see [`RvHook::volume_toml`]), which the agent runs when a job frees the
//! RV, as it would run `systemctl stop` of the RV's users. The harness makes it fail or hang
//! by creating a flag file it consults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stillpoint_array::{Array, Fault, SyncState};
use stillpoint_node::demo::site::{A1, A2};

use super::faults::Harness;
use super::observe::with;
use super::records::now_ms;
use super::schedule::{FaultKind, PlannedFault};

/// Bound on one fault order to the array (it runs: faults never overlap).
const ARRAY_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the RVs' stop hook may run before the agent kills it and the free fails.
pub const RV_HOOK_TIMEOUT_MS: u64 = 2_000;
/// The copy pace while an RV LD failure waits for a copy to strike in.
const IN_COPY_PACE_BYTES_PER_S: u64 = 64 * 1024;
/// How long an RV LD failure waits for a pair to be copying.
const COPY_WAIT: Duration = Duration::from_secs(15);
/// What a hanging hook sleeps: far past its timeout.
const RV_HOOK_HANG_S: u64 = 120;

/// The RVs' stop hook and its two flag files (in the schedule's dir).
#[derive(Clone, Debug)]
pub struct RvHook {
    pub fail_flag: PathBuf,
    pub hang_flag: PathBuf,
}

impl RvHook {
    pub fn new(dir: &Path) -> RvHook {
        RvHook {
            fail_flag: dir.join("rv-hook-fails"),
            hang_flag: dir.join("rv-hook-hangs"),
        }
    }

    /// The lines every RV volume of `backup1` gets in its `[host]` section: a stop hook that
    /// exits 1 while the fail flag exists, sleeps past its timeout while the hang flag
    /// exists, and otherwise succeeds at once.
    pub fn volume_toml(&self) -> String {
        let script = format!(
            "if [ -e '{}' ]; then echo 'chaos: the users of this RV refuse to stop' >&2; exit 1; fi; \
             if [ -e '{}' ]; then exec sleep {RV_HOOK_HANG_S}; fi; exit 0",
            self.fail_flag.display(),
            self.hang_flag.display()
        );
        format!(
            "stop = {{ command = [\"/bin/sh\", \"-c\", {script:?}], timeout_ms = {RV_HOOK_TIMEOUT_MS} }}\n"
        )
    }

    fn flag(&self, kind: FaultKind) -> &Path {
        if kind == FaultKind::RvHookHangs {
            &self.hang_flag
        } else {
            &self.fail_flag
        }
    }

    /// Removes both flags (a flag already gone is fine).
    pub fn clear(&self) -> Result<(), String> {
        for f in [&self.fail_flag, &self.hang_flag] {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", f.display())),
            }
        }
        Ok(())
    }
}

impl Harness {
    /// Sends `fault` to array `array` (A1 or A2), bounded; the error says what failed.
    async fn array_fault(&self, array: &str, fault: &Fault) -> Result<(), String> {
        let call = async {
            let array = self
                .site
                .connect_array_of(array)
                .await
                .map_err(|e| format!("connecting to the array {array}: {e}"))?;
            array
                .inject_fault(fault)
                .await
                .map_err(|e| format!("{fault:?}: {e}"))
        };
        match tokio::time::timeout(ARRAY_CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{fault:?}: no answer within {} s",
                ARRAY_CALL_TIMEOUT.as_secs()
            )),
        }
    }

    /// `A2`, then every business node whose MV is of an RDR pair: the targets of a fault that
    /// cuts A1 from A2 (the link down, A2 killed or stopped). While A1 cannot reach A2, a
    /// separate it suspended refuses those MVs' writes to the blocks it has not copied yet
    /// (see `excuse`).
    pub(super) fn a2_and_rdr_business_nodes(&self) -> Vec<String> {
        let mut targets: Vec<String> = self
            .site
            .layout
            .pairs
            .iter()
            .filter(|p| p.rdr)
            .map(|p| self.site.name(p.mv_node))
            .collect();
        targets.sort();
        targets.dedup();
        targets.insert(0, A2.into());
        targets
    }

    /// Strikes an array or hook fault, holds it, removes it; records the window.
    pub(super) async fn strike_injected(&mut self, f: &PlannedFault) {
        let pairs = &self.site.layout.pairs;
        let (on, off, targets, what): (Injected, Injected, Vec<String>, String) = match f.kind {
            FaultKind::SlowCopy => {
                let pace = 32 * 1024 * (1 + f.pick % 8);
                (
                    Injected::Array(Fault::CopyPace { bytes_per_s: pace }),
                    Injected::Array(Fault::CopyPace {
                        bytes_per_s: self.site.layout.copy_pace_bytes_per_s,
                    }),
                    vec![A1.into()],
                    format!("the array's copy pace at {pace} B/s"),
                )
            }
            FaultKind::RvLdFailure if f.pick % 3 == 1 => {
                self.strike_ld_failure_in_copy(f).await;
                return;
            }
            FaultKind::RvLdFailure => {
                // Any moment, or (a third of the draws) inside a freeze window: once a
                // business node holds a quiesce, on a pair of its MVs.
                let (p, when) = if f.pick % 3 == 2 {
                    let Some(slot) = self.wait_for_quiesce().await else {
                        with(&self.records, |r| {
                            r.skipped
                                .push((f.kind, "no MV was held quiesced within the wait".into()))
                        });
                        return;
                    };
                    let mine: Vec<_> = pairs.iter().filter(|p| p.mv_node == slot).collect();
                    let Some(p) = mine.get((f.pick / 3 % mine.len().max(1) as u64) as usize) else {
                        with(&self.records, |r| {
                            r.skipped
                                .push((f.kind, format!("{} holds no MV", self.site.name(slot))))
                        });
                        return;
                    };
                    (
                        *p,
                        format!(" while {} held a quiesce", self.site.name(slot)),
                    )
                } else {
                    (
                        &pairs[(f.pick / 3 % pairs.len() as u64) as usize],
                        String::new(),
                    )
                };
                let on = p.rv_array();
                (
                    Injected::ArrayOf(on, Fault::LdFailure { ld: p.rv_ld }),
                    Injected::ArrayOf(on, Fault::LdRepair { ld: p.rv_ld }),
                    vec![format!("{on}/{}", p.rv_ld)],
                    format!("RV LD {on}/{} of {} failed{when}", p.rv_ld, p.pair),
                )
            }
            FaultKind::RdrLinkDown if self.site.layout.has_rdr() => {
                // Targets: the link's far end, and the business nodes whose MVs are of RDR
                // pairs (a separate the link suspends refuses their writes to the blocks it
                // has not copied yet: see `excuse`).
                let targets = self.a2_and_rdr_business_nodes();
                (
                    Injected::ArrayOf(A1, Fault::LinkDown { peer: A2.into() }),
                    Injected::ArrayOf(A1, Fault::LinkUp { peer: A2.into() }),
                    targets,
                    format!("the RDR link {A1}->{A2} down"),
                )
            }
            FaultKind::RvHookFails | FaultKind::RvHookHangs => (
                Injected::Flag(self.rv_hook.flag(f.kind).to_path_buf()),
                Injected::Unflag(self.rv_hook.flag(f.kind).to_path_buf()),
                vec!["backup1".into()],
                format!(
                    "the stop hook of backup1's RVs {}",
                    if f.kind == FaultKind::RvHookHangs {
                        "hangs past its timeout"
                    } else {
                        "exits 1"
                    }
                ),
            ),
            other => {
                self.note(format!("{} is not an injected fault", other.name()));
                return;
            }
        };
        let start_ms = now_ms();
        if let Err(e) = self.apply(&on).await {
            self.note(format!("{} failed: {e}", f.kind.name()));
            with(&self.records, |r| {
                r.skipped
                    .push((f.kind, format!("the fault could not be struck: {e}")))
            });
            return;
        }
        self.note(format!("{what} for {} ms ({})", f.hold_ms, f.kind.name()));
        tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
        match self.apply(&off).await {
            Ok(()) => self.note(format!("{} removed", f.kind.name())),
            Err(e) => {
                self.note(format!(
                    "removing {} failed: {e} (the heal retries)",
                    f.kind.name()
                ));
                self.injected_on.push(off);
            }
        }
        with(&self.records, |r| {
            r.faults.push(super::records::FaultWindow {
                kind: f.kind,
                targets,
                start_ms,
                end_ms: now_ms(),
            })
        });
    }

    /// The RV LD failure of a third of the draws: the copies are slowed first
    /// ([`IN_COPY_PACE_BYTES_PER_S`]) so a replicate or separate lasts long enough, and the
    /// RV LD of the first pair seen copying (`rpl/exec` or `sep/exec`, waited for at most
    /// [`COPY_WAIT`]) fails for the hold. Then the LD is repaired and the pace restored.
    /// Skipped (and counted) if no pair copies within the wait.
    async fn strike_ld_failure_in_copy(&mut self, f: &PlannedFault) {
        let normal = Injected::Array(Fault::CopyPace {
            bytes_per_s: self.site.layout.copy_pace_bytes_per_s,
        });
        let slow = Injected::Array(Fault::CopyPace {
            bytes_per_s: IN_COPY_PACE_BYTES_PER_S,
        });
        if let Err(e) = self.apply(&slow).await {
            with(&self.records, |r| {
                r.skipped
                    .push((f.kind, format!("the copies could not be slowed: {e}")))
            });
            return;
        }
        let copying = self.wait_for_copy().await;
        let Some((pair, rv_array, rv_ld, sync)) = copying else {
            if let Err(e) = self.apply(&normal).await {
                self.note(format!(
                    "restoring the copy pace failed: {e} (the heal retries)"
                ));
                self.injected_on.push(normal);
            }
            with(&self.records, |r| {
                r.skipped.push((
                    f.kind,
                    format!("no pair was copying within {} s", COPY_WAIT.as_secs()),
                ))
            });
            return;
        };
        let start_ms = now_ms();
        let on = if rv_array == A2 { A2 } else { A1 };
        let repair = Injected::ArrayOf(on, Fault::LdRepair { ld: rv_ld });
        match self
            .apply(&Injected::ArrayOf(on, Fault::LdFailure { ld: rv_ld }))
            .await
        {
            Ok(()) => {
                self.note(format!(
                    "RV LD {on}/{rv_ld} of {pair} failed while the pair was {sync} for {} ms (rv-ld-failure, in a copy)",
                    f.hold_ms
                ));
                tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
                for off in [repair, normal] {
                    if let Err(e) = self.apply(&off).await {
                        self.note(format!("removing {off:?} failed: {e} (the heal retries)"));
                        self.injected_on.push(off);
                    }
                }
                self.note("rv-ld-failure removed (LD repaired, copy pace restored)".into());
                with(&self.records, |r| {
                    r.faults.push(super::records::FaultWindow {
                        kind: f.kind,
                        targets: vec![format!("{on}/{rv_ld}")],
                        start_ms,
                        end_ms: now_ms(),
                    })
                });
            }
            Err(e) => {
                if let Err(e) = self.apply(&normal).await {
                    self.note(format!(
                        "restoring the copy pace failed: {e} (the heal retries)"
                    ));
                    self.injected_on.push(normal);
                }
                with(&self.records, |r| {
                    r.skipped
                        .push((f.kind, format!("the LD failure could not be struck: {e}")))
                });
            }
        }
    }

    /// The first pair the array says is copying (`rpl/exec`, `sep/exec`), waiting for one at
    /// most [`COPY_WAIT`]: (pair name, RV array, RV LD, state).
    async fn wait_for_copy(&self) -> Option<(String, String, u32, SyncState)> {
        let deadline = tokio::time::Instant::now() + COPY_WAIT;
        let array = tokio::time::timeout(ARRAY_CALL_TIMEOUT, self.site.connect_array())
            .await
            .ok()?
            .ok()?;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Ok(pairs)) = tokio::time::timeout(ARRAY_CALL_TIMEOUT, array.pair_list()).await
                && let Some(p) = pairs
                    .iter()
                    .find(|p| matches!(p.state.sync, SyncState::RplExec | SyncState::SepExec))
            {
                let name = self
                    .site
                    .layout
                    .pairs
                    .iter()
                    .find(|l| l.rv_ld == p.id.rv.ld)
                    .map(|l| l.pair.clone())
                    .unwrap_or_else(|| p.id.to_string());
                return Some((name, p.id.rv.array.clone(), p.id.rv.ld, p.state.sync));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    async fn apply(&self, what: &Injected) -> Result<(), String> {
        match what {
            Injected::Array(fault) => self.array_fault(A1, fault).await,
            Injected::ArrayOf(array, fault) => self.array_fault(array, fault).await,
            Injected::Flag(path) => std::fs::write(path, b"chaos\n")
                .map_err(|e| format!("creating {}: {e}", path.display())),
            Injected::Unflag(path) => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("removing {}: {e}", path.display())),
            },
        }
    }

    /// The heal's part: removes what a hold's end could not (the array's pace and LD failures
    /// do not outlive a restart of the array process, which the heal may also do).
    pub(super) async fn heal_injected(&mut self) {
        if let Err(e) = self.rv_hook.clear() {
            self.note(format!("heal: {e}"));
        }
        for off in std::mem::take(&mut self.injected_on) {
            match self.apply(&off).await {
                Ok(()) => self.note(format!("heal: {off:?} done")),
                Err(e) => self.note(format!("heal: {off:?} failed: {e}")),
            }
        }
    }
}

/// One switch of an injected fault.
#[derive(Clone, Debug)]
pub enum Injected {
    /// A fault for A1.
    Array(Fault),
    /// A fault for the named array (A1 or A2).
    ArrayOf(&'static str, Fault),
    Flag(PathBuf),
    Unflag(PathBuf),
}
