//! What the software array's copies cost, measured against the machine itself.
//!
//! 1. **Initial replicate** of an LD filled with pseudo-random bytes (not sparse zeros), from
//!    `pair_set` + `replicate` to `rpl/sync`, against `cp` of the MV's own LD file to a new
//!    file in the same directory (same filesystem, same warm source). Each round pairs the MV
//!    with a fresh sparse RV, so both sides write into unallocated space; odd rounds run `cp`
//!    first, even rounds the replicate. Right before each timed step the files it touches are
//!    fsynced and a cached scratch copy of the MV is deleted (see `recycle_memory`), so both
//!    start from the same memory state. Each figure is reported as "done" (what the call takes;
//!    neither `cp` nor the array fsyncs data) and "+fsync" (plus an fsync of the destination);
//!    the target is judged on the median "done" ratio over the rounds.
//! 2. **Differential replicate**: separate, dirty 1000 small scattered ranges and a few large
//!    ones, replicate again; bytes copied (copied_blocks × block_bytes) against bytes dirtied
//!    and against the dirtied blocks. Then separate and check RV == MV byte for byte.
//! 3. **Sync-pair write latency**: 4 KiB writes at random aligned offsets to an unpaired LD and
//!    to the MV of a sync DDR pair in `rpl/sync`, interleaved one by one so load noise hits
//!    both alike.
//!
//! 4. **RDR write latency per copy mode**: 64 KiB writes to the MV of a pair between two
//!    in-process arrays joined by a link of `STILLPOINT_BENCH_LINK_MS` (default 200 ms), in
//!    sync, semi-sync (backlog bound 64 blocks), background and separated: sync pays the link
//!    on every write, the asynchronous modes must stay at local speed (the copy engine sends
//!    its runs without holding the MV's I/O lock).
//!
//! Knobs (environment): `STILLPOINT_BENCH_LD_MIB` (LD size, default 1024),
//! `STILLPOINT_BENCH_ROUNDS` (initial-copy rounds, default 3), `STILLPOINT_BENCH_WRITES`
//! (latency samples per LD, default 3000), `STILLPOINT_BENCH_DIR` (parent of the temp dir,
//! default the system temp dir; point it at the disk the array will use).
//!
//! Run: `cargo bench -p stillpoint-array --bench replicate`. The last line is one plain summary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stillpoint_array::*;

const MIB: u64 = 1024 * 1024;
/// Largest chunk written or read through the data API (its limit is 32 MiB).
const CHUNK: u64 = 32 * MIB;
const SMALL_WRITES: usize = 1000;
const LARGE_WRITES: usize = 4;
const LATENCY_WRITE: u64 = 4096;
const WARMUP_WRITES: usize = 200;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

/// xorshift64: fast deterministic pseudo-random numbers and bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// MB/s with MB = 10^6 bytes.
fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn fsync(path: &Path) {
    File::open(path)
        .and_then(|f| f.sync_all())
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
}

fn timed_fsync(path: &Path) -> Duration {
    let t = Instant::now();
    fsync(path);
    t.elapsed()
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(dir: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let fs = sh(
        "findmnt",
        &["-n", "-o", "FSTYPE", "-T", &dir.display().to_string()],
    );
    let kernel = sh("uname", &["-r"]);
    let cp = sh("cp", &["--version"]);
    let cp = cp.lines().next().unwrap_or("cp ?");
    format!(
        "{cores} cores ({cpu}), kernel {kernel}, {fs} at {}, {cp}",
        dir.display()
    )
}

/// Frees a freshly written, fully cached copy of `src` right before a timed copy, so the page
/// cache the copy fills comes from pages just freed. This bench's machine is a VM whose balloon
/// reports free guest pages to the host, which takes them back: a copy that lands on such pages
/// waits for the host to fault them in again and ran at ~400 MB/s, one right after a 1 GiB file
/// was deleted at ~2.5-3 GB/s, whichever tool did it. Without this, the figures measure which
/// side got recycled pages, not the copy.
fn recycle_memory(src: &Path, scratch: &Path) {
    std::fs::copy(src, scratch).expect("scratch copy");
    fsync(scratch);
    std::fs::remove_file(scratch).expect("remove scratch copy");
}

struct Latency {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

impl Latency {
    fn of(mut s: Vec<Duration>) -> Latency {
        s.sort();
        let at = |q: f64| s[((s.len() as f64 - 1.0) * q).round() as usize];
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
            mean: s.iter().sum::<Duration>() / s.len() as u32,
        }
    }
    fn line(&self) -> String {
        format!(
            "p50={:.1} µs p90={:.1} µs p99={:.1} µs max={:.1} µs mean={:.1} µs",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.max),
            us(self.mean)
        )
    }
}

fn pair(rv: u32) -> PairId {
    PairId {
        mv: LdRef {
            array: "A".into(),
            ld: 0,
        },
        rv: LdRef {
            array: "A".into(),
            ld: rv,
        },
    }
}

fn wait_ms() -> Option<u64> {
    Some(30 * 60 * 1000)
}

fn replicate_opts(range: CopyRange) -> ReplicateOptions {
    ReplicateOptions {
        range,
        wait_timeout_ms: wait_ms(),
        ..Default::default()
    }
}

fn separate_opts() -> SeparateOptions {
    SeparateOptions {
        wait_timeout_ms: wait_ms(),
        ..Default::default()
    }
}

/// Total length of the union of `[start, end)` ranges.
fn union_bytes(ranges: &[(u64, u64)]) -> u64 {
    let mut r = ranges.to_vec();
    r.sort();
    let (mut total, mut cur): (u64, Option<(u64, u64)>) = (0, None);
    for (s, e) in r {
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    total + cur.map(|(s, e)| e - s).unwrap_or(0)
}

struct InitialRound {
    cp: Duration,
    cp_fsync: Duration,
    rpl: Duration,
    rpl_fsync: Duration,
}

struct Diff {
    dirtied: u64,
    dirtied_blocks: u64,
    copied: u64,
    copy_total_blocks: u64,
    took: Duration,
}

async fn run(dir: &Path, ld_bytes: u64, rounds: usize, writes: usize) -> String {
    let block = DEFAULT_BLOCK_BYTES;
    // LD 0 is the MV, 1..=rounds the RVs of the initial-copy rounds, the last one unpaired.
    let plain = rounds as u32 + 1;
    let lds = (0..=plain)
        .map(|n| LdConfig {
            number: n,
            name: format!("LD{n}"),
            capacity_bytes: ld_bytes,
            format: "NX".into(),
            hosts: vec!["*".into()],
        })
        .collect();
    let cfg = ArrayConfig {
        name: "A".into(),
        data_dir: dir.join("A"),
        listen: "127.0.0.1:0".into(),
        block_bytes: block,
        copy_pace_bytes_per_s: 0,
        semi_sync_backlog_blocks_max: DEFAULT_SEMI_SYNC_BACKLOG_BLOCKS_MAX,
        lds,
        peers: vec![],
        audit_log: false,
        audit_mv_write_sample_ms: stillpoint_array::AUDIT_MV_WRITE_SAMPLE_MS,
        audit_rv_head_bytes: 0,
    };
    let a = SoftwareArray::open(&cfg, vec![]).await.expect("open array");
    let mv_path = cfg.data_dir.join("ld-0.img");

    // Fill the MV with pseudo-random bytes through the data API.
    let t = Instant::now();
    let mut rng = Rng::new(1);
    let mut off = 0;
    while off < ld_bytes {
        let len = CHUNK.min(ld_bytes - off);
        a.write("bench", 0, off, &rng.bytes(len as usize))
            .await
            .expect("fill MV");
        off += len;
    }
    let fill = t.elapsed();
    fsync(&mv_path);
    println!(
        "fill MV: {} MiB of pseudo-random bytes through Array::write in {:.2} s ({:.0} MB/s, includes generating them)",
        ld_bytes / MIB,
        fill.as_secs_f64(),
        mbps(ld_bytes, fill)
    );

    // 1. Initial replicate against cp. Each round pairs the MV with a fresh sparse RV and copies
    // to a new cp file, so both sides allocate what they write; odd rounds run cp first, even
    // rounds the replicate, so neither always inherits the other's cache or writeback state.
    println!(
        "\n== 1. initial replicate vs cp ({} MiB) ==",
        ld_bytes / MIB
    );
    let mut initial = vec![];
    for round in 1..=rounds {
        let rv = round as u32;
        let p = pair(rv);
        let rv_path = cfg.data_dir.join(format!("ld-{rv}.img"));
        let cp_path = dir.join(format!("cp-{round}.img"));
        for f in [&mv_path, &rv_path] {
            fsync(f);
        }
        let mut cp = None;
        let mut rpl = None;
        for step in 0..2 {
            recycle_memory(&mv_path, &dir.join("scratch.img"));
            if (step + round) % 2 == 1 {
                let t = Instant::now();
                let st = Command::new("cp")
                    .arg(&mv_path)
                    .arg(&cp_path)
                    .status()
                    .expect("run cp");
                assert!(st.success(), "cp failed: {st}");
                let done = t.elapsed();
                cp = Some((done, done + timed_fsync(&cp_path)));
            } else {
                let t = Instant::now();
                a.pair_set(&p).await.expect("pair set");
                let info = a
                    .replicate(&p, &replicate_opts(CopyRange::Difference))
                    .await
                    .expect("replicate");
                let done = t.elapsed();
                assert_eq!(info.state.sync, SyncState::RplSync, "{info:?}");
                assert_eq!(info.copied_blocks, ld_bytes / block, "every block copied");
                rpl = Some((done, done + timed_fsync(&rv_path)));
            }
        }
        let (Some((cp, cp_fsync)), Some((rpl, rpl_fsync))) = (cp, rpl) else {
            unreachable!("both steps ran");
        };
        println!(
            "round {round} ({} first): cp {:.0} MB/s ({:.2} s; +fsync {:.0} MB/s) | replicate {:.0} MB/s ({:.2} s; +fsync {:.0} MB/s) | ratio {:.2} (+fsync {:.2})",
            if round % 2 == 1 { "cp" } else { "replicate" },
            mbps(ld_bytes, cp),
            cp.as_secs_f64(),
            mbps(ld_bytes, cp_fsync),
            mbps(ld_bytes, rpl),
            rpl.as_secs_f64(),
            mbps(ld_bytes, rpl_fsync),
            cp.as_secs_f64() / rpl.as_secs_f64(),
            cp_fsync.as_secs_f64() / rpl_fsync.as_secs_f64(),
        );
        initial.push(InitialRound {
            cp,
            cp_fsync,
            rpl,
            rpl_fsync,
        });
        std::fs::remove_file(&cp_path).expect("remove cp copy");
        a.separate(&p, &separate_opts()).await.expect("separate");
        if round < rounds {
            // At most 3 DDR RVs per MV: free the slot for the next round.
            a.pair_unset(&p).await.expect("unset");
        }
    }
    let p = pair(rounds as u32);

    // 2. Differential replicate. The pair is separated with no difference.
    println!("\n== 2. differential replicate ==");
    let mut rng = Rng::new(2);
    let mut ranges = vec![];
    for i in 0..SMALL_WRITES + LARGE_WRITES {
        let len = if i < SMALL_WRITES {
            1 + rng.below(8192)
        } else {
            1 + rng.below((8 * MIB).min(ld_bytes / 8))
        };
        let off = rng.below(ld_bytes - len + 1);
        a.write("bench", 0, off, &rng.bytes(len as usize))
            .await
            .expect("dirty MV");
        ranges.push((off, off + len));
    }
    let dirtied = union_bytes(&ranges);
    let block_ranges: Vec<_> = ranges
        .iter()
        .map(|&(s, e)| (s / block, e.div_ceil(block)))
        .collect();
    let dirtied_blocks = union_bytes(&block_ranges);
    let before = a.pair_query(&p).await.expect("query");
    let t = Instant::now();
    let info = a
        .replicate(&p, &replicate_opts(CopyRange::Difference))
        .await
        .expect("differential replicate");
    let took = t.elapsed();
    let diff = Diff {
        dirtied,
        dirtied_blocks,
        copied: info.copied_blocks * info.block_bytes,
        copy_total_blocks: info.copy_total_blocks,
        took,
    };
    println!(
        "{} writes ({SMALL_WRITES} of 1..8192 B, {LARGE_WRITES} of up to 8 MiB) dirtied {} B in {} blocks of {} KiB (separate_diff_blocks before replicate: {})",
        ranges.len(),
        diff.dirtied,
        diff.dirtied_blocks,
        block / 1024,
        before.separate_diff_blocks
    );
    println!(
        "replicate copied {} blocks = {} B in {:.0} ms: {:.2}× the bytes dirtied, {:.3}× the dirtied blocks ({} B)",
        info.copied_blocks,
        diff.copied,
        ms(took),
        diff.copied as f64 / diff.dirtied as f64,
        diff.copied as f64 / (diff.dirtied_blocks * block) as f64,
        diff.dirtied_blocks * block
    );
    // The RV now equals the MV everywhere: check it byte for byte.
    a.separate(&p, &separate_opts()).await.expect("separate");
    let mut off = 0;
    while off < ld_bytes {
        let len = CHUNK.min(ld_bytes - off);
        let mv = a.read("bench", 0, off, len).await.expect("read MV");
        let rv = a
            .read("bench", rounds as u32, off, len)
            .await
            .expect("read RV");
        assert!(mv == rv, "RV differs from MV in [{off}, {})", off + len);
        off += len;
    }
    println!("RV == MV byte for byte after the differential replicate");

    // 3. Sync-pair write latency against an unpaired LD.
    println!("\n== 3. 4 KiB write latency: unpaired LD vs MV of a sync DDR pair ==");
    let s = a
        .replicate(&p, &replicate_opts(CopyRange::Difference))
        .await
        .expect("replicate for latency");
    assert_eq!(
        (s.state.sync, s.state.copy_control),
        (SyncState::RplSync, CopyControl::Sync)
    );
    // Writes land in the first `region` bytes; allocate them on the unpaired LD too so neither
    // side pays for filling holes.
    let region = ld_bytes.min(256 * MIB);
    let mut off = 0;
    while off < region {
        let len = CHUNK.min(region - off);
        a.write("bench", plain, off, &rng.bytes(len as usize))
            .await
            .expect("fill unpaired LD");
        off += len;
    }
    fsync(&cfg.data_dir.join(format!("ld-{plain}.img")));
    let data = rng.bytes(LATENCY_WRITE as usize);
    let slots = region / LATENCY_WRITE;
    let (mut unpaired, mut sync) = (vec![], vec![]);
    for i in 0..WARMUP_WRITES + writes {
        let off = rng.below(slots) * LATENCY_WRITE;
        // Alternate which goes first so neither always follows the other.
        let order: [u32; 2] = if i % 2 == 0 { [plain, 0] } else { [0, plain] };
        for ld in order {
            let t = Instant::now();
            a.write("bench", ld, off, &data).await.expect("4 KiB write");
            let d = t.elapsed();
            if i >= WARMUP_WRITES {
                if ld == plain {
                    &mut unpaired
                } else {
                    &mut sync
                }
                .push(d);
            }
        }
    }
    let q = a.pair_query(&p).await.expect("query");
    assert_eq!(
        (q.state.sync, q.copy_diff_blocks),
        (SyncState::RplSync, 0),
        "sync writes leave nothing for the engine"
    );
    let (plain, sync) = (Latency::of(unpaired), Latency::of(sync));
    println!("unpaired LD: {}", plain.line());
    println!("sync pair MV: {}", sync.line());
    println!(
        "added by the sync pair: p50 +{:.1} µs, p99 +{:.1} µs, mean +{:.1} µs ({writes} writes each after {WARMUP_WRITES} warm-up)",
        us(sync.p50) - us(plain.p50),
        us(sync.p99) - us(plain.p99),
        us(sync.mean) - us(plain.mean)
    );
    a.close().await.expect("close");
    let rdr = rdr_latency(dir).await;

    // Summary and targets.
    println!("\n== targets ==");
    let ratios: Vec<f64> = initial
        .iter()
        .map(|r| r.cp.as_secs_f64() / r.rpl.as_secs_f64())
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "initial replicate >= 0.7x cp: {} (median ratio {median:.2}, min {:.2}, max {:.2}; per round {:?})",
        if median >= 0.7 { "MET" } else { "MISSED" },
        sorted[0],
        sorted[sorted.len() - 1],
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>()
    );
    println!(
        "differential copied <= dirtied blocks: {} ({} B copied, {} B in dirtied blocks, {} B dirtied)",
        if diff.copied <= diff.dirtied_blocks * block {
            "MET"
        } else {
            "MISSED"
        },
        diff.copied,
        diff.dirtied_blocks * block,
        diff.dirtied
    );
    format!(
        "replicate-bench ld_mib={} rounds={rounds} cp_mbps=[{}] rpl_mbps=[{}] cp_fsync_mbps=[{}] rpl_fsync_mbps=[{}] diff_dirtied_b={} diff_dirtied_blocks={} diff_copied_b={} diff_total_blocks={} diff_ms={:.0} lat_plain_p50_us={:.1} lat_plain_p99_us={:.1} lat_sync_p50_us={:.1} lat_sync_p99_us={:.1} median_ratio={median:.2}",
        ld_bytes / MIB,
        initial
            .iter()
            .map(|r| format!("{:.0}", mbps(ld_bytes, r.cp)))
            .collect::<Vec<_>>()
            .join(","),
        initial
            .iter()
            .map(|r| format!("{:.0}", mbps(ld_bytes, r.rpl)))
            .collect::<Vec<_>>()
            .join(","),
        initial
            .iter()
            .map(|r| format!("{:.0}", mbps(ld_bytes, r.cp_fsync)))
            .collect::<Vec<_>>()
            .join(","),
        initial
            .iter()
            .map(|r| format!("{:.0}", mbps(ld_bytes, r.rpl_fsync)))
            .collect::<Vec<_>>()
            .join(","),
        diff.dirtied,
        diff.dirtied_blocks,
        diff.copied,
        diff.copy_total_blocks,
        ms(diff.took),
        us(plain.p50),
        us(plain.p99),
        us(sync.p50),
        us(sync.p99),
    ) + &rdr
}

/// Section 4: `RDR_WRITES` writes of 64 KiB to distinct blocks of an RDR pair's MV in each copy
/// mode; returns the summary fields.
async fn rdr_latency(dir: &Path) -> String {
    const RDR_WRITES: u64 = 10;
    let link_ms: u64 = env_or("STILLPOINT_BENCH_LINK_MS", 200);
    println!("\n== 4. 64 KiB write latency of an RDR pair's MV, link {link_ms} ms ==");
    let ld_bytes = 64 * MIB;
    let cfg = |name: &str| ArrayConfig {
        name: name.into(),
        data_dir: dir.join(format!("rdr-{name}")),
        listen: "127.0.0.1:0".into(),
        block_bytes: DEFAULT_BLOCK_BYTES,
        copy_pace_bytes_per_s: 0,
        semi_sync_backlog_blocks_max: DEFAULT_SEMI_SYNC_BACKLOG_BLOCKS_MAX,
        lds: vec![LdConfig {
            number: 0,
            name: "RDR".into(),
            capacity_bytes: ld_bytes,
            format: "NX".into(),
            hosts: vec!["*".into()],
        }],
        peers: vec![],
        audit_log: false,
        audit_mv_write_sample_ms: stillpoint_array::AUDIT_MV_WRITE_SAMPLE_MS,
        audit_rv_head_bytes: 0,
    };
    let b = SoftwareArray::open(&cfg("B"), vec![])
        .await
        .expect("open B");
    let peer = PeerHandle {
        name: "B".into(),
        array: std::sync::Arc::new(b.clone()),
        link: std::sync::Arc::new(Link::new(link_ms, 0)),
    };
    let a = SoftwareArray::open(&cfg("A"), vec![peer])
        .await
        .expect("open A");
    let p = PairId {
        mv: LdRef {
            array: "A".into(),
            ld: 0,
        },
        rv: LdRef {
            array: "B".into(),
            ld: 0,
        },
    };
    a.pair_set(&p).await.expect("set RDR pair");
    let mut rng = Rng::new(4);
    let mut fields = String::new();
    let modes = [
        ("sync", Some(CopyControl::Sync)),
        ("semi-sync", Some(CopyControl::SemiSync)),
        ("background", Some(CopyControl::Background)),
        ("separated", None),
    ];
    for (round, (name, cc)) in modes.into_iter().enumerate() {
        if let Some(cc) = cc {
            let o = ReplicateOptions {
                copy_control: cc,
                ..replicate_opts(CopyRange::Difference)
            };
            a.replicate(&p, &o).await.expect("replicate RDR");
        }
        let mut took = vec![];
        let t0 = Instant::now();
        for i in 0..RDR_WRITES {
            let off = (round as u64 * RDR_WRITES + i) * DEFAULT_BLOCK_BYTES;
            let data = rng.bytes(DEFAULT_BLOCK_BYTES as usize);
            let t = Instant::now();
            a.write("bench", 0, off, &data).await.expect("RDR write");
            took.push(t.elapsed());
        }
        let total = t0.elapsed();
        let l = Latency::of(took);
        println!(
            "{name:>10}: {RDR_WRITES} writes in {:.3} s; p50={:.1} ms max={:.1} ms",
            total.as_secs_f64(),
            ms(l.p50),
            ms(l.max)
        );
        fields += &format!(" rdr_{}_total_ms={:.0}", name.replace('-', "_"), ms(total));
        if cc.is_some() {
            a.separate(&p, &separate_opts())
                .await
                .expect("separate RDR");
        }
    }
    a.close().await.expect("close A");
    b.close().await.expect("close B");
    fields
}

fn main() {
    let ld_mib: u64 = env_or("STILLPOINT_BENCH_LD_MIB", 1024);
    let rounds: usize = env_or("STILLPOINT_BENCH_ROUNDS", 3);
    let writes: usize = env_or("STILLPOINT_BENCH_WRITES", 3000);
    let parent: PathBuf = env_or("STILLPOINT_BENCH_DIR", std::env::temp_dir());
    assert!(
        ld_mib >= 1 && rounds >= 1 && writes >= 1,
        "sizes must be >= 1"
    );
    let dir = tempfile::tempdir_in(&parent).expect("temp dir");
    println!("machine: {}", machine(dir.path()));
    println!("load average at start: {}", loadavg());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let summary = runtime.block_on(run(dir.path(), ld_mib * MIB, rounds, writes));
    println!("load average at end: {}", loadavg());
    println!("{summary}");
}
