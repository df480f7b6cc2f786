//! The `stillpoint` command line: a thin clap layer over the library.
//!
//! Exit codes are stable, for job schedulers, and the same for every command: see
//! [`crate::error::exit`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use stillpoint_proto::cluster::{
    AddMemberRequest, InitRequest, MemberRequest, QueryRequest, StatusRequest,
};

use crate::client::Client;
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::output::{OutputFormat, json, table};

/// What `--version` prints: a test build with fault switches says so, so a harness can
/// check it has one and nobody mistakes one for a production build.
const VERSION: &str = if stillpoint_host::switches::BUILT {
    concat!(env!("CARGO_PKG_VERSION"), " (test build: fault-injection)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// Default agent address for client commands.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7401";

#[derive(Debug, Parser)]
#[command(
    name = "stillpoint",
    version = VERSION,
    about = "Consistent array-replication backups, driven by a Raft cluster of agents"
)]
pub struct Cli {
    /// Log format on stderr (RUST_LOG sets the filter).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where client commands go and how they print.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Any agent of the cluster (HOST:PORT); requests that need the leader follow its hint.
    #[arg(long, env = "STILLPOINT_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent daemon. Its data dir must already be this node's own; a brand-new node is
    /// started once with --new.
    Agent {
        /// The agent's node.toml.
        #[arg(long)]
        config: PathBuf,
        /// This is a brand-new node: create its data dir (or use an empty one) and stamp it with
        /// a fresh incarnation before starting. Without it a missing or empty data dir is refused
        /// (exit 6): that is what a mistyped path or an unmounted disk looks like. A dir already
        /// stamped for this node is used as it is.
        #[arg(long)]
        new: bool,
    },
    /// The LD path of a linux host: the process that serves the host's array LDs as block
    /// devices, apart from the agent (which starts one when none runs).
    #[command(subcommand)]
    Hba(HbaCommand),
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Apply a site file (arrays, pairs, volumes, groups) to the replicated inventory:
    /// declarative and idempotent; entries the file leaves out stay unless --prune.
    Apply {
        #[command(flatten)]
        client: ClientArgs,
        /// The site file (TOML).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print what would change, and any rule the result would break; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove what the file does not mention.
        #[arg(long)]
        prune: bool,
    },
    /// The site inventory in force.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Back up a consistency group: submit a backup job to the cluster (queued behind a job
    /// that holds its pairs, unless --no-queue); with --wait, follow it to its end.
    Backup(crate::jobs_cli::BackupArgs),
    /// Jobs the cluster holds: list, show, watch, cancel.
    #[command(subcommand)]
    Job(crate::jobs_cli::JobCommand),
    /// Consistency groups: `group prepare` sets their pairs and runs the first copy.
    #[command(subcommand)]
    Group(crate::jobs_cli::GroupCommand),
    /// The catalogue of backup copies (jobs that ended done), with their label and RVs.
    #[command(subcommand)]
    Copies(crate::jobs_cli::CopiesCommand),
    /// Start the local demo site on loopback (software array, agents db1, db2, backup1, mgmt1) and
    /// back up its group as a cluster job, killing the leader mid-job (`--postgres`: a live
    /// PostgreSQL on ext4 on the array instead).
    Demo(crate::demo::DemoArgs),
    /// Host operations on a node's volumes, performed by that node's agent.
    Volume {
        /// Any agent of the cluster; it tells where the named node's agent listens.
        #[arg(long, global = true, env = "STILLPOINT_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
        endpoint: String,
        #[command(subcommand)]
        command: stillpoint_host::cli::VolumeCommand,
    },
    /// Run the sim workload application against a block device or file (demos, tests).
    Workload(stillpoint_host::cli::WorkloadCommand),
    /// Read a volume (MV or RV) and report its last intact record and any torn ones.
    Verify(stillpoint_host::cli::VerifyCommand),
    /// Software disk array: serve, inject faults, example config.
    #[command(subcommand)]
    Array(stillpoint_array::cli::ArrayCommand),
    /// Logical disks of an array.
    #[command(subcommand)]
    Ld(stillpoint_array::cli::LdCommand),
    /// Replication pairs of an array: set, unset, list, query, replicate, separate, restore, wait.
    #[command(subcommand)]
    Pair(stillpoint_array::cli::PairCommand),
    /// Point-in-time business copies of an array's LDs: create, attach, detach, delete,
    /// to-parent, list.
    #[command(subcommand)]
    Copy(stillpoint_array::cli::CopyCommand),
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Arrays, pairs, volumes and groups, as the cluster holds them (read with a quorum).
    Show {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum HbaCommand {
    /// Attach the LDs visible to this node and serve their I/O until stopped (foreground).
    Serve {
        /// The node's node.toml (the agent's).
        #[arg(long)]
        config: PathBuf,
    },
    /// Unmount the file systems on the LDs, detach them and end the LD path process.
    Stop {
        #[arg(long)]
        config: PathBuf,
    },
    /// Whether the LD path process runs, and the LDs it attached.
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Bootstrap a new cluster from its first agents (each must be running, fresh).
    Init {
        #[command(flatten)]
        client: ClientArgs,
        /// Address of a first member (repeat); the endpoint agent must be among them.
        #[arg(long = "member")]
        members: Vec<String>,
        /// Take the members (and the endpoint) from this node.toml's [cluster] initial_members.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Add the agent at ADDRESS: as a learner, then promoted to voter unless --learner.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        address: String,
        /// Keep it a non-voting learner (for hosts that need no vote).
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter.
    Promote {
        #[command(flatten)]
        client: ClientArgs,
        node_id: u64,
    },
    /// Remove a member (voter or learner) by node id.
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        node_id: u64,
    },
    /// Leader, term and every member's state.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Confirm leadership with a quorum first (linearizable read).
        #[arg(long)]
        consistent: bool,
    },
    /// The node registry as replicated.
    Nodes {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        consistent: bool,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Agent { config, new } => run_agent(config, new).await,
        Command::Hba(c) => crate::hba::run_command(c).await,
        Command::Cluster(c) => run_cluster(c).await,
        Command::Apply {
            client,
            file,
            dry_run,
            prune,
        } => {
            let c = crate::Client::new(&client.endpoint);
            crate::site::run_apply(&c, client.output, &file, dry_run, prune).await
        }
        Command::Inventory(InventoryCommand::Show { client }) => {
            crate::site::run_show(&crate::Client::new(&client.endpoint), client.output).await
        }
        Command::Backup(args) => return code_exit(crate::jobs_cli::run_backup(args).await),
        Command::Job(c) => return code_exit(crate::jobs_cli::run_job(c).await),
        Command::Group(c) => return code_exit(crate::jobs_cli::run_group(c).await),
        Command::Copies(c) => return code_exit(crate::jobs_cli::run_copies(c).await),
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Volume { endpoint, command } => return run_volume(&endpoint, command).await,
        Command::Workload(c) => return host_exit(c.run().await),
        Command::Verify(c) => return host_exit(c.run().await),
        Command::Array(c) => return array_exit(c.run().await),
        Command::Ld(c) => return array_exit(c.run().await),
        Command::Pair(c) => return array_exit(c.run().await),
        Command::Copy(c) => return array_exit(c.run().await),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A command that chooses its own exit code on success (a job's outcome).
fn code_exit(result: Result<u8, NodeError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn host_exit(result: Result<ExitCode, stillpoint_host::HostError>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(crate::error::host_exit_code(&e))
    })
}

fn array_exit(result: Result<ExitCode, stillpoint_array::ArrayError>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(crate::error::array_exit_code(&e))
    })
}

/// Resolves `--node NAME` through the registry of the agent at `endpoint`, then asks that
/// node's agent to do the operation.
async fn run_volume(endpoint: &str, command: stillpoint_host::cli::VolumeCommand) -> ExitCode {
    let address = match resolve_node(endpoint, command.node()).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    match crate::peer::channel_to(&address) {
        Ok(channel) => host_exit(command.run(channel).await),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// How long a volume command waits for a node name to appear in the registry: agents
/// register a moment after `cluster init` (or after they join).
const REGISTRY_WAIT_MS: u64 = 5_000;
/// Pause between looks at the registry while waiting.
const REGISTRY_POLL_MS: u64 = 200;

/// The address of the live agent registered as `name`, waiting up to [`REGISTRY_WAIT_MS`] for
/// it to register.
pub async fn resolve_node(endpoint: &str, name: &str) -> Result<String, NodeError> {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(REGISTRY_WAIT_MS);
    loop {
        let nodes = registry(endpoint).await?;
        if let Some(r) = nodes
            .values()
            .find(|r| r.name == name && r.deregistered_at_ms.is_none())
        {
            return Ok(r.address.clone());
        }
        if std::time::Instant::now() >= until {
            let known: Vec<&str> = nodes
                .values()
                .filter(|r| r.deregistered_at_ms.is_none())
                .map(|r| r.name.as_str())
                .collect();
            return Err(NodeError::NotFound(if known.is_empty() {
                format!(
                    "no node named {name:?} is registered: no node has registered yet (agents register a moment after `cluster init` or joining; is the cluster initialised?); see `stillpoint cluster nodes`"
                )
            } else {
                format!(
                    "no node named {name:?} is registered (known: {}); see `stillpoint cluster nodes`",
                    known.join(", ")
                )
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(REGISTRY_POLL_MS)).await;
    }
}

/// The node registry as the agent at `endpoint` has applied it.
async fn registry(
    endpoint: &str,
) -> Result<std::collections::BTreeMap<u64, stillpoint_coordinator::NodeRecord>, NodeError> {
    let reply = Client::new(endpoint)
        .on_endpoint("registry", |mut g| async move {
            g.query(QueryRequest {
                what: "registry".into(),
                consistent: false,
            })
            .await
        })
        .await?;
    serde_json::from_slice(&reply.json)
        .map_err(|e| NodeError::Invalid(format!("agent sent an undecodable registry: {e}")))
}

async fn run_agent(path: PathBuf, new: bool) -> Result<(), NodeError> {
    let config = NodeConfig::load(&path)?;
    // Bound first, so "port in use" creates no data dir.
    let listener = crate::agent::bind(&config).await?;
    if new {
        crate::agent::init_data_dir(&config).await?;
    }
    crate::agent::run_on(config, listener, shutdown_signal()).await
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn print_membership(reply: &stillpoint_proto::cluster::MembershipReply, output: OutputFormat) {
    if output == OutputFormat::Json {
        println!(
            "{}",
            json(
                &serde_json::json!({"log_index": reply.log_index, "voters": reply.voters, "learners": reply.learners})
            )
        );
    } else {
        println!(
            "voters {:?}  learners {:?}  (log index {})",
            reply.voters, reply.learners, reply.log_index
        );
    }
}

async fn run_cluster(command: ClusterCommand) -> Result<(), NodeError> {
    match command {
        ClusterCommand::Init {
            mut client,
            mut members,
            config,
        } => {
            if let Some(path) = config {
                let cfg = NodeConfig::load(&path)?;
                if members.is_empty() {
                    members = cfg.cluster.initial_members.clone();
                }
                if client.endpoint == DEFAULT_ENDPOINT {
                    client.endpoint = cfg.advertised_address();
                }
            }
            if members.is_empty() {
                members.push(client.endpoint.clone());
            }
            let c = Client::new(&client.endpoint);
            let reply = c
                .on_endpoint("init", |mut g| {
                    let member_addresses = members.clone();
                    async move {
                        g.init(InitRequest {
                            member_addresses,
                            cluster_id: String::new(),
                        })
                        .await
                    }
                })
                .await?;
            if client.output == OutputFormat::Json {
                let members: Vec<_> = reply
                    .members
                    .iter()
                    .map(|m| serde_json::json!({"id": m.node_id, "name": m.name, "address": m.address}))
                    .collect();
                println!(
                    "{}",
                    json(
                        &serde_json::json!({"cluster_id": reply.cluster_id, "already_initialized": reply.already_initialized, "members": members})
                    )
                );
            } else if reply.already_initialized {
                println!(
                    "cluster {} is already initialised with these members; nothing changed",
                    reply.cluster_id
                );
            } else {
                println!("initialized cluster {}", reply.cluster_id);
                let rows: Vec<Vec<String>> = reply
                    .members
                    .iter()
                    .map(|m| vec![m.node_id.to_string(), m.name.clone(), m.address.clone()])
                    .collect();
                print!("{}", table(&["ID", "NAME", "ADDRESS"], &rows));
            }
            Ok(())
        }
        ClusterCommand::Add {
            client,
            address,
            learner,
        } => {
            let mut c = Client::new(&client.endpoint);
            c.request_timeout = crate::deadlines::client_wait(crate::deadlines::ADD_MEMBER_MS);
            let reply = c
                .on_leader_write("add member", |mut g| {
                    let address = address.clone();
                    async move {
                        g.add_member(AddMemberRequest {
                            address,
                            promote: !learner,
                        })
                        .await
                    }
                })
                .await?;
            print_membership(&reply, client.output);
            Ok(())
        }
        ClusterCommand::Promote { client, node_id } => {
            let mut c = Client::new(&client.endpoint);
            c.request_timeout =
                crate::deadlines::client_wait(crate::deadlines::MEMBERSHIP_CHANGE_MS);
            let reply = c
                .on_leader_write("promote", |mut g| async move {
                    g.promote_member(MemberRequest { node_id }).await
                })
                .await?;
            print_membership(&reply, client.output);
            Ok(())
        }
        ClusterCommand::Remove { client, node_id } => {
            let mut c = Client::new(&client.endpoint);
            c.request_timeout =
                crate::deadlines::client_wait(crate::deadlines::MEMBERSHIP_CHANGE_MS);
            let reply = c
                .on_leader_write("remove member", |mut g| async move {
                    g.remove_member(MemberRequest { node_id }).await
                })
                .await?;
            print_membership(&reply, client.output);
            Ok(())
        }
        ClusterCommand::Status { client, consistent } => {
            let c = Client::new(&client.endpoint);
            let request = |mut g: stillpoint_proto::cluster::cluster_client::ClusterClient<_>| async move {
                g.status(StatusRequest { consistent }).await
            };
            let reply = if consistent {
                c.on_leader("status", request).await?
            } else {
                c.on_endpoint("status", request).await?
            };
            print!("{}", crate::status::render(&reply, client.output));
            if client.output == OutputFormat::Json {
                println!();
            }
            Ok(())
        }
        ClusterCommand::Nodes { client, consistent } => {
            let c = Client::new(&client.endpoint);
            let request = |mut g: stillpoint_proto::cluster::cluster_client::ClusterClient<_>| async move {
                g.query(QueryRequest {
                    what: "registry".into(),
                    consistent,
                })
                .await
            };
            let reply = if consistent {
                c.on_leader("registry", request).await?
            } else {
                c.on_endpoint("registry", request).await?
            };
            let nodes: std::collections::BTreeMap<u64, stillpoint_coordinator::NodeRecord> =
                serde_json::from_slice(&reply.json).map_err(|e| {
                    NodeError::Invalid(format!("agent sent an undecodable registry: {e}"))
                })?;
            if client.output == OutputFormat::Json {
                println!("{}", json(&nodes));
            } else {
                let rows: Vec<Vec<String>> = nodes
                    .values()
                    .map(|r| {
                        vec![
                            r.node_id.to_string(),
                            r.name.clone(),
                            r.address.clone(),
                            r.roles
                                .iter()
                                .map(|x| x.to_string())
                                .collect::<Vec<_>>()
                                .join(","),
                            r.version.clone(),
                            if r.deregistered_at_ms.is_some() {
                                "removed"
                            } else {
                                "active"
                            }
                            .into(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["ID", "NAME", "ADDRESS", "ROLES", "VERSION", "STATUS"],
                        &rows
                    )
                );
            }
            Ok(())
        }
    }
}
