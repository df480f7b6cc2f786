//! `stillpoint demo`: a local site on the embedded defaults, for a first look.
//!
//! In this one process: a software array `A1` served on loopback (LD 0 is the business
//! server's volume, LD 1 its replication volume for the backup server) and three agents, each
//! with its own data dir: a management server `mgmt1`, a business server `db1` whose volume
//! `data` is LD 0 with a workload application writing checksummed records to it, and a backup
//! server `backup1` whose volume `rv` is LD 1. The demo bootstraps the agents into one cluster
//! through the client API, waits until every agent has registered, prints the status, and then
//! takes one backup copy **by hand**, step by step and in order, through the same APIs an
//! operator's commands use (pair set and replicate; quiesce the MV with its application stopped;
//! separate; resume the MV; check the RV on the backup server). The cluster does not drive
//! this procedure as a job yet: that is the job driver, which does not exist. The check at the
//! end is the verifier reading the RV: every record intact and none missing, or the demo fails.
//! `--hold` keeps everything running so other `stillpoint` commands can be pointed at it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use stillpoint_array::{
    Array, ArrayConfig, LdRef, PairId, RemoteArray, ReplicateOptions, SeparateOptions,
};
use stillpoint_coordinator::Role;
use stillpoint_host::{Host, HostClient, HostConfig, MountIdentity, MountRequest, QuiesceMode};
use stillpoint_proto::cluster::{InitRequest, StatusRequest};

use crate::agent::{RunningAgent, start};
use crate::client::Client;
use crate::config::{ArrayEndpoint, ClusterSection, NodeConfig, RaftTuning};
use crate::error::NodeError;
use crate::output::OutputFormat;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the cluster running until Ctrl-C, printing the endpoints to use.
    #[arg(long)]
    pub hold: bool,
    /// Keep data under this dir (default: a temporary dir removed at exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

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

async fn bind_loopback() -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| NodeError::Listen {
            address: "127.0.0.1:0".into(),
            source,
        })
}

fn local_address(listener: &tokio::net::TcpListener) -> Result<String, NodeError> {
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

pub async fn run(args: DemoArgs) -> Result<(), NodeError> {
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir()
                .map_err(|e| NodeError::Invalid(format!("cannot create a temporary dir: {e}")))?;
            temp.path().to_path_buf()
        }
    };
    eprintln!(
        "starting software array A1 and 3 agents on loopback (data in {}) ...",
        dir.display()
    );
    let array = DemoArray::start(&dir).await?;
    let agents = start_local_cluster(&dir, &array.address).await?;
    let endpoint = agents[0].local_addr.to_string();
    let status = Client::new(&endpoint)
        .on_leader("status", |mut c| async move {
            c.status(StatusRequest { consistent: true }).await
        })
        .await?;
    print!("{}", crate::status::render(&status, args.output));
    if args.output == OutputFormat::Json {
        println!();
    }
    let outcome = backup_by_hand(&agents, &array.address, args.output == OutputFormat::Json).await;
    if outcome.is_ok() && args.hold {
        eprintln!(
            "\nthe site is running; try:\n  export STILLPOINT_ENDPOINT={endpoint} STILLPOINT_ARRAY={}\n  stillpoint cluster status\n  stillpoint volume list --node db1\n  stillpoint pair list\nCtrl-C stops it.",
            array.address
        );
        crate::cli::shutdown_signal().await;
    }
    // Agents first: a graceful stop resumes anything still quiesced, through the array.
    for agent in agents {
        agent.shutdown().await?;
    }
    array.stop().await?;
    outcome
}

/// One line of the walkthrough, on stderr with the table output so stdout stays parseable.
fn step(json: bool, n: u32, host: &str, text: &str) {
    if json {
        eprintln!("step {n} on {host}: {text}");
    } else {
        println!("step {n} on {host:<8} {text}");
    }
}

/// The split-mirror backup of `db1`'s volume to `backup1`, one step at a time and in order.
/// Fails unless the backup server finds a consistent copy (nothing torn, nothing missing).
async fn backup_by_hand(
    agents: &[RunningAgent],
    array_address: &str,
    json: bool,
) -> Result<(), NodeError> {
    if !json {
        println!(
            "\none backup of db1:data to backup1:rv, run step by step by the demo (not yet a cluster job):"
        );
    }
    let host_of = |i: usize| -> Result<HostClient, NodeError> {
        Ok(HostClient::new(crate::peer::channel_to(
            &agents[i].local_addr.to_string(),
        )?))
    };
    let (db1, backup1) = (host_of(1)?, host_of(2)?);
    let array: Arc<dyn Array> = Arc::new(RemoteArray::connect(array_address).await?);
    for (host, volume) in [(&db1, "data"), (&backup1, "rv")] {
        crate::wait::until("the demo volumes to attach", FORM_TIMEOUT, || async move {
            host.volume(volume)
                .await
                .ok()
                .filter(|v| v.problem.is_none())
        })
        .await?;
    }
    let mount = MountRequest {
        mount_point: None,
        identity: MountIdentity::Keep,
        read_only: false,
    };
    db1.mount("data", &mount).await?;
    let started = db1
        .run_hook("data", stillpoint_host::HookKind::Start)
        .await?;
    step(
        json,
        1,
        "db1",
        &format!("mount data, start payroll ({})", started.stdout.trim()),
    );

    let pair = PairId {
        mv: LdRef {
            array: "A1".into(),
            ld: 0,
        },
        rv: LdRef {
            array: "A1".into(),
            ld: 1,
        },
    };
    array.pair_set(&pair).await?;
    let wait_ms = Some(FORM_TIMEOUT.as_millis() as u64);
    let replicated = array
        .replicate(
            &pair,
            &ReplicateOptions {
                wait_timeout_ms: wait_ms,
                ..ReplicateOptions::default()
            },
        )
        .await?;
    step(
        json,
        2,
        "A1",
        &format!(
            "pair set {pair}, replicate: {} ({} blocks copied while payroll writes, sync copy)",
            replicated.state, replicated.copied_blocks
        ),
    );
    // Let the application write for a moment on a mirrored volume, as it would all day.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let quiesce = db1
        .quiesce(&stillpoint_host::QuiesceRequest {
            volume: "data".into(),
            mode: QuiesceMode::Unmount,
            limit_ms: None,
            owner: "demo".into(),
        })
        .await?;
    step(
        json,
        3,
        "db1",
        &format!(
            "quiesce data: stop payroll, flush, unmount (resumes by itself within {} s if nobody releases it)",
            quiesce
                .deadline_unix_ms
                .saturating_sub(quiesce.taken_at_unix_ms)
                / 1000
        ),
    );
    let separated = array
        .separate(
            &pair,
            &SeparateOptions {
                wait_timeout_ms: wait_ms,
                ..SeparateOptions::default()
            },
        )
        .await;
    // Whatever the separate did, the business volume goes back to work now.
    let released = db1.release("data", Some(quiesce.quiesce_id)).await?;
    let separated = separated?;
    step(
        json,
        4,
        "A1",
        &format!("separate {pair}: {}", separated.state),
    );
    step(
        json,
        5,
        "db1",
        &format!(
            "resume data after {} ms: mount, start payroll ({})",
            released.held_ms,
            released
                .start_hook
                .map(|h| h.stdout.trim().to_string())
                .unwrap_or_default()
        ),
    );
    let check = backup1.check("rv", false).await?;
    step(
        json,
        6,
        "backup1",
        &format!(
            "check rv: {}",
            check.output.lines().next().unwrap_or("").trim()
        ),
    );
    if !check.clean {
        return Err(NodeError::Invalid(format!(
            "the backup copy on backup1:rv is NOT consistent: {}",
            check.output.trim()
        )));
    }
    backup1
        .mount(
            "rv",
            &MountRequest {
                read_only: true,
                ..mount
            },
        )
        .await?;
    step(
        json,
        7,
        "backup1",
        "mount rv read-only: ready to copy to tape",
    );
    Ok(())
}
