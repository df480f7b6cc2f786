//! `stillpoint demo`: a local cluster on the embedded defaults, for a first look.
//!
//! Three agents run in this process on loopback ports chosen by the OS, each with its own data
//! dir: a management server, a business server and a backup server. The demo bootstraps them
//! into one cluster through the same client API an operator uses, waits until every agent has
//! registered, prints the status, and stops (or, with `--hold`, keeps running so other
//! `stillpoint` commands can be pointed at it).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use stillpoint_coordinator::Role;
use stillpoint_proto::cluster::{InitRequest, StatusRequest};

use crate::agent::{RunningAgent, start};
use crate::client::Client;
use crate::config::{ClusterSection, NodeConfig, RaftTuning};
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

/// The demo site: (name, roles).
const DEMO_AGENTS: [(&str, Role); 3] = [
    ("mgmt1", Role::Management),
    ("db1", Role::Business),
    ("backup1", Role::Backup),
];

/// How long the demo waits for the cluster to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `DEMO_AGENTS` on loopback under `dir`; returns the running agents.
pub async fn start_local_cluster(dir: &std::path::Path) -> Result<Vec<RunningAgent>, NodeError> {
    let mut agents = Vec::new();
    for (i, (name, role)) in DEMO_AGENTS.iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| NodeError::Listen {
                address: "127.0.0.1:0".into(),
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| NodeError::Listen {
                address: "127.0.0.1:0".into(),
                source,
            })?
            .to_string();
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
            arrays: Vec::new(),
            host: None,
        };
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
        "starting 3 agents on loopback (data in {}) ...",
        dir.display()
    );
    let agents = start_local_cluster(&dir).await?;
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
    if args.hold {
        eprintln!(
            "\nthe cluster is running; try:\n  stillpoint cluster status --endpoint {endpoint}\nCtrl-C stops it."
        );
        crate::cli::shutdown_signal().await;
    }
    for agent in agents {
        agent.shutdown().await?;
    }
    Ok(())
}
