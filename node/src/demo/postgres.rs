//! `stillpoint demo --postgres`: a live PostgreSQL backed up by a cluster job and started from
//! its copy — the product's end-to-end check on real file systems.
//!
//! The site is the demo's, with linux hosts ([`SiteHosts::Linux`]): the software array `A1`,
//! agents `mgmt1`, `db1` (business) and `backup1` (backup), each LD attached to the agents that
//! may see it as a loop device over a FUSE file the agent serves, so every byte PostgreSQL
//! writes goes through the array. Then:
//!
//! 1. ext4 is made on db1's MV(s) and mounted; `initdb` puts the data directory on `mv0`
//!    (and with `--wal-on-second-ld` the WAL on `mv1`, a second LD in the same group), WAL
//!    archiving on; the server starts and `pgbench -i` fills it.
//! 2. `group prepare` sets the pairs and copies the MVs; pgbench starts writing (4 clients).
//! 3. The backup job runs while pgbench writes: quiesce (online backup mode with
//!    `--quiesce postgresql`, `fsfreeze` with `--quiesce freeze`), separate, release, and the
//!    RV mounted on backup1 with a new file-system identity; with online backup mode the mount
//!    writes the backup label and recovery settings into the copy.
//! 4. On backup1 a second server starts on the copy at another socket, recovers (from the WAL
//!    archive up to the end of the backup, or from the copy's own WAL after a freeze) and is
//!    checked: pgbench's invariant (the balances of accounts, tellers and branches each sum to
//!    the history's deltas), the row counts, `pg_amcheck` when installed, and a history that
//!    lies between what production held when the job was submitted and when it ended.
//! 5. pgbench must have seen no error; the longest transaction overlapping the freeze window
//!    (first quiesce sent to last release done) is reported.
//!
//! Two things are done by the demo that a backup server's own procedure does after the mount
//! (the "post-copy update"): a freeze copy's `postmaster.pid` names the production server and
//! is removed before the copy's server starts, and with the WAL on its own LD the copy's
//! `pg_wal` symlink is pointed at the WAL RV's mount (on a real site the backup server mounts
//! the RVs where the business server mounts the MVs, and nothing needs pointing).
//!
//! The agents are not killed here: with linux hosts an agent serves its host's LDs, so killing
//! a business node's agent is a storage failure of that host (PostgreSQL gets I/O errors), not
//! a leader failover; the leader-kill demo is the sim one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use stillpoint_coordinator::job::{CopyLabel, JobEnd, JobKind};
use stillpoint_coordinator::postgres::PostgresQuiesce;
use stillpoint_host::Host;

use super::site::{LocalSite, SiteHosts, SiteLayout};
use crate::error::NodeError;
use stillpoint_host::pgctl::{PgInstall, PgServer, PgbenchTotals, max_latency_in};

/// How the demo quiesces PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PgQuiesce {
    /// Online backup mode (`pg_backup_start` … `pg_backup_stop`): the copy carries its
    /// backup label and recovers from the WAL archive.
    Postgresql,
    /// `fsfreeze` of the volume(s): a crash-consistent image PostgreSQL recovers from its own
    /// WAL.
    Freeze,
}

/// pgbench's scale (100,000 accounts each).
const PGBENCH_SCALE: u32 = 2;
/// How long pgbench writes: long enough to outlast the backup on a loaded machine.
const PGBENCH_SECONDS: u32 = 45;
/// Capacity of each LD.
const LD_BYTES: u64 = 256 * 1024 * 1024;
/// Bound on each job.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);
/// Socket "ports" of the production server and of the copy's (no TCP is opened).
const PRODUCTION_PORT: u16 = 5432;
const COPY_PORT: u16 = 5433;

/// What the run saw; printed as JSON with `--output json`.
#[derive(Debug, Serialize)]
pub struct PgDemoReport {
    pub quiesce: PgQuiesce,
    pub wal_on_second_ld: bool,
    pub job_id: u64,
    /// `consistent`, or `crash-consistent: why`.
    pub label: String,
    /// From the first quiesce sent to the last release done.
    pub window_ms: u64,
    pub pgbench_transactions_in_window: usize,
    pub pgbench_max_latency_in_window_ms: f64,
    pub pgbench_max_latency_whole_run_ms: f64,
    /// Errors pgbench reported (none is the only good answer).
    pub pgbench_errors: Vec<String>,
    /// Production's `pgbench_history` rows when the job was submitted and when it ended.
    pub production_history_before: i64,
    pub production_history_after: i64,
    pub copy: PgbenchTotals,
    /// `clean`, `not installed`, or what it found.
    pub amcheck: String,
    /// Where backup1 mounted the RVs.
    pub rv_mounts: Vec<String>,
    /// Everything wrong with the copy or the run; empty when it passed.
    pub problems: Vec<String>,
}

/// The layout: `db1` with the data directory's MV (and the WAL's), RVs on `backup1`.
/// The settings of the production server's member (online backup mode).
fn production_settings(dir: &Path) -> PostgresQuiesce {
    PostgresQuiesce {
        host: dir.join("pg-sock").display().to_string(),
        port: PRODUCTION_PORT,
        user: "postgres".into(),
        database: "postgres".into(),
        password: None,
        data_dir: "pgdata".into(),
        wal_archive_dir: dir.join("wal-archive").display().to_string(),
    }
}

fn layout(dir: &Path, quiesce: PgQuiesce, wal_on_second_ld: bool) -> SiteLayout {
    let mut layout = SiteLayout::spread_over(if wal_on_second_ld { 2 } else { 1 }, 1);
    layout.hosts = SiteHosts::Linux { fs: "ext4".into() };
    layout.ld_bytes = LD_BYTES;
    // Within a linux volume's default freeze limit (10 s): a longer ask is refused by S4.
    layout.quiesce_ms_max = 10_000;
    layout.quiesce = match quiesce {
        PgQuiesce::Postgresql => "postgresql".into(),
        PgQuiesce::Freeze => "freeze".into(),
    };
    if let Some(wal) = layout.pairs.get_mut(1) {
        // The WAL volume holds no data directory: online backup mode is the data's member's;
        // the WAL's joins the static point by freezing.
        wal.quiesce = Some("freeze".into());
    }
    layout.postgresql = Some(production_settings(dir));
    layout
}

/// Runs the whole check on a new site under `dir`; `say` prints progress. The report comes
/// back whatever the copy looked like (its `problems` say what failed); an error means the
/// run itself could not be carried out.
pub async fn run(
    bin: &Path,
    dir: &Path,
    quiesce: PgQuiesce,
    wal_on_second_ld: bool,
    say: &dyn Fn(String),
) -> Result<PgDemoReport, NodeError> {
    let install = prerequisites()?;
    // PostgreSQL runs as its own user: it must reach its directories under `dir`.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(
        |e| NodeError::Invalid(format!("cannot open {} to postgres: {e}", dir.display())),
    )?;
    let layout = layout(dir, quiesce, wal_on_second_ld);
    let pg = production_settings(dir);
    say(format!(
        "starting software array A1 and agents mgmt1, db1, backup1 with linux hosts (LDs as loop devices over FUSE), in {} ...",
        dir.display()
    ));
    let mut site = LocalSite::start(bin, dir, layout).await?;
    let outcome = drive(
        &mut site,
        &install,
        &pg,
        dir,
        quiesce,
        wal_on_second_ld,
        say,
    )
    .await;
    site.stop().await;
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    site: &mut LocalSite,
    install: &PgInstall,
    pg: &PostgresQuiesce,
    dir: &Path,
    quiesce: PgQuiesce,
    wal_on_second_ld: bool,
    say: &dyn Fn(String),
) -> Result<PgDemoReport, NodeError> {
    let site_file = dir.join("site.toml");
    std::fs::write(&site_file, site.layout.site_toml())
        .map_err(|e| NodeError::Invalid(format!("cannot write the site file: {e}")))?;
    crate::site::apply_file(&site.client(), &site_file, false, false).await?;
    site.make_file_systems().await?;
    let mv_mount = |i: usize| {
        let p = &site.layout.pairs[i];
        PathBuf::from(
            site.layout
                .mount_point(dir, &site.name(p.mv_node), &p.mv_volume),
        )
    };
    let archive = PathBuf::from(&pg.wal_archive_dir);
    let mut production = PgServer::new(
        install,
        &mv_mount(0).join(&pg.data_dir),
        Path::new(&pg.host),
        PRODUCTION_PORT,
        &dir.join("pg-logs").join("production.log"),
    );
    let wal_dir = wal_on_second_ld.then(|| mv_mount(1).join("pg_wal"));
    production
        .initdb(Some(&archive), wal_dir.as_deref())
        .await?;
    production.start(true).await?;
    production.pgbench_init(PGBENCH_SCALE).await?;
    say(format!(
        "PostgreSQL runs on db1:mv0 (ext4 on LD A1/0{}); pgbench -i -s {PGBENCH_SCALE} done; preparing the pairs:",
        if wal_on_second_ld {
            ", its WAL on db1:mv1, LD A1/2"
        } else {
            ""
        }
    ));
    let prepare = super::submit(
        site,
        JobKind::Prepare {
            group: "payroll".into(),
        },
    )
    .await?;
    let end = super::follow_for(site, prepare, None, JOB_TIMEOUT, say).await?;
    if end != JobEnd::Finished {
        return Err(NodeError::Invalid(format!(
            "group prepare did not finish: {end:?}"
        )));
    }
    let bench_logs = dir.join("pgbench-logs");
    let bench_started_ms = crate::agent::now_ms();
    let bench = production.pgbench_run(PGBENCH_SECONDS, &bench_logs)?;
    // Let pgbench commit some transactions before the backup starts.
    let before = crate::wait::until("pgbench to commit transactions", JOB_TIMEOUT, || async {
        let history = production.totals().await.ok()?.history;
        (history >= 100).then_some(history)
    })
    .await?;
    say(format!(
        "\npgbench writes (4 clients, {PGBENCH_SECONDS} s); backup of group payroll ({}) as a cluster job:",
        match quiesce {
            PgQuiesce::Postgresql => "online backup mode",
            PgQuiesce::Freeze => "fsfreeze",
        }
    ));
    let backup = super::submit(
        site,
        JobKind::Backup {
            group: "payroll".into(),
        },
    )
    .await?;
    let end = super::follow_for(site, backup, None, JOB_TIMEOUT, say).await?;
    let after = production.totals().await?.history;
    let job = super::job_of(site, backup)
        .await
        .ok_or_else(|| NodeError::Invalid(format!("job {backup} vanished")))?;
    // Every round's freeze counts: a stall in an abandoned round is a stall pgbench saw.
    let (window_from_ms, window_to_ms) = job.quiesced_span_ms().unwrap_or_default();
    let mut problems = Vec::new();
    let label = match &end {
        JobEnd::Done {
            label: CopyLabel::Consistent,
        } => "consistent".to_string(),
        JobEnd::Done {
            label: CopyLabel::CrashConsistent { why },
        } => {
            problems.push(format!("the copy is only crash-consistent: {why}"));
            format!("crash-consistent: {why}")
        }
        other => {
            return Err(NodeError::Invalid(format!(
                "the backup did not complete: {other:?}"
            )));
        }
    };

    // The copy, on backup1.
    let backup_host = site.host(site.layout.backup_slot())?;
    let mut rv_mounts = Vec::new();
    for p in &site.layout.pairs {
        let v = backup_host.volume(&p.rv_volume).await?;
        rv_mounts.push(v.mounted_at.ok_or_else(|| {
            NodeError::Invalid(format!("RV {} is not mounted after the job", p.rv_volume))
        })?);
    }
    let copy_data = Path::new(&rv_mounts[0]).join(&pg.data_dir);
    post_copy_update(&copy_data, quiesce, rv_mounts.get(1).map(Path::new))?;
    let mut copy = PgServer::new(
        install,
        &copy_data,
        &dir.join("pg-sock-copy"),
        COPY_PORT,
        &dir.join("pg-logs").join("copy.log"),
    );
    say(format!(
        "\nstarting a second PostgreSQL on the copy ({}) on backup1; it recovers ...",
        copy_data.display()
    ));
    copy.start(false).await?;
    copy.wait_promoted().await?;
    let totals = copy.totals().await?;
    problems.extend(totals.problems(i64::from(PGBENCH_SCALE)));
    if !(before..=after).contains(&totals.history) {
        problems.push(format!(
            "the copy holds {} history rows: not between production's {before} when the job was submitted and {after} when it ended",
            totals.history
        ));
    }
    let amcheck = match copy.amcheck().await {
        None => "not installed".to_string(),
        Some(Ok(())) => "clean".to_string(),
        Some(Err(e)) => {
            problems.push(format!("pg_amcheck: {e}"));
            e
        }
    };
    copy.stop("fast").await?;

    let pgbench_errors = finish_pgbench(bench).await?;
    if window_to_ms > bench_started_ms + u64::from(PGBENCH_SECONDS) * 1000 {
        problems.push(format!(
            "pgbench ({PGBENCH_SECONDS} s) ended before the freeze window did: the window was not measured under load"
        ));
    }
    problems.extend(pgbench_errors.iter().map(|e| format!("pgbench: {e}")));
    let (max_window_ms, in_window) = max_latency_in(&bench_logs, window_from_ms, window_to_ms);
    let (max_run_ms, _) = max_latency_in(&bench_logs, 0, u64::MAX);
    production.stop("fast").await?;
    Ok(PgDemoReport {
        quiesce,
        wal_on_second_ld,
        job_id: backup,
        label,
        window_ms: window_to_ms.saturating_sub(window_from_ms),
        pgbench_transactions_in_window: in_window,
        pgbench_max_latency_in_window_ms: max_window_ms,
        pgbench_max_latency_whole_run_ms: max_run_ms,
        pgbench_errors,
        production_history_before: before,
        production_history_after: after,
        copy: totals,
        amcheck,
        rv_mounts,
        problems,
    })
}

/// What the demo needs on this machine: root, FUSE and loop devices (linux hosts on the
/// array's LDs), mkfs.ext4 and losetup, and PostgreSQL 15+ with its `postgres` user.
fn prerequisites() -> Result<PgInstall, NodeError> {
    let install_hint = "on Debian: apt-get install postgresql-15 postgresql-client-15 e2fsprogs";
    let install = PgInstall::find().map_err(|e| match e {
        stillpoint_host::HostError::Unsupported { reason, .. } => NodeError::Prerequisite(reason),
        other => other.into(),
    })?;
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
        || !Path::new("/dev/loop-control").exists()
    {
        return Err(NodeError::Prerequisite(
            "the PostgreSQL demo puts real file systems on the array's LDs (loop devices over FUSE files): it needs /dev/fuse and /dev/loop-control, which this machine does not offer".into(),
        ));
    }
    for tool in ["losetup", "mkfs.ext4"] {
        if !stillpoint_host::pgctl::tool_installed(tool) {
            return Err(NodeError::Prerequisite(format!(
                "{tool} is not installed; {install_hint}"
            )));
        }
    }
    Ok(install)
}

/// What the backup server's procedure does to a mounted copy before starting it: a freeze
/// copy still names the production server in `postmaster.pid` (online backup mode's mount
/// removed it already), and a WAL on its own LD is reached through the WAL RV's mount.
fn post_copy_update(
    copy_data: &Path,
    quiesce: PgQuiesce,
    wal_rv_mount: Option<&Path>,
) -> Result<(), NodeError> {
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        NodeError::Invalid(format!("cannot {what} {}: {e}", p.display()))
    };
    if quiesce == PgQuiesce::Freeze {
        for stale in ["postmaster.pid", "postmaster.opts"] {
            let p = copy_data.join(stale);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail("remove", &p, e)),
            }
        }
    }
    if let Some(wal) = wal_rv_mount {
        let link = copy_data.join("pg_wal");
        std::fs::remove_file(&link).map_err(|e| fail("remove the symlink", &link, e))?;
        std::os::unix::fs::symlink(wal.join("pg_wal"), &link)
            .map_err(|e| fail("point at the WAL RV", &link, e))?;
    }
    Ok(())
}

/// Waits (bounded) for pgbench to end; the errors it reported.
async fn finish_pgbench(bench: tokio::process::Child) -> Result<Vec<String>, NodeError> {
    let bound = Duration::from_secs(u64::from(PGBENCH_SECONDS) + 180);
    let (ok, text) = stillpoint_host::pgctl::pgbench_wait(bench, bound).await?;
    let mut errors: Vec<String> = text
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error") || l.contains("abort")
        })
        .map(|l| l.trim().to_string())
        .collect();
    errors.extend(
        text.lines()
            .filter(|l| l.starts_with("number of failed transactions:"))
            .filter(|l| !l.starts_with("number of failed transactions: 0 "))
            .map(|l| l.trim().to_string()),
    );
    if !ok {
        errors.push("pgbench exited unsuccessfully".into());
    }
    Ok(errors)
}
