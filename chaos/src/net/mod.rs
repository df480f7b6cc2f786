//! Network partitions, slow, lossy and delayed links: every process of a site in its own
//! network namespace, all of them on one bridge; cuts made by pointing a namespace's neighbour
//! entry for a peer at a hardware address no port owns, slow links by a token bucket filter
//! (`tc ... tbf`) on one end of a process's veth, lossy links by an nftables rule dropping
//! packets at random inside the process's namespace ([`loss`]), delayed links by a rule that
//! hands the process's packets to a thread of the harness holding each for a drawn time
//! ([`delay`]).
//!
//! ## The network
//! [`SiteNet::create`] makes, for a run, a bridge `sp<pid>x<k>b` in the machine's namespace
//! with address `10.77.X.1/24` (X: the first /24 of `10.77.0.0/16` no interface of this
//! machine uses, chosen under a lock file so two runs at once take different ones), and for
//! each process (`A1`, `mgmt1`, `db1`, …) a namespace `sp<pid>x<k>-<name>` whose `eth0` (one
//! end of a veth pair, the other end a port of the bridge) has `10.77.X.<2+i>/24`. The harness
//! itself stays in the machine's namespace and reaches every process through the bridge; no
//! route, forwarding or firewall setting of the machine is touched.
//!
//! ## A cut
//! A cut from A to B is `ip neigh replace <B> lladdr 02:5e:00:de:ad:01 nud permanent` in A's
//! namespace: A's packets to B leave with a destination no port has, the bridge floods them
//! and every receiver drops them. B still answers A's ARP (the reply is addressed from the
//! request), and its packets to A still arrive unless B's side is cut too. So the sender sees
//! exactly what a lost network gives: connects that time out, established connections whose
//! segments are retransmitted into nothing until a timeout. A route (`blackhole`,
//! `prohibit`, `unreachable`) would not: for a process's own packets the kernel fails the
//! send at once (`connect` returns EINVAL, EACCES or EHOSTUNREACH in under a millisecond —
//! measured on this machine), a fast failure no real partition gives, and stillpoint must
//! survive the slow kind. Healing deletes the entry; the next packet resolves B again.
//! A cut is per direction, so one-way loss is one entry.
//!
//! ## A slow link
//! [`SiteNet::throttle`] puts a token bucket filter (`tc qdisc replace ... root tbf rate R
//! burst B latency L`) on one direction of one process's link: on `eth0` inside its namespace
//! for what it sends ([`Direction::Out`]), on the bridge-side veth end `sp<pid>x<k>v<i>` in the
//! machine's namespace for what it receives ([`Direction::In`]). A packet leaves at most at R
//! (after a burst of B bytes at line rate); while the queue's head waits for tokens the others
//! queue behind it, and a packet that would wait longer than L is dropped. That is a congested
//! link: the delay grows with the load offered (up to L) and, once the load is above R, the
//! overflow is lost; TCP turns each loss into a retransmit after its timeout (200 ms at
//! least, doubling), so a message's delay can run to seconds. [`SiteNet::unthrottle`] (and
//! [`SiteNet::heal`]) delete the qdisc and say how many bytes it sent and packets it dropped.
//!
//! Measured here (two namespaces on a bridge, a 256 KiB TCP transfer, Python sockets): 0.013 s
//! unthrottled; 8.5 s through a 256 kbit/s tbf (latency 200 ms) on the sender's `eth0`, 98
//! packets dropped; 17.3 s through a 128 kbit/s tbf (latency 100 ms) on the receiver's
//! bridge-side veth, 35 dropped; 0.015 s once the qdisc was deleted. 200-byte request/reply
//! round trips every 100 ms: 0.2 ms through an idle 256 kbit/s tbf, median 194 ms (max 289)
//! while a bulk transfer filled it.
//!
//! Why tbf: this machine's kernel has no `netem` (`tc qdisc add ... netem` fails: "Specified
//! qdisc kind is unknown") and no `gact` action, while `tbf` and `htb` work, in
//! namespaces too. What tbf cannot do: delay a packet on an idle link (a packet that finds
//! tokens leaves at once, so a lone heartbeat is late only when other traffic fills the
//! queue), or lose packets at random independently of the load (it drops only what overflows
//! its latency bound). Random loss independent of the load is made with nftables instead
//! ([`loss`]); a delay on an idle link, with the reordering a jitter brings and the duplicate
//! segments TCP then sends, with NFQUEUE and a thread that holds packets ([`delay`]).
//!
//! ## Why not a TCP proxy
//! A proxy per peer pair needs one address per peer in every agent's configuration (raft
//! members have one address each, which every peer dials), and it only sees connections it
//! carries: packets in flight when a cut starts would still be delivered by the proxy's
//! buffers. Namespaces need no change to how stillpoint names its peers and cut at the packet.
//!
//! ## Clean-up
//! Dropping the [`SiteNet`] deletes every veth (and with it any throttle's qdisc), the bridge
//! and every namespace it made (on a panic too, as the stack unwinds). A run killed outright
//! leaves them; the next [`SiteNet::create`] removes every `sp<pid>x…` namespace and link whose
//! process `<pid>` no longer exists, and kills the processes still running inside such a
//! namespace.

mod delay;
mod loss;

pub use delay::{DRAIN, Delay, DelayStats, Held, QUEUE_PACKETS_MAX, delay_unavailable};
pub use loss::{Loss, LossStats, loss_unavailable};

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The hardware address cut entries point at: locally administered, owned by no port.
const NOWHERE_MAC: &str = "02:5e:00:de:ad:01";
/// The /16 each run takes a /24 of.
const NET16: &str = "10.77";
/// Serialises choosing a /24 and cleaning stale namespaces between runs on this machine: a
/// directory, made atomically by whoever takes the lock.
const LOCK_PATH: &str = "/run/stillpoint-chaos-net.lock";
/// How long [`NetLock::take`] waits for another run's lock (held for well under a second)
/// before taking it as left by a run that was killed.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// The machine-wide lock (see [`LOCK_PATH`]); released when dropped.
struct NetLock;

impl NetLock {
    fn take() -> Result<NetLock, String> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match std::fs::create_dir(LOCK_PATH) {
                Ok(()) => return Ok(NetLock),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if std::time::Instant::now() >= deadline {
                        // Left by a run killed while holding it: take it over.
                        return Ok(NetLock);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(format!("cannot make {LOCK_PATH}: {e}")),
            }
        }
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(LOCK_PATH);
    }
}

/// Which way of a process's link a [`Throttle`] slows or a [`Loss`] drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// What the process sends: a throttle on `eth0` inside its namespace, a loss on the
    /// `egress` hook of that `eth0`, a delay on the namespace's `OUTPUT` chain.
    Out,
    /// What the process receives: a throttle on the bridge-side end of its veth, in the
    /// machine's namespace; a loss on the `ingress` hook of its `eth0`, a delay on its
    /// namespace's `INPUT` chain.
    In,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// A token bucket filter on one direction of a link (see the module's essay, "A slow link").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttle {
    /// The rate packets leave at once the burst is spent.
    pub rate_bits_per_s: u64,
    /// Bytes that may leave at line rate after the link was idle; at least one full frame.
    pub burst_bytes: u64,
    /// A packet that would wait longer than this in the queue is dropped.
    pub latency_ms: u64,
}

/// Least burst a [`Throttle`] may have: a full Ethernet frame (1,514 bytes) and some room, or
/// a full-size packet could never leave.
pub const BURST_BYTES_MIN: u64 = 1_600;

impl Throttle {
    /// The `tbf` arguments, or why these values make no link.
    fn tbf_args(&self) -> Result<Vec<String>, String> {
        if self.rate_bits_per_s < 8_000 {
            return Err(format!(
                "a throttle of {} bit/s: at least 8,000 bit/s",
                self.rate_bits_per_s
            ));
        }
        if self.burst_bytes < BURST_BYTES_MIN {
            return Err(format!(
                "a burst of {} bytes: at least {BURST_BYTES_MIN} (one full frame)",
                self.burst_bytes
            ));
        }
        if !(1..=10_000).contains(&self.latency_ms) {
            return Err(format!(
                "a latency bound of {} ms: between 1 and 10,000 ms",
                self.latency_ms
            ));
        }
        Ok(vec![
            "tbf".into(),
            "rate".into(),
            format!("{}bit", self.rate_bits_per_s),
            "burst".into(),
            self.burst_bytes.to_string(),
            "latency".into(),
            format!("{}ms", self.latency_ms),
        ])
    }
}

/// What a throttle's queue did while it was in place (`tc -s qdisc show`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    pub sent_bytes: u64,
    pub sent_packets: u64,
    /// Packets that would have waited longer than the latency bound.
    pub dropped_packets: u64,
}

impl ThrottleStats {
    /// Reads the first ` Sent B bytes P pkt (dropped D, ...` line of `tc -s qdisc show`.
    fn parse(text: &str) -> Option<ThrottleStats> {
        let line = text.lines().find(|l| l.trim_start().starts_with("Sent "))?;
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
            .filter(|w| !w.is_empty())
            .collect();
        let after = |word: &str| -> Option<u64> {
            let i = words.iter().position(|w| *w == word)?;
            words.get(i + 1)?.parse().ok()
        };
        let before = |word: &str| -> Option<u64> {
            let i = words.iter().position(|w| *w == word)?;
            words.get(i.checked_sub(1)?)?.parse().ok()
        };
        Some(ThrottleStats {
            sent_bytes: after("Sent")?,
            sent_packets: before("pkt")?,
            dropped_packets: after("dropped")?,
        })
    }
}

/// Why slow links cannot be made here (no `tc`, or its kernel has no `tbf`), or `None` when
/// they can. Needs root and bridges, as [`unavailable`] checks first.
pub fn throttle_unavailable() -> Option<String> {
    if let Some(why) = unavailable() {
        return Some(why);
    }
    let probe = format!("sptbf{}", std::process::id() % 100_000);
    if let Err(e) = ip(&["link", "add", &probe, "type", "bridge"]) {
        return Some(format!("cannot make a bridge: {e}"));
    }
    let tbf = Throttle {
        rate_bits_per_s: 64_000,
        burst_bytes: 4_096,
        latency_ms: 100,
    }
    .tbf_args();
    let made = tbf.and_then(|tbf| {
        let mut args = vec!["qdisc", "add", "dev", &probe, "root"];
        args.extend(tbf.iter().map(String::as_str));
        tc(&args)
    });
    let _ = ip(&["link", "del", &probe]);
    made.err().map(|e| format!("no tbf qdisc: {e}"))
}

/// One process's place on the site's network.
#[derive(Clone, Debug)]
pub struct NetNode {
    pub name: String,
    pub netns: String,
    pub ip: String,
    host_veth: String,
}

/// The network of one site (see the module's essay).
#[derive(Debug)]
pub struct SiteNet {
    prefix: String,
    /// This process's count of networks made before this one.
    serial: u32,
    bridge: String,
    /// The bridge's address: the harness's own address on this network.
    pub gateway_ip: String,
    pub nodes: Vec<NetNode>,
    /// Directed cuts in place (from, to), by node index.
    cuts: std::collections::BTreeSet<(usize, usize)>,
    /// Throttles in place, by (node index, direction).
    throttles: std::collections::BTreeMap<(usize, Direction), Throttle>,
    /// Random losses in place, by (node index, direction) ([`loss`]).
    losses: std::collections::BTreeMap<(usize, Direction), Loss>,
    /// Delays in place, by (node index, direction), each with its thread ([`delay`]).
    delays: std::collections::BTreeMap<(usize, Direction), delay::Holder>,
}

/// Bound on one `ip` or `tc` command (netlink calls answered at once; a hung one is killed).
const IP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `ip` with `args` (see [`run_bounded`]).
fn ip(args: &[&str]) -> Result<String, String> {
    run_bounded("ip", args)
}

/// Runs `tc` with `args` (see [`run_bounded`]).
fn tc(args: &[&str]) -> Result<String, String> {
    run_bounded("tc", args)
}

/// Runs `program` with `args`, bounded by [`IP_TIMEOUT`]; an error names the command and what
/// it printed. Blocking: call it off the async runtime's workers.
fn run_bounded(program: &str, args: &[&str]) -> Result<String, String> {
    let what = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", what()))?;
    let deadline = std::time::Instant::now() + IP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not end within {IP_TIMEOUT:?}", what()));
            }
            Err(e) => return Err(format!("{}: {e}", what())),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", what()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed: {}",
            what(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why partitions cannot be made here, or `None` when they can (root, `ip netns`, bridges).
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    if uid.as_deref() != Some("0") {
        return Some("not root (network namespaces need root)".into());
    }
    if let Err(e) = ip(&["netns", "list"]) {
        return Some(format!("no `ip netns`: {e}"));
    }
    let probe = format!("spprobe{}", std::process::id() % 100_000);
    match ip(&["link", "add", &probe, "type", "bridge"]) {
        Ok(_) => {
            let _ = ip(&["link", "del", &probe]);
            None
        }
        Err(e) => Some(format!("cannot make a bridge: {e}")),
    }
}

/// Moves the calling thread into the network namespace `netns` (made by `ip netns add`):
/// the thread's sockets are then the namespace's. Only this thread moves.
pub fn enter(netns: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
    // SAFETY: setns on an open descriptor of a network namespace; it changes only this
    // thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Tries `check` in a throwaway namespace `<prefix><pid>` holding a veth pair (`eth0`, and
/// its peer `eth1`), then deletes the namespace: what a fault kind needs of the kernel and
/// its tools, tried where it touches nothing else. `None` when it works, else why not.
fn probe_namespace(prefix: &str, check: impl FnOnce(&str) -> Result<(), String>) -> Option<String> {
    let probe = format!("{prefix}{}", std::process::id() % 100_000);
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("cannot make a namespace: {e}"));
    }
    let made = ip(&[
        "-n", &probe, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])
    .and_then(|_| check(&probe));
    let _ = ip(&["netns", "del", &probe]);
    made.err()
}

/// The pid a `sp<pid>x…` name belongs to.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sp")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('x') {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and links left by runs whose process is gone (killed outright).
fn clean_stale() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if owner_pid(name).is_some_and(|p| !pid_alive(p)) {
                if let Ok(pids) = ip(&["netns", "pids", name]) {
                    for pid in pids.split_whitespace() {
                        let _ = Command::new("kill").args(["-KILL", pid]).status();
                    }
                }
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            // "7: sp123x0v1@if2: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if owner_pid(name).is_some_and(|p| !pid_alive(p)) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// The first X whose `10.77.X.0/24` no address of this machine's namespace is in.
fn free_subnet() -> Result<u8, String> {
    let addrs = ip(&["-4", "-o", "addr", "show"])?;
    (1..=254u8)
        .find(|x| !addrs.contains(&format!(" {NET16}.{x}.")))
        .ok_or_else(|| format!("every /24 of {NET16}.0.0/16 is in use on this machine"))
}

impl SiteNet {
    /// Makes the bridge and one namespace per name in `names` (see the module's essay).
    /// At most 250 names.
    pub fn create(names: &[String]) -> Result<SiteNet, String> {
        if names.len() > 250 {
            return Err(format!("{} processes: at most 250 per site", names.len()));
        }
        let lock = NetLock::take()?;
        clean_stale();
        let k = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("sp{}x{k}", std::process::id());
        let x = free_subnet()?;
        let mut net = SiteNet {
            serial: k,
            bridge: format!("{prefix}b"),
            prefix: prefix.clone(),
            gateway_ip: format!("{NET16}.{x}.1"),
            nodes: Vec::new(),
            cuts: Default::default(),
            throttles: Default::default(),
            losses: Default::default(),
            delays: Default::default(),
        };
        // From here on, dropping `net` removes whatever was made.
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway_ip),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        drop(lock);
        for (i, name) in names.iter().enumerate() {
            let node = NetNode {
                name: name.clone(),
                netns: format!("{prefix}-{name}"),
                ip: format!("{NET16}.{x}.{}", i + 2),
                host_veth: format!("{prefix}v{i}"),
            };
            ip(&["netns", "add", &node.netns])?;
            net.nodes.push(node.clone());
            ip(&[
                "link",
                "add",
                &node.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.netns,
            ])?;
            ip(&["link", "set", &node.host_veth, "master", &net.bridge, "up"])?;
            ip(&["-n", &node.netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &node.netns,
                "addr",
                "add",
                &format!("{}/24", node.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &node.netns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// A port for the site's processes to listen on, different for each network this process
    /// made (up to 20,000 of them): an address (ip, port) never names two sites' processes, so
    /// a client's cached channel to an earlier site's process is never taken for a new one.
    pub fn port(&self) -> u16 {
        20_000 + (self.serial % 20_000) as u16
    }

    fn index(&self, name: &str) -> Result<usize, String> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| format!("no process {name:?} on network {}", self.prefix))
    }

    pub fn node(&self, name: &str) -> Result<&NetNode, String> {
        Ok(&self.nodes[self.index(name)?])
    }

    /// The command prefix that runs a program in `name`'s network namespace, and in this
    /// machine's mount namespace: `nsenter --net`, not `ip netns exec`, which also gives the
    /// program a mount namespace of its own. A linux host's file systems on array LDs are
    /// mounted by its agent and its LD path process; they must be where the applications
    /// (and the harness) see them, and stay the same for an agent started again.
    pub fn prefix(&self, name: &str) -> Result<Vec<String>, String> {
        let n = self.node(name)?;
        Ok(vec![
            "nsenter".into(),
            format!("--net=/run/netns/{}", n.netns),
            "--".into(),
        ])
    }

    /// Packets from `from` to `to` are lost from now on (one direction).
    pub fn cut_one_way(&mut self, from: &str, to: &str) -> Result<(), String> {
        let (f, t) = (self.index(from)?, self.index(to)?);
        if f == t {
            return Ok(());
        }
        ip(&[
            "-n",
            &self.nodes[f].netns,
            "neigh",
            "replace",
            &self.nodes[t].ip,
            "lladdr",
            NOWHERE_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        self.cuts.insert((f, t));
        Ok(())
    }

    /// `a` and `b` lose every packet to each other.
    pub fn cut(&mut self, a: &str, b: &str) -> Result<(), String> {
        self.cut_one_way(a, b)?;
        self.cut_one_way(b, a)
    }

    /// Every process of `side` loses every packet to and from every process of `other`.
    pub fn split(&mut self, side: &[String], other: &[String]) -> Result<(), String> {
        for a in side {
            for b in other {
                self.cut(a, b)?;
            }
        }
        Ok(())
    }

    /// The directed cuts in place, by name.
    pub fn cuts(&self) -> Vec<(String, String)> {
        self.cuts
            .iter()
            .map(|(f, t)| (self.nodes[*f].name.clone(), self.nodes[*t].name.clone()))
            .collect()
    }

    /// The device a throttle of node `i` in direction `dir` sits on, and the `tc` options that
    /// name its namespace.
    fn throttle_dev(&self, i: usize, dir: Direction) -> (Vec<&str>, &str) {
        match dir {
            Direction::Out => (vec!["-n", self.nodes[i].netns.as_str()], "eth0"),
            Direction::In => (Vec::new(), self.nodes[i].host_veth.as_str()),
        }
    }

    /// `name`'s link in direction `dir` becomes slow (see the module's essay, "A slow link"),
    /// replacing any throttle already there.
    pub fn throttle(&mut self, name: &str, dir: Direction, t: Throttle) -> Result<(), String> {
        let i = self.index(name)?;
        let tbf = t.tbf_args()?;
        let (mut args, dev) = self.throttle_dev(i, dir);
        args.extend(["qdisc", "replace", "dev", dev, "root"]);
        args.extend(tbf.iter().map(String::as_str));
        tc(&args)?;
        self.throttles.insert((i, dir), t);
        Ok(())
    }

    /// Lifts the throttle on `name`'s link in direction `dir`: what its queue sent and dropped
    /// (`None` when none was in place). One that could not be lifted stays listed, for the
    /// heal to try again.
    pub fn unthrottle(
        &mut self,
        name: &str,
        dir: Direction,
    ) -> Result<Option<ThrottleStats>, String> {
        let i = self.index(name)?;
        let Some(t) = self.throttles.remove(&(i, dir)) else {
            return Ok(None);
        };
        self.lift(i, dir).map(Some).inspect_err(|_| {
            self.throttles.insert((i, dir), t);
        })
    }

    /// Reads a throttle's counters, then deletes it (the link goes back to `noqueue`).
    fn lift(&self, i: usize, dir: Direction) -> Result<ThrottleStats, String> {
        let (ns, dev) = self.throttle_dev(i, dir);
        let mut show = ns.clone();
        show.extend(["-s", "qdisc", "show", "dev", dev, "root"]);
        // Counters that cannot be read are zero: the lift matters, not the account.
        let stats = tc(&show)
            .ok()
            .and_then(|out| ThrottleStats::parse(&out))
            .unwrap_or_default();
        let mut del = ns;
        del.extend(["qdisc", "del", "dev", dev, "root"]);
        tc(&del)?;
        Ok(stats)
    }

    /// The throttles in place: (name, direction, throttle).
    pub fn throttles(&self) -> Vec<(String, Direction, Throttle)> {
        self.throttles
            .iter()
            .map(|((i, d), t)| (self.nodes[*i].name.clone(), *d, *t))
            .collect()
    }

    /// Removes every cut and lifts every throttle, loss and delay. Each is tried; the first
    /// error is returned after all were tried.
    pub fn heal(&mut self) -> Result<(), String> {
        let mut first = None;
        for ((i, dir), holder) in std::mem::take(&mut self.delays) {
            if let Err(e) = self.lift_delay(i, dir, holder) {
                first.get_or_insert(e);
            }
        }
        for (i, dir) in std::mem::take(&mut self.losses).into_keys() {
            if let Err(e) = self.lift_loss(i, dir) {
                first.get_or_insert(e);
            }
        }
        for (i, dir) in std::mem::take(&mut self.throttles).into_keys() {
            if let Err(e) = self.lift(i, dir) {
                first.get_or_insert(e);
            }
        }
        for (f, t) in std::mem::take(&mut self.cuts) {
            let deleted = ip(&[
                "-n",
                &self.nodes[f].netns,
                "neigh",
                "del",
                &self.nodes[t].ip,
                "dev",
                "eth0",
            ]);
            if let Err(e) = deleted {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for SiteNet {
    fn drop(&mut self) {
        // Deleting one end of a veth deletes both, even while a process still runs inside the
        // namespace (which then outlives its name until that process ends); a throttle's
        // qdisc goes with its device, a delay's rule with its namespace. A delay's thread is
        // stopped first (its held packets let go).
        self.delays.clear();
        for n in &self.nodes {
            let _ = ip(&["link", "del", &n.host_veth]);
            let _ = ip(&["netns", "del", &n.netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_names_are_recognised_by_their_owner_pid() {
        assert_eq!(owner_pid("sp1234x0-mgmt1"), Some(1234));
        assert_eq!(owner_pid("sp1234x12v3"), Some(1234));
        assert_eq!(owner_pid("spprobe12"), None);
        assert_eq!(owner_pid("sp12-foo"), None);
        assert_eq!(owner_pid("eth0"), None);
    }

    #[test]
    fn a_throttle_s_counters_are_read_from_tc_and_bad_values_are_refused() {
        let out = "qdisc tbf 8004: root refcnt 3 rate 256Kbit burst 4Kb lat 200ms \n Sent 274588 bytes 188 pkt (dropped 98, overlimits 463 requeues 0) \n backlog 0b 0p requeues 0\n";
        assert_eq!(
            ThrottleStats::parse(out),
            Some(ThrottleStats {
                sent_bytes: 274_588,
                sent_packets: 188,
                dropped_packets: 98
            })
        );
        assert_eq!(
            ThrottleStats::parse("qdisc noqueue 0: root refcnt 2\n"),
            None
        );
        let ok = Throttle {
            rate_bits_per_s: 16_000,
            burst_bytes: 4_096,
            latency_ms: 300,
        };
        assert_eq!(
            ok.tbf_args().unwrap().join(" "),
            "tbf rate 16000bit burst 4096 latency 300ms"
        );
        for bad in [
            Throttle {
                rate_bits_per_s: 100,
                ..ok
            },
            Throttle {
                burst_bytes: 1_000,
                ..ok
            },
            Throttle {
                latency_ms: 0,
                ..ok
            },
        ] {
            assert!(bad.tbf_args().is_err(), "{bad:?}");
        }
    }
}
