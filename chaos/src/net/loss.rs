//! A lossy link: packets of one process dropped at random, whatever the load, with nftables.
//!
//! [`SiteNet::lose`] adds, inside the process's namespace, a table `netdev stillpoint_chaos`
//! with a base chain on its `eth0`'s `egress` hook (what it sends, [`Direction::Out`]) or
//! `ingress` hook (what it receives, [`Direction::In`]) holding one rule: `numgen random mod
//! 1000 < N counter drop`. Each packet (ARP too) is dropped with probability N/1000, drawn by
//! the kernel per packet, independent of the others and of the load: a lone heartbeat is lost
//! as often as a segment of a bulk transfer. TCP sends a lost segment again after its
//! retransmission timeout (200 ms at least, doubling on each loss of the same segment), so at
//! 20-30% a message is late by up to seconds now and then, and a connection may time out.
//! This is the loss `netem loss P%` gives, built from what this machine's kernel has
//! (`nf_tables` with `numgen` and the netdev hooks; no `netem`). What it is not: delay on an
//! idle link, duplication, reordering.
//!
//! Why at the device and not on the `output` hook of the `inet` family: a packet a process's
//! own `output` hook drops fails its send at once (`sendmsg` and `connect` return EPERM),
//! a fast failure no lossy network gives. Dropped at the device's egress, a packet is lost
//! as a full queue loses it (as the slow link's token bucket does): the send succeeds and the
//! packet never arrives.
//!
//! [`SiteNet::unlose`] reads the rule's counter, then deletes the chain; the table stays
//! (empty), and goes with the namespace. Only the process's own namespace is touched, never
//! the machine's.

use super::{Direction, SiteNet, run_bounded};

/// The table every loss chain lives in, inside a process's namespace.
const TABLE: &str = "stillpoint_chaos";

/// Random loss on one direction of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loss {
    /// Packets dropped per thousand, 1 to 999.
    pub per_mille: u32,
}

/// What a loss rule dropped while it was in place (its nftables counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossStats {
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

impl LossStats {
    /// Reads `counter packets P bytes B` from `nft list chain`.
    fn parse(text: &str) -> Option<LossStats> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let i = words.iter().position(|w| *w == "counter")?;
        match words.get(i + 1..i + 5)? {
            ["packets", p, "bytes", b] => Some(LossStats {
                dropped_packets: p.parse().ok()?,
                dropped_bytes: b.parse().ok()?,
            }),
            _ => None,
        }
    }
}

fn chain(dir: Direction) -> &'static str {
    match dir {
        Direction::Out => "loss_out",
        Direction::In => "loss_in",
    }
}

fn hook(dir: Direction) -> &'static str {
    match dir {
        Direction::Out => "egress",
        Direction::In => "ingress",
    }
}

/// The base chain of `hook` on the namespace's `eth0`.
fn base_chain(hook: &str) -> String {
    format!("{{ type filter hook {hook} device \"eth0\" priority 0 ; policy accept ; }}")
}

/// Runs `nft ARGS` inside namespace `netns` (bounded, see [`run_bounded`]).
fn nft(netns: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["netns", "exec", netns, "nft"];
    all.extend_from_slice(args);
    run_bounded("ip", &all)
}

impl SiteNet {
    /// Drops `loss.per_mille` of every thousand packets `name` sends (`Out`) or receives
    /// (`In`), at random, until [`SiteNet::unlose`] or [`SiteNet::heal`]; replaces a loss
    /// already there.
    pub fn lose(&mut self, name: &str, dir: Direction, loss: Loss) -> Result<(), String> {
        if !(1..=999).contains(&loss.per_mille) {
            return Err(format!(
                "a loss of {} per mille: between 1 and 999",
                loss.per_mille
            ));
        }
        let i = self.index(name)?;
        let netns = self.nodes[i].netns.clone();
        if self.losses.contains_key(&(i, dir)) {
            self.lift_loss(i, dir)?;
            self.losses.remove(&(i, dir));
        }
        nft(&netns, &["add", "table", "netdev", TABLE])?;
        let base = base_chain(hook(dir));
        nft(
            &netns,
            &["add", "chain", "netdev", TABLE, chain(dir), &base],
        )?;
        let below = loss.per_mille.to_string();
        let rule = [
            "add",
            "rule",
            "netdev",
            TABLE,
            chain(dir),
            "numgen",
            "random",
            "mod",
            "1000",
            "<",
            &below,
            "counter",
            "drop",
        ];
        if let Err(e) = nft(&netns, &rule) {
            let _ = nft(&netns, &["delete", "chain", "netdev", TABLE, chain(dir)]);
            return Err(e);
        }
        self.losses.insert((i, dir), loss);
        Ok(())
    }

    /// Lifts the loss on `name`'s link in direction `dir`: what it dropped (`None` when none
    /// was in place). One that could not be lifted stays listed, for the heal to try again.
    pub fn unlose(&mut self, name: &str, dir: Direction) -> Result<Option<LossStats>, String> {
        let i = self.index(name)?;
        if !self.losses.contains_key(&(i, dir)) {
            return Ok(None);
        }
        let stats = self.lift_loss(i, dir)?;
        self.losses.remove(&(i, dir));
        Ok(Some(stats))
    }

    /// Reads a loss rule's counter, then deletes its chain.
    pub(super) fn lift_loss(&self, i: usize, dir: Direction) -> Result<LossStats, String> {
        let netns = &self.nodes[i].netns;
        // A counter that cannot be read is zero: the lift matters, not the account.
        let stats = nft(netns, &["list", "chain", "netdev", TABLE, chain(dir)])
            .ok()
            .and_then(|out| LossStats::parse(&out))
            .unwrap_or_default();
        nft(netns, &["flush", "chain", "netdev", TABLE, chain(dir)])?;
        nft(netns, &["delete", "chain", "netdev", TABLE, chain(dir)])?;
        Ok(stats)
    }

    /// The losses in place: (name, direction, loss).
    pub fn losses(&self) -> Vec<(String, Direction, Loss)> {
        self.losses
            .iter()
            .map(|((i, d), l)| (self.nodes[*i].name.clone(), *d, *l))
            .collect()
    }
}

/// Why lossy links cannot be made here (no `nft`, or a kernel without `nf_tables`), or `None`
/// when they can. Needs root and namespaces, as [`super::unavailable`] checks first.
pub fn loss_unavailable() -> Option<String> {
    if let Some(why) = super::unavailable() {
        return Some(why);
    }
    super::probe_namespace("sploss", |probe| {
        nft(probe, &["add", "table", "netdev", TABLE])
            .and_then(|_| {
                nft(
                    probe,
                    &[
                        "add",
                        "chain",
                        "netdev",
                        TABLE,
                        "probe",
                        &base_chain("egress"),
                    ],
                )
            })
            .map(drop)
            .map_err(|e| {
                format!(
                    "no nftables with netdev egress hooks (`nft`, from Debian's nftables package): {e}"
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_of_a_loss_rule_is_read_from_nft_list() {
        let listed = "table netdev stillpoint_chaos {\n\tchain loss_out {\n\t\ttype filter hook egress device \"eth0\" priority filter; policy accept;\n\t\tnumgen random mod 1000 < 100 counter packets 17 bytes 2210 drop\n\t}\n}\n";
        assert_eq!(
            LossStats::parse(listed),
            Some(LossStats {
                dropped_packets: 17,
                dropped_bytes: 2210
            })
        );
        assert_eq!(LossStats::parse("table inet x {\n}\n"), None);
    }
}
