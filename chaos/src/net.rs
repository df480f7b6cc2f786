//! Network partitions with iproute2 only: every process of a site in its own network
//! namespace, all of them on one bridge, and cuts made by pointing a namespace's neighbour
//! entry for a peer at a hardware address no port owns.
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
//! ## Why not a TCP proxy
//! A proxy per peer pair needs one address per peer in every agent's configuration (raft
//! members have one address each, which every peer dials), and it only sees connections it
//! carries: packets in flight when a cut starts would still be delivered by the proxy's
//! buffers. Namespaces need no change to how stillpoint names its peers and cut at the packet.
//!
//! ## Clean-up
//! Dropping the [`SiteNet`] deletes every veth, the bridge and every namespace it made
//! (on a panic too, as the stack unwinds). A run killed outright leaves them; the next
//! [`SiteNet::create`] removes every `sp<pid>x…` namespace and link whose process `<pid>` no
//! longer exists, and kills the processes still running inside such a namespace.

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
}

/// Bound on one `ip` command (netlink calls answered at once; a hung one is killed).
const IP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `ip` with `args`, bounded by [`IP_TIMEOUT`]; an error names the command and what it
/// printed. Blocking: call it off the async runtime's workers.
fn ip(args: &[&str]) -> Result<String, String> {
    let what = || format!("ip {}", args.join(" "));
    let mut child = Command::new("ip")
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
            "ip {} failed: {}",
            args.join(" "),
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

    /// The command prefix that runs a program in `name`'s namespace.
    pub fn prefix(&self, name: &str) -> Result<Vec<String>, String> {
        let n = self.node(name)?;
        Ok(vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            n.netns.clone(),
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

    /// Removes every cut. Each is tried; the first error is returned after all were tried.
    pub fn heal(&mut self) -> Result<(), String> {
        let mut first = None;
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
        // namespace (which then outlives its name until that process ends).
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
}
