//! What a [`super::site::LocalSite`] holds, and the config files it writes for it: the array's
//! LDs, each agent's `[host]` section, and the site file (pairs, volumes, group `payroll`).
//!
//! Two kinds of host. [`SiteHosts::Sim`] (the default, for the fast tests and the plain demo):
//! every MV carries the sim file system and a workload application started and stopped by the
//! volume's hooks, all inside the agent's process. [`SiteHosts::Linux`]: the agents use the
//! `linux` backend and attach every LD visible to them as a loop device over a FUSE file, so
//! the MVs carry real file systems (made by `LocalSite::make_file_systems`) mounted under the
//! site's dir — what a real site runs, and what the PostgreSQL demo and tests use (root and
//! `/dev/fuse` needed). A member may name its own quiesce method, and PostgreSQL members take
//! their connection settings from [`SiteLayout::postgresql`].

use std::path::Path;

use stillpoint_coordinator::postgres::PostgresQuiesce;

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
    /// This member's quiesce method, when not the layout's.
    pub quiesce: Option<String>,
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

/// What the agents' hosts are (see the module essay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteHosts {
    /// The `sim` backend and its workload application.
    Sim,
    /// The `linux` backend on array LDs, MVs formatted with `fs` (`ext4` or `xfs`).
    Linux { fs: String },
}

/// What the site holds: the pairs of group `payroll` and how they are quiesced.
#[derive(Clone, Debug)]
pub struct SiteLayout {
    pub pairs: Vec<PairLayout>,
    /// `unmount`, `freeze`, `hooks_only` or `postgresql`: every member's unless it names its own.
    pub quiesce: String,
    /// Lines added to every RV volume of `backup1` in its `[host]` section (e.g. the start and
    /// stop hooks of the RV's users).
    pub rv_volume_toml: String,
    /// Settings of the members quiesced with `postgresql`.
    pub postgresql: Option<PostgresQuiesce>,
    pub hosts: SiteHosts,
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
    /// The array keeps its audit log (`array/audit.log`, see `stillpoint_array::AuditLine`),
    /// with every MV write in it.
    pub audit_log: bool,
    /// Pause between the workload's records.
    pub workload_pace_ms: u64,
    /// How long the sim workloads take to stop once their stop hook asks (0: at once).
    pub workload_stop_ms: u64,
    /// Dirty blocks each sim volume caches before writing random ones back (host default when
    /// `None`).
    pub cache_blocks_max: Option<usize>,
    /// Where each process runs and listens; `None`: on this machine's loopback, each on a
    /// free port.
    pub placement: Option<Placement>,
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
                    quiesce: None,
                })
                .collect(),
            quiesce: "unmount".into(),
            postgresql: None,
            rv_volume_toml: String::new(),
            hosts: SiteHosts::Sim,
            quiesce_ms_max: 30_000,
            ld_bytes: 4 * 1024 * 1024,
            control_nodes: vec!["mgmt1".into()],
            copy_pace_bytes_per_s: 0,
            raft_toml: "heartbeat_interval_ms = 100\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 500\n".into(),
            audit_log: false,
            workload_pace_ms: 2,
            workload_stop_ms: 0,
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

    pub(crate) fn array_toml(&self, dir: &Path, address: &str) -> String {
        let mut text = format!(
            "name = \"A1\"\ndata_dir = {:?}\nlisten = \"{address}\"\ncopy_pace_bytes_per_s = {}\naudit_log = {}\n",
            dir.join("array").display().to_string(),
            self.copy_pace_bytes_per_s,
            self.audit_log
        );
        if self.audit_log {
            // A referee reads the audit log: every MV write is in it, not a sample.
            text += "audit_mv_write_sample_ms = 0\n";
        }
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

    /// Where a linux host mounts `volume` of node `node` (under the site's dir).
    pub fn mount_point(&self, dir: &Path, node: &str, volume: &str) -> String {
        dir.join("mnt")
            .join(node)
            .join(volume)
            .display()
            .to_string()
    }

    /// The `[host]` section of the agent in `slot`.
    pub(crate) fn host_toml(&self, slot: usize, dir: &Path) -> String {
        let node = self.name(slot);
        let mut text = match &self.hosts {
            SiteHosts::Sim => {
                let mut t = format!(
                    "[host]\nbackend = \"sim\"\n[host.sim]\nworkload_pace_ms = {}\nworkload_stop_ms = {}\n",
                    self.workload_pace_ms, self.workload_stop_ms
                );
                if let Some(blocks) = self.cache_blocks_max {
                    t += &format!("cache_blocks_max = {blocks}\n");
                }
                t
            }
            SiteHosts::Linux { .. } => "[host]\nbackend = \"linux\"\n".to_string(),
        };
        // `app`: the MV's workload application (sim); RVs take `rv_volume_toml` instead.
        let mut volume = |name: &str, ld: u32, app: Option<usize>| {
            text += &format!("[[host.volumes]]\nname = \"{name}\"\nld = \"A1/{ld}\"\n");
            match &self.hosts {
                SiteHosts::Sim => {
                    text += &format!("mount_point = \"/sim/{node}/{name}\"\n");
                    if let Some(i) = app {
                        text += &format!(
                            "stop = {{ app = \"app{i}\" }}\nstart = {{ app = \"app{i}\" }}\n"
                        );
                    }
                }
                SiteHosts::Linux { fs } => {
                    text += &format!(
                        "mount_point = {:?}\nfs = \"{fs}\"\n",
                        self.mount_point(dir, &node, name)
                    );
                }
            }
            if app.is_none() {
                text += &self.rv_volume_toml;
            }
        };
        for (i, p) in self.pairs.iter().enumerate() {
            if p.mv_node == slot {
                volume(&p.mv_volume, p.mv_ld, Some(i));
            }
            if slot == self.backup_slot() {
                volume(&p.rv_volume, p.rv_ld, None);
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
            let quiesce = p.quiesce.as_deref().unwrap_or(&self.quiesce);
            text += &format!(
                "[[groups.members]]\npair = \"{}\"\nmv = \"{}:{}\"\nrv = \"backup1:{}\"\nquiesce = \"{quiesce}\"\nquiesce_ms_max = {}\n",
                p.pair,
                self.name(p.mv_node),
                p.mv_volume,
                p.rv_volume,
                self.quiesce_ms_max
            );
            if let (Some(pg), "postgresql") = (&self.postgresql, quiesce) {
                text += &format!(
                    "[groups.members.postgresql]\nhost = {:?}\nport = {}\nuser = {:?}\ndatabase = {:?}\ndata_dir = {:?}\nwal_archive_dir = {:?}\n",
                    pg.host, pg.port, pg.user, pg.database, pg.data_dir, pg.wal_archive_dir
                );
            }
        }
        text
    }
}
