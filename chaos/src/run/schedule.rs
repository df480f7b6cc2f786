//! What a seed decides, before any process starts: the site's shape, the faults (kind, when,
//! how long, and a number that picks among the candidates the live site offers then), and when
//! backups are submitted. Pure: the same seed draws the same schedule.

use crate::sim::rng::Rng;

/// The site a schedule runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Voters: mgmt1, the business nodes and backup1 are all voters (3 or 5).
    pub voters: usize,
    pub business_nodes: usize,
    pub pairs: u32,
    /// The site has the remote array A2 and its odd-numbered pairs are RDR (their RVs on A2):
    /// half the schedules, or every one when `rdr-link-down` is asked for by name.
    pub rdr: bool,
}

impl Shape {
    /// The pairs (by index) whose RVs are on A2.
    pub fn rdr_pairs(&self) -> Vec<usize> {
        if self.rdr {
            (0..self.pairs as usize).filter(|i| i % 2 == 1).collect()
        } else {
            Vec::new()
        }
    }
}

/// A fault the harness strikes. Targets named by role ("the leader", "a node holding a
/// quiesce") are resolved when the fault strikes, from what the live site says then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL the leader's agent; restart it after the hold.
    KillLeader,
    /// SIGKILL an agent that is not the leader.
    KillFollower,
    /// SIGSTOP the leader's agent; SIGCONT after the hold.
    PauseLeader,
    /// SIGSTOP an agent that is not the leader.
    PauseFollower,
    /// SIGKILL several agents at once (the leader among them), up to all of them: sometimes a
    /// majority survives, sometimes not.
    KillMany,
    /// SIGKILL an array process, restarted after the hold on the same data dir and address:
    /// A1, or A2 one time in three on a site with RDR pairs ([`super::array_proc`]).
    KillArray,
    /// SIGKILL a business node's agent while it holds an MV quiesced (waits, bounded, for one).
    KillQuiesced,
    /// Network partition: the leader loses every packet to and from every other agent; it
    /// keeps running and still reaches the array (and the harness).
    IsolateLeader,
    /// Network partition: an agent that is not the leader is cut off from every other agent.
    IsolateFollower,
    /// Network partition: two agents (the leader one of them half the time) lose every packet
    /// between them; each still reaches the others.
    CutPair,
    /// Network partition: the agents split into a minority and a majority side; the leader is
    /// on the minority side half the time.
    Split,
    /// One-way loss: the leader's packets to every other agent are lost while theirs reach it,
    /// or the reverse.
    OneWayLeader,
    /// Network partition between the array and one agent (the control node most often): its
    /// array calls and, on a business node, its MV's I/O time out.
    CutArray,
    /// The array's copies slow to a crawl (`Fault::CopyPace`, 32–256 KiB/s) for the hold,
    /// then back to the configured pace.
    SlowCopy,
    /// The RV LD of one pair fails (`Fault::LdFailure`) for the hold, then is repaired
    /// (`Fault::LdRepair`): a copy onto it, or a write mirrored to it, puts the pair into
    /// failure separation (`fault`).
    RvLdFailure,
    /// The stop hook of the backup node's RVs (a command the harness wrote into its
    /// config) exits 1 for the hold: freeing an RV fails.
    RvHookFails,
    /// The same hook hangs past its timeout for the hold (the agent kills it at the timeout
    /// and the free fails).
    RvHookHangs,
    /// One agent's wall clock steps 5 s to 5 min forward or back for the hold, then back
    /// (the fault switches of a test build; see [`super::switches`]).
    ClockStep,
    /// The stop hook of one business node's MVs fails for the hold (their applications
    /// refuse to stop; a switch of a test build, see [`super::switches`]).
    MvHookFails,
    /// That hook hangs until the agent kills it at its timeout.
    MvHookHangs,
    /// The applications stop writing but keep their MV open, so its unmount is refused.
    MvHolder,
    /// A slow, congested link ([`crate::net::SiteNet::throttle`]): a token bucket on what one
    /// process sends, receives, or both — the leader's most often, else a follower's or the
    /// array's — at 16–256 kbit/s with a 50–500 ms latency bound, for the hold. Its messages
    /// are delayed and, past the bound, dropped (TCP sends them again).
    SlowLink,
    /// A lossy link ([`crate::net::SiteNet::lose`]): 1–30% of the packets one process sends,
    /// receives, or both dropped at random, whatever the load — the same links as
    /// [`FaultKind::SlowLink`] — for the hold.
    LossyLink,
    /// A delayed link ([`crate::net::SiteNet::delay`]): every packet one process sends,
    /// receives, or both held 20–400 ms, with a jitter of none, half or all of that (packets
    /// then overtake each other) — the same links as [`FaultKind::SlowLink`] — for the hold.
    DelayLink,
    /// SIGSTOP an array process for 0.3–5 s, then SIGCONT: A1, or A2 one time in three on a
    /// site with RDR pairs ([`super::array_proc`]).
    PauseArray,
    /// The RDR link from A1 to A2 goes down (`Fault::LinkDown` on A1) for 1–15 s, then up
    /// again; only on a site with RDR pairs.
    RdrLinkDown,
}

impl FaultKind {
    pub const ALL: [FaultKind; 26] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::PauseLeader,
        FaultKind::PauseFollower,
        FaultKind::KillMany,
        FaultKind::KillArray,
        FaultKind::KillQuiesced,
        FaultKind::IsolateLeader,
        FaultKind::IsolateFollower,
        FaultKind::CutPair,
        FaultKind::Split,
        FaultKind::OneWayLeader,
        FaultKind::CutArray,
        FaultKind::SlowCopy,
        FaultKind::RvLdFailure,
        FaultKind::RvHookFails,
        FaultKind::RvHookHangs,
        FaultKind::ClockStep,
        FaultKind::MvHookFails,
        FaultKind::MvHookHangs,
        FaultKind::MvHolder,
        FaultKind::SlowLink,
        FaultKind::LossyLink,
        FaultKind::RdrLinkDown,
        FaultKind::DelayLink,
        FaultKind::PauseArray,
    ];

    /// Whether the fault is a cut in the network (needs network namespaces).
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            FaultKind::IsolateLeader
                | FaultKind::IsolateFollower
                | FaultKind::CutPair
                | FaultKind::Split
                | FaultKind::OneWayLeader
                | FaultKind::CutArray
        )
    }

    /// Whether the fault needs every process in its own network namespace: the cuts, and
    /// the slow, lossy and delayed links.
    pub fn needs_namespaces(self) -> bool {
        self.is_partition() || self.is_link_fault()
    }

    /// Whether the fault works on the sim application (its stop hook, or a holder of its
    /// volume): MVs on real file systems, quiesced by freeze, have neither.
    pub fn needs_sim_app(self) -> bool {
        matches!(
            self,
            FaultKind::MvHookFails | FaultKind::MvHookHangs | FaultKind::MvHolder
        )
    }

    /// Whether the fault harms one process's link without cutting it: slow, lossy or
    /// delayed ([`super::link`]).
    pub fn is_link_fault(self) -> bool {
        matches!(
            self,
            FaultKind::SlowLink | FaultKind::LossyLink | FaultKind::DelayLink
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::KillMany => "kill-many",
            FaultKind::KillArray => "kill-array",
            FaultKind::KillQuiesced => "kill-quiesced",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::IsolateFollower => "isolate-follower",
            FaultKind::CutPair => "cut-pair",
            FaultKind::Split => "split",
            FaultKind::OneWayLeader => "one-way-leader",
            FaultKind::CutArray => "cut-array",
            FaultKind::SlowCopy => "slow-copy",
            FaultKind::RvLdFailure => "rv-ld-failure",
            FaultKind::RvHookFails => "rv-hook-fails",
            FaultKind::RvHookHangs => "rv-hook-hangs",
            FaultKind::ClockStep => "clock-step",
            FaultKind::MvHookFails => "mv-hook-fails",
            FaultKind::MvHookHangs => "mv-hook-hangs",
            FaultKind::MvHolder => "mv-holder",
            FaultKind::SlowLink => "slow-link",
            FaultKind::LossyLink => "lossy-link",
            FaultKind::DelayLink => "delay-link",
            FaultKind::PauseArray => "pause-array",
            FaultKind::RdrLinkDown => "rdr-link-down",
        }
    }

    /// The kind named `name` (as [`FaultKind::name`] spells it).
    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Relative frequency (the leader is struck most often); partitions and slow links only
    /// when the site runs in network namespaces, RDR link faults only on a site with RDR pairs.
    fn weight(self, partitions: bool, rdr: bool) -> u64 {
        match self {
            k if k.needs_namespaces() && !partitions => 0,
            FaultKind::RdrLinkDown if !rdr => 0,
            FaultKind::RdrLinkDown => 12,
            FaultKind::IsolateLeader => 25,
            FaultKind::IsolateFollower => 6,
            FaultKind::CutPair => 8,
            FaultKind::Split => 14,
            FaultKind::OneWayLeader => 8,
            FaultKind::CutArray => 9,
            FaultKind::KillLeader => 25,
            FaultKind::KillFollower => 10,
            FaultKind::PauseLeader => 15,
            FaultKind::PauseFollower => 5,
            FaultKind::KillMany => 12,
            FaultKind::KillArray => 13,
            FaultKind::KillQuiesced => 20,
            FaultKind::SlowCopy => 8,
            FaultKind::RvLdFailure => 10,
            FaultKind::RvHookFails => 6,
            FaultKind::RvHookHangs => 5,
            FaultKind::ClockStep => 10,
            FaultKind::MvHookFails => 6,
            FaultKind::MvHookHangs => 5,
            FaultKind::MvHolder => 6,
            FaultKind::SlowLink => 14,
            FaultKind::LossyLink => 12,
            FaultKind::DelayLink => 12,
            FaultKind::PauseArray => 8,
        }
    }
}

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    /// From the start of the fault phase.
    pub at_ms: u64,
    pub kind: FaultKind,
    /// How long the process stays dead or stopped.
    pub hold_ms: u64,
    /// Picks among the candidates (which follower; how many for `KillMany`).
    pub pick: u64,
}

/// One backup submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub at_ms: u64,
    /// Refused instead of queued when the group is busy.
    pub no_queue: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub shape: Shape,
    pub faults: Vec<PlannedFault>,
    pub submissions: Vec<Submission>,
}

impl Schedule {
    /// The schedule of `seed` for a fault phase of `fault_ms`; network partitions among the
    /// faults only when `partitions`; only the kinds in `only` when it is not empty (e.g. to
    /// strike array faults often: `run --faults slow-copy,rv-ld-failure`).
    pub fn draw(seed: u64, fault_ms: u64, partitions: bool, only: &[FaultKind]) -> Schedule {
        Schedule::draw_on(seed, fault_ms, partitions, only, false)
    }

    /// [`Schedule::draw`] for a site whose business hosts run real file systems when
    /// `real_fs` (the `linux` backend): the faults of the sim application's hooks and holder
    /// ([`FaultKind::needs_sim_app`]) are not drawn; a seed draws the same shape and
    /// submissions either way.
    pub fn draw_on(
        seed: u64,
        fault_ms: u64,
        partitions: bool,
        only: &[FaultKind],
        real_fs: bool,
    ) -> Schedule {
        let mut rng = Rng::new(seed);
        let voters = if rng.chance(500) { 5 } else { 3 };
        let business_nodes = voters - 2;
        let pairs = rng.range(2, 3) as u32;
        // Drawn apart from the main stream, so a seed's schedule on a one-array site is the
        // one it drew before RDR sites existed.
        let rdr = only.contains(&FaultKind::RdrLinkDown)
            || Rng::new(seed ^ 0x0052_4452_u64.rotate_left(29)).chance(500);
        let weight = |k: FaultKind| {
            if real_fs && k.needs_sim_app() {
                0
            } else if only.is_empty() || only.contains(&k) {
                k.weight(partitions, rdr)
            } else {
                0
            }
        };
        let total: u64 = FaultKind::ALL.iter().map(|k| weight(*k)).sum();
        let mut faults = Vec::new();
        let mut at = rng.range(500, 2_000);
        while at < fault_ms && total > 0 {
            let mut roll = rng.below(total);
            let mut kind = FaultKind::KillLeader;
            for k in FaultKind::ALL {
                if roll < weight(k) {
                    kind = k;
                    break;
                }
                roll -= weight(k);
            }
            let hold_ms = match kind {
                FaultKind::PauseLeader | FaultKind::PauseFollower | FaultKind::PauseArray => {
                    rng.range(300, 5_000)
                }
                FaultKind::KillArray => rng.range(200, 4_000),
                k if k.is_partition() => rng.range(500, 8_000),
                FaultKind::SlowCopy => rng.range(2_000, 12_000),
                FaultKind::RvLdFailure => rng.range(500, 8_000),
                FaultKind::RvHookFails | FaultKind::RvHookHangs => rng.range(1_000, 15_000),
                FaultKind::ClockStep
                | FaultKind::MvHookFails
                | FaultKind::MvHookHangs
                | FaultKind::MvHolder => rng.range(1_000, 15_000),
                // Long enough for late heartbeats to add up to an election (a follower
                // campaigns after about 800 ms without one).
                k if k.is_link_fault() => rng.range(2_000, 10_000),
                FaultKind::RdrLinkDown => rng.range(1_000, 15_000),
                _ => rng.range(200, 6_000),
            };
            faults.push(PlannedFault {
                at_ms: at,
                kind,
                hold_ms,
                pick: rng.next_u64(),
            });
            at += hold_ms + rng.range(500, 4_000);
        }
        let mut submissions = Vec::new();
        let mut at = rng.range(0, 1_000);
        while at < fault_ms {
            submissions.push(Submission {
                at_ms: at,
                no_queue: rng.chance(250),
            });
            at += rng.range(1_000, 5_000);
        }
        Schedule {
            seed,
            shape: Shape {
                voters,
                business_nodes,
                pairs,
                rdr,
            },
            faults,
            submissions,
        }
    }
}

impl Schedule {
    /// The faults as planned, on one line: `+0.8 s isolate-leader 3.2 s, …`.
    pub fn plan(&self) -> String {
        self.faults
            .iter()
            .map(|f| {
                format!(
                    "+{:.1} s {} {:.1} s",
                    f.at_ms as f64 / 1000.0,
                    f.kind.name(),
                    f.hold_ms as f64 / 1000.0
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_the_same_schedule_and_seeds_differ() {
        assert_eq!(
            Schedule::draw(7, 30_000, true, &[]),
            Schedule::draw(7, 30_000, true, &[])
        );
        // 26 kinds, the rarest (rv-hook-hangs, mv-hook-hangs) weighing 5 of about 270, and
        // rdr-link-down only on the half of the sites with RDR pairs: 100 seeds draw each.
        let all: Vec<Schedule> = (0..100)
            .map(|s| Schedule::draw(s, 30_000, true, &[]))
            .collect();
        assert!(all.windows(2).any(|w| w[0].faults != w[1].faults));
        for s in &all {
            assert!(s.shape.voters == 3 || s.shape.voters == 5);
            assert!(!s.faults.is_empty() && !s.submissions.is_empty());
            assert!(
                s.faults
                    .windows(2)
                    .all(|w| w[0].at_ms + w[0].hold_ms < w[1].at_ms)
            );
        }
        for k in FaultKind::ALL {
            assert!(
                all.iter().any(|s| s.faults.iter().any(|f| f.kind == k)),
                "{k:?} never drawn in 100 seeds"
            );
        }
        for s in 0..50 {
            let without = Schedule::draw(s, 30_000, false, &[]);
            assert!(without.faults.iter().all(|f| !f.kind.needs_namespaces()));
        }
    }

    #[test]
    fn slow_links_are_drawn_only_with_namespaces_and_hold_for_seconds() {
        let only = [FaultKind::SlowLink, FaultKind::KillLeader];
        let mut slow = 0;
        for seed in 0..30 {
            let s = Schedule::draw(seed, 40_000, true, &only);
            for f in s.faults.iter().filter(|f| f.kind == FaultKind::SlowLink) {
                slow += 1;
                assert!((2_000..10_000).contains(&f.hold_ms), "{f:?}");
            }
            let without = Schedule::draw(seed, 40_000, false, &only);
            assert!(
                without
                    .faults
                    .iter()
                    .all(|f| f.kind == FaultKind::KillLeader),
                "{without:?}"
            );
        }
        assert!(slow >= 10, "only {slow} slow links in 30 seeds");
        assert_eq!(FaultKind::from_name("slow-link"), Some(FaultKind::SlowLink));
        assert!(FaultKind::SlowLink.needs_namespaces() && !FaultKind::SlowLink.is_partition());
    }

    #[test]
    fn rdr_link_faults_strike_only_sites_with_rdr_pairs_and_half_the_sites_have_them() {
        let mut rdr_sites = 0;
        for seed in 0..60 {
            let s = Schedule::draw(seed, 40_000, false, &[]);
            rdr_sites += u32::from(s.shape.rdr);
            if !s.shape.rdr {
                assert!(s.shape.rdr_pairs().is_empty());
                assert!(
                    s.faults.iter().all(|f| f.kind != FaultKind::RdrLinkDown),
                    "{s:?}"
                );
            } else {
                assert_eq!(s.shape.rdr_pairs(), vec![1], "{s:?}");
            }
            // Asked for by name: every site has RDR pairs, and the link faults hold 1-15 s.
            let only = [FaultKind::RdrLinkDown, FaultKind::KillLeader];
            let s = Schedule::draw(seed, 40_000, false, &only);
            assert!(s.shape.rdr);
            for f in s.faults.iter().filter(|f| f.kind == FaultKind::RdrLinkDown) {
                assert!((1_000..15_000).contains(&f.hold_ms), "{f:?}");
            }
        }
        assert!(
            (15..=45).contains(&rdr_sites),
            "{rdr_sites} RDR sites of 60"
        );
        assert_eq!(
            FaultKind::from_name("rdr-link-down"),
            Some(FaultKind::RdrLinkDown)
        );
    }

    #[test]
    fn only_the_kinds_asked_for_are_drawn_and_names_read_back() {
        let only = [FaultKind::SlowCopy, FaultKind::RvLdFailure];
        for seed in 0..20 {
            let s = Schedule::draw(seed, 30_000, true, &only);
            assert!(!s.faults.is_empty());
            assert!(s.faults.iter().all(|f| only.contains(&f.kind)), "{s:?}");
        }
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::from_name(k.name()), Some(k));
        }
        assert_eq!(FaultKind::from_name("nope"), None);
    }
}
