//! A delayed link holds every packet for its drawn time, either way, lets jittered packets
//! overtake each other, loses none, and the heal ends it: two namespaces of a site's network
//! ([`stillpoint_chaos::net::SiteNet`]), 200 UDP datagrams from `a` to `b`, each carrying its
//! number and the instant it was sent, timed by `b` (one process, one monotonic clock); with
//! no delay, with what `a` sends held 100 ms, with what `b` receives held 100 ± 100 ms, and
//! after the heal. Skips (saying why) where it cannot run: not root, no `ip netns`, no
//! `iptables-legacy` with the NFQUEUE target.
//!
//! Each end runs on a thread of its own that entered its namespace (`setns`). Every wait is
//! bounded (a receive timeout). The bounds on delays are generous above (a loaded 2-core
//! machine schedules the holding thread late) and exact below (no packet may leave early).

mod common;

use std::time::{Duration, Instant};

use stillpoint_chaos::net::{self, Delay, Direction, SiteNet};

const DATAGRAMS: u32 = 200;
const PORT: u16 = 5_557;
/// How long the receiver waits for one more datagram once the sender is done.
const QUIET: Duration = Duration::from_secs(2);

/// What `b` saw: per datagram received, (number, one-way delay in µs), in arrival order.
fn time_through(origin: Instant, from: &net::NetNode, to: &net::NetNode) -> Vec<(u32, u64)> {
    let got = common::udp_through(
        from,
        to,
        PORT,
        DATAGRAMS,
        1,
        Duration::from_millis(2),
        QUIET,
        move |i| {
            let mut datagram = i.to_be_bytes().to_vec();
            let sent_us = origin.elapsed().as_micros() as u64;
            datagram.extend_from_slice(&sent_us.to_be_bytes());
            datagram
        },
    );
    got.into_iter()
        .filter(|(d, _)| d.len() == 12)
        .map(|(d, at)| {
            let number = u32::from_be_bytes(d[0..4].try_into().expect("4 bytes"));
            let sent_us = u64::from_be_bytes(d[4..12].try_into().expect("8 bytes"));
            let arrived_us = at.duration_since(origin).as_micros() as u64;
            (number, arrived_us.saturating_sub(sent_us))
        })
        .collect()
}

fn median_ms(got: &[(u32, u64)]) -> u64 {
    let mut us: Vec<u64> = got.iter().map(|(_, d)| *d).collect();
    us.sort_unstable();
    us[us.len() / 2] / 1_000
}

/// Datagrams that arrived after one sent later than them.
fn overtaken(got: &[(u32, u64)]) -> usize {
    let mut highest = None;
    let mut n = 0;
    for (number, _) in got {
        if highest.is_some_and(|h| *number < h) {
            n += 1;
        }
        highest = Some(highest.map_or(*number, |h: u32| h.max(*number)));
    }
    n
}

#[test]
fn a_delayed_link_holds_every_packet_its_time_either_way_and_the_heal_ends_it() {
    if let Some(why) = net::delay_unavailable() {
        eprintln!("SKIPPED: delayed links cannot be made here: {why}");
        return;
    }
    let origin = Instant::now();
    let mut site = SiteNet::create(&["a".to_string(), "b".to_string()]).expect("the network");
    let (a, b) = (
        site.node("a").expect("a").clone(),
        site.node("b").expect("b").clone(),
    );

    let plain = time_through(origin, &a, &b);
    let steady = Delay {
        base_ms: 100,
        jitter_ms: 0,
        seed: 1,
    };
    site.delay("a", Direction::Out, steady)
        .expect("delay what a sends");
    let out = time_through(origin, &a, &b);
    let out_stats = site
        .undelay("a", Direction::Out)
        .expect("lift")
        .expect("it was in place");
    let jittered = Delay {
        base_ms: 100,
        jitter_ms: 100,
        seed: 2,
    };
    site.delay("b", Direction::In, jittered)
        .expect("delay what b receives");
    assert_eq!(site.delays().len(), 1);
    let inbound = time_through(origin, &a, &b);
    site.heal().expect("the heal lifts every delay");
    assert!(site.delays().is_empty());
    let healed = time_through(origin, &a, &b);
    eprintln!(
        "median one-way delay of {DATAGRAMS} datagrams: {} ms with no delay; {} ms with a's out held 100 ms (its thread held {} packets, the longest {} ms); {} ms with b's in held 100 ± 100 ms ({} arrived out of order); {} ms after the heal",
        median_ms(&plain),
        median_ms(&out),
        out_stats.packets,
        out_stats.hold_ms_max,
        median_ms(&inbound),
        overtaken(&inbound),
        median_ms(&healed)
    );
    for (what, got) in [
        ("no delay", &plain),
        ("a's out delayed", &out),
        ("b's in delayed", &inbound),
        ("the heal", &healed),
    ] {
        assert_eq!(
            got.len(),
            DATAGRAMS as usize,
            "datagrams lost with {what}: a delay holds, it never drops"
        );
    }
    // No packet leaves early; held on a loaded machine, some leave late.
    assert!(
        out.iter().all(|(_, us)| *us >= 100_000),
        "a datagram of a's delayed out arrived in under 100 ms: {out:?}"
    );
    assert!(
        (100..=400).contains(&median_ms(&out)),
        "median {} ms through a 100 ms delay",
        median_ms(&out)
    );
    assert!(
        out_stats.packets >= u64::from(DATAGRAMS),
        "a's thread held {} packets, fewer than the {DATAGRAMS} datagrams",
        out_stats.packets
    );
    assert_eq!(overtaken(&out), 0, "a steady delay keeps the order");
    // 0 to 200 ms, uniform: a datagram sent 2 ms after another overtakes it about half the
    // time the two draws differ by more than 2 ms.
    assert!(
        (50..=450).contains(&median_ms(&inbound)),
        "median {} ms through a 100 ± 100 ms delay",
        median_ms(&inbound)
    );
    assert!(
        overtaken(&inbound) >= 20,
        "only {} of {DATAGRAMS} datagrams arrived out of order through a 100 ± 100 ms delay",
        overtaken(&inbound)
    );
    for (what, got) in [("no delay", &plain), ("the heal", &healed)] {
        assert!(
            median_ms(got) < 50,
            "median {} ms with {what}",
            median_ms(got)
        );
    }
    drop(site);
}
