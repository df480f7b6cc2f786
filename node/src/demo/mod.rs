//! `stillpoint demo`: a local site on the embedded defaults, for a first look at a backup the
//! cluster drives — and survives its leader's death in the middle of.
//!
//! The demo starts, as child processes of this binary on loopback ([`site::LocalSite`]): the
//! software array `A1` and four agents — `mgmt1` (management, the array's control path),
//! `db1` and `db2` (business servers, one MV each with an application writing checksummed
//! records), `backup1` (backup server, both RVs). They form one cluster; the site file is
//! applied; `group prepare payroll` sets both pairs and runs their first copy as a cluster job.
//! Then the backup of group `payroll` is submitted as a job, and once both business nodes say
//! their MV is held quiesced the demo **SIGKILLs the leader's agent**, waits until another
//! agent leads, and restarts the killed one: the new leader takes the job over, asks the
//! executors what became of the steps in flight, and finishes. So that the freeze window is
//! open long enough to strike inside it (a release build goes from the last quiesce to the
//! releases in a few milliseconds, less than one look at the hosts), the demo first has the
//! array hold every separate for [`DEMO_SEPARATE_DELAY_MS`] (an injected fault, `stillpoint
//! array fault separate-delay`), and lifts it once the leader is dead. The timeline of every
//! step is printed as the replicated log records it, and at the end the verifier reads both
//! RVs through the array: every record intact and none missing, or the demo fails. When the
//! killed agent held an MV quiesced, its restart resumed the MV by itself, the static point did
//! not hold, and the job re-ran it as a new round before labelling the copy consistent.
//!
//! `--hold` keeps the site running so other `stillpoint` commands can be pointed at it.

pub mod inprocess;
pub mod layout;
pub mod postgres;
pub mod site;
mod timeline;

pub use inprocess::{DemoArray, start_local_cluster};

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use stillpoint_coordinator::job::{CopyLabel, Job, JobEnd, JobKind, JobState};
use stillpoint_coordinator::{ClusterState, Command, Response};
use stillpoint_proto::cluster::{QueryRequest, StatusRequest};

use crate::error::NodeError;
use crate::output::OutputFormat;
use site::{LocalSite, SiteLayout};
use stillpoint_array::Array;
use stillpoint_host::Host;

/// How long the demo's array holds each separate of the backup (`Fault::SeparateDelay`), so
/// that every MV stays quiesced, the separates unanswered, long enough for the demo to see it
/// from the business nodes and kill the leader inside the freeze window.
pub const DEMO_SEPARATE_DELAY_MS: u64 = 1_500;
/// Bound on one look at a business node's quiesces.
const QUIESCE_LOOK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the site running until Ctrl-C, printing the endpoints to use.
    #[arg(long)]
    pub hold: bool,
    /// Keep data and logs under this dir (default: a temporary dir removed at exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Do not kill the leader during the backup.
    #[arg(long)]
    pub no_kill: bool,
    /// Back up a live PostgreSQL instead: real ext4 on the array's LDs, pgbench writing, a
    /// second server started on the copy and checked (root, /dev/fuse and PostgreSQL 15+).
    #[arg(long)]
    pub postgres: bool,
    /// With --postgres: online backup mode (`postgresql`) or `freeze`.
    #[arg(long, value_enum, default_value_t = postgres::PgQuiesce::Postgresql, requires = "postgres")]
    pub quiesce: postgres::PgQuiesce,
    /// With --postgres: the WAL on a second LD of the same node, in the same group.
    #[arg(long, requires = "postgres")]
    pub wal_on_second_ld: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Bound on each job of the demo, failover included.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(args: DemoArgs) -> Result<(), NodeError> {
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| NodeError::Invalid(format!("cannot create {}: {e}", d.display())))?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()
                .map_err(|e| NodeError::Invalid(format!("cannot create a temporary dir: {e}")))?;
            temp.path().to_path_buf()
        }
    };
    let bin = std::env::current_exe()
        .map_err(|e| NodeError::Invalid(format!("cannot find this program's path: {e}")))?;
    let json = args.output == OutputFormat::Json;
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if args.postgres {
        return run_postgres(&bin, &dir, &args, &say).await;
    }
    let layout = SiteLayout::spread(2);
    eprintln!(
        "starting software array A1 and agents {} as processes on loopback (data and logs in {}) ...",
        layout
            .agents()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        dir.display()
    );
    let site = LocalSite::start(&bin, &dir, layout).await?;
    let outcome = drive(site, &dir, &args, &say).await;
    if let Err(e) = &outcome {
        eprintln!("the demo failed: {e}\nagent logs are in {}", dir.display());
        if args.dir.is_none() {
            // Keep the evidence: the temporary dir would be removed.
            let kept = std::env::temp_dir().join(format!("stillpoint-demo-{}", std::process::id()));
            let _ = std::process::Command::new("cp")
                .arg("-a")
                .arg(&dir)
                .arg(&kept)
                .status();
            eprintln!("(copied to {})", kept.display());
        }
    }
    outcome
}

/// `demo --postgres`: runs [`postgres::run`], prints its report, and fails when the copy or
/// the run had problems.
async fn run_postgres(
    bin: &std::path::Path,
    dir: &std::path::Path,
    args: &DemoArgs,
    say: &dyn Fn(String),
) -> Result<(), NodeError> {
    let report = postgres::run(bin, dir, args.quiesce, args.wal_on_second_ld, say).await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if !matches!(e, NodeError::Prerequisite(_)) {
                eprintln!(
                    "the PostgreSQL demo failed: {e}
logs are in {}",
                    dir.display()
                );
            }
            return Err(e);
        }
    };
    if args.output == OutputFormat::Json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| NodeError::Invalid(format!("cannot print the report: {e}")))?;
        println!("{text}");
    } else {
        let c = &report.copy;
        say(format!(
            "\ncopy labelled {}; the copy's server recovered: {} history rows (production had {} when the job was submitted, {} when it ended)",
            report.label,
            c.history,
            report.production_history_before,
            report.production_history_after
        ));
        say(format!(
            "pgbench's invariant on the copy: sum of balances of accounts {}, tellers {}, branches {}; of the history's deltas {}; rows: {} branches, {} tellers, {} accounts",
            c.sum_abalance,
            c.sum_tbalance,
            c.sum_bbalance,
            c.sum_delta,
            c.branches,
            c.tellers,
            c.accounts
        ));
        say(format!("pg_amcheck on the copy: {}", report.amcheck));
        say(format!(
            "freeze window {} ms; pgbench: {} transactions overlapped it, the longest {:.1} ms (the whole run's longest {:.1} ms); pgbench errors: {}",
            report.window_ms,
            report.pgbench_transactions_in_window,
            report.pgbench_max_latency_in_window_ms,
            report.pgbench_max_latency_whole_run_ms,
            if report.pgbench_errors.is_empty() {
                "none".to_string()
            } else {
                report.pgbench_errors.join("; ")
            }
        ));
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!(
            "the PostgreSQL copy did not pass: {}",
            report.problems.join("; ")
        )))
    }
}

async fn drive(
    mut site: LocalSite,
    dir: &std::path::Path,
    args: &DemoArgs,
    say: &dyn Fn(String),
) -> Result<(), NodeError> {
    let status = site
        .client()
        .on_leader("status", |mut c| async move {
            c.status(StatusRequest { consistent: true }).await
        })
        .await?;
    print!("{}", crate::status::render(&status, args.output));
    if args.output == OutputFormat::Json {
        println!();
    }
    let site_file = dir.join("site.toml");
    std::fs::write(&site_file, site.layout.site_toml())
        .map_err(|e| NodeError::Invalid(format!("cannot write the site file: {e}")))?;
    crate::site::run_apply(
        &site.client(),
        OutputFormat::Table,
        &site_file,
        false,
        false,
    )
    .await?;
    site.start_applications().await?;
    say("\napplications app0 on db1:mv0 and app1 on db2:mv1 are writing; preparing the pairs (group prepare payroll):".into());
    let prepare = submit(
        &site,
        JobKind::Prepare {
            group: "payroll".into(),
        },
    )
    .await?;
    let end = follow(&mut site, prepare, None, say).await?;
    if end != JobEnd::Finished {
        return Err(NodeError::Invalid(format!(
            "group prepare did not finish: {end:?}"
        )));
    }
    // Let the applications write for a moment on mirrored volumes, as they would all day.
    tokio::time::sleep(Duration::from_millis(500)).await;
    say(
        "\nbackup of group payroll (2 pairs on db1 and db2, RVs on backup1), as a cluster job:"
            .into(),
    );
    if !args.no_kill {
        set_separate_delay(&site, DEMO_SEPARATE_DELAY_MS).await?;
        say(format!(
            "          >>> the array holds each separate {DEMO_SEPARATE_DELAY_MS} ms (an injected fault, `stillpoint array fault separate-delay`): the freeze window stays open long enough to strike inside it"
        ));
    }
    let backup = submit(
        &site,
        JobKind::Backup {
            group: "payroll".into(),
        },
    )
    .await?;
    let kill_when = (!args.no_kill).then_some(KillPoint::MvsQuiesced);
    let end = follow(&mut site, backup, kill_when, say).await?;
    let label = match &end {
        JobEnd::Done { label } => label.clone(),
        other => {
            return Err(NodeError::Invalid(format!(
                "the backup did not complete: {other:?}"
            )));
        }
    };
    match &label {
        CopyLabel::Consistent => say("copy labelled CONSISTENT: every MV was held at its static point while every pair separated".into()),
        CopyLabel::CrashConsistent { why } => say(format!("copy labelled crash-consistent: {why}")),
    }
    let mut torn = false;
    for (i, p) in site.layout.pairs.clone().iter().enumerate() {
        let report = site.verify_rv(i).await?;
        torn |= !report.torn.is_empty() || !report.gaps.is_empty();
        say(format!(
            "verifier on backup1:{} ({}): {} records intact, {} torn/corrupt, {} missing",
            p.rv_volume,
            p.pair,
            report.intact_count,
            report.torn.len(),
            report.gaps.len()
        ));
    }
    if torn && label == CopyLabel::Consistent {
        return Err(NodeError::Invalid(
            "a copy labelled consistent has torn or missing records".into(),
        ));
    }
    if args.hold {
        eprintln!(
            "\nthe site is running; try:\n  export STILLPOINT_ENDPOINT={} STILLPOINT_ARRAY={}\n  stillpoint cluster status\n  stillpoint volume list --node backup1\n  stillpoint pair list\nCtrl-C stops it.",
            site.endpoints[0], site.array_address
        );
        crate::cli::shutdown_signal().await;
    }
    site.stop().await;
    Ok(())
}

/// When the demo kills the leader.
#[derive(Clone, Copy, Debug)]
pub(super) enum KillPoint {
    /// Once every business node says its MV is held quiesced: inside the freeze window (the
    /// log records the quiesces only after it, as the leader proposes nothing inside it).
    MvsQuiesced,
}

/// Sets the array's separate delay (`Fault::SeparateDelay`; 0 lifts it), bounded.
async fn set_separate_delay(site: &LocalSite, ms: u64) -> Result<(), NodeError> {
    let array = site.connect_array().await?;
    let fault = stillpoint_array::Fault::SeparateDelay { ms };
    tokio::time::timeout(stillpoint_array::CALL_TIMEOUT, array.inject_fault(&fault))
        .await
        .map_err(|_| NodeError::Timeout {
            what: format!("setting the array's separate delay to {ms} ms"),
            ms: stillpoint_array::CALL_TIMEOUT.as_millis() as u64,
        })??;
    Ok(())
}

/// Whether every MV of the site is held quiesced, as the business nodes' agents say (a node
/// that does not answer in time holds none).
async fn all_mvs_quiesced(site: &LocalSite) -> bool {
    let mut held = 0;
    for slot in layout::DB1..site.layout.backup_slot() {
        let Ok(host) = site.host(slot) else { continue };
        if let Ok(Ok(q)) = tokio::time::timeout(QUIESCE_LOOK_TIMEOUT, host.quiesces()).await {
            held += q.len();
        }
    }
    held >= site.layout.pairs.len()
}

pub(super) async fn submit(site: &LocalSite, kind: JobKind) -> Result<u64, NodeError> {
    let command = Command::SubmitJob {
        kind,
        submitted_by: "demo".into(),
        at_ms: crate::agent::now_ms(),
        no_queue: false,
    };
    match site.client().propose(&command).await?.0 {
        Response::JobAccepted { job_id, .. } => Ok(job_id),
        Response::Refused { rule } => Err(NodeError::Refused(rule)),
        other => Err(NodeError::Invalid(format!(
            "the job was not accepted: {other:?}"
        ))),
    }
}

pub(super) async fn job_of(site: &LocalSite, id: u64) -> Option<Job> {
    // Read from the leader, confirmed by a quorum: never an older copy than printed already.
    let reply = site
        .client()
        .on_leader("query", |mut c| async move {
            c.query(QueryRequest {
                what: "state".into(),
                consistent: true,
            })
            .await
        })
        .await
        .ok()?;
    let state: ClusterState = serde_json::from_slice(&reply.json).ok()?;
    state.jobs.jobs.get(&id).map(|j| (**j).clone())
}

/// Prints the job's timeline as the log records it until it ends; kills the leader once at
/// `kill`, restarting it at once.
async fn follow(
    site: &mut LocalSite,
    id: u64,
    kill: Option<KillPoint>,
    say: &dyn Fn(String),
) -> Result<JobEnd, NodeError> {
    follow_for(site, id, kill, JOB_TIMEOUT, say).await
}

/// [`follow`], bounded by `timeout`.
pub(super) async fn follow_for(
    site: &mut LocalSite,
    id: u64,
    mut kill: Option<KillPoint>,
    timeout: Duration,
    say: &dyn Fn(String),
) -> Result<JobEnd, NodeError> {
    let started = tokio::time::Instant::now();
    let mut printed = timeline::Printed::default();
    loop {
        if let Some(job) = job_of(site, id).await {
            for line in printed.new_lines(&job) {
                say(line);
            }
            if let JobState::Ended { end, .. } = &job.state {
                return Ok(end.clone());
            }
            if let Some(KillPoint::MvsQuiesced) = kill
                && all_mvs_quiesced(site).await
            {
                let leader = site.leader().await?;
                site.kill(leader).await;
                say(format!(
                    "          >>> SIGKILL the leader's agent ({}) inside the freeze window: db1 and db2 hold their MVs quiesced, the separates are not answered yet",
                    site.name(leader)
                ));
                // The rest of the window is the failover's: separates are admitted at
                // once again.
                set_separate_delay(site, 0).await?;
                // Restarted at once, it could lead again in its own term (its vote is
                // committed); kept down until another agent leads, the job changes hands.
                let new = site.leader().await?;
                say(format!(
                    "          >>> {} leads now; it takes the job over; restarting {}",
                    site.name(new),
                    site.name(leader)
                ));
                site.restart(leader).await?;
                kill = None;
            }
        }
        if started.elapsed() > timeout {
            return Err(NodeError::Timeout {
                what: format!("job {id} to end"),
                ms: timeout.as_millis() as u64,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
