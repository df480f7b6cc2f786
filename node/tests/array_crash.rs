//! `stillpoint array serve` killed with SIGKILL at random moments while several clients write:
//! after a restart, replicate + separate must leave every RV equal to its MV byte for byte. A
//! kill can never make the array forget a difference (the write-intent discipline of
//! `array/src/lib.rs`).
//!
//! The randomized test reads `STILLPOINT_CRASH_ITERATIONS` (default 3) and `STILLPOINT_CRASH_SEED`
//! (default: from the clock) and prints the seed first, so a failure reproduces with
//! `STILLPOINT_CRASH_SEED=<seed> cargo test -p stillpoint-node --test array_crash`. The README
//! (array section) has the 200-iteration command.

#[path = "../../array/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use stillpoint_array::*;

const BIN: &str = env!("CARGO_BIN_EXE_stillpoint");
const WRITERS: usize = 3;
/// LD size of the crash tests: 256 blocks, so writers keep dirtying new blocks for a while.
const BIG: u64 = 16 * 1024 * 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct ArrayProc {
    name: &'static str,
    cfg: PathBuf,
    addr: String,
    child: Option<std::process::Child>,
}

impl ArrayProc {
    /// Writes the config of array `name` with LDs 0..lds and optional peer, not started yet.
    fn new(
        dir: &Path,
        name: &'static str,
        lds: u32,
        cap: u64,
        pace: u64,
        peer: Option<(&str, &str, u64)>,
    ) -> ArrayProc {
        let port = free_port();
        let cfg = dir.join(format!("{name}.toml"));
        let mut text = format!(
            "name = \"{name}\"\ndata_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\n\
             copy_pace_bytes_per_s = {pace}\nsemi_sync_backlog_blocks_max = 4\n",
            dir.join(name)
        );
        for n in 0..lds {
            text += &format!("[[ld]]\nnumber = {n}\nname = \"LD{n}\"\ncapacity_bytes = {cap}\n");
        }
        if let Some((peer, endpoint, latency_ms)) = peer {
            text += &format!(
                "[[peer]]\nname = \"{peer}\"\nendpoint = \"http://{endpoint}\"\nlatency_ms = {latency_ms}\n"
            );
        }
        std::fs::write(&cfg, text).unwrap();
        ArrayProc {
            name,
            cfg,
            addr: format!("127.0.0.1:{port}"),
            child: None,
        }
    }

    async fn start(&mut self) -> RemoteArray {
        assert!(self.child.is_none());
        self.child = Some(
            Command::new(BIN)
                .args(["array", "serve", "--config"])
                .arg(&self.cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn stillpoint"),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match RemoteArray::connect(&self.addr).await {
                Ok(r) => return r,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "array {} never came up: {e}",
                    self.name
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ArrayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Clients writing random ranges of `ld` until stopped or until the array goes away.
struct Writers {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Random ranges of up to 3 blocks; with `fresh`, one whole block each, every write on a block
/// no write touched before (so every write dirties a new block).
fn start_writers(addr: &str, ld: u32, cap: u64, seed: u64) -> Writers {
    writers(addr, ld, cap, seed, false)
}

fn writers(addr: &str, ld: u32, cap: u64, seed: u64, fresh: bool) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let tasks = (0..WRITERS)
        .map(|w| {
            let (addr, stop, written) = (addr.to_string(), stop.clone(), written.clone());
            tokio::spawn(async move {
                let Ok(a) = RemoteArray::connect(&addr).await else {
                    return;
                };
                let mut rng = StdRng::seed_from_u64(seed ^ ((w as u64 + 1) * 0x9e37_79b9));
                for i in 0..100_000u64 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let (off, len) = if fresh {
                        let b = w as u64 + i * WRITERS as u64;
                        if b >= cap / BLOCK {
                            return;
                        }
                        (b * BLOCK, BLOCK)
                    } else {
                        let len = rng.gen_range(1..=3 * BLOCK);
                        (rng.gen_range(0..=cap - len), len)
                    };
                    let data = pattern(seed.wrapping_add(i * 31 + w as u64), len as usize);
                    if a.write("h", ld, off, &data).await.is_err() {
                        return;
                    }
                    written.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    Writers {
        stop,
        written,
        tasks,
    }
}

impl Writers {
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("writer ends within 60 s")
                .expect("writer task");
        }
        self.written.load(Ordering::SeqCst)
    }
}

/// Brings a pair from whatever state a kill left it in to `rpl/sync`, then separates it.
async fn replicate_and_separate(a: &RemoteArray, id: &PairId) {
    for _ in 0..10 {
        let p = a.pair_query(id).await.expect("pair survives the kill");
        match p.state.sync {
            SyncState::SepExec => {
                a.wait(id, WaitCondition::Sep, WAIT_MS)
                    .await
                    .expect("sep/exec finishes");
            }
            SyncState::RstExec => {
                a.wait(id, WaitCondition::Done, WAIT_MS)
                    .await
                    .expect("rst/exec finishes");
            }
            SyncState::RstSync => {
                a.separate(id, &sep_opts())
                    .await
                    .expect("separate rst/sync");
            }
            SyncState::Separated | SyncState::Cancel | SyncState::Fault => {
                a.replicate(id, &sync_opts()).await.expect("replicate");
                break;
            }
            SyncState::RplExec | SyncState::RplSync => {
                if p.state.abnormal_suspend {
                    a.replicate(id, &sync_opts()).await.expect("resume");
                } else {
                    a.wait(id, WaitCondition::Sync, WAIT_MS)
                        .await
                        .expect("copy finishes");
                }
                break;
            }
        }
    }
    let p = a
        .separate(id, &sep_opts())
        .await
        .expect("separate after replicate");
    assert_eq!(p.state.sync, SyncState::Separated, "{p:?}");
}

async fn assert_equal(
    mv: &RemoteArray,
    mv_ld: u32,
    rv: &RemoteArray,
    rv_ld: u32,
    cap: u64,
    what: &str,
) {
    let m = read_all(mv, mv_ld, cap).await;
    let r = read_all(rv, rv_ld, cap).await;
    if m != r {
        let differ: Vec<u64> = (0..cap / BLOCK)
            .filter(|&b| {
                let s = (b * BLOCK) as usize..((b + 1) * BLOCK) as usize;
                m[s.clone()] != r[s]
            })
            .collect();
        panic!(
            "{what}: MV and RV differ in blocks {differ:?} although the pair was replicated and separated"
        );
    }
}

fn seed_from_env() -> u64 {
    let seed = std::env::var("STILLPOINT_CRASH_SEED")
        .ok()
        .map(|s| s.parse().expect("STILLPOINT_CRASH_SEED is a u64"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("STILLPOINT_CRASH_SEED={seed}");
    seed
}

/// Issue 9, defect 2: writes against a separated pair, the array killed mid-stream: each kill
/// must leave every changed block in the pair's difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_writes_to_a_separated_pair_loses_no_difference() {
    let seed = seed_from_env();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut p = ArrayProc::new(dir.path(), "A", 2, BIG, 0, None);
    let mut a = p.start().await;
    let id = pair(0, 1);
    a.pair_set(&id).await.unwrap();
    replicate_and_separate(&a, &id).await;
    for round in 0..5 {
        let w = writers(&p.addr, 0, BIG, seed.wrapping_add(round), true);
        // Kill while every write still dirties a new block (256 of them).
        eventually("writes under way", || {
            let n = w.written.load(Ordering::SeqCst);
            async move { n >= 5 }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..50))).await;
        p.kill();
        w.finish().await;
        a = p.start().await;
        replicate_and_separate(&a, &id).await;
        assert_equal(&a, 0, &a, 1, BIG, &format!("round {round} (seed {seed})")).await;
    }
}

/// Issue 9, defect 2: a sync RDR pair whose MV array is killed after the MV write and before
/// the mirror crossed the link must still replicate that block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_between_mv_write_and_sync_mirror_loses_no_difference() {
    let seed = seed_from_env();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut pb = ArrayProc::new(dir.path(), "B", 1, CAP, 0, None);
    let b = pb.start().await;
    let b_addr = pb.addr.clone();
    let mut pa = ArrayProc::new(dir.path(), "A", 1, CAP, 0, Some(("B", &b_addr, 150)));
    let mut a = pa.start().await;
    let id = rdr(0, 0);
    a.pair_set(&id).await.unwrap();
    replicate_and_separate(&a, &id).await;
    for round in 0..3 {
        a.replicate(&id, &sync_opts()).await.unwrap();
        let w = start_writers(&pa.addr, 0, CAP, seed.wrapping_add(round));
        eventually("sync writes under way", || {
            let n = w.written.load(Ordering::SeqCst);
            async move { n >= 3 }
        })
        .await;
        // Every sync write spends 150 ms crossing the link after its MV write.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..150))).await;
        pa.kill();
        w.finish().await;
        a = pa.start().await;
        replicate_and_separate(&a, &id).await;
        assert_equal(&a, 0, &b, 0, CAP, &format!("round {round} (seed {seed})")).await;
    }
}

/// Random operations (replicate sync/background, separate, restore protect/update) on two DDR
/// pairs of one MV while several clients write the MV; SIGKILL at a random moment; restart;
/// every pair replicated and separated must hold exactly the MV's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_kills_never_lose_a_difference() {
    let seed = seed_from_env();
    let iterations: u64 = std::env::var("STILLPOINT_CRASH_ITERATIONS")
        .ok()
        .map(|s| s.parse().expect("STILLPOINT_CRASH_ITERATIONS is a number"))
        .unwrap_or(3);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB/s: a full copy of an LD takes a second, so kills land inside copies.
    let mut p = ArrayProc::new(dir.path(), "A", 3, BIG, 16 * 1024 * 1024, None);
    let mut a = p.start().await;
    let ids = [pair(0, 1), pair(0, 2)];
    for id in &ids {
        a.pair_set(id).await.unwrap();
    }
    let started = std::time::Instant::now();
    for it in 0..iterations {
        if it > 0 && it % 20 == 0 {
            println!(
                "{it} iterations clean after {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        let w = start_writers(&p.addr, 0, BIG, seed.wrapping_add(it));
        let ops_seed = rng.r#gen::<u64>();
        let ctl_addr = p.addr.clone();
        let ctl_ids = ids.clone();
        let controller = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(ops_seed);
            let Ok(c) = RemoteArray::connect(&ctl_addr).await else {
                return;
            };
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
                let id = &ctl_ids[rng.gen_range(0..ctl_ids.len())];
                // Refusals and wrong states are expected: the operation is random.
                let _ = match rng.gen_range(0..4) {
                    0 => {
                        let o = ReplicateOptions {
                            copy_control: if rng.gen_bool(0.5) {
                                CopyControl::Sync
                            } else {
                                CopyControl::Background
                            },
                            ..Default::default()
                        };
                        c.replicate(id, &o).await
                    }
                    1 | 2 => c.separate(id, &SeparateOptions::default()).await,
                    _ => {
                        let o = RestoreOptions {
                            mode: if rng.gen_bool(0.5) {
                                RestoreMode::Protect
                            } else {
                                RestoreMode::Update
                            },
                            ..Default::default()
                        };
                        c.restore(id, &o).await
                    }
                };
            }
        });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..1000))).await;
        p.kill();
        controller.abort();
        let _ = controller.await;
        w.finish().await;
        a = p.start().await;
        // First let running separates and restores end (a replicate waits for a restore).
        for id in &ids {
            for _ in 0..3 {
                let s = a.pair_query(id).await.unwrap().state;
                match s.sync {
                    SyncState::SepExec => drop(a.wait(id, WaitCondition::Sep, WAIT_MS).await),
                    SyncState::RstExec => drop(a.wait(id, WaitCondition::Done, WAIT_MS).await),
                    SyncState::RstSync => drop(a.separate(id, &sep_opts()).await),
                    _ => break,
                }
            }
        }
        for id in &ids {
            replicate_and_separate(&a, id).await;
        }
        for id in &ids {
            assert_equal(
                &a,
                0,
                &a,
                id.rv.ld,
                BIG,
                &format!("iteration {it} pair {id} (seed {seed})"),
            )
            .await;
        }
    }
    println!(
        "{iterations} iterations clean in {:.1} s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
}
