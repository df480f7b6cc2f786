//! The link faults: one process's link made slow ([`FaultKind::SlowLink`], a token bucket
//! filter, [`crate::net::SiteNet::throttle`]), lossy ([`FaultKind::LossyLink`], packets
//! dropped at random, [`crate::net::SiteNet::lose`]) or delayed ([`FaultKind::DelayLink`],
//! every packet held for a drawn time, [`crate::net::SiteNet::delay`]) for the hold, then
//! lifted. What each is and what it cannot be (no netem here): the essay of [`crate::net`]
//! and of its `loss` and `delay` modules.
//!
//! Which link, which way and how bad is drawn from the fault's number ([`plan`], pure); who
//! the leader is comes from the live site. The leader's link most often (five draws in eight):
//! its heartbeats and appends are late or lost, and a follower that hears nothing for about
//! 800 ms campaigns. A follower's (two in eight): its acknowledgements are late, and a
//! business node's own MV writes to the array crawl. The array's (one in eight): every MV's
//! writes and every array step of the control node crawl. Both directions a third of the
//! time, what the process sends or what it receives otherwise.
//!
//! A slow link: 16, 32, 64, 128 or 256 kbit/s with a latency bound of 50–500 ms. What the
//! agents send when idle (heartbeats every 150 ms to each follower, the harness's looks) is a
//! few kbit/s to some tens, so the slow rates keep a queue and the fast ones mostly let it
//! through except in bursts (a job's state in appends, a consistent read's reply, a business
//! node's MV writes of about 1.2 Mbit/s each): the link is late often and lost sometimes,
//! rather than cut.
//!
//! A lossy link: 1, 2, 5, 10, 20 or 30% of packets dropped, each independently, whatever the
//! load. TCP sends each lost segment again after its retransmission timeout (200 ms at least,
//! doubling when the same segment is lost again), so an idle link's heartbeats are late by
//! hundreds of milliseconds now and then, and at the high rates a call or a connect can time
//! out.
//!
//! A delayed link: every packet held 20, 50, 100, 200 or 400 ms, give or take none, half or
//! all of that (uniform, drawn per packet). With a jitter, packets overtake each other; past
//! 200 ms TCP's retransmission timer fires before the acknowledgement arrives and the segment
//! is sent again (the receiver discards the duplicate). At 400 ms on the leader's link its
//! heartbeats arrive 0–800 ms late, around a follower's election timeout.
//!
//! The notes at the strike and at the lift say what the agents see then (the leader and term
//! most of them agree on, and any agent that differs: [`describe`]) and what the link sent and
//! dropped.

use std::time::Duration;

use crate::net::{Delay, Direction, Loss, SiteNet, Throttle};

use super::faults::Harness;
use super::observe::{self, with};
use super::records::now_ms;
use super::schedule::{FaultKind, PlannedFault};

/// The bytes a slow link lets through at line rate after an idle spell: a few frames.
pub const BURST_BYTES: u64 = 4_096;

/// Whose link a link fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whose {
    Leader,
    Follower,
    /// The array process `A1`.
    Array,
}

/// What is done to the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Harm {
    Slow(Throttle),
    Lossy(Loss),
    Delayed(Delay),
}

/// The loss rates a lossy link draws from, per mille.
pub const LOSS_PER_MILLE: [u32; 6] = [10, 20, 50, 100, 200, 300];

/// The mean holds a delayed link draws from, in ms.
pub const DELAY_BASE_MS: [u64; 5] = [20, 50, 100, 200, 400];

/// What a link fault does, drawn from its number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFault {
    pub whose: Whose,
    pub directions: Vec<Direction>,
    pub harm: Harm,
}

/// The link fault of kind `kind` (`SlowLink`, `LossyLink` or `DelayLink`) and number
/// `pick` (see the module's essay).
pub fn plan(kind: FaultKind, pick: u64) -> LinkFault {
    let whose = match pick % 8 {
        0..=4 => Whose::Leader,
        5 | 6 => Whose::Follower,
        _ => Whose::Array,
    };
    let directions = match (pick / 8) % 3 {
        0 => vec![Direction::Out, Direction::In],
        1 => vec![Direction::Out],
        _ => vec![Direction::In],
    };
    let harm = match kind {
        FaultKind::LossyLink => Harm::Lossy(Loss {
            per_mille: LOSS_PER_MILLE[((pick / 24) % LOSS_PER_MILLE.len() as u64) as usize],
        }),
        FaultKind::DelayLink => {
            let base_ms = DELAY_BASE_MS[((pick / 24) % DELAY_BASE_MS.len() as u64) as usize];
            Harm::Delayed(Delay {
                base_ms,
                jitter_ms: base_ms * ((pick / 120) % 3) / 2,
                seed: pick,
            })
        }
        _ => Harm::Slow(Throttle {
            rate_bits_per_s: 16_000 << ((pick / 24) % 5),
            burst_bytes: BURST_BYTES,
            latency_ms: 50 + (pick / 120) % 451,
        }),
    };
    LinkFault {
        whose,
        directions,
        harm,
    }
}

impl Harm {
    /// Puts the harm on `name`'s link in direction `dir`.
    fn strike(&self, net: &mut SiteNet, name: &str, dir: Direction) -> Result<(), String> {
        match self {
            Harm::Slow(t) => net.throttle(name, dir, *t),
            Harm::Lossy(l) => net.lose(name, dir, *l),
            Harm::Delayed(d) => net.delay(name, dir, *d),
        }
    }

    /// Lifts it, in words: what the link sent and dropped meanwhile.
    fn lift(&self, net: &mut SiteNet, name: &str, dir: Direction) -> String {
        let way = dir.name();
        match self {
            Harm::Slow(_) => match net.unthrottle(name, dir) {
                Ok(Some(s)) => format!(
                    "{way}: sent {} B in {} packets, dropped {}",
                    s.sent_bytes, s.sent_packets, s.dropped_packets
                ),
                Ok(None) => format!("{way}: not in place"),
                Err(e) => format!("{way}: lifting failed ({e}; the heal retries)"),
            },
            Harm::Lossy(_) => match net.unlose(name, dir) {
                Ok(Some(s)) => format!(
                    "{way}: dropped {} packets ({} B)",
                    s.dropped_packets, s.dropped_bytes
                ),
                Ok(None) => format!("{way}: not in place"),
                Err(e) => format!("{way}: lifting failed ({e}; the heal retries)"),
            },
            Harm::Delayed(_) => match net.undelay(name, dir) {
                Ok(Some(s)) => format!(
                    "{way}: held {} packets, {} overtaken, at most {} at once, the longest {} ms",
                    s.packets, s.overtaken, s.held_max, s.hold_ms_max
                ),
                Ok(None) => format!("{way}: not in place"),
                Err(e) => format!("{way}: lifting failed ({e})"),
            },
        }
    }

    /// The harm in words, for the strike's note.
    fn describe(&self) -> String {
        match self {
            Harm::Slow(t) => format!(
                "slowed to {} kbit/s, burst {} B, latency bound {} ms",
                t.rate_bits_per_s / 1000,
                t.burst_bytes,
                t.latency_ms
            ),
            Harm::Lossy(l) => format!(
                "made lossy ({:.1}% of packets dropped)",
                l.per_mille as f64 / 10.0
            ),
            Harm::Delayed(d) => format!(
                "delayed (every packet held {} ± {} ms)",
                d.base_ms, d.jitter_ms
            ),
        }
    }
}

impl Harness {
    /// Strikes the link fault [`plan`] says for the hold, lifts it, notes what the link did
    /// and whether the term moved; records the window (target: the process's name).
    pub(super) async fn link_fault(
        &mut self,
        f: &PlannedFault,
        leader: Option<usize>,
        others: &[usize],
    ) {
        let plan = plan(f.kind, f.pick);
        let n = self.agents();
        let name = match (plan.whose, leader) {
            (Whose::Array, _) => "A1".to_string(),
            (Whose::Leader, Some(l)) => self.site.name(l),
            (Whose::Follower, _) if !others.is_empty() => self
                .site
                .name(others[(f.pick / 3 % others.len() as u64) as usize]),
            // No leader known (or no other agent running): any agent.
            _ => self.site.name((f.pick / 3 % n as u64) as usize),
        };
        let alive = self.alive();
        let before = observe::views(&self.site.endpoints, &alive).await;
        let Some(net) = self.net.as_mut() else {
            with(&self.records, |r| {
                r.skipped
                    .push((f.kind, "the site runs without network namespaces".into()))
            });
            return;
        };
        // `tc`, `nft` and `iptables` commands block (a few milliseconds each): off the runtime's async
        // work.
        let made = tokio::task::block_in_place(|| {
            for dir in &plan.directions {
                if let Err(e) = plan.harm.strike(net, &name, *dir) {
                    for d in &plan.directions {
                        let _ = plan.harm.lift(net, &name, *d);
                    }
                    return Err(e);
                }
            }
            Ok(())
        });
        let ways = plan
            .directions
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join("+");
        if let Err(e) = made {
            self.note(format!("{} on {name} failed: {e}", f.kind.name()));
            with(&self.records, |r| {
                r.skipped
                    .push((f.kind, format!("the link fault failed: {e}")))
            });
            return;
        }
        let start_ms = now_ms();
        self.note(format!(
            "{name}'s link {} ({ways}) for {} ms ({}, {}; {})",
            plan.harm.describe(),
            f.hold_ms,
            f.kind.name(),
            match leader {
                Some(l) => format!("leader was {}", self.site.name(l)),
                None => "no leader known".into(),
            },
            describe(&before, &|s| self.site.name(s))
        ));
        tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
        let Some(net) = self.net.as_mut() else { return };
        let lifted: Vec<String> = tokio::task::block_in_place(|| {
            plan.directions
                .iter()
                .map(|d| plan.harm.lift(net, &name, *d))
                .collect()
        });
        let alive = self.alive();
        let after = observe::views(&self.site.endpoints, &alive).await;
        self.note(format!(
            "{} of {name} lifted: {}; {}",
            f.kind.name(),
            lifted.join("; "),
            describe(&after, &|s| self.site.name(s))
        ));
        self.window(f.kind, vec![name], start_ms);
    }
}

/// The agents' views ([`observe::views`]) in a few words: the (leader, term) most of those
/// that answered agree on, then every agent that differs — e.g. "leader db1 in term 7 (3 of
/// 5 agents), db3: no leader, term 12". A node behind a slow link may campaign again and
/// again on its own: its term grows while the others' does not (it cannot win), so the
/// majority's term, not the highest, tells whether the leader changed.
pub fn describe(views: &[Option<(Option<usize>, u64)>], name: &dyn Fn(usize) -> String) -> String {
    let answered: Vec<(usize, (Option<usize>, u64))> = views
        .iter()
        .enumerate()
        .filter_map(|(s, v)| v.map(|v| (s, v)))
        .collect();
    let mut counts: Vec<((Option<usize>, u64), usize)> = Vec::new();
    for (_, v) in &answered {
        match counts.iter_mut().find(|(c, _)| c == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((*v, 1)),
        }
    }
    let Some((common, n)) = counts.iter().max_by_key(|(v, n)| (*n, v.1)).copied() else {
        return "no agent answered".into();
    };
    let view = |(leader, term): (Option<usize>, u64)| match leader {
        Some(l) => format!("leader {} in term {term}", name(l)),
        None => format!("no leader, term {term}"),
    };
    let mut out = format!("{} ({n} of {} agents)", view(common), views.len());
    for (s, v) in &answered {
        if *v != common {
            out += &format!(", {}: {}", name(*s), view(*v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(p: &LinkFault) -> Throttle {
        match p.harm {
            Harm::Slow(t) => t,
            other => panic!("a slow link drew {other:?}"),
        }
    }

    /// 2,000 link faults of `kind` drawn as the schedule draws their numbers.
    fn draws(kind: FaultKind) -> Vec<LinkFault> {
        let mut rng = crate::sim::rng::Rng::new(1);
        (0..2_000).map(|_| plan(kind, rng.next_u64())).collect()
    }

    #[test]
    fn a_slow_link_strikes_the_leader_most_often_at_every_rate_and_way() {
        let plans = draws(FaultKind::SlowLink);
        let share = |w: Whose| plans.iter().filter(|p| p.whose == w).count();
        assert!(share(Whose::Leader) > share(Whose::Follower));
        assert!(share(Whose::Follower) > share(Whose::Array));
        assert!(share(Whose::Array) > 0);
        for rate in [16_000, 32_000, 64_000, 128_000, 256_000] {
            assert!(
                plans.iter().any(|p| throttle(p).rate_bits_per_s == rate),
                "{rate}"
            );
        }
        for ways in [
            vec![Direction::Out, Direction::In],
            vec![Direction::Out],
            vec![Direction::In],
        ] {
            assert!(plans.iter().any(|p| p.directions == ways), "{ways:?}");
        }
        for p in &plans {
            let t = throttle(p);
            assert!((50..=500).contains(&t.latency_ms), "{p:?}");
            assert!((16_000..=256_000).contains(&t.rate_bits_per_s));
            assert_eq!(t.burst_bytes, BURST_BYTES);
        }
        assert!(plans.iter().any(|p| throttle(p).latency_ms < 100));
        assert!(plans.iter().any(|p| throttle(p).latency_ms > 450));
        // The same number draws the same link.
        assert_eq!(
            plan(FaultKind::SlowLink, 12_345),
            plan(FaultKind::SlowLink, 12_345)
        );
    }

    #[test]
    fn a_lossy_link_draws_every_rate_and_way_and_the_same_links_as_a_slow_one() {
        let plans = draws(FaultKind::LossyLink);
        for rate in LOSS_PER_MILLE {
            assert!(
                plans
                    .iter()
                    .any(|p| p.harm == Harm::Lossy(Loss { per_mille: rate })),
                "{rate}"
            );
        }
        for (lossy, slow) in plans.iter().zip(draws(FaultKind::SlowLink)) {
            assert!(matches!(lossy.harm, Harm::Lossy(_)), "{lossy:?}");
            assert_eq!(
                (lossy.whose, &lossy.directions),
                (slow.whose, &slow.directions)
            );
        }
    }

    #[test]
    fn a_delayed_link_draws_every_hold_and_jitter_and_the_same_links_as_a_slow_one() {
        let plans = draws(FaultKind::DelayLink);
        let delays: Vec<Delay> = plans
            .iter()
            .map(|p| match p.harm {
                Harm::Delayed(d) => d,
                other => panic!("a delayed link drew {other:?}"),
            })
            .collect();
        for base in DELAY_BASE_MS {
            for jitter in [0, base / 2, base] {
                assert!(
                    delays
                        .iter()
                        .any(|d| d.base_ms == base && d.jitter_ms == jitter),
                    "{base} ± {jitter} ms"
                );
            }
        }
        assert!(delays.iter().all(|d| d.check().is_ok()), "{delays:?}");
        for (delayed, slow) in plans.iter().zip(draws(FaultKind::SlowLink)) {
            assert_eq!(
                (delayed.whose, &delayed.directions),
                (slow.whose, &slow.directions)
            );
        }
    }

    #[test]
    fn the_views_are_told_by_what_most_agents_say() {
        let name = |s: usize| format!("n{s}");
        let views = [
            Some((Some(1), 7)),
            Some((Some(1), 7)),
            Some((None, 12)),
            None,
        ];
        assert_eq!(
            describe(&views, &name),
            "leader n1 in term 7 (2 of 4 agents), n2: no leader, term 12"
        );
        assert_eq!(describe(&[None, None], &name), "no agent answered");
    }
}
