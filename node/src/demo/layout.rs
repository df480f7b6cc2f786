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
//!
//! Two arrays, when the layout asks for them ([`SiteLayout::remote`]): `A1`, the main site's
//! array holding every MV (and the RVs of DDR pairs), and `A2`, a second software array process
//! standing for a remote site, reached from A1 through an RDR link (`[[peer]]` of A1's config,
//! latency [`RemoteLayout::link_latency_ms`]). A pair whose [`PairLayout::rdr`] is set has its
//! RV on A2: an RDR pair, set and operated on A1 (a pair lives on its MV's array), its RV LD
//! seen by `backup1` only. Control paths (the `[[arrays]]` of each agent's node.toml and the
//! site file's `control_nodes`) follow a real two-site installation: A1 is reached by the
//! layout's [`SiteLayout::control_nodes`] (`mgmt1`), A2 by [`RemoteLayout::control_nodes`]
//! (`backup1`, the server at the remote site, which also needs A2 for its RVs' data). Every
//! agent keeps A1 in its node.toml as before. Without `remote`, nothing of this is written:
//! the configs are those of a one-array site, byte for byte.

use std::path::Path;

use stillpoint_coordinator::postgres::PostgresQuiesce;

/// Slots of the agents every layout has; `backup1` comes after the business nodes
/// ([`SiteLayout::backup_slot`]).
pub const MGMT1: usize = 0;
pub const DB1: usize = 1;
pub const DB2: usize = 2;

/// The main site's array: every MV, and the RVs of DDR pairs.
pub const A1: &str = "A1";
/// The remote site's array (when the layout has one): the RVs of RDR pairs.
pub const A2: &str = "A2";

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
    /// The RV is on the remote array `A2` (an RDR pair; the layout needs
    /// [`SiteLayout::remote`]); otherwise on `A1` with its MV (DDR).
    pub rdr: bool,
}

impl PairLayout {
    /// The array holding the RV.
    pub fn rv_array(&self) -> &'static str {
        if self.rdr { A2 } else { A1 }
    }
}

/// The remote array `A2` of a two-site layout (see the module essay).
#[derive(Clone, Debug)]
pub struct RemoteLayout {
    /// One-way delay of the A1→A2 link (0: loopback speed).
    pub link_latency_ms: u64,
    /// Agents with a control path to A2, as the site file lists them; each gets A2 in its
    /// node.toml (as does `backup1`, which reads the RVs).
    pub control_nodes: Vec<String>,
}

impl Default for RemoteLayout {
    fn default() -> RemoteLayout {
        RemoteLayout {
            link_latency_ms: 0,
            control_nodes: vec!["backup1".into()],
        }
    }
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
    /// The remote array A2's, when the layout has one.
    pub remote_array: Option<ProcessPlacement>,
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
    /// The remote array A2 and its link, for RDR pairs; `None`: one array.
    pub remote: Option<RemoteLayout>,
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
                    rdr: false,
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
            remote: None,
        }
    }

    /// This layout with the remote array A2 (default link and control path) and the pairs at
    /// `indexes` made RDR (their RVs on A2).
    pub fn with_rdr(mut self, indexes: &[usize]) -> SiteLayout {
        self.remote.get_or_insert_with(RemoteLayout::default);
        for i in indexes {
            if let Some(p) = self.pairs.get_mut(*i) {
                p.rdr = true;
            }
        }
        self
    }

    /// Whether any pair is RDR.
    pub fn has_rdr(&self) -> bool {
        self.pairs.iter().any(|p| p.rdr)
    }

    /// The arrays of the site: A1, and A2 when the layout has it.
    pub fn array_names(&self) -> Vec<&'static str> {
        match self.remote {
            Some(_) => vec![A1, A2],
            None => vec![A1],
        }
    }

    /// Name of the config file, log and data dir of array `array` under the site's dir
    /// (`array` for A1, as it always was; `array2` for A2).
    pub fn array_file_stem(array: &str) -> &'static str {
        if array == A2 { "array2" } else { "array" }
    }

    /// Whether agent `node` has array `array` in its node.toml: every agent has A1; A2 is
    /// for its control nodes and `backup1`.
    pub fn reaches(&self, node: &str, array: &str) -> bool {
        match (array, &self.remote) {
            (A1, _) => true,
            (A2, Some(r)) => node == "backup1" || r.control_nodes.iter().any(|n| n == node),
            _ => false,
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

    /// The config of array `array` (A1 or A2) listening on `address`; `peer`: A2's address,
    /// for A1's RDR link when the layout has A2.
    pub(crate) fn array_toml(
        &self,
        array: &str,
        dir: &Path,
        address: &str,
        peer: Option<&str>,
    ) -> String {
        let mut text = format!(
            "name = \"{array}\"\ndata_dir = {:?}\nlisten = \"{address}\"\ncopy_pace_bytes_per_s = {}\naudit_log = {}\n",
            dir.join(SiteLayout::array_file_stem(array))
                .display()
                .to_string(),
            self.copy_pace_bytes_per_s,
            self.audit_log
        );
        if self.audit_log {
            // A referee reads the audit log: every MV write is in it, not a sample, and the
            // first 4 KiB of every copy as the array cut it (a file system's superblock).
            text += "audit_mv_write_sample_ms = 0\naudit_rv_head_bytes = 4096\n";
        }
        let ld = |number: u32, name: &str, host: &str| {
            format!(
                "[[ld]]\nnumber = {number}\nname = \"{name}{number}\"\ncapacity_bytes = {}\nhosts = [\"{host}\"]\n",
                self.ld_bytes
            )
        };
        for p in &self.pairs {
            if array == A1 {
                text += &ld(p.mv_ld, "MV", &self.name(p.mv_node));
            }
            if p.rv_array() == array {
                text += &ld(p.rv_ld, "RV", "backup1");
            }
        }
        if let (A1, Some(remote), Some(peer)) = (array, &self.remote, peer) {
            text += &format!(
                "[[peer]]\nname = \"{A2}\"\nendpoint = \"http://{peer}\"\nlatency_ms = {}\n",
                remote.link_latency_ms
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
        let mut volume = |name: &str, array: &str, ld: u32, app: Option<usize>| {
            text += &format!("[[host.volumes]]\nname = \"{name}\"\nld = \"{array}/{ld}\"\n");
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
                volume(&p.mv_volume, A1, p.mv_ld, Some(i));
            }
            if slot == self.backup_slot() {
                volume(&p.rv_volume, p.rv_array(), p.rv_ld, None);
            }
        }
        text
    }

    /// The site file: the arrays (control path from their control nodes), pairs, volumes and
    /// group `payroll`.
    pub fn site_toml(&self) -> String {
        let mut text = format!(
            "[[arrays]]\nname = \"A1\"\ncontrol_nodes = {:?}\n",
            self.control_nodes
        );
        if let Some(remote) = &self.remote {
            text += &format!(
                "[[arrays]]\nname = \"{A2}\"\ncontrol_nodes = {:?}\n",
                remote.control_nodes
            );
        }
        for p in &self.pairs {
            let rv_array = p.rv_array();
            text += &format!(
                "[[pairs]]\nname = \"{}\"\nmv = \"A1:{}\"\nrv = \"{rv_array}:{}\"\nkind = \"{}\"\n\
                 [[volumes]]\nnode = \"{}\"\nname = \"{}\"\nld = \"A1:{}\"\n\
                 [[volumes]]\nnode = \"backup1\"\nname = \"{}\"\nld = \"{rv_array}:{}\"\n",
                p.pair,
                p.mv_ld,
                p.rv_ld,
                if p.rdr { "rdr" } else { "ddr" },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-array layout writes exactly what it wrote before A2 existed.
    #[test]
    fn a_layout_without_a_remote_array_writes_the_one_array_files() {
        let l = SiteLayout::spread(1);
        let dir = Path::new("/s");
        assert_eq!(
            l.array_toml(A1, dir, "127.0.0.1:1", None),
            "name = \"A1\"\ndata_dir = \"/s/array\"\nlisten = \"127.0.0.1:1\"\ncopy_pace_bytes_per_s = 0\naudit_log = false\n\
             [[ld]]\nnumber = 0\nname = \"MV0\"\ncapacity_bytes = 4194304\nhosts = [\"db1\"]\n\
             [[ld]]\nnumber = 1\nname = \"RV1\"\ncapacity_bytes = 4194304\nhosts = [\"backup1\"]\n"
        );
        let site = l.site_toml();
        assert!(
            site.starts_with(
                "[[arrays]]\nname = \"A1\"\ncontrol_nodes = [\"mgmt1\"]\n\
                 [[pairs]]\nname = \"p0\"\nmv = \"A1:0\"\nrv = \"A1:1\"\nkind = \"ddr\"\n\
                 [[volumes]]\nnode = \"db1\"\nname = \"mv0\"\nld = \"A1:0\"\n\
                 [[volumes]]\nnode = \"backup1\"\nname = \"rv0\"\nld = \"A1:1\"\n[[groups]]\n"
            ),
            "{site}"
        );
        let backup = l.host_toml(l.backup_slot(), dir);
        assert!(
            backup.contains("[[host.volumes]]\nname = \"rv0\"\nld = \"A1/1\"\n"),
            "{backup}"
        );
        assert!(!l.reaches("backup1", A2));
        assert_eq!(l.array_names(), vec![A1]);
    }

    /// With A2, RDR RVs move to it: A2 holds them alone, A1 links to it, backup1 reads them
    /// there, and the site file names A2 with its control node.
    #[test]
    fn rdr_pairs_have_their_rvs_on_the_remote_array() {
        let l = SiteLayout::spread(2).with_rdr(&[1]);
        let dir = Path::new("/s");
        let a1 = l.array_toml(A1, dir, "127.0.0.1:1", Some("127.0.0.1:2"));
        assert!(a1.contains("number = 1\nname = \"RV1\""), "{a1}");
        assert!(!a1.contains("name = \"RV3\""), "{a1}");
        assert!(
            a1.ends_with(
                "[[peer]]\nname = \"A2\"\nendpoint = \"http://127.0.0.1:2\"\nlatency_ms = 0\n"
            ),
            "{a1}"
        );
        let a2 = l.array_toml(A2, dir, "127.0.0.1:2", None);
        assert!(
            a2.starts_with("name = \"A2\"\ndata_dir = \"/s/array2\"\n"),
            "{a2}"
        );
        assert!(a2.contains("number = 3\nname = \"RV3\""), "{a2}");
        assert!(!a2.contains("MV") && !a2.contains("[[peer]]"), "{a2}");
        let backup = l.host_toml(l.backup_slot(), dir);
        assert!(
            backup.contains("name = \"rv1\"\nld = \"A2/3\"\n"),
            "{backup}"
        );
        assert!(
            backup.contains("name = \"rv0\"\nld = \"A1/1\"\n"),
            "{backup}"
        );
        let site = l.site_toml();
        assert!(
            site.contains("[[arrays]]\nname = \"A2\"\ncontrol_nodes = [\"backup1\"]\n"),
            "{site}"
        );
        assert!(
            site.contains("mv = \"A1:2\"\nrv = \"A2:3\"\nkind = \"rdr\"\n"),
            "{site}"
        );
        assert!(l.reaches("backup1", A2) && !l.reaches("mgmt1", A2) && !l.reaches("db1", A2));
    }
}
