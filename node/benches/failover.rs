//! Failover time of a 3-agent cluster of `stillpoint` processes on loopback: SIGKILL the leader,
//! then measure until a surviving agent says it leads ("elected") and until a new leader commits
//! a write ("commit": what the job engine needs before its next step). The killed agent is then
//! restarted and must catch up before the next round.
//!
//! Run: `cargo bench -p stillpoint-node --bench failover`. Prints one line per kill, then
//! p50/p99/max of each figure and a verdict for the target "commit p99 <= 1500 ms".
//! The agents use the default `[raft]` timings unless `STILLPOINT_BENCH_RAFT` gives the body of
//! a `[raft]` table (e.g. "heartbeat_interval_ms = 150\nelection_timeout_min_ms = 600\n...").
//! `STILLPOINT_BENCH_KILLS` sets the number of kills (default 20). Bounded: each measurement
//! gives up after 10 s, each catch-up after 60 s, the whole run after 20 minutes.
//!
//! A steady phase follows: `STILLPOINT_BENCH_STEADY_S` seconds (default 60) of back-to-back
//! writes through the leader with all three agents up, counting elections nobody caused (the
//! term must not move). Run it on a loaded machine to see the timeouts' margin hold.

#[path = "../tests/process_cluster/mod.rs"]
mod process_cluster;

use std::time::{Duration, Instant};

use process_cluster::{ProcessCluster, WAIT, wait_for};
use stillpoint_coordinator::{Command, NodeRecord};
use stillpoint_node::Client;
use stillpoint_proto::cluster::{Empty, ProposeRequest, QueryRequest};

const KILLS_DEFAULT: usize = 20;
/// One measurement (kill to elected, kill to commit) gives up after this.
const MEASURE_CAP: Duration = Duration::from_secs(10);
/// The whole run stops after this, whatever the machine.
const RUN_CAP: Duration = Duration::from_secs(20 * 60);
/// Pause between two probes of the survivors while measuring.
const PROBE_PAUSE: Duration = Duration::from_millis(5);
/// Length of the steady phase unless `STILLPOINT_BENCH_STEADY_S` says otherwise.
const STEADY_DEFAULT_S: u64 = 60;
/// The job engine's target.
const TARGET_P99_MS: f64 = 1500.0;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p99 = percentile(&samples, 0.99);
    println!(
        "{name}: n={} min={:.0} ms p50={:.0} ms p99={:.0} ms max={:.0} ms",
        samples.len(),
        ms(samples.first().copied().unwrap_or_default()),
        ms(percentile(&samples, 0.50)),
        ms(p99),
        ms(samples.last().copied().unwrap_or_default())
    );
    p99
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A client that talks to one agent only, with a short per-request bound.
fn direct(endpoint: &str) -> Client {
    let mut c = Client::new(endpoint);
    c.request_timeout = Duration::from_millis(1_000);
    c.leader_wait = Duration::ZERO;
    c
}

/// The agent's own registry record, re-proposed unchanged as the write (idempotent).
async fn own_record(endpoint: &str, node_id: u64) -> NodeRecord {
    let reply = direct(endpoint)
        .on_endpoint("registry", |mut c| async move {
            c.query(QueryRequest {
                what: "registry".into(),
                consistent: false,
            })
            .await
        })
        .await
        .expect("registry");
    let mut nodes: std::collections::BTreeMap<u64, NodeRecord> =
        serde_json::from_slice(&reply.json).expect("registry json");
    nodes.remove(&node_id).expect("registered")
}

/// Whether the agent at `endpoint` says it is the leader.
async fn leads(endpoint: &str, node_id: u64) -> bool {
    direct(endpoint)
        .on_endpoint("local status", |mut c| async move {
            c.local_status(Empty {}).await
        })
        .await
        .is_ok_and(|s| s.leader_id == Some(node_id) && s.state == "Leader")
}

/// Proposes `command` at the agent at `endpoint` only (no leader hint followed).
async fn commits(endpoint: &str, command: &[u8]) -> bool {
    direct(endpoint)
        .on_endpoint("propose", |mut c| {
            let command = command.to_vec();
            async move { c.propose(ProposeRequest { command }).await }
        })
        .await
        .is_ok()
}

/// Time from `t0` until some survivor says it leads.
async fn until_elected(t0: Instant, survivors: &[(String, u64)]) -> Option<Duration> {
    while t0.elapsed() < MEASURE_CAP {
        for (endpoint, id) in survivors {
            if leads(endpoint, *id).await {
                return Some(t0.elapsed());
            }
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    None
}

/// Time from `t0` until some survivor commits a write.
async fn until_committed(t0: Instant, survivors: &[(String, Vec<u8>)]) -> Option<Duration> {
    while t0.elapsed() < MEASURE_CAP {
        for (endpoint, command) in survivors {
            if commits(endpoint, command).await {
                return Some(t0.elapsed());
            }
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    None
}

/// The term and last applied index agent `slot` reports for itself.
fn term_and_applied(cluster: &ProcessCluster, slot: usize) -> Option<(u64, u64)> {
    let s = cluster.status(slot, false).ok()?;
    let me = s["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_u64() == Some(slot as u64 + 1))?
        .clone();
    Some((s["term"].as_u64()?, me["last_applied_index"].as_u64()?))
}

/// Writes back to back through the leader for `length` with all agents up; returns how many
/// elections happened meanwhile (the term moved although nobody was killed).
fn steady(
    cluster: &ProcessCluster,
    runtime: &tokio::runtime::Runtime,
    commands: &[Vec<u8>],
    length: Duration,
) -> u64 {
    if length.is_zero() {
        return 0;
    }
    let leader = cluster.leader(&[0, 1, 2]);
    let (term_start, _) = term_and_applied(cluster, leader).expect("leader status");
    let endpoint = cluster.endpoints[leader].clone();
    let end = Instant::now() + length;
    let (mut writes, mut failed_writes) = (0u64, 0u64);
    let mut latencies = Vec::new();
    runtime.block_on(async {
        while Instant::now() < end {
            let started = Instant::now();
            if commits(&endpoint, &commands[leader]).await {
                writes += 1;
                latencies.push(started.elapsed());
            } else {
                failed_writes += 1;
                tokio::time::sleep(PROBE_PAUSE).await;
            }
        }
    });
    let now_leader = cluster.leader(&[0, 1, 2]);
    let (term_end, _) = term_and_applied(cluster, now_leader).expect("leader status");
    println!(
        "steady phase: {} s, {writes} writes through node {} ({failed_writes} refused or failed), term {term_start} -> {term_end}, leader node {} -> node {}, load average {}",
        length.as_secs(),
        leader + 1,
        leader + 1,
        now_leader + 1,
        loadavg()
    );
    report("steady phase: write latency", latencies);
    term_end - term_start
}

fn main() {
    let kills: usize = std::env::var("STILLPOINT_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KILLS_DEFAULT);
    let raft = std::env::var("STILLPOINT_BENCH_RAFT").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "failover bench: 3 agent processes on loopback, {kills} kills, [raft] {}; load average at start {}",
        if raft.is_empty() {
            "defaults".to_string()
        } else {
            raft.replace('\n', "; ")
        },
        loadavg()
    );
    let mut cluster = ProcessCluster::start(3, &raft, |_| None);
    cluster.init(0);
    cluster.leader(&[0, 1, 2]);
    cluster.wait_registered(0, 3);
    let commands: Vec<Vec<u8>> = (0..3)
        .map(|slot| {
            let record = runtime.block_on(own_record(&cluster.endpoints[slot], slot as u64 + 1));
            serde_json::to_vec(&Command::RegisterNode(record)).expect("encode")
        })
        .collect();

    let run_end = Instant::now() + RUN_CAP;
    let (mut elected, mut committed, mut caught_up) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = 0usize;
    let mut spurious_elections = 0u64;
    let mut settled_term: Option<u64> = None;
    for round in 1..=kills {
        if Instant::now() > run_end {
            println!("run cap reached after {} kills", round - 1);
            break;
        }
        let leader = cluster.leader(&[0, 1, 2]);
        let (term_before, _) = term_and_applied(&cluster, leader).expect("leader status");
        // The term must not have moved while all three ran since the last round settled.
        if let Some(settled) = settled_term
            && term_before > settled
        {
            spurious_elections += term_before - settled;
        }
        let survivors: Vec<usize> = (0..3).filter(|s| *s != leader).collect();
        let to_elect: Vec<(String, u64)> = survivors
            .iter()
            .map(|s| (cluster.endpoints[*s].clone(), *s as u64 + 1))
            .collect();
        let to_commit: Vec<(String, Vec<u8>)> = survivors
            .iter()
            .map(|s| (cluster.endpoints[*s].clone(), commands[*s].clone()))
            .collect();

        let t0 = Instant::now();
        cluster.kill(leader);
        let (e, c) = runtime.block_on(async {
            tokio::join!(
                until_elected(t0, &to_elect),
                until_committed(t0, &to_commit)
            )
        });
        match (e, c) {
            (Some(e), Some(c)) => {
                elected.push(e);
                committed.push(c);
            }
            _ => failed += 1,
        }

        // Restart the killed agent and wait until it has applied what the new leader has.
        let t1 = Instant::now();
        cluster.spawn(leader);
        let new_leader = cluster.leader(&survivors);
        let (term_new, target) = term_and_applied(&cluster, new_leader).expect("new leader status");
        wait_for("the restarted agent to catch up", WAIT, || {
            let (_, applied) = term_and_applied(&cluster, leader)?;
            (applied >= target).then_some(())
        });
        caught_up.push(t1.elapsed());
        let agreed = cluster.leader(&[0, 1, 2]);
        settled_term = term_and_applied(&cluster, agreed).map(|(t, _)| t);
        // Nor while the killed agent came back and caught up.
        if let Some(settled) = settled_term {
            spurious_elections += settled.saturating_sub(term_new);
        }
        println!(
            "kill {round:2}: node {} killed; elected after {} ms, commit after {} ms; restarted node caught up in {:.0} ms",
            leader + 1,
            e.map(|d| format!("{:.0}", ms(d))).unwrap_or("-".into()),
            c.map(|d| format!("{:.0}", ms(d))).unwrap_or("-".into()),
            ms(caught_up[caught_up.len() - 1])
        );
    }
    let steady_s: u64 = std::env::var("STILLPOINT_BENCH_STEADY_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(STEADY_DEFAULT_S);
    let steady_spurious = steady(&cluster, &runtime, &commands, Duration::from_secs(steady_s));
    report("kill -> a survivor says it leads (elected)", elected);
    let commit_p99 = report("kill -> a new leader commits a write (commit)", committed);
    report("restart -> the killed agent has caught up", caught_up);
    println!(
        "measurements that gave up after {} s: {failed}; elections while all three agents ran (spurious): {} between kills, {steady_spurious} in the steady phase; load average at end {}",
        MEASURE_CAP.as_secs(),
        spurious_elections,
        loadavg()
    );
    println!(
        "target: commit p99 {:.0} ms vs {TARGET_P99_MS:.0} ms: {}",
        ms(commit_p99),
        if ms(commit_p99) <= TARGET_P99_MS && failed == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
