//! A local site of processes, for the demo, the job tests and benches: the software array `A1`
//! and agents `mgmt1` (management, control path to A1), `db1`..`dbN` (business; two unless
//! the layout says otherwise) and `backup1` (backup) — each a child process of the
//! `stillpoint` binary on loopback with its own config, data dir and log file under one dir.
//! The voters are an odd number: with an even number of agents the last (`backup1`) is a
//! learner.
//!
//! Every MV carries the sim file system with a workload application (`app<N>`) that writes
//! checksummed records while the volume is mounted, stopped and started by the volume's hooks;
//! [`LocalSite::verify_rv`] reads an RV through the array with the workload's verifier.
//!
//! A layout with a remote array ([`SiteLayout::remote`]) also starts `A2` (`array2.toml`,
//! `array2.log`, data in `array2/`) before A1, whose config links to it; RDR pairs have their
//! RVs there and [`LocalSite::verify_rv`] reads each RV from its own array.
//!
//! With a [`Placement`] (the chaos harness's network partitions) each process starts behind a
//! command prefix (`nsenter --net=/run/netns/NS --`) and listens on an address of its own instead of a free
//! loopback port; without one (every other test) nothing changes.
//!
//! Children are killed when the site is dropped, pass or fail (agents on linux hosts are first
//! asked to stop, so they detach their LDs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use stillpoint_array::{Array, RemoteArray};
use stillpoint_host::{Host, HostClient, MountIdentity, MountRequest, VolumeInfo};
use tokio::process::{Child, Command};

use super::inprocess::{bind_loopback, local_address};
pub use super::layout::{
    A1, A2, DB1, DB2, MGMT1, PairLayout, Placement, ProcessPlacement, RemoteLayout, SiteHosts,
    SiteLayout,
};
use crate::config::ArrayEndpoint;
use crate::error::NodeError;
use crate::volumes::ArrayLdDevice;

mod formation;
use formation::unregistered;

/// How long a dropped site of linux hosts waits for each agent to detach its LDs.
const DETACH_ON_DROP: Duration = Duration::from_secs(20);

/// The running site.
pub struct LocalSite {
    pub layout: SiteLayout,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub array_address: String,
    pub array: Option<Child>,
    /// The remote array A2's address, when the layout has it.
    pub remote_array_address: Option<String>,
    pub remote_array: Option<Child>,
    pub endpoints: Vec<String>,
    pub configs: Vec<PathBuf>,
    pub agents: Vec<Option<Child>>,
    /// Slots started at least once (a later start is a restart, without `--new`).
    started: Vec<bool>,
}

/// A free loopback address for a child process to listen on (the port is released here).
async fn free_loopback_address() -> Result<String, NodeError> {
    local_address(&bind_loopback().await?)
}

fn write(path: &Path, text: &str) -> Result<(), NodeError> {
    std::fs::write(path, text)
        .map_err(|e| NodeError::Invalid(format!("cannot write {}: {e}", path.display())))
}

fn log_file(path: &Path) -> Result<std::fs::File, NodeError> {
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| NodeError::Invalid(format!("cannot open {}: {e}", path.display())))
}

/// A command that runs `bin`, behind `prefix` if there is one.
fn command(bin: &Path, prefix: Option<&ProcessPlacement>) -> Command {
    match prefix.and_then(|p| p.prefix.split_first()) {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// Starts `stillpoint array serve` for `array` on `dir/<stem>.toml`, its log appended to
/// `dir/<stem>.log` (stem: [`SiteLayout::array_file_stem`]).
fn spawn_array(
    bin: &Path,
    dir: &Path,
    array: &str,
    placement: Option<&ProcessPlacement>,
) -> Result<Child, NodeError> {
    let stem = SiteLayout::array_file_stem(array);
    command(bin, placement)
        .args(["array", "serve", "--config"])
        .arg(dir.join(format!("{stem}.toml")))
        .stdout(Stdio::null())
        .stderr(log_file(&dir.join(format!("{stem}.log")))?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NodeError::Invalid(format!("cannot start array {array}: {e}")))
}

/// Where array `array` of `layout` runs, when the layout is placed.
fn array_placement<'a>(layout: &'a SiteLayout, array: &str) -> Option<&'a ProcessPlacement> {
    let placement = layout.placement.as_ref()?;
    if array == A2 {
        placement.remote_array.as_ref()
    } else {
        Some(&placement.array)
    }
}

/// Sends `signal` (`STOP`, `CONT`, ...) to process `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) -> Result<(), NodeError> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .map_err(|e| NodeError::Invalid(format!("cannot run kill: {e}")))?;
    if !status.success() {
        return Err(NodeError::Invalid(format!("kill -{signal} {pid} failed")));
    }
    Ok(())
}

/// Waits (bounded) until the array at `address` answers.
async fn connect_array_at(address: &str) -> Result<RemoteArray, NodeError> {
    crate::wait::until("the array to answer", FORM_TIMEOUT, || async move {
        let a = RemoteArray::connect(address).await.ok()?;
        a.info().await.ok().map(|_| a)
    })
    .await
}

/// Waits (bounded) until `host`'s agent answers and shows `volume` attached: no problem, and
/// with `block_device` its loop device in place (linux hosts).
async fn attached(
    host: &HostClient,
    volume: &str,
    block_device: bool,
) -> Result<VolumeInfo, NodeError> {
    crate::wait::until(
        &format!("{volume} to attach"),
        FORM_TIMEOUT,
        || async move {
            host.volume(volume)
                .await
                .ok()
                .filter(|v| v.problem.is_none() && (!block_device || v.device.starts_with("/dev/")))
        },
    )
    .await
}

/// Bound on making a file system on an LD.
const MKFS_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a tool to its end, bounded by `timeout`; its stderr in the error.
pub(crate) async fn run_tool(argv: &[&str], timeout: Duration) -> Result<String, NodeError> {
    let shown = argv.join(" ");
    let run = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| NodeError::Timeout {
            what: format!("running {shown}"),
            ms: timeout.as_millis() as u64,
        })?
        .map_err(|e| NodeError::Invalid(format!("cannot run {shown}: {e}")))?;
    if !out.status.success() {
        return Err(NodeError::Invalid(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bound on forming the site (processes starting, an election, registrations).
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

impl LocalSite {
    /// Writes every config under `dir`, starts the array (formatting each MV with the sim file
    /// system) and the agents; forms the cluster. The pairs are not set: that is `group
    /// prepare`'s job.
    pub async fn start(bin: &Path, dir: &Path, layout: SiteLayout) -> Result<LocalSite, NodeError> {
        if layout.has_rdr() && layout.remote.is_none() {
            return Err(NodeError::Invalid(
                "the layout has RDR pairs but no remote array (SiteLayout::remote)".into(),
            ));
        }
        // A2 first: A1's config names it as the peer of its RDR link.
        let (remote_array, remote_array_address) = match &layout.remote {
            None => (None, None),
            Some(_) => {
                let (child, address) = formation::start_array(bin, dir, &layout, A2, None).await?;
                (Some(child), Some(address))
            }
        };
        let (array, array_address) =
            formation::start_array(bin, dir, &layout, A1, remote_array_address.as_deref()).await?;
        let mut site = LocalSite {
            layout,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            array_address,
            array: Some(array),
            remote_array_address,
            remote_array,
            endpoints: Vec::new(),
            configs: Vec::new(),
            agents: Vec::new(),
            started: Vec::new(),
        };
        let remote = site.connect_array().await?;
        drop(remote);
        for p in site.layout.pairs.clone() {
            match &site.layout.hosts {
                SiteHosts::Sim => {
                    let device =
                        ArrayLdDevice::new(&site.array_endpoint(), p.mv_ld, &site.name(p.mv_node));
                    stillpoint_host::SimBackend::format(&device).await?;
                }
                SiteHosts::Linux { .. } => {
                    let node = site.name(p.mv_node);
                    for (node, volume) in [(node.as_str(), &p.mv_volume), ("backup1", &p.rv_volume)]
                    {
                        let mp = site.layout.mount_point(dir, node, volume);
                        std::fs::create_dir_all(&mp).map_err(|e| {
                            NodeError::Invalid(format!("cannot create mount point {mp}: {e}"))
                        })?;
                    }
                }
            }
        }
        for (slot, (name, role)) in site.layout.agents().into_iter().enumerate() {
            let placed = site
                .layout
                .placement
                .as_ref()
                .and_then(|p| p.agents.get(slot).map(|a| format!("{}:{}", a.ip, p.port)));
            let address = match placed {
                Some(address) => address,
                None => free_loopback_address().await?,
            };
            let host = if slot == MGMT1 {
                String::new()
            } else {
                site.layout.host_toml(slot, dir)
            };
            let remote = match &site.remote_array_address {
                Some(a) if site.layout.reaches(&name, A2) => {
                    format!("[[arrays]]\nname = \"{A2}\"\nendpoint = \"{a}\"\n")
                }
                _ => String::new(),
            };
            let text = format!(
                "node_id = {}\nname = \"{name}\"\nlisten = \"{address}\"\ndata_dir = {:?}\nroles = [\"{role}\"]\n\
                 [[arrays]]\nname = \"A1\"\nendpoint = \"{}\"\n{remote}[raft]\n{}{host}",
                slot + 1,
                dir.join(format!("data-{name}")).display().to_string(),
                site.array_address,
                site.layout.raft_toml,
            );
            let path = dir.join(format!("{name}.toml"));
            write(&path, &text)?;
            site.configs.push(path);
            site.endpoints.push(address);
            site.agents.push(None);
            site.started.push(false);
        }
        site.start_agents().await?;
        let client = crate::Client::new(site.endpoints[0].clone());
        // An odd number of voters, as a production site runs: with an even number one more
        // voter tolerates no more failures, and every election needs one vote more (after a
        // leader dies, all the others must agree). The last agent (backup1) joins as a learner.
        let voters = site.endpoints.len() - (1 - site.endpoints.len() % 2);
        let members = site.endpoints[..voters].to_vec();
        crate::wait::until("the agents to answer", FORM_TIMEOUT, || {
            let (client, members) = (client.clone(), members.clone());
            async move {
                client
                    .on_endpoint("init", |mut c| {
                        let member_addresses = members.clone();
                        async move {
                            c.init(stillpoint_proto::cluster::InitRequest {
                                member_addresses,
                                cluster_id: String::new(),
                            })
                            .await
                        }
                    })
                    .await
                    .ok()
            }
        })
        .await?;
        for learner in &site.endpoints[voters..] {
            let mut c = crate::Client::new(site.endpoints[0].clone());
            c.request_timeout = crate::deadlines::client_wait(crate::deadlines::ADD_MEMBER_MS);
            c.on_leader_write("add a learner", |mut g| {
                let address = learner.clone();
                async move {
                    g.add_member(stillpoint_proto::cluster::AddMemberRequest {
                        address,
                        promote: false,
                    })
                    .await
                }
            })
            .await?;
        }
        let probe = crate::Client::new(site.endpoints[0].clone());
        let names: BTreeSet<String> = (0..site.agents.len()).map(|s| site.name(s)).collect();
        let registered = crate::wait::until("every agent to register", FORM_TIMEOUT, || {
            let probe = probe.clone();
            let names = &names;
            async move {
                let missing = unregistered(&probe, names).await?;
                missing.is_empty().then_some(())
            }
        })
        .await;
        if let Err(e) = registered {
            let missing = unregistered(&probe, &names).await.unwrap_or(names);
            return Err(site.formation_failed(e, &missing));
        }
        Ok(site)
    }

    pub fn array_endpoint(&self) -> ArrayEndpoint {
        ArrayEndpoint {
            name: "A1".into(),
            endpoint: self.array_address.clone(),
        }
    }

    /// The endpoint of array `array` (A1, or A2 when the site has it).
    pub fn array_endpoint_of(&self, array: &str) -> Result<ArrayEndpoint, NodeError> {
        match array {
            A1 => Ok(self.array_endpoint()),
            A2 => self
                .remote_array_address
                .clone()
                .map(|endpoint| ArrayEndpoint {
                    name: A2.into(),
                    endpoint,
                })
                .ok_or_else(|| NodeError::Invalid("the site has no remote array A2".into())),
            other => Err(NodeError::Invalid(format!("the site has no array {other}"))),
        }
    }

    pub async fn connect_array(&self) -> Result<RemoteArray, NodeError> {
        connect_array_at(&self.array_address).await
    }

    /// Connects to array `array` (A1 or A2), waiting (bounded) until it answers.
    pub async fn connect_array_of(&self, array: &str) -> Result<RemoteArray, NodeError> {
        connect_array_at(&self.array_endpoint_of(array)?.endpoint).await
    }

    /// Takes the RDR link A1→A2 down (`up: false`: a link fault, RDR pairs copying go to
    /// abnormal suspend) or up, through A1's fault API (`stillpoint array fault link`).
    pub async fn set_rdr_link(&self, up: bool) -> Result<(), NodeError> {
        let peer = A2.to_string();
        let fault = if up {
            stillpoint_array::Fault::LinkUp { peer }
        } else {
            stillpoint_array::Fault::LinkDown { peer }
        };
        let array = self.connect_array().await?;
        tokio::time::timeout(stillpoint_array::CALL_TIMEOUT, array.inject_fault(&fault))
            .await
            .map_err(|_| NodeError::Timeout {
                what: format!("setting the RDR link {}", if up { "up" } else { "down" }),
                ms: stillpoint_array::CALL_TIMEOUT.as_millis() as u64,
            })??;
        Ok(())
    }

    /// The name of the agent in `slot`.
    pub fn name(&self, slot: usize) -> String {
        self.layout.name(slot)
    }

    /// SIGKILLs the array process A1 and reaps it.
    pub async fn kill_array(&mut self) {
        self.kill_array_of(A1).await
    }

    /// SIGKILLs the process of array `array` (A1, or A2 when the site has it) and reaps it.
    pub async fn kill_array_of(&mut self, array: &str) {
        if let Some(mut child) = self.array_process(array).take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the array process A1 again (same config, data dir and address) and waits until
    /// it answers.
    pub async fn restart_array(&mut self) -> Result<(), NodeError> {
        self.restart_array_of(A1).await
    }

    /// Starts array `array` again (same config, data dir and address) and waits until it
    /// answers.
    pub async fn restart_array_of(&mut self, array: &str) -> Result<(), NodeError> {
        // Refuses an array the site does not have.
        self.array_endpoint_of(array)?;
        if self.array_process(array).is_none() {
            let child = spawn_array(
                &self.bin,
                &self.dir,
                array,
                array_placement(&self.layout, array),
            )?;
            *self.array_process(array) = Some(child);
        }
        self.connect_array_of(array).await.map(drop)
    }

    /// The process slot of array `array`: A2's, or A1's for any other name.
    fn array_process(&mut self, array: &str) -> &mut Option<Child> {
        if array == A2 {
            &mut self.remote_array
        } else {
            &mut self.array
        }
    }

    /// The array process's id, if it runs.
    pub fn array_pid(&self) -> Option<u32> {
        self.array.as_ref().and_then(|c| c.id())
    }

    /// The array's audit log (written when the layout asks for it).
    pub fn audit_path(&self) -> PathBuf {
        self.audit_path_of(A1)
    }

    /// The audit log of array `array` (A1 or A2).
    pub fn audit_path_of(&self, array: &str) -> PathBuf {
        self.dir
            .join(SiteLayout::array_file_stem(array))
            .join("audit.log")
    }

    /// The log file of array `array` (A1 or A2).
    pub fn array_log_path(&self, array: &str) -> PathBuf {
        self.dir
            .join(format!("{}.log", SiteLayout::array_file_stem(array)))
    }

    pub fn log_path(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.name(slot)))
    }

    /// The fault switches file agent `slot` reads in a test build (see
    /// [`stillpoint_host::switches`]); absent unless a harness writes it.
    pub fn switches_path(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("{}.switches.toml", self.name(slot)))
    }

    /// Starts agent `slot` (again: without `--new` after its first start).
    pub fn spawn(&mut self, slot: usize) -> Result<(), NodeError> {
        let placed = self
            .layout
            .placement
            .as_ref()
            .and_then(|p| p.agents.get(slot));
        let mut command = command(&self.bin, placed);
        command.args(["agent", "--config"]).arg(&self.configs[slot]);
        if !self.started[slot] {
            command.arg("--new");
        }
        let child = command
            .env(stillpoint_host::switches::ENV_VAR, self.switches_path(slot))
            .env(
                "RUST_LOG",
                std::env::var("STILLPOINT_SITE_LOG")
                    .unwrap_or_else(|_| "info,openraft=error".into()),
            )
            .stdout(Stdio::null())
            .stderr(log_file(&self.log_path(slot))?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| NodeError::Invalid(format!("cannot start {}: {e}", self.name(slot))))?;
        self.started[slot] = true;
        self.agents[slot] = Some(child);
        Ok(())
    }

    /// SIGKILLs agent `slot` and reaps it.
    pub async fn kill(&mut self, slot: usize) {
        if let Some(mut child) = self.agents[slot].take() {
            let _ = child.kill().await;
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, ...) to agent `slot`.
    pub fn signal(&self, slot: usize, signal: &str) -> Result<(), NodeError> {
        let pid = self
            .pid(slot)
            .ok_or_else(|| NodeError::Invalid(format!("{} is not running", self.name(slot))))?;
        send_signal(pid, signal)
    }

    /// Sends `signal` to the process of array `array` (A1, or A2 when the site has it).
    pub fn signal_array(&self, array: &str, signal: &str) -> Result<(), NodeError> {
        let child = if array == A2 {
            &self.remote_array
        } else {
            &self.array
        };
        let pid = child
            .as_ref()
            .and_then(|c| c.id())
            .ok_or_else(|| NodeError::Invalid(format!("array {array} is not running")))?;
        send_signal(pid, signal)
    }

    /// The process id of agent `slot`, if it runs.
    pub fn pid(&self, slot: usize) -> Option<u32> {
        self.agents[slot].as_ref().and_then(|c| c.id())
    }

    /// A client that follows the leader from any running agent.
    pub fn client(&self) -> crate::Client {
        let slot = (0..self.agents.len())
            .find(|s| self.agents[*s].is_some())
            .unwrap_or(0);
        crate::Client::new(self.endpoints[slot].clone())
    }

    pub fn host(&self, slot: usize) -> Result<HostClient, NodeError> {
        Ok(HostClient::new(crate::peer::channel_to(
            &self.endpoints[slot],
        )?))
    }

    /// The leader's slot, as a running agent that answers sees it, confirmed by the leader
    /// with a quorum; waits (bounded) while there is none.
    pub async fn leader(&self) -> Result<usize, NodeError> {
        let endpoints: Vec<String> = (0..self.agents.len())
            .filter(|s| self.agents[*s].is_some())
            .map(|s| self.endpoints[s].clone())
            .collect();
        crate::wait::until("a leader", FORM_TIMEOUT, || {
            let endpoints = endpoints.clone();
            async move {
                for endpoint in endpoints {
                    let status = crate::Client::new(endpoint)
                        .on_leader("status", |mut c| async move {
                            c.status(stillpoint_proto::cluster::StatusRequest { consistent: true })
                                .await
                        })
                        .await;
                    if let Ok(Some(id)) = status.map(|s| s.leader_id) {
                        return Some(id as usize - 1);
                    }
                }
                None
            }
        })
        .await
    }

    /// Mounts every MV and starts its application through its start hook.
    pub async fn start_applications(&self) -> Result<(), NodeError> {
        for slot in DB1..self.layout.backup_slot() {
            self.boot_host(slot).await?;
        }
        Ok(())
    }

    /// What a host's boot does for the MVs of business node `slot`: mounts each one that is
    /// not mounted and starts its application (fstab and the init system, on a real server).
    /// Waits for the agent to answer and every volume to be attached first.
    async fn boot_host(&self, slot: usize) -> Result<(), NodeError> {
        let host = self.host(slot)?;
        for p in self.layout.pairs.iter().filter(|p| p.mv_node == slot) {
            let volume = p.mv_volume.clone();
            let info = attached(&host, &volume, false).await?;
            if info.mounted_at.is_some() {
                continue;
            }
            let mounted = host
                .mount(
                    &volume,
                    &MountRequest {
                        mount_point: None,
                        identity: MountIdentity::Keep,
                        read_only: false,
                    },
                )
                .await;
            if let Err(e) = mounted {
                // A job may have quiesced it again since: then its release brings it back.
                match host.volume(&volume).await {
                    Ok(v) if v.quiesce.is_some() || v.mounted_at.is_some() => continue,
                    _ => return Err(e.into()),
                }
            }
            host.run_hook(&volume, stillpoint_host::HookKind::Start)
                .await?;
        }
        Ok(())
    }

    /// Starts agent `slot` again after it was killed, and brings its host back the way a
    /// reboot would: the agent's own start resumes any quiesce it held (S4); then every MV
    /// still unmounted is mounted and its application started ([`LocalSite::boot_host`]).
    /// With the `sim` backend, mounts and applications live in the agent's process, so killing
    /// the agent is a reboot of its host.
    pub async fn restart(&mut self, slot: usize) -> Result<(), NodeError> {
        self.spawn(slot)?;
        if (DB1..self.layout.backup_slot()).contains(&slot) {
            self.boot_host(slot).await?;
        }
        Ok(())
    }

    /// Linux hosts: makes the layout's file system on every MV (through its loop device over
    /// the agent's FUSE file, so every byte goes through the array) and mounts it. Waits
    /// (bounded) for each agent to attach its LDs first.
    pub async fn make_file_systems(&self) -> Result<(), NodeError> {
        let SiteHosts::Linux { fs } = &self.layout.hosts else {
            return Err(NodeError::Invalid(
                "make_file_systems is for a site of linux hosts".into(),
            ));
        };
        for p in &self.layout.pairs {
            let host = self.host(p.mv_node)?;
            let volume = p.mv_volume.clone();
            let info = attached(&host, &volume, true).await?;
            let mkfs = format!("mkfs.{fs}");
            let mut args = vec![mkfs.as_str(), "-q"];
            if fs == "xfs" {
                args.push("-f");
            } else {
                // Inode tables and journal written now, not by the kernel in the background
                // after each mount (of the MV, and of every copy of it on the backup node).
                args.extend(["-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]);
            }
            args.push(&info.device);
            run_tool(&args, MKFS_TIMEOUT).await?;
            host.mount(&volume, &MountRequest::default()).await?;
        }
        Ok(())
    }

    /// Reads the RV of pair `i` through its array (A2 for an RDR pair) with the workload's
    /// verifier.
    pub async fn verify_rv(&self, i: usize) -> Result<stillpoint_host::VerifyReport, NodeError> {
        let p = &self.layout.pairs[i];
        let endpoint = self.array_endpoint_of(p.rv_array())?;
        let device = ArrayLdDevice::new(&endpoint, p.rv_ld, "backup1");
        Ok(stillpoint_host::verify(&device).await?)
    }

    /// Stops every agent gracefully (SIGTERM, so held quiesces are resumed), then the array.
    pub async fn stop(mut self) {
        for slot in 0..self.agents.len() {
            if let Some(mut child) = self.agents[slot].take() {
                if let Some(pid) = child.id() {
                    let _ = std::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status();
                }
                if tokio::time::timeout(Duration::from_secs(20), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
        let configs = self.configs.clone();
        let _ = tokio::task::spawn_blocking(move || stop_ld_paths(&configs)).await;
        if let Some(mut array) = self.array.take() {
            let _ = array.kill().await;
        }
        if let Some(mut array) = self.remote_array.take() {
            let _ = array.kill().await;
        }
    }
}

/// Stops the LD path process of every linux host of the site (they outlive the agents): each
/// unmounts the file systems on its LDs, detaches them and exits.
fn stop_ld_paths(configs: &[PathBuf]) {
    for config in configs {
        if let Err(e) = crate::hba::stop_blocking(config) {
            tracing::warn!(config = %config.display(), error = %e, "cannot stop the LD path process");
        }
    }
}

impl Drop for LocalSite {
    /// A site of linux hosts is stopped gracefully even when a test fails: each agent gets
    /// SIGTERM (it resumes what it holds quiesced) and [`DETACH_ON_DROP`] to exit, then each
    /// host's LD path process is stopped (it unmounts the file systems on the LDs and detaches
    /// them); then, as for a sim site, whatever runs is killed.
    fn drop(&mut self) {
        if self.layout.hosts == SiteHosts::Sim {
            return;
        }
        let running: Vec<u32> = self
            .agents
            .iter()
            .flatten()
            .filter_map(|c| c.id())
            .collect();
        for pid in &running {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        let deadline = std::time::Instant::now() + DETACH_ON_DROP;
        for child in self.agents.iter_mut().flatten() {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        stop_ld_paths(&self.configs);
    }
}
