//! A delayed link: every packet of one process held for a time drawn per packet, then sent
//! on, with the kernel's NFQUEUE target and a thread of the harness that gives the verdicts.
//!
//! [`SiteNet::delay`] starts a thread that enters the process's namespace (`setns`) and binds
//! netfilter queue 0 (what the process sends, [`Direction::Out`]) or 1 (what it receives,
//! [`Direction::In`]) there, with the `nfq` crate; then it adds, inside that namespace,
//! `iptables-legacy -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass` (or `INPUT -i
//! eth0`, queue 1). The kernel hands every IP packet of the process's link to the thread,
//! which holds it for `base ± jitter` ms (uniform, drawn per packet from the fault's seed)
//! and then accepts it: the packet goes on from where it was stopped, nothing is copied or
//! rewritten (the queue copies metadata only). A packet drawn a shorter delay than the one
//! before it overtakes it: with a jitter wider than the gap between packets they arrive out of
//! order, TCP's segments as well as separate connections' messages. A delay past TCP's
//! retransmission timeout (200 ms at least) makes the sender send the segment again, so the
//! receiver sees duplicates, which TCP discards. That is `netem delay B J` (and the reordering
//! and duplication it brings), which this kernel lacks, from what it has: `nfnetlink_queue`
//! and the legacy `xt_NFQUEUE` target (nftables' `queue` statement is not built in, hence
//! `iptables-legacy`).
//!
//! What it is not: a delay of ARP (not IP), nor of packets while the thread is not bound. Two
//! guards keep a link from being cut by the harness itself: `--queue-bypass` lets packets pass
//! when no thread is bound (the harness died, or the thread ended), and the queue fails open
//! (a packet that finds [`QUEUE_PACKETS_MAX`] already waiting passes at once). Neither
//! happens in a run: the thread's `packets` and the rule's counter agree.
//!
//! [`SiteNet::undelay`] deletes the rule first (no packet is queued after it), then tells the
//! thread to let every packet it holds go at once, waits [`DRAIN`] for any queued just before
//! the rule went, and joins it: what it held, how many it let overtake others, and the
//! longest hold. The deciding (which packet is due, which overtook) is [`Held`], pure; the
//! thread around it does the I/O.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Direction, SiteNet, enter, run_bounded};
use crate::sim::rng::Rng;

/// Packets the kernel keeps waiting for the thread before it lets new ones pass undelayed.
pub const QUEUE_PACKETS_MAX: u32 = 16_384;
/// How often the thread looks for new packets and due ones (it cannot block on the socket).
const TICK: Duration = Duration::from_millis(1);
/// After the rule is gone, how long the thread keeps accepting packets queued just before.
pub const DRAIN: Duration = Duration::from_millis(20);
/// Bound on the thread's setting up (entering the namespace, binding the queue).
const READY_WAIT: Duration = Duration::from_secs(10);

/// A delay on one direction of a link: each packet held `base_ms ± jitter_ms` (uniform).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delay {
    /// The mean hold, 1 to 5,000 ms.
    pub base_ms: u64,
    /// How far a packet's hold strays from the mean either way, at most `base_ms`.
    pub jitter_ms: u64,
    /// Seeds the per-packet draws.
    pub seed: u64,
}

impl Delay {
    /// Why these values make no delay, or `Ok`.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=5_000).contains(&self.base_ms) {
            return Err(format!(
                "a delay of {} ms: between 1 and 5,000 ms",
                self.base_ms
            ));
        }
        if self.jitter_ms > self.base_ms {
            return Err(format!(
                "a jitter of {} ms on a delay of {} ms: at most the delay",
                self.jitter_ms, self.base_ms
            ));
        }
        Ok(())
    }

    /// One packet's hold, in microseconds.
    pub fn draw_us(&self, rng: &mut Rng) -> u64 {
        let lo = (self.base_ms - self.jitter_ms) * 1_000;
        let hi = (self.base_ms + self.jitter_ms) * 1_000;
        rng.range(lo, hi)
    }
}

/// What a delayed link did while it was in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayStats {
    /// Packets held (and all let go).
    pub packets: u64,
    /// Packets let go after one that reached the link later: out of order.
    pub overtaken: u64,
    /// Most packets held at once.
    pub held_max: usize,
    /// The longest a packet was held, from its arrival to its release, in ms.
    pub hold_ms_max: u64,
}

/// The packets a delayed link holds, in the order they are due: pure (the caller gives the
/// times, in µs from any origin).
#[derive(Debug)]
pub struct Held<T> {
    /// By (due, arrival number).
    due: BTreeMap<(u64, u64), (u64, T)>,
    arrivals: u64,
    /// The highest arrival number let go so far.
    released_max: Option<u64>,
    stats: DelayStats,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held {
            due: BTreeMap::new(),
            arrivals: 0,
            released_max: None,
            stats: DelayStats::default(),
        }
    }
}

impl<T> Held<T> {
    /// Takes in a packet that arrived at `now_us`, to be let go `hold_us` later.
    pub fn admit(&mut self, now_us: u64, hold_us: u64, packet: T) {
        let n = self.arrivals;
        self.arrivals += 1;
        self.due.insert((now_us + hold_us, n), (now_us, packet));
        self.stats.packets += 1;
        self.stats.held_max = self.stats.held_max.max(self.due.len());
    }

    /// The packets due at `now_us`, in the order they are due.
    pub fn release_due(&mut self, now_us: u64) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now_us {
                break;
            }
            let ((_, n), (arrived_us, packet)) = entry.remove_entry();
            self.note_release(n, arrived_us, now_us);
            out.push(packet);
        }
        out
    }

    /// Every packet held, at `now_us`, in the order they were due.
    pub fn release_all(&mut self, now_us: u64) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(((_, n), (arrived_us, packet))) = self.due.pop_first() {
            self.note_release(n, arrived_us, now_us);
            out.push(packet);
        }
        out
    }

    fn note_release(&mut self, n: u64, arrived_us: u64, now_us: u64) {
        if self.released_max.is_some_and(|m| n < m) {
            self.stats.overtaken += 1;
        }
        self.released_max = Some(self.released_max.map_or(n, |m| m.max(n)));
        let held_ms = now_us.saturating_sub(arrived_us) / 1_000;
        self.stats.hold_ms_max = self.stats.hold_ms_max.max(held_ms);
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    pub fn stats(&self) -> DelayStats {
        self.stats
    }
}

/// The queue number and the iptables rule of a direction: (chain, interface option).
fn queue_of(dir: Direction) -> (u16, &'static str, &'static str) {
    match dir {
        Direction::Out => (0, "OUTPUT", "-o"),
        Direction::In => (1, "INPUT", "-i"),
    }
}

/// Adds (`-A`), checks (`-C`) or deletes (`-D`) the NFQUEUE rule of `dir` in `netns`.
fn rule(netns: &str, op: &str, dir: Direction) -> Result<String, String> {
    let (queue, chain, iface) = queue_of(dir);
    let queue = queue.to_string();
    run_bounded(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "iptables-legacy",
            "-w",
            "5",
            op,
            chain,
            iface,
            "eth0",
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
            "--queue-bypass",
        ],
    )
}

/// Opens and binds queue `num` in `netns` (on the calling thread, which enters it).
fn bind_queue(netns: &str, num: u16) -> Result<nfq::Queue, String> {
    enter(netns)?;
    let what = |e: std::io::Error| format!("netfilter queue {num} in {netns}: {e}");
    let mut queue = nfq::Queue::open().map_err(what)?;
    queue.bind(num).map_err(what)?;
    // Metadata only: the verdict leaves the packet as it is.
    queue.set_copy_range(num, 0).map_err(what)?;
    queue.set_fail_open(num, true).map_err(what)?;
    queue
        .set_queue_max_len(num, QUEUE_PACKETS_MAX)
        .map_err(what)?;
    // Large (GSO) packets whole, as the stack made them: nothing is segmented for us.
    queue.set_recv_gso(num, true).map_err(what)?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// The thread of one delayed direction: holds every packet queue `num` hands it for its
/// drawn time, until `stop`; then lets the held ones go, drains for [`DRAIN`] and unbinds.
fn hold_packets(
    mut queue: nfq::Queue,
    num: u16,
    delay: Delay,
    stop: &AtomicBool,
) -> Result<DelayStats, String> {
    let origin = Instant::now();
    let now_us = || origin.elapsed().as_micros() as u64;
    let mut rng = Rng::new(delay.seed);
    let mut held = Held::default();
    let mut stopped_at: Option<Instant> = None;
    loop {
        loop {
            match queue.recv() {
                Ok(packet) => held.admit(now_us(), delay.draw_us(&mut rng), packet),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Packets still queued are dropped when the socket closes: let the held
                // ones go first.
                Err(e) => {
                    for mut p in held.release_all(now_us()) {
                        p.set_verdict(nfq::Verdict::Accept);
                        let _ = queue.verdict(p);
                    }
                    return Err(format!("receiving from netfilter queue {num}: {e}"));
                }
            }
        }
        let stopping = stop.load(Ordering::Acquire);
        let due = if stopping {
            held.release_all(now_us())
        } else {
            held.release_due(now_us())
        };
        for mut p in due {
            p.set_verdict(nfq::Verdict::Accept);
            queue
                .verdict(p)
                .map_err(|e| format!("accepting a packet of netfilter queue {num}: {e}"))?;
        }
        if stopping {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if held.is_empty() && since.elapsed() >= DRAIN {
                break;
            }
        }
        std::thread::sleep(TICK);
    }
    let _ = queue.unbind(num);
    Ok(held.stats())
}

/// One delayed direction in place: its thread, and how to stop it.
#[derive(Debug)]
pub(super) struct Holder {
    pub delay: Delay,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<DelayStats, String>>>,
}

impl Holder {
    /// Tells the thread to let everything go and waits for it: what it did.
    fn finish(&mut self) -> Result<DelayStats, String> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| "the delay thread panicked".to_string())?,
            None => Ok(DelayStats::default()),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

impl SiteNet {
    /// Holds every packet `name` sends (`Out`) or receives (`In`) for `delay` (see the
    /// module's essay), until [`SiteNet::undelay`] or [`SiteNet::heal`]; replaces a delay
    /// already there.
    pub fn delay(&mut self, name: &str, dir: Direction, delay: Delay) -> Result<(), String> {
        delay.check()?;
        let i = self.index(name)?;
        if self.delays.contains_key(&(i, dir)) {
            self.undelay(name, dir)?;
        }
        let netns = self.nodes[i].netns.clone();
        let (num, _, _) = queue_of(dir);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = mpsc::channel();
        let thread = {
            let (netns, stop) = (netns.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("delay-{name}-{}", dir.name()))
                .spawn(move || {
                    let queue = match bind_queue(&netns, num) {
                        Ok(q) => {
                            let _ = ready_tx.send(Ok(()));
                            q
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.clone()));
                            return Err(e);
                        }
                    };
                    hold_packets(queue, num, delay, &stop)
                })
                .map_err(|e| format!("cannot start a delay thread: {e}"))?
        };
        let mut holder = Holder {
            delay,
            stop,
            thread: Some(thread),
        };
        match ready.recv_timeout(READY_WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let _ = holder.finish();
                return Err(format!(
                    "the delay thread for {name} did not bind its queue within {READY_WAIT:?}"
                ));
            }
        }
        // The rule once, even if an earlier lift could not delete it.
        if rule(&netns, "-C", dir).is_err() {
            rule(&netns, "-A", dir)?;
        }
        self.delays.insert((i, dir), holder);
        Ok(())
    }

    /// Lifts the delay on `name`'s link in direction `dir`: what it did (`None` when none was
    /// in place).
    pub fn undelay(&mut self, name: &str, dir: Direction) -> Result<Option<DelayStats>, String> {
        let i = self.index(name)?;
        match self.delays.remove(&(i, dir)) {
            Some(holder) => self.lift_delay(i, dir, holder).map(Some),
            None => Ok(None),
        }
    }

    /// Deletes the rule, then lets the thread release what it holds and end. A rule that
    /// could not be deleted is an error, though harmless: with no queue bound its packets
    /// pass (`--queue-bypass`), and the next delay there reuses it.
    pub(super) fn lift_delay(
        &self,
        i: usize,
        dir: Direction,
        mut holder: Holder,
    ) -> Result<DelayStats, String> {
        let deleted = rule(&self.nodes[i].netns, "-D", dir);
        let stats = holder.finish()?;
        deleted.map_err(|e| {
            format!("{e} (the link passes undelayed: no queue is bound and the rule bypasses)")
        })?;
        Ok(stats)
    }

    /// The delays in place: (name, direction, delay).
    pub fn delays(&self) -> Vec<(String, Direction, Delay)> {
        self.delays
            .iter()
            .map(|((i, d), h)| (self.nodes[*i].name.clone(), *d, h.delay))
            .collect()
    }
}

/// Why delayed links cannot be made here (no `iptables-legacy`, or a kernel without the
/// NFQUEUE target or `nfnetlink_queue`), or `None` when they can. Needs root and namespaces,
/// as [`super::unavailable`] checks first.
pub fn delay_unavailable() -> Option<String> {
    if let Some(why) = super::unavailable() {
        return Some(why);
    }
    super::probe_namespace("spdly", |probe| {
        rule(probe, "-A", Direction::Out).map_err(|e| {
            format!("no NFQUEUE target (`iptables-legacy`, from Debian's iptables): {e}")
        })?;
        let ns = probe.to_string();
        std::thread::spawn(move || bind_queue(&ns, 0).map(drop))
            .join()
            .map_err(|_| "the probe thread panicked".to_string())?
            .map_err(|e| format!("no nfnetlink_queue: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_let_go_when_due_and_an_overtaken_one_is_counted() {
        let mut held = Held::default();
        held.admit(0, 100_000, "a");
        held.admit(1_000, 30_000, "b");
        held.admit(2_000, 200_000, "c");
        assert!(held.release_due(30_999).is_empty());
        assert_eq!(held.release_due(31_000), vec!["b"]);
        assert_eq!(held.release_due(150_000), vec!["a"]);
        assert_eq!(
            held.stats().overtaken,
            1,
            "a went after b, which came later"
        );
        assert_eq!(held.release_all(160_000), vec!["c"]);
        assert!(held.is_empty());
        let stats = held.stats();
        assert_eq!(stats.packets, 3);
        assert_eq!(stats.held_max, 3);
        // c: from 2 ms to 160 ms.
        assert_eq!(stats.hold_ms_max, 158);
    }

    #[test]
    fn without_jitter_packets_keep_their_order() {
        let mut held = Held::default();
        for t in 0..100u64 {
            held.admit(t * 500, 50_000, t);
        }
        let out = held.release_due(1_000_000);
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert_eq!(held.stats().overtaken, 0);
    }

    #[test]
    fn a_delay_draws_within_its_jitter_and_bad_values_are_refused() {
        let d = Delay {
            base_ms: 100,
            jitter_ms: 40,
            seed: 7,
        };
        assert!(d.check().is_ok());
        let mut rng = Rng::new(d.seed);
        let draws: Vec<u64> = (0..2_000).map(|_| d.draw_us(&mut rng)).collect();
        assert!(draws.iter().all(|us| (60_000..=140_000).contains(us)));
        assert!(draws.iter().any(|us| *us < 70_000));
        assert!(draws.iter().any(|us| *us > 130_000));
        for bad in [
            Delay { base_ms: 0, ..d },
            Delay {
                base_ms: 6_000,
                ..d
            },
            Delay {
                jitter_ms: 101,
                ..d
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
