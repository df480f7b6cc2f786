//! A lossy link loses packets at the rate asked, whatever the load, either way, and the heal
//! ends it: two namespaces of a site's network ([`stillpoint_chaos::net::SiteNet`]), 1,000
//! UDP datagrams from `a` to `b` (a datagram lost is lost: no retransmission hides it),
//! counted by `b`, with no loss, with 30% of what `a` sends dropped, with 30% of what `b`
//! receives dropped, and after the heal. Skips (saying why) where it cannot run: not root, no
//! `ip netns`, no `nft`.
//!
//! Each end runs on a thread of its own that entered its namespace (`setns`). Every wait is
//! bounded (a receive timeout).

mod common;

use std::time::Duration;

use stillpoint_chaos::net::{self, Direction, Loss, SiteNet};

const DATAGRAMS: u32 = 1_000;
const PORT: u16 = 5_556;
/// How long the receiver waits for one more datagram once the sender is done.
const QUIET: Duration = Duration::from_millis(500);

/// Sends [`DATAGRAMS`] small datagrams from `from`'s namespace to `to`'s, paced so no buffer
/// overflows; returns how many `to` received.
fn count_through(from: &net::NetNode, to: &net::NetNode) -> u32 {
    common::udp_through(
        from,
        to,
        PORT,
        DATAGRAMS,
        50,
        Duration::from_millis(1),
        QUIET,
        |i| i.to_be_bytes().to_vec(),
    )
    .len() as u32
}

#[test]
fn a_lossy_link_drops_at_its_rate_either_way_and_the_heal_ends_it() {
    if let Some(why) = net::loss_unavailable() {
        eprintln!("SKIPPED: lossy links cannot be made here: {why}");
        return;
    }
    let mut site = SiteNet::create(&["a".to_string(), "b".to_string()]).expect("the network");
    let (a, b) = (
        site.node("a").expect("a").clone(),
        site.node("b").expect("b").clone(),
    );
    let lossy = Loss { per_mille: 300 };

    let plain = count_through(&a, &b);
    site.lose("a", Direction::Out, lossy)
        .expect("lose what a sends");
    let out = count_through(&a, &b);
    let out_stats = site
        .unlose("a", Direction::Out)
        .expect("lift")
        .expect("it was in place");
    site.lose("b", Direction::In, lossy)
        .expect("lose what b receives");
    assert_eq!(site.losses().len(), 1);
    let inbound = count_through(&a, &b);
    site.heal().expect("the heal lifts every loss");
    assert!(site.losses().is_empty());
    let healed = count_through(&a, &b);
    eprintln!(
        "of {DATAGRAMS} datagrams b received: {plain} with no loss; {out} with 30% of a's out dropped (its rule counted {} packets); {inbound} with 30% of b's in dropped; {healed} after the heal",
        out_stats.dropped_packets
    );
    assert_eq!(plain, DATAGRAMS, "datagrams lost with no loss rule");
    assert_eq!(healed, DATAGRAMS, "datagrams lost after the heal");
    // 30% of 1,000 independently: 700 expected, standard deviation about 14.5; these bounds
    // are over 10 deviations away.
    for (what, got) in [("a's out", out), ("b's in", inbound)] {
        assert!(
            (550..=850).contains(&got),
            "through {what} at 30% loss b received {got} of {DATAGRAMS}"
        );
    }
    // At least the datagrams b missed (a namespace may send a few packets of its own, such
    // as IPv6 neighbour discovery, through the same rule).
    assert!(
        out_stats.dropped_packets >= u64::from(DATAGRAMS - out),
        "a's rule counted {} drops, fewer than the {} datagrams b missed",
        out_stats.dropped_packets,
        DATAGRAMS - out
    );
    drop(site);
}
