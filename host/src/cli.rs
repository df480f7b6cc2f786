//! `stillpoint volume ...`: the seed's per-host commands, sent through gRPC to the named
//! node's agent. The binary resolves `--node NAME` to that agent's address and hands
//! [`VolumeCommand::run`] a channel. `stillpoint verify` ([`VerifyCommand`]) runs locally.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use tonic::transport::Channel;

use crate::api::{HookKind, Host, MountIdentity, MountRequest, QuiesceMode, QuiesceRequest};
use crate::device::FileDevice;
use crate::error::HostError;
use crate::grpc::HostClient;
use crate::workload;

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// Which agent, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Node whose agent performs the operation.
    #[arg(long)]
    pub node: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// File-system identity handling for `mount`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityArg {
    #[default]
    Keep,
    New,
    IgnoreDuplicate,
}

/// Which quiesce `volume quiesce` takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum QuiesceModeArg {
    /// Stop hook, flush, unmount: the static point of the seeds.
    #[default]
    Unmount,
    /// Freeze writes (the volume stays mounted).
    Freeze,
    /// Only the stop hook and a flush (the volume stays mounted and writable; both hooks must
    /// be configured).
    HooksOnly,
}

/// `stillpoint volume <op> --node NAME VOLUME`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum VolumeCommand {
    /// Volumes of the node: LD, device, mount point, file system, mounted, holders, quiesce.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Write the file system's buffers to disk.
    Flush {
        #[command(flatten)]
        target: Target,
        volume: String,
    },
    /// Unmount; refused while something holds the volume unless --force (holders terminated).
    Unmount {
        #[command(flatten)]
        target: Target,
        volume: String,
        #[arg(long)]
        force: bool,
    },
    /// Mount at the configured (or given) mount point.
    Mount {
        #[command(flatten)]
        target: Target,
        volume: String,
        #[arg(long)]
        mount_point: Option<String>,
        /// For an RV copy on the MV's host: `new` gives it a new UUID, `ignore-duplicate`
        /// mounts it as is (XFS nouuid).
        #[arg(long, value_enum, default_value_t = IdentityArg::Keep)]
        identity: IdentityArg,
        #[arg(long)]
        read_only: bool,
    },
    /// Freeze writes, with a deadline after which the agent thaws by itself.
    Freeze {
        #[command(flatten)]
        target: Target,
        volume: String,
        /// Deadline in ms (default and maximum: the volume's freeze_ms_max).
        #[arg(long)]
        limit_ms: Option<u64>,
    },
    /// Take a quiesce with a deadline: by default the static point (stop hook, flush,
    /// unmount), or `--mode freeze`. The agent resumes it by itself at the deadline.
    Quiesce {
        #[command(flatten)]
        target: Target,
        volume: String,
        #[arg(long, value_enum, default_value_t = QuiesceModeArg::Unmount)]
        mode: QuiesceModeArg,
        /// Deadline in ms (default and maximum: the volume's unmount_ms_max or freeze_ms_max).
        #[arg(long)]
        limit_ms: Option<u64>,
    },
    /// End a quiesce (remount and start applications, or thaw). With --quiesce-id, fails
    /// (exit 7) if that quiesce already ended without its owner: the copy is not consistent.
    Release {
        #[command(flatten)]
        target: Target,
        volume: String,
        #[arg(long)]
        quiesce_id: Option<u64>,
    },
    /// End the volume's quiesce (thaw; or remount and start applications).
    Thaw {
        #[command(flatten)]
        target: Target,
        volume: String,
    },
    /// Check the file system (unmounted); --repair fixes it (the seed's CHKDSK /F).
    Check {
        #[command(flatten)]
        target: Target,
        volume: String,
        #[arg(long)]
        repair: bool,
    },
    /// Rediscover devices (after an LD became visible).
    Rescan {
        #[command(flatten)]
        target: Target,
    },
    /// Run the volume's configured stop or start hook.
    Hook {
        #[command(flatten)]
        target: Target,
        volume: String,
        #[arg(value_parser = ["stop", "start"])]
        kind: String,
    },
    /// Acknowledge what waits for an operator on the volume (shown as ATTENTION in `list`),
    /// e.g. a start hook that failed when the agent resumed the volume by itself.
    Ack {
        #[command(flatten)]
        target: Target,
        volume: String,
    },
    /// Quiesces held, and volumes the agent resumed by itself (and why).
    Quiesces {
        #[command(flatten)]
        target: Target,
    },
}

fn print<T: Serialize>(format: OutputFormat, value: &T, table: impl FnOnce(&T) -> String) {
    match format {
        OutputFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            )
        }
        OutputFormat::Table => print!("{}", table(value)),
    }
}

fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

impl VolumeCommand {
    /// The node the command is for (the binary resolves it to an address).
    pub fn node(&self) -> &str {
        match self {
            VolumeCommand::List { target }
            | VolumeCommand::Flush { target, .. }
            | VolumeCommand::Unmount { target, .. }
            | VolumeCommand::Mount { target, .. }
            | VolumeCommand::Freeze { target, .. }
            | VolumeCommand::Quiesce { target, .. }
            | VolumeCommand::Release { target, .. }
            | VolumeCommand::Ack { target, .. }
            | VolumeCommand::Thaw { target, .. }
            | VolumeCommand::Check { target, .. }
            | VolumeCommand::Rescan { target }
            | VolumeCommand::Hook { target, .. }
            | VolumeCommand::Quiesces { target } => &target.node,
        }
    }

    /// Performs the command on the agent behind `target` and prints the result. Exit code 1
    /// when a check finds the file system not clean.
    pub async fn run(self, target: Channel) -> Result<ExitCode, HostError> {
        self.run_on(&HostClient::new(target)).await
    }

    /// As [`VolumeCommand::run`], on any [`Host`] (tests, or a local agent).
    pub async fn run_on(self, host: &dyn Host) -> Result<ExitCode, HostError> {
        let rescan = matches!(self, VolumeCommand::Rescan { .. });
        match self {
            VolumeCommand::List { target } | VolumeCommand::Rescan { target } => {
                let vols = if rescan {
                    host.rescan().await?
                } else {
                    host.list_volumes().await?
                };
                print(target.output, &vols, |vols| {
                    let mut rows = vec![
                        [
                            "VOLUME",
                            "LD",
                            "DEVICE",
                            "FS",
                            "MOUNTED AT",
                            "QUIESCE",
                            "HOLDERS",
                        ]
                        .map(String::from)
                        .to_vec(),
                    ];
                    for v in vols {
                        rows.push(vec![
                            v.name.clone(),
                            v.ld.clone().unwrap_or_else(|| "-".into()),
                            v.device.clone(),
                            v.fs.clone(),
                            v.mounted_at.clone().unwrap_or_else(|| "-".into()),
                            v.quiesce
                                .as_ref()
                                .map(|q| format!("{:?} #{} by {}", q.kind, q.quiesce_id, q.owner))
                                .unwrap_or_else(|| "-".into()),
                            match (&v.problem, v.holders.is_empty()) {
                                (Some(p), _) => format!("PROBLEM: {p}"),
                                (None, true) => "-".into(),
                                (None, false) => v
                                    .holders
                                    .iter()
                                    .map(|h| h.to_string())
                                    .collect::<Vec<_>>()
                                    .join("; "),
                            },
                        ]);
                    }
                    columns(&rows)
                });
            }
            VolumeCommand::Flush { target, volume } => {
                host.flush(&volume).await?;
                print(
                    target.output,
                    &serde_json::json!({"volume": volume, "flushed": true}),
                    |_| format!("{volume}: flushed\n"),
                );
            }
            VolumeCommand::Unmount {
                target,
                volume,
                force,
            } => {
                let terminated = host.unmount(&volume, force).await?;
                print(
                    target.output,
                    &serde_json::json!({"volume": volume, "unmounted": true, "terminated": terminated}),
                    |_| {
                        if terminated.is_empty() {
                            format!("{volume}: unmounted\n")
                        } else {
                            format!(
                                "{volume}: unmounted after terminating {}\n",
                                terminated
                                    .iter()
                                    .map(|h| h.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    },
                );
            }
            VolumeCommand::Mount {
                target,
                volume,
                mount_point,
                identity,
                read_only,
            } => {
                let req = MountRequest {
                    mount_point,
                    identity: match identity {
                        IdentityArg::Keep => MountIdentity::Keep,
                        IdentityArg::New => MountIdentity::New,
                        IdentityArg::IgnoreDuplicate => MountIdentity::IgnoreDuplicate,
                    },
                    read_only,
                };
                let v = host.mount(&volume, &req).await?;
                print(target.output, &v, |v| {
                    format!(
                        "{}: mounted at {} (fs id {})\n",
                        v.name,
                        v.mounted_at.as_deref().unwrap_or("?"),
                        v.fs_id.as_deref().unwrap_or("-")
                    )
                });
            }
            VolumeCommand::Freeze {
                target,
                volume,
                limit_ms,
            } => {
                let q = host.freeze(&volume, limit_ms, "cli").await?;
                print(target.output, &q, |q| {
                    format!(
                        "{}: frozen as quiesce #{}; the agent thaws it by itself in {} ms unless thawed\n",
                        q.volume,
                        q.quiesce_id,
                        q.deadline_unix_ms - q.taken_at_unix_ms
                    )
                });
            }
            VolumeCommand::Quiesce {
                target,
                volume,
                mode,
                limit_ms,
            } => {
                let q = host
                    .quiesce(&QuiesceRequest {
                        volume,
                        mode: match mode {
                            QuiesceModeArg::Unmount => QuiesceMode::Unmount,
                            QuiesceModeArg::Freeze => QuiesceMode::Freeze,
                            QuiesceModeArg::HooksOnly => QuiesceMode::HooksOnly,
                        },
                        limit_ms,
                        owner: "cli".into(),
                    })
                    .await?;
                print(target.output, &q, |q| {
                    format!(
                        "{}: quiesced ({:?}) as quiesce #{}; the agent resumes it by itself in {} ms unless released\n",
                        q.volume,
                        q.kind,
                        q.quiesce_id,
                        q.deadline_unix_ms - q.taken_at_unix_ms
                    )
                });
            }
            VolumeCommand::Release {
                target,
                volume,
                quiesce_id,
            } => {
                let r = host.release(&volume, quiesce_id).await?;
                print(target.output, &r, |r| {
                    format!(
                        "{}: quiesce #{} released after {} ms\n",
                        r.volume, r.quiesce_id, r.held_ms
                    )
                });
            }
            VolumeCommand::Ack { target, volume } => {
                let acked = host.acknowledge(&volume).await?;
                print(
                    target.output,
                    &serde_json::json!({"volume": volume, "acknowledged": acked}),
                    |_| match &acked {
                        Some(m) => format!("{volume}: acknowledged: {m}\n"),
                        None => format!("{volume}: nothing was waiting for acknowledgement\n"),
                    },
                );
            }
            VolumeCommand::Thaw { target, volume } => {
                let r = host.thaw(&volume).await?;
                print(target.output, &r, |r| {
                    format!("{}: resumed after {} ms\n", r.volume, r.held_ms)
                });
            }
            VolumeCommand::Check {
                target,
                volume,
                repair,
            } => {
                let r = host.check(&volume, repair).await?;
                let clean = r.clean;
                print(target.output, &r, |r| {
                    format!(
                        "{}: {}{}\n{}\n",
                        r.volume,
                        if r.clean {
                            "clean"
                        } else {
                            "NOT clean (repair with --repair)"
                        },
                        if r.repaired { ", repaired" } else { "" },
                        r.output.trim_end()
                    )
                });
                if !clean {
                    return Ok(ExitCode::from(1));
                }
            }
            VolumeCommand::Hook {
                target,
                volume,
                kind,
            } => {
                let kind = if kind == "stop" {
                    HookKind::Stop
                } else {
                    HookKind::Start
                };
                let out = host.run_hook(&volume, kind).await?;
                print(target.output, &out, |o| {
                    format!(
                        "{volume}: {} exited {:?} in {} ms\n{}{}",
                        o.command, o.exit_code, o.elapsed_ms, o.stdout, o.stderr
                    )
                });
            }
            VolumeCommand::Quiesces { target } => {
                let held = host.quiesces().await?;
                let resumed = host.resumes().await?;
                let both = serde_json::json!({"held": held, "resumed_by_agent": resumed});
                print(target.output, &both, |_| {
                    let mut out = String::from("HELD\n");
                    for q in &held {
                        out.push_str(&format!(
                            "  {} #{} {:?} by {} deadline {}\n",
                            q.volume, q.quiesce_id, q.kind, q.owner, q.deadline_unix_ms
                        ));
                    }
                    out.push_str("RESUMED BY THE AGENT\n");
                    for r in &resumed {
                        out.push_str(&format!(
                            "  {} #{} at {}: {}{}\n",
                            r.volume,
                            r.quiesce_id,
                            r.resumed_at_unix_ms,
                            r.reason,
                            r.error
                                .as_deref()
                                .map(|e| format!(" (FAILED: {e})"))
                                .unwrap_or_default()
                        ));
                    }
                    out
                });
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `stillpoint workload --device PATH`: writes workload records into a volume image (or
/// device) outside any agent, for demos. `--no-flush` leaves the write-back cache unwritten,
/// as a separate without flush would.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadCommand {
    /// File or block device to write (it must already exist).
    #[arg(long)]
    pub device: PathBuf,
    /// Records to add after those already there.
    #[arg(long, default_value_t = 1000)]
    pub records: u64,
    /// Write a fresh sim file system first (erases the device).
    #[arg(long)]
    pub format: bool,
    /// Do not flush at the end: the device keeps torn records.
    #[arg(long)]
    pub no_flush: bool,
    /// Seed of the write-back order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

impl WorkloadCommand {
    pub async fn run(self) -> Result<ExitCode, HostError> {
        let dev = std::sync::Arc::new(FileDevice::open(&self.device)?);
        let run =
            workload::run_on_device(dev, self.records, self.format, !self.no_flush, self.seed)
                .await?;
        print(self.output, &run, |r| {
            format!(
                "{}: {} records, {}; device now holds {}\n",
                self.device.display(),
                r.records_total,
                if r.flushed { "flushed" } else { "NOT flushed" },
                r.device_report
            )
        });
        Ok(ExitCode::SUCCESS)
    }
}

/// `stillpoint verify --device PATH`: reads a volume image (or device) and reports the
/// workload's records. Exit code 1 if anything is torn or missing.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyCommand {
    /// File or block device holding an MV or RV written by the workload.
    #[arg(long)]
    pub device: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

impl VerifyCommand {
    pub async fn run(self) -> Result<ExitCode, HostError> {
        let dev = FileDevice::open(&self.device)?;
        let rep = workload::verify(&dev).await?;
        print(self.output, &rep, |r| {
            let mut s = format!("{}: {r}\n", self.device.display());
            for t in &r.torn {
                s.push_str(&format!(
                    "  torn record {} at byte {}: {}\n",
                    t.slot, t.offset, t.reason
                ));
            }
            s
        });
        Ok(if rep.is_consistent() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}
