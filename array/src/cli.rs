//! Operator commands against an array endpoint, as clap types the `stillpoint` binary mounts:
//! `stillpoint array serve|info|fault`, `stillpoint ld list`, `stillpoint pair
//! set|unset|list|query|replicate|separate|restore|wait`, `stillpoint copy
//! create|attach|detach|delete|to-parent|list`.
//!
//! Every command takes `--array HOST:PORT` (env `STILLPOINT_ARRAY`, default `127.0.0.1:7600`)
//! and `--output table|json` (tables by default). Pairs are named with `--mv LD` (an LD of the
//! array addressed, or `ARRAY:LD`) and `--rv LD` (`LD` on the same array for DDR, `ARRAY:LD` for
//! RDR). Operations with `--wait` show a progress bar on a terminal while the copy runs and give
//! up after `--timeout` seconds (the operation itself goes on). Every `--timeout` is bounded to
//! [`TIMEOUT_S_MAX`] (7 days): a larger value is bad input (exit 2) before anything is applied,
//! and the API refuses waits beyond [`crate::WAIT_TIMEOUT_MS_MAX`] the same way.
//!
//! Errors come back as [`ArrayError`]; the binary turns them into its one exit-code table
//! (`stillpoint_node::error::exit`, listed in the README), shared with the cluster and volume
//! commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Array;
use crate::config::ArrayConfig;
use crate::error::ArrayError;
use crate::remote::RemoteArray;
use crate::types::*;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human tables.
    Table,
    /// One JSON document on stdout.
    Json,
}

/// Which array to talk to and how to print.
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// Array endpoint, HOST:PORT or http://HOST:PORT.
    #[arg(long, env = "STILLPOINT_ARRAY", default_value = "127.0.0.1:7600")]
    pub array: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl Target {
    async fn connect(&self) -> Result<(Arc<dyn Array>, String), ArrayError> {
        let r = RemoteArray::connect(&self.array).await?;
        let name = r.info().await?.name;
        Ok((Arc::new(r), name))
    }
}

/// `stillpoint array ...`
#[derive(Clone, Debug, clap::Subcommand)]
pub enum ArrayCommand {
    /// Run a software array as its own process (gRPC control and data API) until Ctrl-C.
    /// Prints "serving on" once the array has opened; exits 6 if the listen address or the
    /// data dir is unusable, 2 if the config is wrong (the message names file and field).
    Serve {
        /// Array config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a commented example config.
    ExampleConfig,
    /// Name, block size and links of an array.
    Info {
        #[command(flatten)]
        target: Target,
    },
    /// Inject or clear a fault.
    Fault {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        fault: FaultCommand,
    },
}

/// Faults for tests, demos and chaos runs.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum FaultCommand {
    /// Fail an LD (e.g. an RV during a copy: the pair goes to `fault`).
    LdFailure {
        /// LD number.
        #[arg(long)]
        ld: u32,
    },
    /// Repair a failed LD.
    LdRepair {
        /// LD number.
        #[arg(long)]
        ld: u32,
    },
    /// Take the link to a peer array down or up.
    Link {
        /// Peer array name.
        #[arg(long)]
        peer: String,
        /// down or up.
        #[arg(value_enum)]
        state: LinkState,
    },
    /// Slow every copy of the array down (0: as fast as the disk goes); until the array
    /// restarts or the pace is set again.
    CopyPace {
        /// Bytes a second, all copies of the array together.
        #[arg(long)]
        bytes_per_s: u64,
    },
    /// Hold every separate this long before admitting it (0: none); until the array
    /// restarts or the delay is set again. Keeps a backup's freeze window open.
    SeparateDelay {
        /// Milliseconds each separate waits.
        #[arg(long)]
        ms: u64,
    },
}

/// Link state to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LinkState {
    /// Link fault.
    Down,
    /// Link restored.
    Up,
}

/// `stillpoint ld ...`
#[derive(Clone, Debug, clap::Subcommand)]
pub enum LdCommand {
    /// List the LDs of an array with capacity, format, access list and role.
    List {
        #[command(flatten)]
        target: Target,
    },
}

/// `stillpoint copy ...`: point-in-time business copies of an LD on the same array.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum CopyCommand {
    /// Create a business copy of LD --parent on LD --copy: attached (the copy is the parent's
    /// image of this instant, usable at once) unless --detached (no data until `attach`).
    Create {
        #[command(flatten)]
        target: Target,
        /// Parent LD number.
        #[arg(long)]
        parent: u32,
        /// Business copy LD number (same capacity and format as the parent).
        #[arg(long)]
        copy: u32,
        /// Create without making the copy; the LD refuses host I/O until attached.
        #[arg(long)]
        detached: bool,
    },
    /// Make the copy again: its point in time becomes now.
    Attach {
        #[command(flatten)]
        target: Target,
        /// Business copy LD number.
        #[arg(long)]
        copy: u32,
    },
    /// Discard the copy's data; the LD keeps its number but refuses host I/O until attached.
    Detach {
        #[command(flatten)]
        target: Target,
        /// Business copy LD number.
        #[arg(long)]
        copy: u32,
    },
    /// End the relationship and discard the data; the LD is a plain, empty LD again.
    Delete {
        #[command(flatten)]
        target: Target,
        /// Business copy LD number.
        #[arg(long)]
        copy: u32,
    },
    /// Restore the parent from the copy (parent reads see the copy's content at once).
    ToParent {
        #[command(flatten)]
        target: Target,
        /// Business copy LD number.
        #[arg(long)]
        copy: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List the business copies of the array.
    List {
        #[command(flatten)]
        target: Target,
    },
}

/// The MV and RV naming a pair.
#[derive(Clone, Debug, clap::Args)]
pub struct PairArgs {
    /// MV: LD number on the addressed array, or ARRAY:LD.
    #[arg(long)]
    pub mv: String,
    /// RV: LD number (same array, DDR) or ARRAY:LD (RDR).
    #[arg(long)]
    pub rv: String,
}

impl PairArgs {
    fn id(&self, array: &str) -> Result<PairId, ArrayError> {
        let mv = LdRef::parse(&self.mv, array)?;
        let rv = LdRef::parse(&self.rv, &mv.array)?;
        Ok(PairId { mv, rv })
    }
}

/// Waiting for completion.
#[derive(Clone, Debug, clap::Args)]
pub struct WaitArgs {
    /// Wait until the operation's copy completes.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (0 to 604800, i.e. at most 7 days).
    #[arg(long, default_value_t = 3600, value_parser = timeout_s)]
    pub timeout: u64,
}

/// Longest `--timeout` in seconds (the API's [`crate::WAIT_TIMEOUT_MS_MAX`], 7 days).
pub const TIMEOUT_S_MAX: u64 = crate::WAIT_TIMEOUT_MS_MAX / 1000;

/// Parses a `--timeout` in seconds, bounded so no deadline can overflow.
fn timeout_s(v: &str) -> Result<u64, String> {
    let s: u64 = v
        .parse()
        .map_err(|_| format!("{v:?} is not a whole number of seconds"))?;
    if s > TIMEOUT_S_MAX {
        return Err(format!(
            "{s} s is more than the maximum of {TIMEOUT_S_MAX} s (7 days)"
        ));
    }
    Ok(s)
}

/// `stillpoint pair ...`
#[derive(Clone, Debug, clap::Subcommand)]
pub enum PairCommand {
    /// Set a pair (it starts separated, every block different).
    Set {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pair: PairArgs,
    },
    /// Unset a separated pair.
    Unset {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pair: PairArgs,
    },
    /// List the pairs whose MV is on the array.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// State, differences, progress and last operation of one pair.
    Query {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pair: PairArgs,
    },
    /// Replicate MV→RV.
    Replicate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pair: PairArgs,
        /// Copy range.
        #[arg(long, value_enum, default_value_t = CopyRange::Difference)]
        range: CopyRange,
        /// RV access during the copy: nr or ro.
        #[arg(long, value_enum, default_value_t = RvAccess::Nr)]
        rvacc: RvAccess,
        /// Copy control for MV writes.
        #[arg(long, value_enum, default_value_t = CopyControl::Sync)]
        cpmode: CopyControl,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Separate (or, with --forced, forced-separate at once).
    Separate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pair: PairArgs,
        /// RV access afterwards: rw or ro.
        #[arg(long, value_enum, default_value_t = RvAccess::Rw)]
        rvacc: RvAccess,
        /// When the RV becomes usable.
        #[arg(long, value_enum, default_value_t = RvUse::Complete)]
        rvuse: RvUse,
        /// Forced separate (state cancel); the RV is not guaranteed consistent.
        #[arg(long)]
        forced: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Restore RV→MV.
    Restore {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pair: PairArgs,
        /// update mirrors later MV writes to the RV; protect separates when done.
        #[arg(long, value_enum, default_value_t = RestoreMode::Protect)]
        mode: RestoreMode,
        /// RV access during the copy: nr or ro.
        #[arg(long, value_enum, default_value_t = RvAccess::Nr)]
        rvacc: RvAccess,
        /// Copy control for mirrored MV writes.
        #[arg(long, value_enum, default_value_t = CopyControl::Sync)]
        cpmode: CopyControl,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Wait for a state.
    Wait {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pair: PairArgs,
        /// Condition.
        #[arg(long, value_enum, default_value_t = WaitCondition::Sync)]
        cond: WaitCondition,
        /// Give up after this many seconds (0 to 604800, i.e. at most 7 days).
        #[arg(long, default_value_t = 3600, value_parser = timeout_s)]
        timeout: u64,
    },
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_pairs(out: Output, pairs: &[PairInfo]) {
    if out == Output::Json {
        return print_json(&pairs);
    }
    println!(
        "{:<18} {:<18} {:<4} {:<15} {:<10} {:<10} {:<4} {:>10} {:>10} {:>6}",
        "MV", "RV", "KIND", "STATE", "ACTIVITY", "COPY", "RVAC", "SEP-DIFF", "COPY-DIFF", "DONE%"
    );
    for p in pairs {
        println!(
            "{:<18} {:<18} {:<4} {:<15} {:<10} {:<10} {:<4} {:>10} {:>10} {:>6.1}",
            p.id.mv.to_string(),
            p.id.rv.to_string(),
            format!("{:?}", p.kind).to_lowercase(),
            p.state.to_string(),
            format!("{:?}", p.state.activity).to_lowercase(),
            format!("{:?}", p.state.copy_control).to_lowercase(),
            p.state.rv_access.to_string(),
            p.separate_diff_blocks,
            p.copy_diff_blocks,
            p.progress_percent()
        );
    }
}

fn print_pair(out: Output, p: &PairInfo) {
    if out == Output::Json {
        return print_json(p);
    }
    print_pairs(out, std::slice::from_ref(p));
    if let Some(l) = &p.last_op {
        println!(
            "last operation: {} started {} ended {}",
            l.op,
            l.started_unix_ms,
            l.ended_unix_ms
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
}

/// Polls the pair until `cond`, drawing a progress bar on a terminal.
async fn wait_with_progress(
    array: &Arc<dyn Array>,
    id: &PairId,
    cond: WaitCondition,
    timeout_s: u64,
) -> Result<PairInfo, ArrayError> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos:>3}% {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let step = remaining.min(Duration::from_millis(500));
        match array.wait(id, cond, step.as_millis() as u64).await {
            Ok(info) => break Ok(info),
            Err(ArrayError::Timeout { .. }) if !remaining.is_zero() => {
                let p = array.pair_query(id).await?;
                bar.set_message(p.state.to_string());
                bar.set_position(p.progress_percent() as u64);
            }
            Err(ArrayError::Timeout { .. }) => {
                break Err(ArrayError::Timeout {
                    what: format!("{id} to reach {cond:?}"),
                    timeout_ms: timeout_s * 1000,
                });
            }
            Err(e) => break Err(e),
        }
    };
    bar.finish_and_clear();
    result
}

impl ArrayCommand {
    /// Runs the command; the binary maps an error to its exit code.
    pub async fn run(self) -> Result<ExitCode, ArrayError> {
        match self {
            ArrayCommand::Serve { config } => {
                let cfg = ArrayConfig::load(&config)?;
                let listener = tokio::net::TcpListener::bind(&cfg.listen)
                    .await
                    .map_err(|e| ArrayError::CannotStart {
                        what: format!("listen = {:?} in {}", cfg.listen, config.display()),
                        detail: e.to_string(),
                    })?;
                let serving = format!("array {} serving on {}", cfg.name, cfg.listen);
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                crate::serve_when_open(cfg, listener, shutdown, || eprintln!("{serving}")).await?;
                Ok(ExitCode::SUCCESS)
            }
            ArrayCommand::ExampleConfig => {
                print!("{}", crate::example_config());
                Ok(ExitCode::SUCCESS)
            }
            ArrayCommand::Info { target } => {
                let (a, _) = target.connect().await?;
                let info = a.info().await?;
                if target.output == Output::Json {
                    print_json(&info);
                } else {
                    println!("array {} (block {} bytes)", info.name, info.block_bytes);
                    for l in info.links {
                        println!(
                            "  link to {}: {} latency {} ms bandwidth {} B/s",
                            l.peer,
                            if l.up { "up" } else { "DOWN" },
                            l.latency_ms,
                            l.bandwidth_bytes_per_s
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ArrayCommand::Fault { target, fault } => {
                let (a, _) = target.connect().await?;
                let f = match fault {
                    FaultCommand::LdFailure { ld } => Fault::LdFailure { ld },
                    FaultCommand::LdRepair { ld } => Fault::LdRepair { ld },
                    FaultCommand::Link {
                        peer,
                        state: LinkState::Down,
                    } => Fault::LinkDown { peer },
                    FaultCommand::Link {
                        peer,
                        state: LinkState::Up,
                    } => Fault::LinkUp { peer },
                    FaultCommand::CopyPace { bytes_per_s } => Fault::CopyPace { bytes_per_s },
                    FaultCommand::SeparateDelay { ms } => Fault::SeparateDelay { ms },
                };
                a.inject_fault(&f).await?;
                if target.output == Output::Json {
                    print_json(&f);
                } else {
                    println!("fault applied: {f:?}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

impl LdCommand {
    /// Runs the command; the binary maps an error to its exit code.
    pub async fn run(self) -> Result<ExitCode, ArrayError> {
        let LdCommand::List { target } = self;
        let (a, name) = target.connect().await?;
        let lds = a.ld_list().await?;
        if target.output == Output::Json {
            print_json(&lds);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<14} {:<20} {:>14} {:<6} {:<24} ROLE",
            "LD", "NAME", "BYTES", "FORMAT", "HOSTS"
        );
        for l in lds {
            let mut roles = match &l.role {
                LdRole::None => vec![],
                LdRole::Mv { rvs } => vec![format!("MV ({rvs} RV)")],
                LdRole::Rv { mv, access } => vec![format!("RV of {mv} ({access})")],
            };
            match &l.copy_role {
                CopyRole::None => {}
                CopyRole::Parent { copies } => roles.push(format!("parent ({copies} copies)")),
                CopyRole::Copy { parent, state } => {
                    roles.push(format!("copy of {name}:{parent} ({state})"))
                }
            }
            let role = if roles.is_empty() {
                "-".to_string()
            } else {
                roles.join(", ")
            };
            println!(
                "{:<14} {:<20} {:>14} {:<6} {:<24} {}{}",
                format!("{name}:{}", l.number),
                l.name,
                l.capacity_bytes,
                l.format,
                l.hosts.join(","),
                role,
                if l.failed { " FAILED" } else { "" }
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn print_copies(out: Output, copies: &[CopyInfo]) {
    if out == Output::Json {
        return print_json(&copies);
    }
    println!(
        "{:<14} {:<14} {:<18} {:>15} {:>10} {:>10} {:>10}  LAST-OP",
        "COPY", "PARENT", "STATE", "POINT-IN-TIME", "PARENT-REF", "TO-PARENT", "DIFFER"
    );
    for c in copies {
        let last = c
            .last_op
            .as_ref()
            .map(|l| {
                format!(
                    "{} {}",
                    l.op,
                    if l.ended_unix_ms.is_some() {
                        "done"
                    } else {
                        "running"
                    }
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:<14} {:<18} {:>15} {:>10} {:>10} {:>10}  {}",
            c.copy.to_string(),
            c.parent.to_string(),
            c.state.to_string(),
            c.point_in_time_unix_ms
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            c.parent_ref_blocks,
            c.to_parent_blocks,
            c.differ_blocks,
            last
        );
    }
}

impl CopyCommand {
    /// Runs the command; the binary maps an error to its exit code.
    pub async fn run(self) -> Result<ExitCode, ArrayError> {
        match self {
            CopyCommand::Create {
                target,
                parent,
                copy,
                detached,
            } => {
                let (a, _) = target.connect().await?;
                let c = a.copy_create(parent, copy, !detached).await?;
                print_copies(target.output, std::slice::from_ref(&c));
            }
            CopyCommand::Attach { target, copy } => {
                let (a, _) = target.connect().await?;
                let c = a.copy_attach(copy).await?;
                print_copies(target.output, std::slice::from_ref(&c));
            }
            CopyCommand::Detach { target, copy } => {
                let (a, _) = target.connect().await?;
                let c = a.copy_detach(copy).await?;
                print_copies(target.output, std::slice::from_ref(&c));
            }
            CopyCommand::Delete { target, copy } => {
                let (a, n) = target.connect().await?;
                a.copy_delete(copy).await?;
                if target.output == Output::Json {
                    print_json(&LdRef { array: n, ld: copy });
                } else {
                    println!("business copy {n}:{copy} deleted; the LD is a plain LD again");
                }
            }
            CopyCommand::ToParent { target, copy, wait } => {
                let (a, _) = target.connect().await?;
                let timeout = wait.wait.then(|| wait.timeout.saturating_mul(1000));
                let c = a.copy_to_parent(copy, timeout).await?;
                print_copies(target.output, std::slice::from_ref(&c));
            }
            CopyCommand::List { target } => {
                let (a, _) = target.connect().await?;
                print_copies(target.output, &a.copy_list().await?);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl PairCommand {
    /// Runs the command; the binary maps an error to its exit code.
    pub async fn run(self) -> Result<ExitCode, ArrayError> {
        match self {
            PairCommand::Set { target, pair } => {
                let (a, n) = target.connect().await?;
                print_pair(target.output, &a.pair_set(&pair.id(&n)?).await?);
            }
            PairCommand::Unset { target, pair } => {
                let (a, n) = target.connect().await?;
                let id = pair.id(&n)?;
                a.pair_unset(&id).await?;
                if target.output == Output::Json {
                    print_json(&id);
                } else {
                    println!("pair {id} unset");
                }
            }
            PairCommand::List { target } => {
                let (a, _) = target.connect().await?;
                print_pairs(target.output, &a.pair_list().await?);
            }
            PairCommand::Query { target, pair } => {
                let (a, n) = target.connect().await?;
                print_pair(target.output, &a.pair_query(&pair.id(&n)?).await?);
            }
            PairCommand::Replicate {
                target,
                pair,
                range,
                rvacc,
                cpmode,
                wait,
            } => {
                let (a, n) = target.connect().await?;
                let id = pair.id(&n)?;
                let o = ReplicateOptions {
                    range,
                    rv_access: rvacc,
                    copy_control: cpmode,
                    wait_timeout_ms: None,
                };
                let mut p = a.replicate(&id, &o).await?;
                if wait.wait {
                    p = wait_with_progress(&a, &id, WaitCondition::Sync, wait.timeout).await?;
                }
                print_pair(target.output, &p);
            }
            PairCommand::Separate {
                target,
                pair,
                rvacc,
                rvuse,
                forced,
                wait,
            } => {
                let (a, n) = target.connect().await?;
                let id = pair.id(&n)?;
                let mut p = if forced {
                    a.forced_separate(&id).await?
                } else {
                    let o = SeparateOptions {
                        rv_access: rvacc,
                        rv_use: rvuse,
                        wait_timeout_ms: None,
                    };
                    a.separate(&id, &o).await?
                };
                if wait.wait && !forced {
                    p = wait_with_progress(&a, &id, WaitCondition::Sep, wait.timeout).await?;
                }
                print_pair(target.output, &p);
            }
            PairCommand::Restore {
                target,
                pair,
                mode,
                rvacc,
                cpmode,
                wait,
            } => {
                let (a, n) = target.connect().await?;
                let id = pair.id(&n)?;
                let o = RestoreOptions {
                    mode,
                    rv_access: rvacc,
                    copy_control: cpmode,
                    wait_timeout_ms: None,
                };
                let mut p = a.restore(&id, &o).await?;
                if wait.wait {
                    p = wait_with_progress(&a, &id, WaitCondition::Done, wait.timeout).await?;
                }
                print_pair(target.output, &p);
            }
            PairCommand::Wait {
                target,
                pair,
                cond,
                timeout,
            } => {
                let (a, n) = target.connect().await?;
                let id = pair.id(&n)?;
                let p = wait_with_progress(&a, &id, cond, timeout).await?;
                print_pair(target.output, &p);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
