//! Commit latency of one replicated command through a 3-agent loopback cluster, against its
//! floor: a sled append + flush, plus one gRPC round trip on loopback.
//!
//! Run: `cargo bench -p stillpoint-tests --bench commit`. Prints one line per figure and a
//! final verdict line for the target "commit p50 within 2x of (flush p50 + RTT p50)".
//! Bounded: fixed request counts, a time cap per phase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stillpoint_node::Client;
use stillpoint_tests::TestCluster;

/// Sequential commits measured at one client.
const SINGLE_CLIENT_COMMITS: usize = 400;
/// Concurrent clients in the load phase, and commits each.
const CONCURRENT_CLIENTS: usize = 64;
const COMMITS_PER_CONCURRENT_CLIENT: usize = 25;
/// No phase runs longer than this, whatever the machine.
const PHASE_CAP: Duration = Duration::from_secs(120);

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
    let p50 = percentile(&samples, 0.50);
    println!(
        "{name}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        samples.len(),
        ms(p50),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default())
    );
    p50
}

/// sled insert of a ~200-byte value made durable the way the storage crate does it (sled flush,
/// then fdatasync of sled's file, since sled 0.34's flush ends in sync_file_range): the floor
/// of one log append.
fn flush_floor(dir: &std::path::Path) -> Duration {
    let path = dir.join("floor");
    let db = sled::open(&path).expect("open sled");
    let db_file = std::fs::File::open(path.join("db")).expect("sled db file");
    let tree = db.open_tree("log").expect("tree");
    let value = vec![7u8; 200];
    let mut samples = Vec::new();
    for i in 0..300u64 {
        let start = Instant::now();
        tree.insert(i.to_be_bytes(), value.as_slice())
            .expect("insert");
        db.flush().expect("flush");
        db_file.sync_data().expect("fdatasync");
        samples.push(start.elapsed());
    }
    report("durable append (sled flush + fdatasync)", samples)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scratch = tempfile::tempdir().expect("tempdir");
    let flush_p50 = flush_floor(scratch.path());
    runtime.block_on(async move {
        let cluster = TestCluster::start(3, stillpoint_node::config::RaftTuning::default()).await;
        cluster.init(3).await;
        let leader = cluster.leader().await;
        cluster.wait_registered(3).await;
        let client = Client::new(cluster.address(leader));

        // Loopback round trip: the cheapest RPC the agent serves.
        let mut rtt = Vec::new();
        for _ in 0..300 {
            let start = Instant::now();
            client.identity().await.expect("identity");
            rtt.push(start.elapsed());
        }
        let rtt_p50 = report("loopback gRPC round trip", rtt);

        let phase_end = Instant::now() + PHASE_CAP;
        let mut single = Vec::new();
        for i in 0..SINGLE_CLIENT_COMMITS {
            if Instant::now() > phase_end {
                break;
            }
            let start = Instant::now();
            cluster.write(&client, i as u64).await.expect("commit");
            single.push(start.elapsed());
        }
        let commit_p50 = report("commit, 1 client", single);

        // The same commits proposed in-process on the leader: raft + storage without the client hop.
        let context = cluster.agent(leader).context.clone();
        let mut in_process = Vec::new();
        for i in 0..SINGLE_CLIENT_COMMITS {
            let mut record = context.own_record();
            record.registered_at_ms = i as u64;
            let start = Instant::now();
            context
                .propose_local(stillpoint_coordinator::Command::RegisterNode(record))
                .await
                .expect("commit");
            in_process.push(start.elapsed());
        }
        report("commit, in-process on the leader", in_process);

        let cluster = Arc::new(cluster);
        let phase_end = Instant::now() + PHASE_CAP;
        let started = Instant::now();
        let workers: Vec<_> = (0..CONCURRENT_CLIENTS)
            .map(|w| {
                let cluster = cluster.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    for i in 0..COMMITS_PER_CONCURRENT_CLIENT {
                        if Instant::now() > phase_end {
                            break;
                        }
                        let start = Instant::now();
                        cluster.write(&client, (w * 1000 + i) as u64).await.expect("commit");
                        samples.push(start.elapsed());
                    }
                    samples
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.expect("worker"));
        }
        let elapsed = started.elapsed();
        let total = all.len();
        report(&format!("commit, {CONCURRENT_CLIENTS} clients"), all);
        println!(
            "throughput, {CONCURRENT_CLIENTS} clients: {:.0} commits/s ({total} in {:.2} s)",
            total as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        let floor = flush_p50 + rtt_p50;
        let ratio = commit_p50.as_secs_f64() / floor.as_secs_f64();
        println!(
            "target: commit p50 {:.3} ms vs floor (flush p50 + RTT p50) {:.3} ms = {ratio:.2}x ({})",
            ms(commit_p50),
            ms(floor),
            if ratio <= 2.0 { "within 2x: met" } else { "over 2x: NOT met" }
        );
        if let Ok(cluster) = Arc::try_unwrap(cluster) {
            cluster.shutdown().await;
        }
    });
}
