//! A local site of processes, for the demo, the job tests and benches: the software array `A1`
//! and agents `mgmt1` (management, control path to A1), `db1`..`dbN` (business; two unless
//! the layout says otherwise) and `backup1` (backup) — each a child process of the
//! `stillpoint` binary on loopback with its own config, data dir and log file under one dir.
//! Every agent is a voter.
//!
//! Every MV carries the sim file system with a workload application (`app<N>`) that writes
//! checksummed records while the volume is mounted, stopped and started by the volume's hooks;
//! [`LocalSite::verify_rv`] reads an RV through the array with the workload's verifier.
//!
//! With a [`Placement`] (the chaos harness's network partitions) each process starts behind a
//! command prefix (`ip netns exec NS`) and listens on an address of its own instead of a free
//! loopback port; without one (every other test) nothing changes.
//!
//! Children are killed when the site is dropped, pass or fail.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use stillpoint_array::{Array, RemoteArray};
use stillpoint_host::{Host, HostClient, MountIdentity, MountRequest};
use tokio::process::{Child, Command};

use super::inprocess::{bind_loopback, local_address};
use crate::config::ArrayEndpoint;
use crate::error::NodeError;
use crate::volumes::ArrayLdDevice;

/// Slots of the agents every layout has; `backup1` comes after the business nodes
/// ([`SiteLayout::backup_slot`]).
pub const MGMT1: usize = 0;
pub const DB1: usize = 1;
pub const DB2: usize = 2;

/// One pair of the site's group: its MV on a business node, its RV on `backup1`.
#[derive(Clone, Debug)]
pub struct PairLayout {
    pub pair: String,
    /// Slot of the MV's business node.
    pub mv_node: usize,
    pub mv_volume: String,
    pub mv_ld: u32,
    pub rv_volume: String,
    pub rv_ld: u32,
}

/// What the site holds: the pairs of group `payroll` and how they are quiesced.
#[derive(Clone, Debug)]
pub struct SiteLayout {
    pub pairs: Vec<PairLayout>,
    /// `unmount` or `freeze`.
    pub quiesce: String,
    pub quiesce_ms_max: u64,
    /// Capacity of every LD.
    pub ld_bytes: u64,
    /// Raft timings (`[raft]` body) of every agent.
    pub raft_toml: String,
    /// Business nodes `db1`..`dbN`.
    pub business_nodes: usize,
    /// Agents with a control path to the array, as the site file lists them.
    pub control_nodes: Vec<String>,
    /// The array's background copy pace (0: as fast as it goes).
    pub copy_pace_bytes_per_s: u64,
    /// The array keeps its audit log (`array/audit.log`, see `stillpoint_array::AuditLine`).
    pub audit_log: bool,
    /// Pause between the workload's records.
    pub workload_pace_ms: u64,
    /// Dirty blocks each sim volume caches before writing random ones back (host default when
    /// `None`).
    pub cache_blocks_max: Option<usize>,
    /// Where each process runs and listens; `None`: on this machine's loopback, each on a
    /// free port.
    pub placement: Option<Placement>,
}

/// Where one process of the site runs: a command its start is prefixed with (e.g. `ip netns
/// exec NS`, empty for none) and the address it listens on and is reached at.
#[derive(Clone, Debug)]
pub struct ProcessPlacement {
    pub prefix: Vec<String>,
    pub ip: String,
}

/// Where every process of the site runs (e.g. each in its own network namespace, so the
/// network between them can be cut). Each listens on `port` of its own address.
#[derive(Clone, Debug)]
pub struct Placement {
    pub array: ProcessPlacement,
    /// By agent slot.
    pub agents: Vec<ProcessPlacement>,
    /// The port every process listens on. A process that starts several sites one after
    /// another gives each its own: clients cache one channel per address for the life of the
    /// process (`peer::channel_to`), and a channel made under an earlier site's tokio runtime
    /// is dead once that runtime is gone.
    pub port: u16,
}

impl SiteLayout {
    /// `n` pairs spread over db1 and db2 (pair `i` on db1 when `i` is even), LDs `2i` (MV) and
    /// `2i + 1` (RV).
    pub fn spread(n: u32) -> SiteLayout {
        SiteLayout::spread_over(n, 2)
    }

    /// `n` pairs spread over `nodes` business nodes in turn.
    pub fn spread_over(n: u32, nodes: usize) -> SiteLayout {
        let nodes = nodes.max(1);
        SiteLayout {
            business_nodes: nodes,
            pairs: (0..n)
                .map(|i| PairLayout {
                    pair: format!("p{i}"),
                    mv_node: DB1 + i as usize % nodes,
                    mv_volume: format!("mv{i}"),
                    mv_ld: 2 * i,
                    rv_volume: format!("rv{i}"),
                    rv_ld: 2 * i + 1,
                })
                .collect(),
            quiesce: "unmount".into(),
            quiesce_ms_max: 30_000,
            ld_bytes: 4 * 1024 * 1024,
            control_nodes: vec!["mgmt1".into()],
            copy_pace_bytes_per_s: 0,
            raft_toml: "heartbeat_interval_ms = 100\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 500\n".into(),
            audit_log: false,
            workload_pace_ms: 2,
            cache_blocks_max: None,
            placement: None,
        }
    }

    /// Every agent by slot: name and role.
    pub fn agents(&self) -> Vec<(String, &'static str)> {
        let mut agents = vec![("mgmt1".to_string(), "management")];
        agents.extend((1..=self.business_nodes).map(|i| (format!("db{i}"), "business")));
        agents.push(("backup1".to_string(), "backup"));
        agents
    }

    /// The backup node's slot.
    pub fn backup_slot(&self) -> usize {
        self.business_nodes + 1
    }

    /// The name of the agent in `slot`.
    pub fn name(&self, slot: usize) -> String {
        self.agents()
            .get(slot)
            .map(|(n, _)| n.clone())
            .unwrap_or_default()
    }

    fn array_toml(&self, dir: &Path, address: &str) -> String {
        let mut text = format!(
            "name = \"A1\"\ndata_dir = {:?}\nlisten = \"{address}\"\ncopy_pace_bytes_per_s = {}\naudit_log = {}\n",
            dir.join("array").display().to_string(),
            self.copy_pace_bytes_per_s,
            self.audit_log
        );
        for p in &self.pairs {
            text += &format!(
                "[[ld]]\nnumber = {}\nname = \"MV{}\"\ncapacity_bytes = {}\nhosts = [\"{}\"]\n\
                 [[ld]]\nnumber = {}\nname = \"RV{}\"\ncapacity_bytes = {}\nhosts = [\"backup1\"]\n",
                p.mv_ld,
                p.mv_ld,
                self.ld_bytes,
                self.name(p.mv_node),
                p.rv_ld,
                p.rv_ld,
                self.ld_bytes
            );
        }
        text
    }

    fn host_toml(&self, slot: usize) -> String {
        let mut text = format!(
            "[host]\nbackend = \"sim\"\n[host.sim]\nworkload_pace_ms = {}\n",
            self.workload_pace_ms
        );
        if let Some(blocks) = self.cache_blocks_max {
            text += &format!("cache_blocks_max = {blocks}\n");
        }
        for (i, p) in self.pairs.iter().enumerate() {
            if p.mv_node == slot {
                text += &format!(
                    "[[host.volumes]]\nname = \"{}\"\nld = \"A1/{}\"\nmount_point = \"/sim/{}/{}\"\nstop = {{ app = \"app{i}\" }}\nstart = {{ app = \"app{i}\" }}\n",
                    p.mv_volume,
                    p.mv_ld,
                    self.name(slot),
                    p.mv_volume
                );
            }
            if slot == self.backup_slot() {
                text += &format!(
                    "[[host.volumes]]\nname = \"{}\"\nld = \"A1/{}\"\nmount_point = \"/sim/backup1/{}\"\n",
                    p.rv_volume, p.rv_ld, p.rv_volume
                );
            }
        }
        text
    }

    /// The site file: the array (control path from the control nodes), pairs, volumes and group
    /// `payroll`.
    pub fn site_toml(&self) -> String {
        let mut text = format!(
            "[[arrays]]\nname = \"A1\"\ncontrol_nodes = {:?}\n",
            self.control_nodes
        );
        for p in &self.pairs {
            text += &format!(
                "[[pairs]]\nname = \"{}\"\nmv = \"A1:{}\"\nrv = \"A1:{}\"\nkind = \"ddr\"\n\
                 [[volumes]]\nnode = \"{}\"\nname = \"{}\"\nld = \"A1:{}\"\n\
                 [[volumes]]\nnode = \"backup1\"\nname = \"{}\"\nld = \"A1:{}\"\n",
                p.pair,
                p.mv_ld,
                p.rv_ld,
                self.name(p.mv_node),
                p.mv_volume,
                p.mv_ld,
                p.rv_volume,
                p.rv_ld
            );
        }
        text += "[[groups]]\nname = \"payroll\"\n";
        for p in &self.pairs {
            text += &format!(
                "[[groups.members]]\npair = \"{}\"\nmv = \"{}:{}\"\nrv = \"backup1:{}\"\nquiesce = \"{}\"\nquiesce_ms_max = {}\n",
                p.pair,
                self.name(p.mv_node),
                p.mv_volume,
                p.rv_volume,
                self.quiesce,
                self.quiesce_ms_max
            );
        }
        text
    }
}

/// The running site.
pub struct LocalSite {
    pub layout: SiteLayout,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub array_address: String,
    pub array: Option<Child>,
    pub endpoints: Vec<String>,
    pub configs: Vec<PathBuf>,
    pub agents: Vec<Option<Child>>,
    /// Slots started at least once (a later start is a restart, without `--new`).
    started: Vec<bool>,
    /// Slots SIGKILLed at least once. With the `sim` backend that is a crashed host: the
    /// write-back caches of its mounted MVs are lost, leaving torn records and holes on the
    /// MVs themselves, which later copies carry faithfully (see [`LocalSite::kill`]).
    pub crashed: Vec<bool>,
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

/// Starts `stillpoint array serve` on `dir/array.toml`, its log appended to `dir/array.log`.
fn spawn_array(bin: &Path, dir: &Path, placement: Option<&Placement>) -> Result<Child, NodeError> {
    command(bin, placement.map(|p| &p.array))
        .args(["array", "serve", "--config"])
        .arg(dir.join("array.toml"))
        .stdout(Stdio::null())
        .stderr(log_file(&dir.join("array.log"))?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NodeError::Invalid(format!("cannot start the array: {e}")))
}

/// Bound on forming the site (processes starting, an election, registrations).
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

impl LocalSite {
    /// Writes every config under `dir`, starts the array (formatting each MV with the sim file
    /// system) and the agents; forms the cluster. The pairs are not set: that is `group
    /// prepare`'s job.
    pub async fn start(bin: &Path, dir: &Path, layout: SiteLayout) -> Result<LocalSite, NodeError> {
        let array_address = match &layout.placement {
            Some(p) => format!("{}:{}", p.array.ip, p.port),
            None => free_loopback_address().await?,
        };
        let array_cfg = dir.join("array.toml");
        write(&array_cfg, &layout.array_toml(dir, &array_address))?;
        let array = spawn_array(bin, dir, layout.placement.as_ref())?;
        let mut site = LocalSite {
            layout,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            array_address,
            array: Some(array),
            endpoints: Vec::new(),
            configs: Vec::new(),
            agents: Vec::new(),
            started: Vec::new(),
            crashed: Vec::new(),
        };
        let remote = site.connect_array().await?;
        drop(remote);
        for p in site.layout.pairs.clone() {
            let device = ArrayLdDevice::new(&site.array_endpoint(), p.mv_ld, &site.name(p.mv_node));
            stillpoint_host::SimBackend::format(&device).await?;
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
                site.layout.host_toml(slot)
            };
            let text = format!(
                "node_id = {}\nname = \"{name}\"\nlisten = \"{address}\"\ndata_dir = {:?}\nroles = [\"{role}\"]\n\
                 [[arrays]]\nname = \"A1\"\nendpoint = \"{}\"\n[raft]\n{}{host}",
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
            site.crashed.push(false);
        }
        for slot in 0..site.agents.len() {
            site.spawn(slot)?;
        }
        let client = crate::Client::new(site.endpoints[0].clone());
        let members = site.endpoints.clone();
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
        let probe = crate::Client::new(site.endpoints[0].clone());
        let count = site.agents.len();
        crate::wait::until("every agent to register", FORM_TIMEOUT, || {
            let probe = probe.clone();
            async move {
                let reply = probe
                    .on_endpoint("query", |mut c| async move {
                        c.query(stillpoint_proto::cluster::QueryRequest {
                            what: "registry".into(),
                            consistent: false,
                        })
                        .await
                    })
                    .await
                    .ok()?;
                let nodes: serde_json::Value = serde_json::from_slice(&reply.json).ok()?;
                (nodes.as_object()?.len() == count).then_some(())
            }
        })
        .await?;
        Ok(site)
    }

    pub fn array_endpoint(&self) -> ArrayEndpoint {
        ArrayEndpoint {
            name: "A1".into(),
            endpoint: self.array_address.clone(),
        }
    }

    pub async fn connect_array(&self) -> Result<RemoteArray, NodeError> {
        let address = self.array_address.clone();
        crate::wait::until("the array to answer", FORM_TIMEOUT, || {
            let address = address.clone();
            async move {
                let a = RemoteArray::connect(&address).await.ok()?;
                a.info().await.ok().map(|_| a)
            }
        })
        .await
    }

    /// The name of the agent in `slot`.
    pub fn name(&self, slot: usize) -> String {
        self.layout.name(slot)
    }

    /// SIGKILLs the array process and reaps it.
    pub async fn kill_array(&mut self) {
        if let Some(mut child) = self.array.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the array process again (same config, data dir and address) and waits until it
    /// answers.
    pub async fn restart_array(&mut self) -> Result<(), NodeError> {
        if self.array.is_none() {
            self.array = Some(spawn_array(
                &self.bin,
                &self.dir,
                self.layout.placement.as_ref(),
            )?);
        }
        self.connect_array().await.map(drop)
    }

    /// The array process's id, if it runs.
    pub fn array_pid(&self) -> Option<u32> {
        self.array.as_ref().and_then(|c| c.id())
    }

    /// The array's audit log (written when the layout asks for it).
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("array").join("audit.log")
    }

    pub fn log_path(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.name(slot)))
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
        self.crashed[slot] = true;
        if let Some(mut child) = self.agents[slot].take() {
            let _ = child.kill().await;
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, ...) to agent `slot`.
    pub fn signal(&self, slot: usize, signal: &str) -> Result<(), NodeError> {
        let pid = self
            .pid(slot)
            .ok_or_else(|| NodeError::Invalid(format!("{} is not running", self.name(slot))))?;
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .map_err(|e| NodeError::Invalid(format!("cannot run kill: {e}")))?;
        if !status.success() {
            return Err(NodeError::Invalid(format!("kill -{signal} {pid} failed")));
        }
        Ok(())
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
            let info =
                crate::wait::until(&format!("{} to attach", p.mv_volume), FORM_TIMEOUT, || {
                    let (host, volume) = (host.clone(), volume.clone());
                    async move {
                        host.volume(&volume)
                            .await
                            .ok()
                            .filter(|v| v.problem.is_none())
                    }
                })
                .await?;
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

    /// Reads the RV of pair `i` through the array with the workload's verifier.
    pub async fn verify_rv(&self, i: usize) -> Result<stillpoint_host::VerifyReport, NodeError> {
        let p = &self.layout.pairs[i];
        let device = ArrayLdDevice::new(&self.array_endpoint(), p.rv_ld, "backup1");
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
        if let Some(mut array) = self.array.take() {
            let _ = array.kill().await;
        }
    }
}
