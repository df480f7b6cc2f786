//! The process-level layer (`stillpoint-chaos run`): one seeded schedule against a site of
//! real `stillpoint` processes, judged from records stillpoint does not write about itself.
//!
//! A schedule ([`schedule::Schedule::draw`]) fixes the site's shape (3 or 5 voters), the
//! faults (kind, instant, hold, and a number that picks among the live candidates) and the
//! backup submissions. [`run`] starts the site ([`LocalSite`]: the software array with its
//! audit log on (on RDR sites, [`schedule::Shape::rdr`], also the remote array A2 with its
//! own), mgmt1, the business nodes with the workload writing to every MV, backup1;
//! every process in its own data dir under `base_dir/seed-N`), applies the site file,
//! prepares the pairs, and runs two phases:
//!
//! 1. **Faults** ([`RunConfig::fault_ms`]): the faults strike one after another
//!    ([`faults::Harness::strike`]) while a client submits backups, a poller looks at the
//!    backup node's mounts every 150 ms, and a watcher reads every RV of each copy labelled
//!    consistent with the workload's verifier as soon as its job ends ([`observe`]).
//! 2. **Heal**: every fault is removed ([`faults::Harness::heal`]); within
//!    [`RunConfig::heal_ms_max`] there must be a leader, the client's last submission must
//!    have its answer (one sent to a leader cut off may get it only after the heal), every
//!    job the client saw accepted must have ended, and no MV may be quiesced. A pair the
//!    array's record then leaves in `fault` must be explained by an RV LD failure the harness
//!    struck, and a backup submitted then must take it out ([`recovery_backup`]).
//!
//! Then the checkers ([`check`]) judge the records ([`records`]) and the array's audit log;
//! once the site has stopped, [`volumes`] judges S5 and S6 on volumes from the agents' step
//! journals.
//! A failing schedule keeps its dir (configs, data, every process's log, `audit.log`) and its
//! report carries a timeline of faults, observations and job steps.

pub mod array_proc;
pub mod check;
pub mod excuse;
pub mod faults;
pub mod fencing;
pub mod fs_apps;
pub mod fs_copy;
pub mod fs_cut;
pub mod inject;
pub mod instant;
pub mod link;
pub mod observe;
pub mod records;
pub mod report;
pub mod schedule;
pub mod switches;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::job::{CopyLabel, JobEnd};
use stillpoint_node::demo::site::{
    A1, A2, LocalSite, Placement, ProcessPlacement, SiteHosts, SiteLayout,
};
use tokio::sync::watch;

use crate::net::SiteNet;
use check::{SiteFacts, Violation};
use faults::Harness;
use inject::RvHook;
use observe::with;
use records::{Records, now_ms};
use report::Report;
use schedule::{FaultKind, Schedule, Shape, Submission};

/// How a schedule is run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The `stillpoint` binary every process runs.
    pub stillpoint: PathBuf,
    /// Where each schedule's dir (`seed-N`) is made.
    pub base_dir: PathBuf,
    /// Keep every schedule's dir, not only failing ones.
    pub keep: bool,
    pub fault_ms: u64,
    pub heal_ms_max: u64,
    /// Every MV's quiesce limit.
    pub quiesce_ms_max: u64,
    /// What S4 adds to the limit: the array's 100 ms write sampling, the start hook, the
    /// write-back cache filling again, a loaded machine.
    pub stall_slack_ms: u64,
    /// Every process in its own network namespace, and network partitions among the faults
    /// ([`crate::net`]; needs root). Without it the site runs on loopback and a seed draws
    /// the schedule it drew before partitions existed.
    pub partitions: bool,
    /// Draw only these kinds of fault (all when empty).
    pub only: Vec<FaultKind>,
    /// The business hosts run the `linux` backend with this file system (only `ext4` is
    /// judged) on every MV, quiesced by freeze, each written by a [`fs_apps`] application;
    /// `None`: the sim backend and its workload.
    pub mv_fs: Option<String>,
}

impl RunConfig {
    pub fn new(stillpoint: PathBuf, base_dir: PathBuf) -> RunConfig {
        RunConfig {
            stillpoint,
            base_dir,
            keep: false,
            fault_ms: 40_000,
            heal_ms_max: 120_000,
            quiesce_ms_max: 10_000,
            stall_slack_ms: 3_000,
            partitions: false,
            only: Vec::new(),
            mv_fs: None,
        }
    }
}

/// Makes the site's network ([`SiteNet`]) for `layout` and places every process on it.
pub async fn place(layout: &mut SiteLayout) -> Result<SiteNet, String> {
    let mut names: Vec<String> = layout.array_names().iter().map(|a| a.to_string()).collect();
    names.extend(layout.agents().into_iter().map(|(n, _)| n));
    let net = tokio::task::spawn_blocking(move || SiteNet::create(&names))
        .await
        .map_err(|e| format!("making the site's network: {e}"))??;
    let placed = |name: &str| -> Result<ProcessPlacement, String> {
        Ok(ProcessPlacement {
            prefix: net.prefix(name)?,
            ip: net.node(name)?.ip.clone(),
        })
    };
    layout.placement = Some(Placement {
        port: net.port(),
        array: placed(A1)?,
        remote_array: match layout.remote {
            Some(_) => Some(placed(A2)?),
            None => None,
        },
        agents: layout
            .agents()
            .iter()
            .map(|(n, _)| placed(n))
            .collect::<Result<_, _>>()?,
    });
    Ok(net)
}

/// Pause between the workload's records.
const WORKLOAD_PACE_MS: u64 = 10;
/// Bound on starting the site, applying the site file and preparing the pairs.
const SETUP_TIMEOUT: Duration = Duration::from_secs(240);

/// The `stillpoint` binary: `explicit`, or the one next to this program (a cargo build puts
/// both in `target/<profile>/`).
pub fn find_stillpoint(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match explicit {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's path: {e}"))?
            .with_file_name("stillpoint"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the stillpoint binary is not at {}: build it with `cargo build --release --bin stillpoint` \
             (it lands next to stillpoint-chaos), or pass --stillpoint PATH",
            path.display()
        ))
    }
}

fn layout_for(shape: &Shape, cfg: &RunConfig, rv_hook: &RvHook) -> SiteLayout {
    let mut layout = SiteLayout::spread_over(shape.pairs, shape.business_nodes);
    if shape.rdr {
        // A2 at the remote site, its odd pairs RDR ([`Shape::rdr_pairs`]).
        layout = layout.with_rdr(&shape.rdr_pairs());
    }
    // The RVs' users: a stop hook the harness can make fail or hang ([`inject`]).
    layout.rv_volume_toml = rv_hook.volume_toml();
    layout.audit_log = true;
    layout.workload_pace_ms = WORKLOAD_PACE_MS;
    layout.cache_blocks_max = Some(4);
    layout.quiesce_ms_max = cfg.quiesce_ms_max;
    // Room for every record the workload writes until the heal bound and more (an LD full
    // would stop the writer and look like a stall).
    let window_ms = cfg.fault_ms + cfg.heal_ms_max + 120_000;
    let bytes = window_ms / WORKLOAD_PACE_MS * stillpoint_host::RECORD_BYTES + 64 * 1024;
    layout.ld_bytes = bytes.div_ceil(64 * 1024) * 64 * 1024;
    if let Some(fs) = &cfg.mv_fs {
        layout.hosts = SiteHosts::Linux { fs: fs.clone() };
        layout.quiesce = "freeze".into();
        // Room for every record the applications write until the heal bound and more, twice
        // over (the file system's own metadata and journal).
        let bytes =
            window_ms / fs_apps::FILE_APP_PACE_MS * stillpoint_host::FILE_RECORD_BYTES as u64 * 2;
        layout.ld_bytes = (bytes.max(64 << 20)).div_ceil(1 << 20) << 20;
    }
    layout
}

/// Runs the schedule of `seed` (its own tokio runtime; blocks until done).
pub fn run(seed: u64, cfg: &RunConfig) -> Report {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run_async(seed, cfg)),
        Err(e) => Report {
            seed,
            errors: vec![format!("cannot start a tokio runtime: {e}")],
            ..Default::default()
        },
    }
}

async fn run_async(seed: u64, cfg: &RunConfig) -> Report {
    let started = Instant::now();
    let schedule = Schedule::draw_on(
        seed,
        cfg.fault_ms,
        cfg.partitions,
        &cfg.only,
        cfg.mv_fs.is_some(),
    );
    let mut report = Report {
        seed,
        shape: Some(schedule.shape.clone()),
        plan: schedule.plan(),
        ..Default::default()
    };
    let dir = cfg.base_dir.join(format!("seed-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        report
            .errors
            .push(format!("cannot create {}: {e}", dir.display()));
        return report;
    }
    let rv_hook = RvHook::new(&dir);
    let mut layout = layout_for(&schedule.shape, cfg, &rv_hook);
    // Made before the site and dropped after it: its namespaces outlive every process.
    let net = if cfg.partitions {
        match place(&mut layout).await {
            Ok(net) => Some(net),
            Err(e) => return setup_failed(report, &dir, e, started),
        }
    } else {
        None
    };
    let site = match tokio::time::timeout(SETUP_TIMEOUT, setup(&cfg.stillpoint, &dir, layout)).await
    {
        Ok(Ok(site)) => site,
        Ok(Err(e)) => return setup_failed(report, &dir, e, started),
        Err(_) => {
            return setup_failed(
                report,
                &dir,
                format!(
                    "the site was not ready within {} s",
                    SETUP_TIMEOUT.as_secs()
                ),
                started,
            );
        }
    };
    let apps = match cfg.mv_fs {
        Some(_) => fs_apps::start(&site.layout, &dir),
        None => Vec::new(),
    };
    let records: observe::Shared = Arc::new(Mutex::new(Records::default()));
    let mut h = Harness {
        site,
        net,
        paused: BTreeSet::new(),
        records: records.clone(),
        rv_hook,
        injected_on: Vec::new(),
        switches_unavailable: switches::unavailable(&cfg.stillpoint).await,
    };
    with(&records, |r| {
        r.note(format!("schedule: {}", schedule.plan()))
    });
    let facts = facts(&h.site.layout, cfg);
    let endpoints = h.site.endpoints.clone();
    let fault_start = now_ms();
    with(&records, |r| r.fault_phase_ms.0 = fault_start);

    let (stop_submit_tx, stop_submit) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let last_state: Arc<Mutex<Option<ClusterState>>> = Arc::new(Mutex::new(None));
    let rv_lds: BTreeMap<String, u32> = h
        .site
        .layout
        .pairs
        .iter()
        .map(|p| (p.rv_volume.clone(), p.rv_ld))
        .collect();
    let rvs: Vec<(String, PathBuf, u32)> = h
        .site
        .layout
        .pairs
        .iter()
        .map(|p| {
            let array_dir = h.site.dir.join(SiteLayout::array_file_stem(p.rv_array()));
            (p.pair.clone(), array_dir, p.rv_ld)
        })
        .collect();
    // A submission in flight when the fault phase ends (one sent to a leader cut off may be
    // answered only after the heal) belongs to the run: the heal waits for the submitter.
    let submitter = tokio::spawn(observe::submitter(
        endpoints.clone(),
        schedule.submissions.clone(),
        fault_start,
        records.clone(),
        stop_submit,
    ));
    let tasks = vec![
        tokio::spawn(observe::mount_poller(
            endpoints[h.site.layout.backup_slot()].clone(),
            rv_lds,
            records.clone(),
            stop.clone(),
        )),
        tokio::spawn(observe::job_watcher(
            endpoints.clone(),
            rvs,
            match cfg.mv_fs {
                Some(_) => observe::RvCheck::Ext4 {
                    scratch_dir: dir.clone(),
                },
                None => observe::RvCheck::SimRecords,
            },
            records.clone(),
            last_state.clone(),
            stop.clone(),
        )),
    ];

    // Phase 1: faults.
    for f in &schedule.faults {
        let at = fault_start + f.at_ms;
        if now_ms() >= fault_start + cfg.fault_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
        h.strike(f).await;
    }
    let end = fault_start + cfg.fault_ms;
    tokio::time::sleep(Duration::from_millis(end.saturating_sub(now_ms()))).await;
    let _ = stop_submit_tx.send(true);

    // Phase 2: heal.
    let heal_start = now_ms();
    with(&records, |r| {
        r.fault_phase_ms.1 = heal_start;
        r.heal_phase_ms.0 = heal_start;
        r.note("heal: removing every fault");
    });
    h.heal().await;
    let business: Vec<(String, String)> = (1..h.site.layout.backup_slot())
        .map(|s| (h.site.name(s), endpoints[s].clone()))
        .collect();
    let deadline = heal_start + cfg.heal_ms_max;
    let mut unsettled = String::from("not looked at");
    while now_ms() < deadline {
        let leader = observe::leader(&endpoints, &h.alive()).await;
        let open: Vec<u64> = with(&records, |r| {
            r.jobs
                .iter()
                .filter(|(_, j)| j.end.is_none())
                .map(|(id, _)| *id)
                .collect()
        });
        let quiesced = observe::quiesced_mvs(&business).await;
        let submitting = !submitter.is_finished();
        if leader.is_some()
            && !submitting
            && open.is_empty()
            && quiesced.as_ref().is_some_and(|q| q.is_empty())
        {
            unsettled.clear();
            break;
        }
        unsettled = format!(
            "leader {:?}, jobs not ended {open:?}, MVs quiesced {quiesced:?}{}",
            leader.map(|l| h.site.name(l)),
            if submitting {
                ", a submission still unanswered"
            } else {
                ""
            }
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.heal_ms = now_ms() - heal_start;
    with(&records, |r| {
        r.note(format!("heal: settled in {} ms", now_ms() - heal_start))
    });
    if unsettled.is_empty() {
        let (v, recovered) =
            recovery_backup(&h.site.audit_path(), &endpoints, &facts, &records).await;
        report.violations.extend(v);
        report.pairs_recovered = recovered;
    }
    // Let the applications write a little on the healed site: their stalls end in the audit.
    tokio::time::sleep(Duration::from_millis(cfg.stall_slack_ms.min(2_000))).await;
    with(&records, |r| r.heal_phase_ms.1 = now_ms());
    let apps_seen = tokio::task::spawn_blocking(move || fs_apps::stop(apps))
        .await
        .unwrap_or_default();
    let _ = stop_tx.send(true);
    let _ = submitter.await;
    for t in tasks {
        let _ = t.await;
    }
    if !unsettled.is_empty() {
        report.violations.push(Violation {
            prop: "heal",
            at_ms: deadline,
            what: format!(
                "not settled within {} ms of the heal: {unsettled}",
                cfg.heal_ms_max
            ),
        });
    }

    // Judge.
    let records = with(&records, |r| r.clone());
    match read_audits(&h.site, &facts) {
        Ok((a1, merged)) => {
            for gap in a1.gaps {
                report.errors.push(format!("audit log lines lost: {gap}"));
            }
            // A1's log in its own order for everything but the RVs' I/O: pair operations and
            // states and every MV write are A1's alone; A2 logs only the host I/O on the RVs
            // of RDR pairs, which S1 judges line by line.
            let audit = a1.lines;
            let (v, refused) = check::s1_s2(&merged, &records, &facts);
            report.violations.extend(v);
            report.rv_io_refused = refused;
            report.mount_looks = records.polls.len() as u64;
            let (v, c) = check::s3(&audit, &records, &facts);
            report.violations.extend(v);
            report
                .violations
                .extend(check::done_jobs_left_pairs_separated(
                    &audit, &records, &facts,
                ));
            report.s3_judged = c.judged;
            let (v, judged) = instant::s3_one_instant(&audit, &records);
            report.violations.extend(v);
            report.s3_one_instant_judged = judged;
            report.s3_unjudged = c.unjudged.len() as u64;
            if facts.real_fs {
                let (v, cuts) = fs_cut::s3_cut_of_quiesced_fs(&merged, &records);
                report.violations.extend(v);
                report.s3_cuts_judged = cuts.judged;
                report.s3_unjudged += cuts.unjudged.len() as u64;
            }
            report.s3_excused = c.excused;
            let (v, longest, excused) = check::s4(&audit, &records, &facts);
            report.violations.extend(v);
            report.s4_longest_ms = longest;
            report.s4_excused = excused;
            let (v, apps) = fs_apps::s4(&apps_seen, &records, &facts);
            report.violations.extend(v);
            report.s4_longest_ms = report.s4_longest_ms.max(apps.longest_judged_ms);
            report.s4_excused += apps.excused;
            let (v, counts) = fencing::s5_s6(&audit);
            report.violations.extend(v);
            report.fenced_ops = counts.fenced_ops;
            report.fenced_refused = counts.fenced_refused;
        }
        Err(e) => report.errors.push(e),
    }
    report.violations.extend(check::s7(&records));
    tally(&mut report, &records);
    let state = last_state.lock().unwrap_or_else(|p| p.into_inner()).clone();
    report.timeline = timeline(&records, state.as_ref(), fault_start);

    // The host steps on volumes, from the agents' journals: readable only once every agent
    // has let go of its database.
    let data_dirs: Vec<(String, PathBuf)> = h
        .site
        .layout
        .agents()
        .into_iter()
        .map(|(name, _)| {
            let dir = h.site.dir.join(format!("data-{name}"));
            (name, dir)
        })
        .collect();
    h.site.stop().await;
    match tokio::task::spawn_blocking(move || volumes::read_journals(&data_dirs)).await {
        Ok((steps, errors)) => {
            report.errors.extend(errors);
            let (v, counts) = volumes::s5_s6(&steps);
            report.violations.extend(v);
            report.volume_steps = counts;
        }
        Err(e) => report
            .errors
            .push(format!("reading the agents' journals: {e}")),
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    if report.failed() || cfg.keep {
        // The timeline next to the logs (the summary prints it for failing runs only).
        let _ = std::fs::write(dir.join("timeline.txt"), report.timeline.join("\n") + "\n");
        report.kept = Some(dir);
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    report
}

/// A1's audit log (pairs live on their MV's array) and its lost lines.
struct PairLog {
    lines: Vec<stillpoint_array::AuditLine>,
    gaps: Vec<String>,
}

/// Every array's audit log, each checked for lost lines: A1's alone, in its own order (pairs
/// live on their MV's array, so it holds every pair operation and state, and every MV
/// write), and all of them merged in time order for S1, whose RV I/O lines of RDR pairs are
/// A2's; S1 keys RVs by LD number ([`SiteFacts::check_unique_lds`]).
fn read_audits(
    site: &LocalSite,
    facts: &SiteFacts,
) -> Result<(PairLog, Vec<stillpoint_array::AuditLine>), String> {
    facts.check_unique_lds()?;
    let mut logs = Vec::new();
    let mut gaps = Vec::new();
    for array in site.layout.array_names() {
        let lines = records::read_audit(&site.audit_path_of(array))?;
        gaps.extend(
            check::audit_gaps(&lines)
                .into_iter()
                .map(|g| format!("{array}: {g}")),
        );
        logs.push(lines);
    }
    let a1 = logs.first().cloned().unwrap_or_default();
    Ok((PairLog { lines: a1, gaps }, records::merge_audits(logs)))
}

/// Bound on the recovery backup's end ([`recovery_backup`]).
const RECOVERY_MS_MAX: u64 = 60_000;

/// The heal's account of pairs left in failure separation. A pair an RV LD failure put in
/// `fault` stays there after the LD is repaired until a replicate takes it out: no job has
/// to run for the heal to settle. So once the heal has settled, if the array's record leaves
/// any pair in `fault`, the harness checks that an LD failure it struck explains it, then
/// submits one backup, which (nothing is faulty any more) must end done within
/// [`RECOVERY_MS_MAX`] and leave no pair in `fault`. Returns the violations and how many
/// pairs the backup took out of `fault`.
async fn recovery_backup(
    audit_path: &Path,
    endpoints: &[String],
    facts: &SiteFacts,
    records: &observe::Shared,
) -> (Vec<Violation>, u64) {
    let heal = |what: String| Violation {
        prop: "heal",
        at_ms: now_ms(),
        what,
    };
    let stuck = match records::read_audit(audit_path) {
        Ok(audit) => check::pairs_in_fault(&audit, facts),
        // The judge reads it again and reports the error.
        Err(_) => return (Vec::new(), 0),
    };
    if stuck.is_empty() {
        return (Vec::new(), 0);
    }
    let mut out = with(records, |r| {
        r.note(format!(
            "heal: pairs left in failure separation {stuck:?}: a backup must take them out"
        ));
        check::unexplained_faults(&stuck, r, facts, now_ms())
    });
    let before: BTreeSet<u64> = with(records, |r| r.jobs.keys().copied().collect());
    let (_keep_going, go) = watch::channel(false);
    observe::submitter(
        endpoints.to_vec(),
        vec![Submission {
            at_ms: 0,
            no_queue: false,
        }],
        now_ms(),
        records.clone(),
        go,
    )
    .await;
    let Some(job) = with(records, |r| {
        r.jobs.keys().copied().find(|id| !before.contains(id))
    }) else {
        out.push(heal(format!(
            "pairs {stuck:?} were left in fault and the backup that should take them out was not accepted"
        )));
        return (out, 0);
    };
    let deadline = now_ms() + RECOVERY_MS_MAX;
    let end = loop {
        let end = with(records, |r| r.jobs.get(&job).and_then(|j| j.end.clone()));
        if end.is_some() || now_ms() >= deadline {
            break end;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    match end {
        Some((JobEnd::Done { .. }, _)) => {
            let still = records::read_audit(audit_path)
                .map(|a| check::pairs_in_fault(&a, facts))
                .unwrap_or_default();
            if !still.is_empty() {
                out.push(heal(format!(
                    "backup job {job} ended done after the heal, yet {still:?} stayed in fault"
                )));
            }
            let recovered = (stuck.len() - still.len().min(stuck.len())) as u64;
            (out, recovered)
        }
        Some((other, _)) => {
            out.push(heal(format!(
                "backup job {job}, submitted after the heal to take {stuck:?} out of fault, ended {other:?}"
            )));
            (out, 0)
        }
        None => {
            out.push(heal(format!(
                "backup job {job}, submitted after the heal to take {stuck:?} out of fault, had not ended within {RECOVERY_MS_MAX} ms"
            )));
            (out, 0)
        }
    }
}

fn setup_failed(mut report: Report, dir: &Path, e: String, started: Instant) -> Report {
    report.errors.push(format!("setting the site up: {e}"));
    report.kept = Some(dir.to_path_buf());
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// Starts the site, applies the site file, prepares the pairs (`group prepare --wait`, as an
/// operator would) and starts the applications.
pub async fn setup(bin: &Path, dir: &Path, layout: SiteLayout) -> Result<LocalSite, String> {
    let site = LocalSite::start(bin, dir, layout)
        .await
        .map_err(|e| format!("starting the processes: {e}"))?;
    let file = dir.join("site.toml");
    std::fs::write(&file, site.layout.site_toml())
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    let endpoint = site.endpoints[0].clone();
    let real_fs = matches!(site.layout.hosts, SiteHosts::Linux { .. });
    cli(
        bin,
        &[
            "apply",
            "-f",
            &file.display().to_string(),
            "--endpoint",
            &endpoint,
        ],
    )
    .await?;
    if real_fs {
        site.make_file_systems()
            .await
            .map_err(|e| format!("making the MVs' file systems: {e}"))?;
    }
    cli(
        bin,
        &[
            "group",
            "prepare",
            "payroll",
            "--wait",
            "--endpoint",
            &endpoint,
        ],
    )
    .await?;
    site.start_applications()
        .await
        .map_err(|e| format!("starting the applications: {e}"))?;
    Ok(site)
}

/// Runs one `stillpoint` client command to its end (the commands bound their own waits).
async fn cli(bin: &Path, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env_remove("STILLPOINT_ENDPOINT")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "stillpoint {} exited {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn facts(layout: &SiteLayout, cfg: &RunConfig) -> SiteFacts {
    SiteFacts {
        backup_host: "backup1".into(),
        rv_pairs: layout
            .pairs
            .iter()
            .map(|p| (p.rv_ld, p.pair.clone()))
            .collect(),
        rv_arrays: layout
            .pairs
            .iter()
            .map(|p| (p.rv_ld, p.rv_array().to_string()))
            .collect(),
        rv_mv_hosts: layout
            .pairs
            .iter()
            .map(|p| (p.rv_ld, layout.name(p.mv_node)))
            .collect(),
        mvs: layout
            .pairs
            .iter()
            .map(|p| (p.mv_ld, (p.pair.clone(), layout.name(p.mv_node))))
            .collect(),
        quiesce_ms_max: cfg.quiesce_ms_max,
        stall_slack_ms: cfg.stall_slack_ms,
        real_fs: cfg.mv_fs.is_some(),
    }
}

fn outcome_name(end: Option<&JobEnd>) -> &'static str {
    match end {
        Some(JobEnd::Done {
            label: CopyLabel::Consistent,
        }) => "done consistent",
        Some(JobEnd::Done {
            label: CopyLabel::CrashConsistent { .. },
        }) => "done crash-consistent",
        Some(JobEnd::Finished) => "finished",
        Some(JobEnd::Failed { .. }) => "failed",
        Some(JobEnd::Cancelled { .. }) => "cancelled",
        None => "not ended",
    }
}

fn tally(report: &mut Report, records: &Records) {
    for w in &records.faults {
        *report.faults.entry(w.kind).or_default() += 1;
    }
    report.faults_skipped = records.skipped.len() as u64;
    for j in records.jobs.values() {
        *report
            .jobs
            .entry(outcome_name(j.end.as_ref().map(|(e, _)| e)).into())
            .or_default() += 1;
    }
    report.submissions_refused = records.submissions_refused;
    report.submissions_unknown = records.submissions_unknown;
}

/// Faults, the harness's observations and every job step, in time order, relative to the
/// start of the fault phase.
fn timeline(records: &Records, state: Option<&ClusterState>, origin_ms: u64) -> Vec<String> {
    let mut lines: Vec<(u64, String)> = records.notes.clone();
    for w in &records.faults {
        lines.push((
            w.end_ms,
            format!(
                "fault {} on {} removed (struck {:+.3} s)",
                w.kind.name(),
                w.targets.join(", "),
                (w.start_ms as f64 - origin_ms as f64) / 1000.0
            ),
        ));
    }
    for (kind, why) in &records.skipped {
        lines.push((origin_ms, format!("fault {} skipped: {why}", kind.name())));
    }
    if let Some(state) = state {
        for job in state.jobs.jobs.values() {
            for step in &job.steps {
                let call = format!("{:?}", step.call);
                let call: String = call.chars().take(90).collect();
                for e in &step.history {
                    lines.push((
                        e.at_ms,
                        format!("job {} step {} {} {call}", job.id, step.id, e.state.name()),
                    ));
                }
            }
        }
    }
    lines.sort_by_key(|(t, _)| *t);
    lines
        .into_iter()
        .map(|(t, l)| format!("{:+9.3} s  {l}", (t as f64 - origin_ms as f64) / 1000.0))
        .collect()
}
