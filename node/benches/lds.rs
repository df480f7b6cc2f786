//! Throughput of a file system on a software-array LD attached by a linux agent (FUSE file +
//! loop device, issue 13 part 2) against the same file system on plain loop devices over a
//! file on the same disk. ext4 everywhere; fio (Debian's `fio`) runs sequential 1 MiB and
//! random 4 KiB writes and reads with O_DIRECT, and the bench prints MB/s and IOPS of each
//! and the LD's ratio to each baseline. Without fio, sequential figures come from `dd` with
//! O_DIRECT and a final fsync, and random ones are reported as not measured.
//!
//! The three devices are measured in turn, round after round (`STILLPOINT_BENCH_ROUNDS`,
//! default 3), and each figure is the median of its rounds: on a shared machine a burst of
//! load then hits one round of every device rather than all of one device's figures. Each
//! round writes a fresh file. The load average before and after is printed with the figures.
//!
//! Run: `cargo bench -p stillpoint-node --bench lds` (root, /dev/fuse, losetup, mkfs.ext4).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stillpoint");
const MIB: u64 = 1024 * 1024;
/// LD and plain image size.
const CAPACITY_BYTES: u64 = 1024 * MIB;
/// Bytes each sequential job moves.
const SEQ_BYTES: u64 = 512 * MIB;
/// Seconds each random job runs.
const RANDOM_S: u64 = 15;
const WAIT: Duration = Duration::from_secs(120);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Unmounts (deepest first) and detaches loops under the bench dir, whatever happens.
struct Cleanup {
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
    /// The node.toml whose LD path process is stopped first.
    hba_config: Option<PathBuf>,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = &self.hba_config {
            let _ = stillpoint_node::hba::stop_blocking(c);
        }
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").args(["-l"]).arg(m).status();
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Figures {
    seq_write_mb_s: f64,
    seq_read_mb_s: f64,
    rand_write_iops: Option<f64>,
    rand_read_iops: Option<f64>,
}

fn fio(dir: &Path, name: &str, rw: &str, bs: &str, extra: &[&str]) -> serde_json::Value {
    let out = run(&[
        &["fio", "--output-format=json", &format!("--name={name}")],
        &[
            &format!("--directory={}", dir.display()),
            &format!("--rw={rw}"),
            &format!("--bs={bs}"),
            "--direct=1",
            "--ioengine=libaio",
            "--numjobs=1",
            "--group_reporting",
        ][..],
        extra,
    ]
    .concat());
    let v: serde_json::Value = serde_json::from_str(&out).expect("fio JSON");
    v["jobs"][0].clone()
}

fn measure_fio(mp: &Path) -> Figures {
    let size = format!("--size={}M", SEQ_BYTES / MIB);
    let seq = |rw: &str, key: &str| {
        let j = fio(
            mp,
            "seq",
            rw,
            "1M",
            &[&size, "--iodepth=4", "--end_fsync=1"],
        );
        j[key]["bw_bytes"].as_f64().unwrap() / 1e6
    };
    let seq_write_mb_s = seq("write", "write");
    let seq_read_mb_s = seq("read", "read");
    let runtime = format!("--runtime={RANDOM_S}");
    let random = |rw: &str, key: &str| {
        let j = fio(
            mp,
            "seq",
            rw,
            "4k",
            &[&size, "--iodepth=16", "--time_based", &runtime],
        );
        j[key]["iops"].as_f64().unwrap()
    };
    let rand_write_iops = Some(random("randwrite", "write"));
    let rand_read_iops = Some(random("randread", "read"));
    let _ = std::fs::remove_file(mp.join("seq.0.0"));
    Figures {
        seq_write_mb_s,
        seq_read_mb_s,
        rand_write_iops,
        rand_read_iops,
    }
}

/// Without fio: `dd` with O_DIRECT (and fsync at the end of the write).
fn measure_dd(mp: &Path) -> Figures {
    let f = mp.join("seq.dd");
    let count = (SEQ_BYTES / MIB).to_string();
    let timed = |args: &[&str]| {
        let t = Instant::now();
        run(args);
        SEQ_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    let of = format!("of={}", f.display());
    let iff = format!("if={}", f.display());
    let cnt = format!("count={count}");
    let seq_write_mb_s = timed(&[
        "dd",
        "if=/dev/zero",
        &of,
        "bs=1M",
        &cnt,
        "oflag=direct",
        "conv=fsync",
        "status=none",
    ]);
    let seq_read_mb_s = timed(&[
        "dd",
        &iff,
        "of=/dev/null",
        "bs=1M",
        "iflag=direct",
        "status=none",
    ]);
    let _ = std::fs::remove_file(&f);
    Figures {
        seq_write_mb_s,
        seq_read_mb_s,
        ..Default::default()
    }
}

fn measure(mp: &Path) -> Figures {
    if have("fio") {
        measure_fio(mp)
    } else {
        measure_dd(mp)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Each figure's median over the rounds.
fn median_figures(rounds: &[Figures]) -> Figures {
    let of = |f: fn(&Figures) -> Option<f64>| -> Option<f64> {
        rounds
            .iter()
            .map(f)
            .collect::<Option<Vec<f64>>>()
            .map(median)
    };
    Figures {
        seq_write_mb_s: median(rounds.iter().map(|f| f.seq_write_mb_s).collect()),
        seq_read_mb_s: median(rounds.iter().map(|f| f.seq_read_mb_s).collect()),
        rand_write_iops: of(|f| f.rand_write_iops),
        rand_read_iops: of(|f| f.rand_read_iops),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn mkfs_and_mount(dev: &str, mp: &Path) {
    run(&["mkfs.ext4", "-q", "-F", dev]);
    std::fs::create_dir_all(mp).unwrap();
    run(&["mount", dev, mp.to_str().unwrap()]);
}

fn opt(v: Option<f64>) -> String {
    v.map_or("not measured (no fio)".into(), |x| format!("{x:.0}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn main() {
    let uid = run(&["id", "-u"]);
    let missing: Vec<&str> = ["losetup", "mkfs.ext4"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if uid != "0" || !missing.is_empty() || !Path::new("/dev/fuse").exists() {
        println!(
            "SKIPPED lds bench: needs root, /dev/fuse, losetup and mkfs.ext4 (uid {uid}, missing {missing:?})"
        );
        return;
    }
    if !have("fio") {
        println!(
            "fio is not installed (apt-get install -y fio): sequential figures from dd, random not measured"
        );
    }
    // On the target dir's disk, like the array's data.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let d = dir.path();
    let mut cleanup = Cleanup {
        mounts: vec![],
        loops: vec![],
        hba_config: Some(d.join("node.toml")),
    };

    // Software array and a linux agent with the LD attached.
    let array_port = free_port();
    let array_cfg = d.join("array.toml");
    std::fs::write(
        &array_cfg,
        format!(
            "name = \"A\"\ndata_dir = {:?}\nlisten = \"127.0.0.1:{array_port}\"\n\
             [[ld]]\nnumber = 0\nname = \"MV\"\ncapacity_bytes = {CAPACITY_BYTES}\nhosts = [\"h1\"]\n",
            d.join("array-data")
        ),
    )
    .unwrap();
    let _array = Proc(
        Command::new(BIN)
            .args(["array", "serve", "--config", array_cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let port = free_port();
    let node_cfg = d.join("node.toml");
    let lds_dir = d.join("data/lds");
    std::fs::write(
        &node_cfg,
        format!(
            "node_id = 1\nname = \"h1\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nroles = [\"business\"]\n\
             [[arrays]]\nname = \"A\"\nendpoint = \"127.0.0.1:{array_port}\"\n\
             [host]\nbackend = \"linux\"\n\
             [[host.volumes]]\nname = \"mv\"\nld = \"A/0\"\nmount_point = \"{}\"\nfs = \"ext4\"\n",
            d.join("data").display(),
            d.join("mnt-ld").display()
        ),
    )
    .unwrap();
    let _agent = Proc(
        Command::new(BIN)
            .args(["agent", "--new", "--config", node_cfg.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let ld_dev = wait_for("the LD's loop device", || {
        let back = format!("{}/A.0", lds_dir.display());
        std::fs::read_dir("/sys/block")
            .ok()?
            .flatten()
            .find_map(|b| {
                let f = std::fs::read_to_string(b.path().join("loop/backing_file")).ok()?;
                (f.trim() == back).then(|| format!("/dev/{}", b.file_name().to_string_lossy()))
            })
    });
    cleanup.mounts.push(lds_dir.clone());
    cleanup.loops.push(ld_dev.clone());
    let mp_ld = d.join("mnt-ld");
    mkfs_and_mount(&ld_dev, &mp_ld);
    cleanup.mounts.push(mp_ld.clone());

    // Plain loop devices over files on the same disk: with direct I/O (as the LD's loop) and
    // buffered (losetup's default).
    let mut plain = |name: &str, dio: &str| {
        let img = d.join(format!("{name}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(CAPACITY_BYTES)
            .unwrap();
        let dev = run(&[
            "losetup",
            "--find",
            "--show",
            &format!("--direct-io={dio}"),
            img.to_str().unwrap(),
        ]);
        cleanup.loops.push(dev.clone());
        let mp = d.join(format!("mnt-{name}"));
        mkfs_and_mount(&dev, &mp);
        cleanup.mounts.push(mp.clone());
        mp
    };
    let mp_dio = plain("plain-dio", "on");
    let mp_buf = plain("plain-buffered", "off");

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let tool = if have("fio") {
        "fio (libaio, O_DIRECT; seq 1 MiB iodepth 4 with a final fsync, random 4 KiB iodepth 16)"
    } else {
        "dd (O_DIRECT)"
    };
    println!(
        "ext4, {} MiB per sequential job, {RANDOM_S} s per random job, {tool}, {cpus} CPUs",
        SEQ_BYTES / MIB
    );
    let rounds = std::env::var("STILLPOINT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(3)
        .max(1);
    println!("load average before: {}", load_average());
    let mut all: [Vec<Figures>; 3] = Default::default();
    for round in 1..=rounds {
        for (i, mp) in [&mp_ld, &mp_dio, &mp_buf].into_iter().enumerate() {
            all[i].push(measure(mp));
        }
        println!(
            "round {round}: seq write MB/s LD {:.0}, plain dio {:.0}, plain buffered {:.0}; seq read MB/s {:.0}, {:.0}, {:.0}",
            all[0][round - 1].seq_write_mb_s,
            all[1][round - 1].seq_write_mb_s,
            all[2][round - 1].seq_write_mb_s,
            all[0][round - 1].seq_read_mb_s,
            all[1][round - 1].seq_read_mb_s,
            all[2][round - 1].seq_read_mb_s,
        );
    }
    println!("load average after: {}", load_average());
    let [ld, dio, buf] = all.map(|f| median_figures(&f));
    println!("medians of {rounds} round(s):");
    println!(
        "{:<34} {:>14} {:>14} {:>16} {:>16}",
        "device", "seq write MB/s", "seq read MB/s", "rand write IOPS", "rand read IOPS"
    );
    for (name, f) in [
        ("array LD (FUSE + loop dio)", ld),
        ("plain loop, direct I/O", dio),
        ("plain loop, buffered", buf),
    ] {
        println!(
            "{name:<34} {:>14.1} {:>14.1} {:>16} {:>16}",
            f.seq_write_mb_s,
            f.seq_read_mb_s,
            opt(f.rand_write_iops),
            opt(f.rand_read_iops)
        );
    }
    for (name, b) in [
        ("plain loop, direct I/O", dio),
        ("plain loop, buffered", buf),
    ] {
        println!(
            "LD / {name}: seq write {:.2}x, seq read {:.2}x, rand write {}, rand read {}",
            ld.seq_write_mb_s / b.seq_write_mb_s,
            ld.seq_read_mb_s / b.seq_read_mb_s,
            ratio(ld.rand_write_iops, b.rand_write_iops),
            ratio(ld.rand_read_iops, b.rand_read_iops),
        );
    }
    drop(cleanup);
}
