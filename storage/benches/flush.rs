//! Latency of making one small raft log entry durable: the floor under every commit.
//!
//! Three measurements, each over `FLUSH_BENCH_APPENDS` (default 2000) sequential operations in a
//! fresh data dir (under `FLUSH_BENCH_DIR`, default the system temp dir; point it at the disk
//! the agent will use):
//! - raw sled: insert one ~200-byte value under a big-endian index key, then `flush_async`
//!   (which on Linux ends in `sync_file_range`, not a full sync);
//! - `LogStore::append` of one ~200-byte entry, until its flush callback: sled's flush plus the
//!   store's `fdatasync` of the db file, i.e. what a commit really waits for;
//! - `LogStore::save_vote` (same flush path);
//! - a step's durable journal record (`Journal::begin_step`), one at a time, and
//!   `FLUSH_BENCH_AT_ONCE` (default 8) at once from as many threads (an executor beginning
//!   the steps of eight pairs together), until all are durable; the same without the flush
//!   (`begin_step_unflushed`, what separates and releases use); and as many threads doing
//!   nothing, the harness's own share of the at-once figures.
//!
//! Run: `cargo bench -p stillpoint-storage --bench flush`. The last line is one plain summary.

use std::io::Cursor;
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{BasicNode, Entry, EntryPayload, Vote};
use serde::{Deserialize, Serialize};
use stillpoint_storage::Store;

openraft::declare_raft_types!(
    BenchConfig:
        D = Payload,
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<BenchConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A command about the size of a typical stillpoint step outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Payload {
    text: String,
}

/// Size of the value written per append, close to an encoded stillpoint command.
const ENTRY_BYTES: usize = 200;
const APPENDS_DEFAULT: usize = 2000;

struct Figures {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Figures {
    fn of(mut samples: Vec<Duration>) -> Figures {
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        Figures {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50={:.3} ms p99={:.3} ms max={:.3} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

async fn raw_sled(dir: &std::path::Path, appends: usize) -> Figures {
    let db = sled::Config::new().path(dir).open().expect("open sled");
    let tree = db.open_tree("bench").expect("tree");
    let value = vec![b'x'; ENTRY_BYTES];
    let mut samples = Vec::with_capacity(appends);
    for index in 0..appends as u64 {
        let started = Instant::now();
        tree.insert(index.to_be_bytes(), value.as_slice())
            .expect("insert");
        db.flush_async().await.expect("flush");
        samples.push(started.elapsed());
    }
    Figures::of(samples)
}

async fn log_store(dir: &std::path::Path, appends: usize) -> (Figures, Figures) {
    let store = Store::open(dir).expect("open store");
    let mut log = store.log_store::<BenchConfig>().expect("log store");
    // JSON adds the log id and field names; trim the text so the encoded entry is ~ENTRY_BYTES.
    let text = "x".repeat(ENTRY_BYTES - 90);
    let probe = Entry::<BenchConfig> {
        log_id: openraft::testing::log_id(1, 1, appends as u64),
        payload: EntryPayload::Normal(Payload { text: text.clone() }),
    };
    let encoded_bytes = serde_json::to_vec(&probe).expect("encode").len();
    println!("one log entry encodes to {encoded_bytes} bytes of JSON");
    let mut appended = Vec::with_capacity(appends);
    for index in 1..=appends as u64 {
        let entry = Entry::<BenchConfig> {
            log_id: openraft::testing::log_id(1, 1, index),
            payload: EntryPayload::Normal(Payload { text: text.clone() }),
        };
        let started = Instant::now();
        log.blocking_append([entry]).await.expect("append");
        appended.push(started.elapsed());
    }
    let mut voted = Vec::with_capacity(appends);
    for term in 1..=appends as u64 {
        let started = Instant::now();
        log.save_vote(&Vote::new(term, 1)).await.expect("save vote");
        voted.push(started.elapsed());
    }
    (Figures::of(appended), Figures::of(voted))
}

/// Step records made durable (`flushed`) or only recorded, one at a time, then `at_once` at a
/// time from as many threads (the steps of one job): (one record, all `at_once` records), each
/// over `rounds`.
fn journal_steps(
    dir: &std::path::Path,
    rounds: usize,
    at_once: usize,
    flushed: bool,
) -> (Figures, Figures) {
    use stillpoint_storage::journal::FencingToken;
    let store = Store::open(dir).expect("open store");
    let journal = std::sync::Arc::new(store.journal().expect("journal"));
    let token = |job_id: u64, step_index: u32| FencingToken {
        term: 1,
        job_id,
        step_index,
        attempt: 1,
    };
    let mut one = Vec::with_capacity(rounds);
    for round in 0..rounds as u64 {
        let started = Instant::now();
        begin(&journal, token(round, 0), flushed);
        one.push(started.elapsed());
    }
    let mut all = Vec::with_capacity(rounds);
    for round in 0..rounds as u64 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(at_once + 1));
        let workers: Vec<_> = (0..at_once as u32)
            .map(|i| {
                let (journal, barrier) = (journal.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    begin(&journal, token(1_000_000 + round, i), flushed);
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        for w in workers {
            w.join().expect("a writer");
        }
        all.push(started.elapsed());
    }
    (Figures::of(one), Figures::of(all))
}

/// The harness alone: `at_once` threads released together and joined, doing nothing, over
/// `rounds` (what the at-once figures include besides the journal).
fn threads_alone(rounds: usize, at_once: usize) -> Figures {
    let mut all = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(at_once + 1));
        let workers: Vec<_> = (0..at_once)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        for w in workers {
            w.join().expect("a thread");
        }
        all.push(started.elapsed());
    }
    Figures::of(all)
}

fn begin(
    journal: &stillpoint_storage::journal::Journal,
    token: stillpoint_storage::journal::FencingToken,
    flushed: bool,
) {
    if flushed {
        journal.begin_step(token, None, 0).expect("begin step");
    } else {
        journal
            .begin_step_unflushed(token, None, 0)
            .expect("begin step");
    }
}

fn main() {
    let appends: usize = env_or("FLUSH_BENCH_APPENDS", APPENDS_DEFAULT);
    let at_once: usize = env_or("FLUSH_BENCH_AT_ONCE", 8);
    let parent: std::path::PathBuf = env_or("FLUSH_BENCH_DIR", std::env::temp_dir());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let raw_dir = tempfile::tempdir_in(&parent).expect("temp dir");
    let store_dir = tempfile::tempdir_in(&parent).expect("temp dir");

    let raw = runtime.block_on(raw_sled(raw_dir.path(), appends));
    println!(
        "sled insert {ENTRY_BYTES} B + flush_async, {appends} times: {}",
        raw.line()
    );
    let (append, vote) = runtime.block_on(log_store(store_dir.path(), appends));
    println!(
        "LogStore::append 1 entry until flushed, {appends} times: {}",
        append.line()
    );
    println!("LogStore::save_vote, {appends} times: {}", vote.line());
    let journal_dir = tempfile::tempdir_in(&parent).expect("temp dir");
    let rounds = (appends / at_once).max(10);
    let (step_one, step_all) = journal_steps(journal_dir.path(), rounds, at_once, true);
    println!(
        "Journal::begin_step 1 record until durable, {rounds} times: {}",
        step_one.line()
    );
    println!(
        "Journal::begin_step {at_once} records of one job at once until all are durable, {rounds} times: {}",
        step_all.line()
    );
    println!(
        "{at_once} threads doing nothing, released together and joined, {rounds} times: {}",
        threads_alone(rounds, at_once).line()
    );
    let unflushed_dir = tempfile::tempdir_in(&parent).expect("temp dir");
    let (raw_one, raw_all) = journal_steps(unflushed_dir.path(), rounds, at_once, false);
    println!(
        "Journal::begin_step_unflushed 1 record, {rounds} times: {}",
        raw_one.line()
    );
    println!(
        "Journal::begin_step_unflushed {at_once} records of one job at once, {rounds} times: {}",
        raw_all.line()
    );
    println!(
        "flush-bench dir={} n={appends} raw_sled_p50_ms={:.3} raw_sled_p99_ms={:.3} append_p50_ms={:.3} append_p99_ms={:.3} vote_p50_ms={:.3} vote_p99_ms={:.3} step_p50_ms={:.3} steps_{at_once}_at_once_p50_ms={:.3}",
        parent.display(),
        ms(raw.p50),
        ms(raw.p99),
        ms(append.p50),
        ms(append.p99),
        ms(vote.p50),
        ms(vote.p99),
        ms(step_one.p50),
        ms(step_all.p50)
    );
}
