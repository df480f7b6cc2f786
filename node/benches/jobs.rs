//! Job benchmarks on a local site of `stillpoint` processes (array + agents on loopback, the
//! same site as the job tests):
//!
//! 1. **Freeze window** through the cluster vs the same quiesce → separate → release run
//!    directly against the same host agents and array, for 1 pair on 1 business node and 8
//!    pairs on 4 business nodes. Through the cluster, the window is what the leader recorded:
//!    from the first quiesce it sent to the last release it heard back (the final round); run
//!    directly, from sending the quiesces to the last release reply, with every call of a
//!    phase sent at once, as the driver does. The overhead is the difference of the medians
//!    (and of the p99s).
//! 2. **Job resumption** after the leader's agent is SIGKILLed in the middle of a job (kept
//!    down until another agent leads, then restarted): from the kill to the first step the new
//!    leader sends under its new term (its dispatch time in the log); with one control node of
//!    the array (`mgmt1`), then two (`mgmt1`, `backup1`).
//!
//! Run: `cargo bench -p stillpoint-node --bench jobs`. `STILLPOINT_BENCH_RUNS` (default 50)
//! runs per freeze-window configuration and method (0 skips them), `STILLPOINT_BENCH_KILLS`
//! (default 20) kills; `STILLPOINT_BENCH_RESUMPTION=fast` runs only the shorter raft timings;
//! `STILLPOINT_BENCH_SHOW_RUNS` (any value) also prints every run's window, in run order.
//! Raft timings are the site's: heartbeat 100 ms, election timeout 300–500 ms.
//! Bounded: every job waits at most 3 minutes.

#[path = "../tests/job_site/mod.rs"]
mod job_site;

use std::time::{Duration, Instant};

use futures::future::join_all;
use job_site::*;
use stillpoint_array::{Array, LdRef, PairId, ReplicateOptions, SeparateOptions};
use stillpoint_coordinator::job::{FreezePhases, StepCall, StepState};
use stillpoint_host::{Host, QuiesceMode, QuiesceRequest};

const JOB_WITHIN: Duration = Duration::from_secs(180);
/// Shorter raft timings for the last resumption run: heartbeat 50 ms, election timeout
/// 150-300 ms.
const FAST_RAFT_TOML: &str =
    "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 150\nelection_timeout_max_ms = 300\n";

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn summary(name: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
    println!(
        "{name}: n={} min={:.1} ms p50={p50:.1} ms p99={p99:.1} ms max={:.1} ms",
        v.len(),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN)
    );
    (p50, p99)
}

/// The window, and its parts as the leader recorded them: each phase from its first send to
/// its last reply, and the gaps between one phase's last reply and the next phase's first send
/// (the leader's decide-and-send time).
fn parts_ms(p: &FreezePhases) -> [f64; 6] {
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64;
    [
        ms(p.quiesce.0, p.release.1),
        ms(p.quiesce.0, p.quiesce.1),
        ms(p.quiesce.1, p.separate.0),
        ms(p.separate.0, p.separate.1),
        ms(p.separate.1, p.release.0),
        ms(p.release.0, p.release.1),
    ]
}

const PART_NAMES: [&str; 6] = [
    "window",
    "quiesces",
    "  gap to separates",
    "separates",
    "  gap to releases",
    "releases",
];

fn pair_id(mv: u32, rv: u32) -> PairId {
    let ld = |ld| LdRef {
        array: "A1".into(),
        ld,
    };
    PairId {
        mv: ld(mv),
        rv: ld(rv),
    }
}

/// One freeze window run by hand: free the RVs and bring every pair to sync (not timed), then
/// quiesce every MV at once, separate every pair at once, release every MV at once (timed).
async fn direct_window_ms(site: &JobSite) -> [f64; 6] {
    let s = &site.site;
    let array = s.connect_array().await.expect("array");
    let backup = s.host(s.layout.backup_slot()).expect("host");
    for p in &s.layout.pairs {
        let _ = backup.unmount(&p.rv_volume, false).await;
        array
            .replicate(
                &pair_id(p.mv_ld, p.rv_ld),
                &ReplicateOptions {
                    wait_timeout_ms: Some(60_000),
                    ..ReplicateOptions::default()
                },
            )
            .await
            .expect("replicate");
    }
    let hosts: Vec<_> = s
        .layout
        .pairs
        .iter()
        .map(|p| (s.host(p.mv_node).expect("host"), p.clone()))
        .collect();
    let start = Instant::now();
    let mode = if s.layout.quiesce == "freeze" {
        QuiesceMode::Freeze
    } else {
        QuiesceMode::Unmount
    };
    let quiesces = join_all(hosts.iter().map(|(h, p)| {
        let mode = mode.clone();
        async move {
            let request = QuiesceRequest {
                volume: p.mv_volume.clone(),
                mode,
                limit_ms: Some(s.layout.quiesce_ms_max),
                owner: "bench".into(),
            };
            h.quiesce(&request).await
        }
    }))
    .await;
    let quiesced = start.elapsed().as_secs_f64() * 1e3;
    let separates = join_all(s.layout.pairs.iter().map(|p| {
        let array = &array;
        async move {
            array
                .separate(&pair_id(p.mv_ld, p.rv_ld), &SeparateOptions::default())
                .await
        }
    }))
    .await;
    let separated = start.elapsed().as_secs_f64() * 1e3;
    let releases = join_all(hosts.iter().zip(&quiesces).map(|((h, p), q)| {
        let id = q.as_ref().ok().map(|q| q.quiesce_id);
        h.release(&p.mv_volume, id)
    }))
    .await;
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    for r in quiesces
        .iter()
        .map(|q| q.as_ref().map(|_| ()).map_err(|e| e.to_string()))
    {
        r.expect("quiesce");
    }
    for r in separates {
        r.expect("separate");
    }
    for r in releases {
        r.expect("release");
    }
    [
        elapsed,
        quiesced,
        0.0,
        separated - quiesced,
        0.0,
        elapsed - separated,
    ]
}

async fn freeze_window(pairs: u32, nodes: usize, runs: usize) {
    println!(
        "--- freeze window, {pairs} pair(s) on {nodes} business node(s), {runs} runs each ---"
    );
    let site = JobSite::start(SiteLayout::spread_over(pairs, nodes)).await;
    let (mut cluster, mut direct) = (vec![Vec::new(); 6], vec![Vec::new(); 6]);
    for _ in 0..runs {
        let id = site.submit_backup().await;
        site.wait_ended(id, JOB_WITHIN).await;
        let job = site.job(id).await.expect("job");
        if let Some(p) = job.freeze_phases() {
            for (i, v) in parts_ms(&p).into_iter().enumerate() {
                cluster[i].push(v);
            }
        }
        for (i, v) in direct_window_ms(&site).await.into_iter().enumerate() {
            direct[i].push(v);
        }
    }
    if std::env::var_os("STILLPOINT_BENCH_SHOW_RUNS").is_some() {
        let show = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("  each run, through the cluster: {}", show(&cluster[0]));
        println!("  each run, direct             : {}", show(&direct[0]));
    }
    let (c50, c99) = summary("  through the cluster", cluster[0].clone());
    let (d50, d99) = summary("  direct             ", direct[0].clone());
    println!("  where the time goes (p50, through the cluster / direct):");
    for (i, name) in PART_NAMES.iter().enumerate().skip(1) {
        let p50 = |v: &Vec<f64>| {
            let mut v = v.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            percentile(&v, 0.5)
        };
        println!(
            "    {name:<20} {:>7.1} ms / {:>7.1} ms",
            p50(&cluster[i]),
            p50(&direct[i])
        );
    }
    println!(
        "  overhead: p50 {:.1} ms, p99 {:.1} ms (target p50 <= 3 ms: {})",
        c50 - d50,
        c99 - d99,
        if c50 - d50 <= 3.0 { "met" } else { "NOT met" }
    );
    site.site.stop().await;
}

/// `control_nodes`: the agents with a control path to the array. With one, a killed leader
/// that is that agent takes the array's only path with it until it is restarted, and the new
/// leader's first array step waits for it; with two, it passes over to the other.
/// `raft_toml`: the agents' raft timings (`None`: the site's, heartbeat 100 ms, election
/// timeout 300-500 ms). A new leader is elected only once the old one's lease (the longest
/// election timeout) and then an election timeout have passed, so they bound resumption.
async fn resumption(kills: usize, control_nodes: &[&str], raft_toml: Option<&str>) {
    println!(
        "--- job resumption after a leader SIGKILL, {kills} kills, array control nodes {control_nodes:?}, raft {} ---",
        raft_toml.unwrap_or("as the site").replace('\n', " ")
    );
    let mut layout = SiteLayout::spread(3);
    layout.control_nodes = control_nodes.iter().map(|n| n.to_string()).collect();
    if let Some(t) = raft_toml {
        layout.raft_toml = t.to_string();
    }
    let mut site = JobSite::start(layout).await;
    let (mut samples, mut took_over) = (Vec::new(), Vec::new());
    for _ in 0..kills {
        let id = site.submit_backup().await;
        // Kill once the RVs are being freed: the replicates, the freeze window and the rest
        // are ahead. (The log shows no later step until the window has closed: the leader
        // proposes nothing from the replicates' dispatch to the releases.)
        let deadline = Instant::now() + JOB_WITHIN;
        loop {
            let job = site.job(id).await.expect("job");
            let freeing = job
                .steps
                .iter()
                .filter(|s| matches!(s.call, StepCall::FreeRv { .. }))
                .all(|s| !matches!(s.state, StepState::Pending));
            if freeing || job.is_ended() {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let old_term = site
            .job(id)
            .await
            .expect("job")
            .steps
            .iter()
            .flat_map(|s| s.history.iter())
            .filter_map(|e| e.state_token_term())
            .max()
            .unwrap_or(0);
        let leader = site.site.leader().await.expect("leader");
        let killed_at_ms = stillpoint_node::agent::now_ms();
        site.site.kill(leader).await;
        // Kept down until another agent leads: a leader restarted at once may lead again in
        // its own term (openraft keeps its committed vote), which is no failover.
        let new = site.site.leader().await.expect("a new leader");
        assert_ne!(new, leader);
        site.site.restart(leader).await.expect("restart");
        site.wait_ended(id, JOB_WITHIN).await;
        let job = site.job(id).await.expect("job");
        let first_new = job
            .steps
            .iter()
            .flat_map(|s| s.history.iter())
            .filter_map(|e| match &e.state {
                StepState::Dispatched { token, .. } if token.term > old_term => Some(e.at_ms),
                _ => None,
            })
            .min();
        // The old leader is dead: whatever the log stamped after the kill, its successor did
        // (its takeover first).
        let first_after_kill = job
            .steps
            .iter()
            .flat_map(|s| s.history.iter())
            .map(|e| e.at_ms)
            .filter(|at| *at >= killed_at_ms)
            .min();
        match (first_new, first_after_kill) {
            (Some(at), Some(took)) => {
                println!(
                    "  kill {}: {} led; {} leads; first record +{} ms, first step sent +{} ms",
                    samples.len() + 1,
                    site.site.name(leader),
                    site.site.name(new),
                    took - killed_at_ms,
                    at - killed_at_ms
                );
                samples.push((at - killed_at_ms) as f64);
                took_over.push((took - killed_at_ms) as f64);
            }
            _ => println!("  (job {id} ended without a step sent after the kill)"),
        }
    }
    summary("  kill -> the new leader's first record", took_over);
    let (_, p99) = summary("  kill -> next step dispatched", samples);
    println!(
        "  target p99 <= 1500 ms: {}",
        if p99 <= 1500.0 { "met" } else { "NOT met" }
    );
    site.site.stop().await;
}

/// The term of the token a step event carries, if any.
trait TokenTerm {
    fn state_token_term(&self) -> Option<u64>;
}

impl TokenTerm for stillpoint_coordinator::job::StepEvent {
    fn state_token_term(&self) -> Option<u64> {
        match &self.state {
            StepState::Dispatched { token, .. }
            | StepState::Unknown { token, .. }
            | StepState::Done { token, .. }
            | StepState::Failed { token, .. } => Some(token.term),
            _ => None,
        }
    }
}

fn main() {
    let runs = env_count("STILLPOINT_BENCH_RUNS", 50);
    let kills = env_count("STILLPOINT_BENCH_KILLS", 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // STILLPOINT_BENCH_RESUMPTION=fast runs only the shorter raft timings.
        let fast_only = std::env::var("STILLPOINT_BENCH_RESUMPTION").is_ok_and(|v| v == "fast");
        if runs > 0 {
            freeze_window(1, 1, runs).await;
            freeze_window(8, 4, runs).await;
        }
        if kills > 0 && !fast_only {
            resumption(kills, &["mgmt1"], None).await;
            resumption(kills, &["mgmt1", "backup1"], None).await;
        }
        if kills > 0 {
            resumption(kills, &["mgmt1", "backup1"], Some(FAST_RAFT_TOML)).await;
        }
    });
}
