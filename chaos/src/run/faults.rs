//! Striking faults on the live site and removing them: SIGKILL and restart, SIGSTOP and
//! SIGCONT, of agents and of the array processes ([`super::array_proc`]), cuts and link
//! faults in the site's network ([`crate::net`], [`super::link`]), and array and hook faults
//! ([`super::inject`]). The schedule says what and when; the live site says who leads and
//! who holds a quiesce at that moment.

use std::collections::BTreeSet;
use std::time::Duration;

use stillpoint_node::demo::site::LocalSite;

use crate::net::SiteNet;

use super::inject::{Injected, RvHook};
use super::observe::{self, Shared, with};
use super::records::{FaultWindow, now_ms};
use super::schedule::{FaultKind, PlannedFault};

/// Bound on restarting one agent (its host's boot: volumes attached, MVs mounted, apps started).
pub(super) const RESTART_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a kill-while-quiesced fault waits for some business node to hold a quiesce.
const QUIESCE_WAIT: Duration = Duration::from_secs(15);

/// The site under faults and what the harness did to it.
pub struct Harness {
    pub site: LocalSite,
    /// The site's network when every process runs in its own namespace (partitions possible).
    pub net: Option<SiteNet>,
    /// Agents stopped with SIGSTOP (by slot).
    pub paused: BTreeSet<usize>,
    pub records: Shared,
    /// The backup node's RV stop hook and its flags ([`super::inject`]).
    pub rv_hook: RvHook,
    /// Injected faults whose removal failed at the end of their hold (the heal retries).
    pub injected_on: Vec<Injected>,
    /// Why the agents' fault switches cannot be used (`None`: they can; see
    /// [`super::switches`]).
    pub switches_unavailable: Option<String>,
}

impl Harness {
    pub fn agents(&self) -> usize {
        self.site.agents.len()
    }

    /// Agents running and not stopped.
    pub fn alive(&self) -> Vec<bool> {
        (0..self.agents())
            .map(|s| self.site.agents[s].is_some() && !self.paused.contains(&s))
            .collect()
    }

    pub(super) fn note(&self, line: String) {
        with(&self.records, |r| r.note(line));
    }

    /// Strikes `f`, holds it, removes it; records the window.
    pub async fn strike(&mut self, f: &PlannedFault) {
        let alive = self.alive();
        let leader = observe::leader(&self.site.endpoints, &alive).await;
        let others: Vec<usize> = (0..self.agents())
            .filter(|s| alive[*s] && Some(*s) != leader)
            .collect();
        let pick = |items: &[usize]| items[(f.pick % items.len() as u64) as usize];
        let targets: Vec<usize> = match f.kind {
            FaultKind::KillLeader | FaultKind::PauseLeader => match leader {
                Some(l) => vec![l],
                None if !others.is_empty() => {
                    self.note("no leader known: striking another agent".into());
                    vec![pick(&others)]
                }
                None => vec![],
            },
            FaultKind::KillFollower | FaultKind::PauseFollower if !others.is_empty() => {
                vec![pick(&others)]
            }
            FaultKind::KillFollower | FaultKind::PauseFollower => vec![],
            FaultKind::KillMany => {
                // 2..=all agents, the leader first: sometimes a majority survives, sometimes not.
                let n = 2 + (f.pick % (self.agents() as u64 - 1)) as usize;
                let mut t: Vec<usize> = leader.into_iter().collect();
                let offset = (f.pick / 7) as usize;
                for i in 0..others.len() {
                    if t.len() >= n {
                        break;
                    }
                    t.push(others[(offset + i) % others.len()]);
                }
                t
            }
            FaultKind::KillArray | FaultKind::PauseArray => {
                self.array_process_fault(f).await;
                return;
            }
            FaultKind::IsolateLeader
            | FaultKind::IsolateFollower
            | FaultKind::CutPair
            | FaultKind::Split
            | FaultKind::OneWayLeader
            | FaultKind::CutArray => {
                self.partition(f, leader, &others).await;
                return;
            }
            FaultKind::SlowLink | FaultKind::LossyLink | FaultKind::DelayLink => {
                self.link_fault(f, leader, &others).await;
                return;
            }
            FaultKind::SlowCopy
            | FaultKind::RvLdFailure
            | FaultKind::RvHookFails
            | FaultKind::RvHookHangs
            | FaultKind::RdrLinkDown => {
                self.strike_injected(f).await;
                return;
            }
            FaultKind::ClockStep => {
                self.strike_clock_step(f, leader).await;
                return;
            }
            FaultKind::MvHookFails | FaultKind::MvHookHangs | FaultKind::MvHolder => {
                self.strike_app_stop(f).await;
                return;
            }
            FaultKind::KillQuiesced => match self.wait_for_quiesce().await {
                Some(slot) => vec![slot],
                None => {
                    with(&self.records, |r| {
                        r.skipped.push((
                            f.kind,
                            format!(
                                "no MV was held quiesced within {} s",
                                QUIESCE_WAIT.as_secs()
                            ),
                        ))
                    });
                    return;
                }
            },
        };
        if targets.is_empty() {
            with(&self.records, |r| {
                r.skipped
                    .push((f.kind, "no running agent to strike".into()))
            });
            return;
        }
        let names: Vec<String> = targets.iter().map(|s| self.site.name(*s)).collect();
        let start_ms = now_ms();
        let pause = matches!(f.kind, FaultKind::PauseLeader | FaultKind::PauseFollower);
        for &slot in &targets {
            if pause {
                if let Err(e) = self.site.signal(slot, "STOP") {
                    self.note(format!("SIGSTOP {} failed: {e}", self.site.name(slot)));
                    continue;
                }
                self.paused.insert(slot);
            } else {
                self.site.kill(slot).await;
            }
        }
        self.note(format!(
            "{} {} for {} ms ({}{})",
            if pause { "SIGSTOP" } else { "SIGKILL" },
            names.join(", "),
            f.hold_ms,
            f.kind.name(),
            match leader {
                Some(l) => format!(", leader was {}", self.site.name(l)),
                None => ", no leader known".into(),
            }
        ));
        tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
        for &slot in &targets {
            if pause {
                self.resume(slot);
            } else {
                self.restart(slot).await;
            }
        }
        self.window(f.kind, names, start_ms);
    }

    /// Cuts the network as `f` says, holds the cut, heals it. Every agent is on one side or
    /// the other, running or not; the array and the harness are reached from both sides
    /// (except by the agent a `cut-array` cuts off).
    async fn partition(&mut self, f: &PlannedFault, leader: Option<usize>, others: &[usize]) {
        let n = self.agents();
        let names: Vec<String> = (0..n).map(|s| self.site.name(s)).collect();
        let Some(net) = self.net.as_mut() else {
            with(&self.records, |r| {
                r.skipped
                    .push((f.kind, "the site runs without network namespaces".into()))
            });
            return;
        };
        let pick =
            |items: &[usize], salt: u64| items[((f.pick / salt) % items.len() as u64) as usize];
        let all: Vec<usize> = (0..n).collect();
        // The leader, or (none known) any agent.
        let head = leader.unwrap_or_else(|| pick(&all, 1));
        let rest = |side: &[usize]| -> Vec<String> {
            (0..n)
                .filter(|s| !side.contains(s))
                .map(|s| names[s].clone())
                .collect()
        };
        let side_names =
            |side: &[usize]| -> Vec<String> { side.iter().map(|s| names[*s].clone()).collect() };
        // `ip` commands block (a few milliseconds each): off the runtime's async work.
        let (side, what, cut): (Vec<usize>, String, Result<(), String>) =
            tokio::task::block_in_place(|| match f.kind {
                FaultKind::IsolateLeader | FaultKind::IsolateFollower => {
                    let t = if f.kind == FaultKind::IsolateLeader || others.is_empty() {
                        head
                    } else {
                        pick(others, 1)
                    };
                    let side = vec![t];
                    let cut = net.split(&side_names(&side), &rest(&side));
                    (
                        side,
                        format!("{} cut off from every other agent", names[t]),
                        cut,
                    )
                }
                FaultKind::CutPair => {
                    let a = if f.pick.is_multiple_of(2) {
                        head
                    } else {
                        pick(&all, 3)
                    };
                    let bs: Vec<usize> = all.iter().copied().filter(|s| *s != a).collect();
                    let b = pick(&bs, 5);
                    let cut = net.cut(&names[a], &names[b]);
                    (
                        vec![a, b],
                        format!("{} and {} cut from each other", names[a], names[b]),
                        cut,
                    )
                }
                FaultKind::Split => {
                    let minority = (n - 1) / 2;
                    let leader_in_minority = f.pick.is_multiple_of(2);
                    let mut side = Vec::new();
                    if leader_in_minority {
                        side.push(head);
                    }
                    let offset = (f.pick / 7) as usize;
                    let pool: Vec<usize> = all.iter().copied().filter(|s| *s != head).collect();
                    for i in 0..pool.len() {
                        if side.len() >= minority {
                            break;
                        }
                        side.push(pool[(offset + i) % pool.len()]);
                    }
                    let cut = net.split(&side_names(&side), &rest(&side));
                    (
                        side.clone(),
                        format!(
                            "split: minority {:?} | majority {:?} (leader {} on the {} side)",
                            side_names(&side),
                            rest(&side),
                            names[head],
                            if leader_in_minority {
                                "minority"
                            } else {
                                "majority"
                            }
                        ),
                        cut,
                    )
                }
                FaultKind::OneWayLeader => {
                    let outward = f.pick.is_multiple_of(2);
                    let mut cut = Ok(());
                    for other in rest(&[head]) {
                        let r = if outward {
                            net.cut_one_way(&names[head], &other)
                        } else {
                            net.cut_one_way(&other, &names[head])
                        };
                        if let Err(e) = r {
                            cut = Err(e);
                            break;
                        }
                    }
                    (
                        vec![head],
                        format!(
                            "one-way: packets {} {} lost",
                            if outward { "from" } else { "to" },
                            names[head]
                        ),
                        cut,
                    )
                }
                _ => {
                    // cut-array: the control node two times in three, else any agent.
                    let t = if !f.pick.is_multiple_of(3) {
                        0
                    } else {
                        pick(&all, 3)
                    };
                    let cut = net.cut("A1", &names[t]);
                    (
                        vec![t],
                        format!("A1 and {} cut from each other", names[t]),
                        cut,
                    )
                }
            });
        let start_ms = now_ms();
        if let Err(e) = cut {
            let healed = tokio::task::block_in_place(|| net.heal());
            self.note(format!(
                "{} failed: {e} (healed: {healed:?})",
                f.kind.name()
            ));
            with(&self.records, |r| {
                r.skipped.push((f.kind, format!("the cut failed: {e}")))
            });
            return;
        }
        self.note(format!(
            "{what} for {} ms ({}{})",
            f.hold_ms,
            f.kind.name(),
            match leader {
                Some(l) => format!(", leader was {}", names[l]),
                None => ", no leader known".into(),
            }
        ));
        tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
        self.heal_network();
        self.window(
            f.kind,
            side.iter().map(|s| names[*s].clone()).collect(),
            start_ms,
        );
    }

    /// Removes every cut and lifts every throttle in the network, noting it.
    fn heal_network(&mut self) {
        let Some(net) = self.net.as_mut() else { return };
        let (cuts, throttles) = (net.cuts().len(), net.throttles().len());
        if cuts == 0 && throttles == 0 {
            return;
        }
        match tokio::task::block_in_place(|| net.heal()) {
            Ok(()) => self.note(format!(
                "network healed ({cuts} one-way cuts removed, {throttles} throttles lifted)"
            )),
            Err(e) => self.note(format!("network heal failed: {e}")),
        }
    }

    pub(super) fn window(&self, kind: FaultKind, targets: Vec<String>, start_ms: u64) {
        with(&self.records, |r| {
            r.faults.push(FaultWindow {
                kind,
                targets,
                start_ms,
                end_ms: now_ms(),
            })
        });
    }

    fn resume(&mut self, slot: usize) {
        if self.paused.remove(&slot) {
            match self.site.signal(slot, "CONT") {
                Ok(()) => self.note(format!("SIGCONT {}", self.site.name(slot))),
                Err(e) => self.note(format!("SIGCONT {} failed: {e}", self.site.name(slot))),
            }
        }
    }

    /// Starts a dead agent again and boots its host (mounts its MVs, starts the applications).
    pub async fn restart(&mut self, slot: usize) {
        let name = self.site.name(slot);
        if self.site.agents[slot].is_some() {
            // Running already (a boot that failed is retried by the heal).
            return;
        }
        match tokio::time::timeout(RESTART_TIMEOUT, self.site.restart(slot)).await {
            Ok(Ok(())) => self.note(format!("{name} restarted")),
            Ok(Err(e)) => self.note(format!("{name} restart: {e}")),
            Err(_) => self.note(format!(
                "{name} restart: its host did not boot within {} s",
                RESTART_TIMEOUT.as_secs()
            )),
        }
    }

    /// A business node that holds an MV quiesced now, waiting (bounded) for one.
    pub(super) async fn wait_for_quiesce(&self) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + QUIESCE_WAIT;
        let alive = self.alive();
        let business: Vec<usize> = (1..self.site.layout.backup_slot())
            .filter(|s| alive[*s])
            .collect();
        while tokio::time::Instant::now() < deadline {
            for &slot in &business {
                let endpoint = vec![(self.site.name(slot), self.site.endpoints[slot].clone())];
                if observe::quiesced_mvs(&endpoint)
                    .await
                    .is_some_and(|q| !q.is_empty())
                {
                    return Some(slot);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Removes every fault: the network healed (cuts removed, slow links lifted), stopped agents continued, dead ones and the
    /// array restarted, array and hook faults switched off ([`super::inject`]), every host
    /// booted.
    pub async fn heal(&mut self) {
        self.heal_network();
        for slot in self.paused.clone() {
            self.resume(slot);
        }
        if self.site.array.is_none() {
            match tokio::time::timeout(RESTART_TIMEOUT, self.site.restart_array()).await {
                Ok(Ok(())) => self.note("heal: array A1 restarted".into()),
                other => self.note(format!("heal: array A1 restart failed: {other:?}")),
            }
        }
        self.heal_injected().await;
        self.heal_switches();
        for slot in 0..self.agents() {
            if self.site.agents[slot].is_none() {
                self.restart(slot).await;
            }
        }
        if let Ok(Err(e)) =
            tokio::time::timeout(RESTART_TIMEOUT, self.site.start_applications()).await
        {
            self.note(format!("heal: boot of the hosts failed: {e}"));
        }
    }
}
