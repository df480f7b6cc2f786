//! An in-process site for tests that need the agents' internals (their journal, their host
//! half): software array `A1` served on loopback (LD 0 for `db1`'s volume `data` with a
//! workload application, LD 1 for `backup1`'s volume `rv`) and three agents started with
//! [`crate::agent::start`] in this process — `mgmt1`, `db1`, `backup1`. The demo itself runs
//! its site as processes ([`super::site`]).

use std::collections::BTreeSet;
use std::time::Duration;

use stillpoint_array::ArrayConfig;
use stillpoint_coordinator::Role;
use stillpoint_host::HostConfig;
use stillpoint_proto::cluster::InitRequest;

use crate::agent::{RunningAgent, start};
use crate::client::Client;
use crate::config::{ArrayEndpoint, ClusterSection, NodeConfig, RaftTuning};
use crate::error::NodeError;

/// The demo site: (name, role, its `[host]` section).
const DEMO_AGENTS: [(&str, Role, Option<&str>); 3] = [
    ("mgmt1", Role::Management, None),
    ("db1", Role::Business, Some(DB1_HOST)),
    ("backup1", Role::Backup, Some(BACKUP1_HOST)),
];

/// The business server's volume: LD 0, with the workload application `payroll` stopped and
/// started by its hooks (so an unmount static point really stops a writer).
const DB1_HOST: &str = r#"
backend = "sim"
[sim]
workload_pace_ms = 2
[[volumes]]
name = "data"
ld = "A1/0"
mount_point = "/sim/db1/data"
stop = { app = "payroll" }
start = { app = "payroll" }
"#;

/// The backup server's view of the replication volume, LD 1.
const BACKUP1_HOST: &str = r#"
backend = "sim"
[[volumes]]
name = "rv"
ld = "A1/1"
mount_point = "/sim/backup1/rv"
"#;

/// Capacity of each demo LD: about 10,900 workload records, some 20 s of writing.
const DEMO_LD_BYTES: u64 = 16 * 1024 * 1024;

/// How long the demo waits for the cluster to form, a volume to appear, a copy to finish.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// The demo's software array, served on loopback until dropped or stopped.
pub struct DemoArray {
    pub address: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), stillpoint_array::ArrayError>>,
}

impl DemoArray {
    /// Starts array `A1` with data under `dir`: LD 0 for `db1`, LD 1 for `backup1`, and LD 0
    /// formatted with an empty sim file system (the workload's volume).
    pub async fn start(dir: &std::path::Path) -> Result<DemoArray, NodeError> {
        let listener = bind_loopback().await?;
        let address = local_address(&listener)?;
        let text = format!(
            "name = \"A1\"\ndata_dir = {:?}\n\
             [[ld]]\nnumber = 0\nname = \"DB\"\ncapacity_bytes = {DEMO_LD_BYTES}\nhosts = [\"db1\"]\n\
             [[ld]]\nnumber = 1\nname = \"DB-RV\"\ncapacity_bytes = {DEMO_LD_BYTES}\nhosts = [\"backup1\"]\n",
            dir.join("array-A1").display().to_string()
        );
        let config = ArrayConfig::parse(&text, "demo array config")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(stillpoint_array::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let device = crate::volumes::ArrayLdDevice::new(&demo_array_endpoint(&address), 0, "db1");
        stillpoint_host::SimBackend::format(&device).await?;
        Ok(DemoArray {
            address,
            stop: Some(stop),
            task,
        })
    }

    /// Stops serving and closes the array (its copy engines stop, metadata is flushed).
    pub async fn stop(mut self) -> Result<(), NodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(NodeError::Invalid(format!(
                "the demo array's task failed: {e}"
            ))),
        }
    }
}

fn demo_array_endpoint(address: &str) -> ArrayEndpoint {
    ArrayEndpoint {
        name: "A1".into(),
        endpoint: address.to_string(),
    }
}

/// A listener on a free loopback port.
pub(crate) async fn bind_loopback() -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| NodeError::Listen {
            address: "127.0.0.1:0".into(),
            source,
        })
}

/// The address `listener` is bound to, as `HOST:PORT`.
pub(crate) fn local_address(listener: &tokio::net::TcpListener) -> Result<String, NodeError> {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .map_err(|source| NodeError::Listen {
            address: "127.0.0.1:0".into(),
            source,
        })
}

/// Starts `DEMO_AGENTS` on loopback under `dir`, their volumes on the array at
/// `array_address`; returns the running agents once all have registered.
pub async fn start_local_cluster(
    dir: &std::path::Path,
    array_address: &str,
) -> Result<Vec<RunningAgent>, NodeError> {
    let mut agents = Vec::new();
    for (i, (name, role, host)) in DEMO_AGENTS.iter().enumerate() {
        let listener = bind_loopback().await?;
        let address = local_address(&listener)?;
        let host = match host {
            Some(text) => Some(HostConfig::from_toml_str(text, "demo [host]")?),
            None => None,
        };
        let config = NodeConfig {
            node_id: i as u64 + 1,
            name: name.to_string(),
            listen: address.clone(),
            advertise: None,
            data_dir: dir.join(name),
            roles: BTreeSet::from([*role]),
            cluster_id: None,
            cluster: ClusterSection::default(),
            raft: RaftTuning::default(),
            arrays: vec![demo_array_endpoint(array_address)],
            host,
            loaded_from: None,
        };
        crate::agent::init_data_dir(&config).await?;
        agents.push(start(config, listener).await?);
    }
    let addresses: Vec<String> = agents.iter().map(|a| a.local_addr.to_string()).collect();
    let client = Client::new(addresses[0].clone());
    client
        .on_endpoint("init", |mut c| {
            let member_addresses = addresses.clone();
            async move {
                c.init(InitRequest {
                    member_addresses,
                    cluster_id: String::new(),
                })
                .await
            }
        })
        .await?;
    let context = agents[0].context.clone();
    crate::wait::until("every demo agent to register", FORM_TIMEOUT, || {
        let context = context.clone();
        async move {
            let registered = context.state.read(|s| s.nodes.len());
            let leader = context.raft.metrics().borrow().current_leader;
            (registered == DEMO_AGENTS.len() && leader.is_some()).then_some(())
        }
    })
    .await?;
    Ok(agents)
}
