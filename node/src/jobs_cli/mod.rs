//! `stillpoint backup`, `stillpoint job list|show|watch|cancel` and `stillpoint copies list`.
//!
//! A backup is a [`Command::SubmitJob`] proposed through the leader, stamped with the
//! proposer's clock and who asked (`$USER@hostname`, the client's own statement until the
//! cluster authenticates clients). Everything else reads the views the agents serve
//! (`jobs`, `job:ID`, `copies`, `copies:GROUP`; [`stillpoint_coordinator::views`]), never the
//! whole state with its job history.
//!
//! `job watch` (and `backup --wait`) follow a job by polling `job:ID` on the leader (confirmed
//! by a quorum: a follower may not have applied a job it was just told about), with a
//! pause that starts at [`WATCH_POLL_MS_MIN`] after a change and grows to
//! [`WATCH_POLL_MS_MAX`] while nothing moves, and print every step change as one timeline
//! line. They end when the job ends, with the exit code of its end
//! ([`crate::error::job_end_exit_code`]: 0 done and consistent, 11 crash-consistent, 12
//! failed, 13 cancelled), or after `--timeout` (exit 5: the job goes on). A leader change while
//! watching is ridden out: a failed read is retried for up to [`WATCH_UNREACHABLE_MS_MAX`].
//!
//! Submodules: `tables` prints `job list`, `job show` and `copies list`; `watch` follows a job.

mod progress;
mod tables;
mod watch;

use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use stillpoint_coordinator::job::{Job, JobEvent, JobId, JobKind, JobState};
use stillpoint_coordinator::views::{self, CopyEntry, JobSummary};
use stillpoint_coordinator::{Command, Response};
use stillpoint_proto::cluster::QueryRequest;

use tables::summary_state;
pub use tables::{copies, list, show};
pub use watch::{WATCH_POLL_MS_MAX, WATCH_POLL_MS_MIN, WATCH_UNREACHABLE_MS_MAX, Watched, watch};

use crate::cli::ClientArgs;
use crate::client::Client;
use crate::error::NodeError;
use crate::output::{OutputFormat, json};

/// Longest `--timeout` of a watch, in seconds, and the bound when none is given (7 days).
pub const WATCH_TIMEOUT_S_MAX: u64 = 7 * 24 * 3_600;

/// `stillpoint backup GROUP`, `stillpoint group prepare GROUP`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The consistency group (as `stillpoint inventory show` lists it).
    pub group: String,
    /// Follow the job until it ends, printing each step; exit with the job's outcome.
    #[arg(long)]
    pub wait: bool,
    /// Refuse (exit 3, naming the job that holds them) instead of queueing when another job
    /// owns a pair or volume of the group.
    #[arg(long)]
    pub no_queue: bool,
    /// With --wait: stop following after this many seconds (exit 5; the job goes on).
    #[arg(long, value_parser = timeout_s, requires = "wait")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Every job the cluster holds (unfinished, and ended ones kept in the history).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One job: its plan, every step's state; exits with the job's outcome if it has ended.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        id: JobId,
    },
    /// Follow a job until it ends, one line per step change; exits with the job's outcome.
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        id: JobId,
        /// Stop following after this many seconds (exit 5; the job goes on).
        #[arg(long, value_parser = timeout_s)]
        timeout: Option<u64>,
    },
    /// Cancel a job: a queued job ends at once; a running one sends nothing new, releases
    /// the quiesces it holds at once, and ends when its outstanding steps have settled.
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        id: JobId,
    },
}

#[derive(Debug, Subcommand)]
pub enum CopiesCommand {
    /// The catalogue of copies: every backup that ended done, with its label and its RVs.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only the copies of this group.
        #[arg(long)]
        group: Option<String>,
    },
}

fn timeout_s(text: &str) -> Result<u64, String> {
    let s: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if s == 0 || s > WATCH_TIMEOUT_S_MAX {
        return Err(format!(
            "{s} s: the timeout must be 1 to {WATCH_TIMEOUT_S_MAX} seconds"
        ));
    }
    Ok(s)
}

/// Who is asking: `$USER@hostname` (`$LOGNAME` without `$USER`), as the client says (not authenticated until the cluster
/// has TLS and roles).
pub async fn submitter() -> String {
    let mut host = String::new();
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(text) = tokio::fs::read_to_string(path).await
            && !text.trim().is_empty()
        {
            host = text.trim().to_string();
            break;
        }
    }
    if host.is_empty() {
        host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown-host".into());
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

/// Reads one view (`jobs`, `job:ID`, `copies`, `copies:GROUP`) from the leader; `consistent`
/// confirms its leadership with a quorum first.
async fn view<T: serde::de::DeserializeOwned>(
    client: &Client,
    what: &str,
    consistent: bool,
) -> Result<T, NodeError> {
    let reply = client
        .on_leader("query", |mut c| async move {
            c.query(QueryRequest {
                what: what.into(),
                consistent,
            })
            .await
        })
        .await?;
    serde_json::from_slice(&reply.json)
        .map_err(|e| NodeError::Invalid(format!("agent sent an undecodable {what}: {e}")))
}

/// Every job's summary, read with a quorum's confirmation.
pub async fn read_jobs(client: &Client) -> Result<Vec<JobSummary>, NodeError> {
    view(client, "jobs", true).await
}

/// One job in full (every step and its history). [`NodeError::NotFound`] if the cluster does
/// not hold it.
pub async fn read_job(client: &Client, id: JobId, consistent: bool) -> Result<Job, NodeError> {
    view(client, &format!("job:{id}"), consistent).await
}

/// The copy catalogue, of one group when given, read with a quorum's confirmation.
pub async fn read_copies(
    client: &Client,
    group: Option<&str>,
) -> Result<Vec<CopyEntry>, NodeError> {
    match group {
        Some(g) => view(client, &format!("copies:{g}"), true).await,
        None => view(client, "copies", true).await,
    }
}

/// `stillpoint group ...`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Prepare the group's volumes as a job: free every RV, set every pair on its array, and
    /// run the first whole-volume copy until every pair is in sync. Exits 0 once it finished
    /// (with --wait).
    Prepare(BackupArgs),
}

/// A job the cluster accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub job_id: JobId,
    /// `backup` or `prepare`.
    pub kind: &'static str,
    pub group: String,
    /// The job it queues behind, if any.
    pub waiting_for: Option<JobId>,
}

/// Proposes a backup of `group` through the leader. A group that does not exist or breaks a
/// rule, and with `no_queue` a group another job holds, is [`NodeError::Refused`] (exit 3)
/// naming the rule and the job.
pub async fn submit_backup(
    client: &Client,
    group: &str,
    no_queue: bool,
) -> Result<Accepted, NodeError> {
    let kind = JobKind::Backup {
        group: group.to_string(),
    };
    submit(client, kind, no_queue).await
}

/// Proposes a job of `kind` through the leader; refusals as [`submit_backup`].
pub async fn submit(client: &Client, kind: JobKind, no_queue: bool) -> Result<Accepted, NodeError> {
    let (what, group) = match &kind {
        JobKind::Backup { group } => ("backup", group.clone()),
        JobKind::Prepare { group } => ("prepare", group.clone()),
    };
    let group = group.as_str();
    let command = Command::SubmitJob {
        kind,
        submitted_by: submitter().await,
        at_ms: crate::agent::now_ms(),
        no_queue,
    };
    let response = match client.propose(&command).await {
        Ok((response, _)) => response,
        Err(NodeError::OutcomeUnknown(what)) => {
            return Err(NodeError::OutcomeUnknown(format!(
                "{what}; `stillpoint job list` shows whether the job on {group} was accepted"
            )));
        }
        Err(e) => return Err(e),
    };
    match response {
        Response::JobAccepted {
            job_id,
            waiting_for,
        } => Ok(Accepted {
            job_id,
            kind: what,
            group: group.to_string(),
            waiting_for,
        }),
        Response::Refused { rule } => Err(NodeError::Refused(rule)),
        Response::InventoryInvalid { errors } => Err(NodeError::Refused(format!(
            "cannot {what} group {group:?}: {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))),
        other => Err(NodeError::Invalid(format!(
            "unexpected answer to a {what}: {other:?}"
        ))),
    }
}

/// `stillpoint backup GROUP [--wait] [--no-queue]`: the exit code.
pub async fn run_backup(args: BackupArgs) -> Result<u8, NodeError> {
    let kind = JobKind::Backup {
        group: args.group.clone(),
    };
    run_submit(kind, args).await
}

/// `stillpoint group ...`: the exit code.
pub async fn run_group(command: GroupCommand) -> Result<u8, NodeError> {
    match command {
        GroupCommand::Prepare(args) => {
            let kind = JobKind::Prepare {
                group: args.group.clone(),
            };
            run_submit(kind, args).await
        }
    }
}

/// Submits a job and, with `--wait`, follows it to its end.
async fn run_submit(kind: JobKind, args: BackupArgs) -> Result<u8, NodeError> {
    let client = Client::new(&args.client.endpoint);
    let output = args.client.output;
    let accepted = submit(&client, kind, args.no_queue).await?;
    if !args.wait {
        if output == OutputFormat::Json {
            println!("{}", json(&accepted));
        } else {
            println!("{}", accepted_text(&accepted));
        }
        return Ok(0);
    }
    if output == OutputFormat::Table {
        println!("{}", accepted_text(&accepted));
    }
    let watched = watch(&client, accepted.job_id, watch_bound(args.timeout), output).await?;
    if output == OutputFormat::Json {
        println!(
            "{}",
            json(&serde_json::json!({
                "accepted": accepted,
                "job": views::job_summary(&watched.job),
                "timeline": watched.timeline,
                "copy_progress": watched.copy_progress,
                "exit_code": watched.exit_code,
            }))
        );
    }
    Ok(watched.exit_code)
}

fn accepted_text(a: &Accepted) -> String {
    match a.waiting_for {
        Some(holder) => format!(
            "job {} accepted: {} of {}, queued behind job {holder} (it starts when job {holder} ends)",
            a.job_id, a.kind, a.group
        ),
        None => format!(
            "job {} accepted: {} of {}, running",
            a.job_id, a.kind, a.group
        ),
    }
}

fn watch_bound(timeout_s: Option<u64>) -> Duration {
    Duration::from_secs(timeout_s.unwrap_or(WATCH_TIMEOUT_S_MAX))
}

/// `stillpoint job ...`: the exit code.
pub async fn run_job(command: JobCommand) -> Result<u8, NodeError> {
    match command {
        JobCommand::List { client } => {
            list(&Client::new(&client.endpoint), client.output).await?;
            Ok(0)
        }
        JobCommand::Show { client, id } => {
            show(&Client::new(&client.endpoint), id, client.output).await
        }
        JobCommand::Watch {
            client,
            id,
            timeout,
        } => {
            let output = client.output;
            let watched = watch(
                &Client::new(&client.endpoint),
                id,
                watch_bound(timeout),
                output,
            )
            .await?;
            if output == OutputFormat::Json {
                println!(
                    "{}",
                    json(&serde_json::json!({
                        "job": views::job_summary(&watched.job),
                        "timeline": watched.timeline,
                        "copy_progress": watched.copy_progress,
                        "exit_code": watched.exit_code,
                    }))
                );
            }
            Ok(watched.exit_code)
        }
        JobCommand::Cancel { client, id } => {
            cancel(&Client::new(&client.endpoint), id, client.output).await?;
            Ok(0)
        }
    }
}

/// `stillpoint copies list`: the exit code.
pub async fn run_copies(command: CopiesCommand) -> Result<u8, NodeError> {
    let CopiesCommand::List { client, group } = command;
    copies(
        &Client::new(&client.endpoint),
        group.as_deref(),
        client.output,
    )
    .await?;
    Ok(0)
}

/// `stillpoint job cancel ID`: asks the cluster to cancel the job; returns it as read after.
pub async fn cancel(client: &Client, id: JobId, output: OutputFormat) -> Result<Job, NodeError> {
    let job = read_job(client, id, true).await?;
    let ended = |job: &Job| match &job.state {
        JobState::Ended { end, .. } => Some(NodeError::WrongState(format!(
            "job {id} has already ended ({}); there is nothing to cancel",
            views::end_text(end)
        ))),
        _ => None,
    };
    if let Some(e) = ended(&job) {
        return Err(e);
    }
    let command = Command::Job {
        job_id: id,
        event: JobEvent::CancelRequested {
            by: submitter().await,
        },
        at_ms: crate::agent::now_ms(),
    };
    match client.propose(&command).await?.0 {
        Response::Applied { .. } => {}
        Response::Refused { rule } => {
            // It may have ended between the read and the proposal.
            let now = read_job(client, id, true).await?;
            return Err(ended(&now).unwrap_or(NodeError::Refused(rule)));
        }
        other => {
            return Err(NodeError::Invalid(format!(
                "unexpected answer to a cancel: {other:?}"
            )));
        }
    }
    let job = read_job(client, id, true).await?;
    let s = views::job_summary(&job);
    if output == OutputFormat::Json {
        println!("{}", json(&s));
    } else if s.end.is_some() {
        println!("job {id} {}", summary_state(&s));
    } else {
        println!(
            "job {id} is cancelling: nothing new is sent, held quiesces are released at once; `stillpoint job watch {id}` follows it to its end"
        );
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_says_which_job_it_queues_behind() {
        let mut a = Accepted {
            job_id: 2,
            kind: "backup",
            group: "payroll".into(),
            waiting_for: Some(1),
        };
        assert_eq!(
            accepted_text(&a),
            "job 2 accepted: backup of payroll, queued behind job 1 (it starts when job 1 ends)"
        );
        a.waiting_for = None;
        assert_eq!(
            accepted_text(&a),
            "job 2 accepted: backup of payroll, running"
        );
    }

    #[test]
    fn a_watch_timeout_is_whole_seconds_within_a_week() {
        assert_eq!(timeout_s("600"), Ok(600));
        assert!(timeout_s("0").unwrap_err().contains("1 to 604800"));
        assert!(timeout_s("604801").is_err());
        assert!(
            timeout_s("1h")
                .unwrap_err()
                .contains("not a number of seconds")
        );
    }
}
