//! A site for job tests, every part a process of the `stillpoint` binary on loopback: software
//! array `A1` (`stillpoint array serve`) and four agents — `mgmt1` (management), `db1` and
//! `db2` (business), `backup1` (backup) — all four voters. Group `payroll` has three pairs:
//! `p0` db1:mv0 (A1:0) → backup1:rv0 (A1:1), `p1` db2:mv1 (A1:2) → backup1:rv1 (A1:3), `p2`
//! db1:mv2 (A1:4) → backup1:rv2 (A1:5). Each MV carries the sim file system with a workload
//! application (`app0`..`app2`) writing checksummed records, stopped and started by the
//! volume's hooks; the verifier reads each RV through the array afterwards.
//!
//! The pairs are set and the MVs formatted by the test itself, through the array's API (what
//! an operator does once when preparing volumes).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "../process_cluster/mod.rs"]
mod process_cluster;
pub use process_cluster::*;

use stillpoint_array::{Array, LdRef, PairId, RemoteArray};
use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::job::{CopyLabel, Job, JobEnd, JobKind, JobState};
use stillpoint_coordinator::{Command as ClusterCommand, Response};
use stillpoint_host::{Host, HostClient, MountIdentity, MountRequest};
use stillpoint_node::Client;
use stillpoint_node::config::ArrayEndpoint;
use stillpoint_node::volumes::ArrayLdDevice;
use stillpoint_proto::cluster::QueryRequest;

/// Agents by slot.
pub const MGMT1: usize = 0;
pub const DB1: usize = 1;
pub const DB2: usize = 2;
pub const BACKUP1: usize = 3;
pub const NAMES: [&str; 4] = ["mgmt1", "db1", "db2", "backup1"];

/// (pair, MV node slot, MV volume, MV LD, RV volume, RV LD)
pub const PAIRS: [(&str, usize, &str, u32, &str, u32); 3] = [
    ("p0", DB1, "mv0", 0, "rv0", 1),
    ("p1", DB2, "mv1", 2, "rv1", 3),
    ("p2", DB1, "mv2", 4, "rv2", 5),
];

/// Capacity of each LD: a few thousand workload records.
const LD_BYTES: u64 = 4 * 1024 * 1024;

/// A child process killed (and reaped) when dropped.
pub struct ChildGuard(pub Option<Child>);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct JobSite {
    pub cluster: ProcessCluster,
    pub array: ChildGuard,
    pub array_address: String,
    pub site_file: PathBuf,
}

fn host_toml(slot: usize) -> String {
    let mut text = String::from("[host]\nbackend = \"sim\"\n[host.sim]\nworkload_pace_ms = 2\n");
    for (i, (_, node, mv, mv_ld, rv, rv_ld)) in PAIRS.iter().enumerate() {
        if *node == slot {
            text += &format!(
                "[[host.volumes]]\nname = \"{mv}\"\nld = \"A1/{mv_ld}\"\nmount_point = \"/sim/{}/{mv}\"\nstop = {{ app = \"app{i}\" }}\nstart = {{ app = \"app{i}\" }}\n",
                NAMES[slot]
            );
        }
        if slot == BACKUP1 {
            text += &format!(
                "[[host.volumes]]\nname = \"{rv}\"\nld = \"A1/{rv_ld}\"\nmount_point = \"/sim/backup1/{rv}\"\n"
            );
        }
    }
    text
}

/// The site file: the array (control path from mgmt1), the pairs, volumes and the group.
fn site_toml(quiesce: &str, quiesce_ms_max: u64) -> String {
    let mut text = String::from("[[arrays]]\nname = \"A1\"\ncontrol_nodes = [\"mgmt1\"]\n");
    for (pair, node, mv, mv_ld, rv, rv_ld) in PAIRS {
        text += &format!(
            "[[pairs]]\nname = \"{pair}\"\nmv = \"A1:{mv_ld}\"\nrv = \"A1:{rv_ld}\"\nkind = \"ddr\"\n\
             [[volumes]]\nnode = \"{}\"\nname = \"{mv}\"\nld = \"A1:{mv_ld}\"\n\
             [[volumes]]\nnode = \"backup1\"\nname = \"{rv}\"\nld = \"A1:{rv_ld}\"\n",
            NAMES[node]
        );
    }
    text += "[[groups]]\nname = \"payroll\"\n";
    for (pair, node, mv, _, rv, _) in PAIRS {
        text += &format!(
            "[[groups.members]]\npair = \"{pair}\"\nmv = \"{}:{mv}\"\nrv = \"backup1:{rv}\"\nquiesce = \"{quiesce}\"\nquiesce_ms_max = {quiesce_ms_max}\n",
            NAMES[node]
        );
    }
    text
}

impl JobSite {
    /// Starts the array and the four agents, forms the cluster, applies the site, prepares the
    /// pairs and starts every MV's application.
    pub async fn start(quiesce: &str, quiesce_ms_max: u64) -> JobSite {
        let dir = tempfile::tempdir().expect("temporary dir");
        let array_port = free_port();
        let array_address = format!("127.0.0.1:{array_port}");
        let mut array_cfg = format!(
            "name = \"A1\"\ndata_dir = {:?}\nlisten = \"{array_address}\"\n",
            dir.path().join("array").display().to_string()
        );
        for (_, node, _, mv_ld, _, rv_ld) in PAIRS {
            array_cfg += &format!(
                "[[ld]]\nnumber = {mv_ld}\nname = \"MV{mv_ld}\"\ncapacity_bytes = {LD_BYTES}\nhosts = [\"{}\"]\n\
                 [[ld]]\nnumber = {rv_ld}\nname = \"RV{rv_ld}\"\ncapacity_bytes = {LD_BYTES}\nhosts = [\"backup1\"]\n",
                NAMES[node]
            );
        }
        let array_cfg_path = dir.path().join("array.toml");
        std::fs::write(&array_cfg_path, array_cfg).unwrap();
        let array_log = std::fs::File::create(dir.path().join("array.log")).unwrap();
        let array = ChildGuard(Some(
            Command::new(BIN)
                .args(["array", "serve", "--config"])
                .arg(&array_cfg_path)
                .stdout(Stdio::null())
                .stderr(array_log)
                .spawn()
                .expect("spawn the array"),
        ));
        let remote = connect_array(&array_address).await;
        let endpoint = ArrayEndpoint {
            name: "A1".into(),
            endpoint: array_address.clone(),
        };
        for (_, node, _, mv_ld, _, rv_ld) in PAIRS {
            let device = ArrayLdDevice::new(&endpoint, mv_ld, NAMES[node]);
            stillpoint_host::SimBackend::format(&device)
                .await
                .expect("format the MV");
            remote
                .pair_set(&pair_id(mv_ld, rv_ld))
                .await
                .expect("set the pair");
        }

        let mut configs = Vec::new();
        let mut endpoints = Vec::new();
        for (slot, name) in NAMES.iter().enumerate() {
            let port = free_port();
            let role = match slot {
                MGMT1 => "management",
                BACKUP1 => "backup",
                _ => "business",
            };
            let host = if slot == MGMT1 {
                String::new()
            } else {
                host_toml(slot)
            };
            let text = format!(
                "node_id = {}\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nroles = [\"{role}\"]\n\
                 [[arrays]]\nname = \"A1\"\nendpoint = \"{array_address}\"\n\
                 [raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n{host}",
                slot + 1,
                dir.path().join(format!("data-{name}")).display()
            );
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&path, text).unwrap();
            configs.push(path);
            endpoints.push(format!("127.0.0.1:{port}"));
        }
        let site_file = dir.path().join("site.toml");
        std::fs::write(&site_file, site_toml(quiesce, quiesce_ms_max)).unwrap();
        let cluster = ProcessCluster::from_configs(dir, configs, endpoints);
        cluster.init(0);
        cluster.wait_registered(0, NAMES.len());
        let site = JobSite {
            cluster,
            array,
            array_address,
            site_file,
        };
        let out = stillpoint(&[
            "apply",
            "-f",
            site.site_file.to_str().unwrap(),
            "--endpoint",
            &site.cluster.endpoints[0],
        ]);
        assert!(out.status.success(), "apply the site: {}", stderr(&out));
        for (_, node, mv, _, _, _) in PAIRS {
            site.start_application(node, mv).await;
        }
        site
    }

    pub fn host(&self, slot: usize) -> HostClient {
        HostClient::new(
            stillpoint_node::peer::channel_to(&self.cluster.endpoints[slot]).expect("channel"),
        )
    }

    /// Mounts an MV and starts its application through its hook.
    async fn start_application(&self, slot: usize, volume: &str) {
        let host = self.host(slot);
        wait_async(&format!("{}:{volume} to attach", NAMES[slot]), || {
            let host = host.clone();
            async move {
                host.volume(volume)
                    .await
                    .ok()
                    .filter(|v| v.problem.is_none())
            }
        })
        .await;
        host.mount(
            volume,
            &MountRequest {
                mount_point: None,
                identity: MountIdentity::Keep,
                read_only: false,
            },
        )
        .await
        .expect("mount the MV");
        host.run_hook(volume, stillpoint_host::HookKind::Start)
            .await
            .expect("start the application");
    }

    /// A client following the leader from any running agent.
    pub fn client(&self) -> Client {
        let slot = (0..NAMES.len())
            .find(|s| self.cluster.children[*s].is_some())
            .expect("an agent runs");
        Client::new(self.cluster.endpoints[slot].clone())
    }

    /// Submits a backup of `payroll`; returns its job id.
    pub async fn submit_backup(&self) -> u64 {
        let command = ClusterCommand::SubmitJob {
            kind: JobKind::Backup {
                group: "payroll".into(),
            },
            submitted_by: "test".into(),
            at_ms: stillpoint_node::agent::now_ms(),
            no_queue: false,
        };
        match self.client().propose(&command).await.expect("submit").0 {
            Response::JobAccepted { job_id, .. } => job_id,
            other => panic!("the backup was not accepted: {other:?}"),
        }
    }

    /// The replicated state as any running agent applied it.
    pub async fn state(&self) -> Option<ClusterState> {
        let reply = self
            .client()
            .on_endpoint("query", |mut c| async move {
                c.query(QueryRequest {
                    what: "state".into(),
                    consistent: false,
                })
                .await
            })
            .await
            .ok()?;
        serde_json::from_slice(&reply.json).ok()
    }

    pub async fn job(&self, id: u64) -> Option<Job> {
        self.state().await?.jobs.jobs.get(&id).cloned()
    }

    /// Waits until job `id` ends; returns how.
    pub async fn wait_ended(&self, id: u64, within: Duration) -> JobEnd {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(Job {
                state: JobState::Ended { end, .. },
                ..
            }) = self.job(id).await
            {
                return end;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not end within {within:?}: {:#?}\n{}",
                self.job(id).await.map(|j| j
                    .steps
                    .iter()
                    .map(|s| format!("{} {:?} {}", s.id, s.call, s.state.name()))
                    .collect::<Vec<_>>()),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every agent's log, for a failure message.
    pub fn logs(&self) -> String {
        (0..NAMES.len())
            .map(|s| {
                let log = self.cluster.log(s);
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                format!(
                    "--- {} (last 60 lines) ---\n{}",
                    NAMES[s],
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Reads every RV through the array with the workload's verifier; returns, per pair, the
    /// intact record count, or the problem found.
    pub async fn verify_rvs(&self) -> Vec<Result<u64, String>> {
        let endpoint = ArrayEndpoint {
            name: "A1".into(),
            endpoint: self.array_address.clone(),
        };
        let mut out = Vec::new();
        for (pair, _, _, _, rv, rv_ld) in PAIRS {
            let device = ArrayLdDevice::new(&endpoint, rv_ld, "backup1");
            out.push(match stillpoint_host::verify(&device).await {
                Ok(r) if r.torn.is_empty() && r.gaps.is_empty() && r.intact_count > 0 => {
                    Ok(r.intact_count)
                }
                Ok(r) => Err(format!(
                    "{pair} ({rv}): {} intact, torn {:?}, gaps {:?}",
                    r.intact_count, r.torn, r.gaps
                )),
                Err(e) => Err(format!("{pair} ({rv}): {e}")),
            });
        }
        out
    }

    /// Whether any MV is still quiesced on its host.
    pub async fn quiesced_mvs(&self) -> Vec<String> {
        let mut held = Vec::new();
        for slot in [DB1, DB2] {
            if self.cluster.children[slot].is_none() {
                continue;
            }
            if let Ok(q) = self.host(slot).quiesces().await {
                held.extend(
                    q.into_iter()
                        .map(|q| format!("{}:{}", NAMES[slot], q.volume)),
                );
            }
        }
        held
    }
}

pub fn pair_id(mv: u32, rv: u32) -> PairId {
    PairId {
        mv: LdRef {
            array: "A1".into(),
            ld: mv,
        },
        rv: LdRef {
            array: "A1".into(),
            ld: rv,
        },
    }
}

pub async fn connect_array(address: &str) -> RemoteArray {
    wait_async("the array to answer", || async move {
        let a = RemoteArray::connect(address).await.ok()?;
        a.info().await.ok().map(|_| a)
    })
    .await
}

/// Polls `f` until it yields, bounded by [`WAIT`].
pub async fn wait_async<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is_consistent(end: &JobEnd) -> bool {
    matches!(
        end,
        JobEnd::Done {
            label: CopyLabel::Consistent
        }
    )
}
