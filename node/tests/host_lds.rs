//! Software-array LDs as real block devices of a host (issue 13 part 1): real `stillpoint`
//! processes — a software array and linux agents whose volumes name LDs — with the LDs
//! attached as loop devices over the agent's FUSE files. File systems are made, written,
//! frozen and compared byte for byte with what the array holds; an RV split off the MV is
//! mounted on another host's agent; an RV that is not readable gives an I/O error; rescan;
//! the LD path process outliving the agent, replaced when it dies, and stopped. Root, /dev/fuse, losetup and mkfs needed:
//! without them each test prints why it SKIPPED. Processes, mounts and loop devices are
//! cleaned up by guards even when a test fails.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use stillpoint_array::{
    Array, PairId, RemoteArray, ReplicateOptions, RvAccess, SeparateOptions, WaitCondition,
};

const BIN: &str = env!("CARGO_BIN_EXE_stillpoint");
/// Bound on any wait in these tests (a loaded 2-core CI machine).
const WAIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1024 * 1024;

fn skip_reason(need: &[&str]) -> Option<String> {
    stillpoint_host::lds_unavailable(need)
}

macro_rules! require {
    ($($tool:expr),*) => {
        if let Some(why) = skip_reason(&["losetup", "blkid", $($tool),*]) {
            eprintln!(
                "SKIPPED {}: {why}",
                std::thread::current().name().unwrap_or("host_lds test")
            );
            return;
        }
    };
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `probe` until it answers, at most [`WAIT`].
fn wait_for<T>(what: &str, log: impl Fn() -> String, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            log()
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The software array as its own process: LD 0 (MV) visible to h1, LD 1 (RV) visible to h2.
struct ArraySite {
    dir: PathBuf,
    config: PathBuf,
    endpoint: String,
    proc: Option<Proc>,
}

impl ArraySite {
    fn new(dir: &Path, capacity_bytes: u64) -> ArraySite {
        let port = free_port();
        let config = dir.join("array.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"A\"\ndata_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\n\
                 [[ld]]\nnumber = 0\nname = \"MV\"\ncapacity_bytes = {capacity_bytes}\nhosts = [\"h1\"]\n\
                 [[ld]]\nnumber = 1\nname = \"RV\"\ncapacity_bytes = {capacity_bytes}\nhosts = [\"h2\"]\n",
                dir.join("array-data")
            ),
        )
        .unwrap();
        ArraySite {
            dir: dir.to_path_buf(),
            config,
            endpoint: format!("127.0.0.1:{port}"),
            proc: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("array.log")).unwrap();
        let child = Command::new(BIN)
            .args(["array", "serve", "--config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the array");
        self.proc = Some(Proc(child));
        let rt = runtime();
        wait_for(
            "the array to answer",
            || std::fs::read_to_string(self.dir.join("array.log")).unwrap_or_default(),
            || rt.block_on(RemoteArray::connect(&self.endpoint)).ok(),
        );
    }

    fn client(&self, rt: &tokio::runtime::Runtime) -> RemoteArray {
        rt.block_on(RemoteArray::connect(&self.endpoint))
            .expect("array")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One linux agent (a one-node cluster) whose volume names an LD of the array.
struct Host {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    endpoint: String,
    mount_point: PathBuf,
    agent: Option<Proc>,
}

impl Host {
    fn start(dir: &Path, name: &str, array: &ArraySite, volume: &str, ld: u32, fs: &str) -> Host {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mount_point = dir.join("mnt");
        std::fs::create_dir_all(&mount_point).unwrap();
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "node_id = 1\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nroles = [\"business\"]\n\
                 [raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n\
                 [[arrays]]\nname = \"A\"\nendpoint = \"{}\"\n\
                 [host]\nbackend = \"linux\"\n\
                 [[host.volumes]]\nname = \"{volume}\"\nld = \"A/{ld}\"\nmount_point = \"{}\"\nfs = \"{fs}\"\nfreeze_ms_max = 60000\n",
                dir.join("data").display(),
                array.endpoint,
                mount_point.display()
            ),
        )
        .unwrap();
        let mut host = Host {
            name: name.into(),
            dir,
            config,
            endpoint: format!("127.0.0.1:{port}"),
            mount_point,
            agent: None,
        };
        host.spawn(true);
        wait_for(
            "the agent to listen",
            || host.log(),
            || {
                host.cli(&["cluster", "status"])
                    .status
                    .success()
                    .then_some(())
            },
        );
        let init = host.cli(&["cluster", "init", "--member", &host.endpoint.clone()]);
        assert!(init.status.success(), "init: {}", stderr(&init));
        wait_for(
            "the node to be registered",
            || host.log(),
            || {
                host.cli(&["volume", "list", "--node", name])
                    .status
                    .success()
                    .then_some(())
            },
        );
        host
    }

    fn spawn(&mut self, new: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "--config", self.config.to_str().unwrap()]);
        if new {
            cmd.arg("--new");
        }
        let child = cmd
            .env("RUST_LOG", "info,openraft=error")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.agent = Some(Proc(child));
    }

    /// Starts the agent again (after a stop or a kill) and waits until it answers.
    fn restart(&mut self) {
        self.spawn(false);
        let name = self.name.clone();
        wait_for(
            "the restarted agent to answer",
            || self.log(),
            || {
                self.cli(&["volume", "list", "--node", &name])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }

    fn sigterm(&mut self) {
        let mut p = self.agent.take().expect("agent running");
        run(&["kill", "-TERM", &p.0.id().to_string()]);
        let status = wait_for(
            "the agent to stop on SIGTERM",
            || self.log(),
            || p.0.try_wait().unwrap(),
        );
        assert!(status.success(), "agent exit {status:?}:\n{}", self.log());
    }

    fn sigkill(&mut self) {
        let mut p = self.agent.take().expect("agent running");
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }

    fn lds_dir(&self) -> PathBuf {
        self.dir.join("data/lds")
    }

    /// `stillpoint hba ARGS --config` of this host.
    fn hba(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("hba")
            .args(args)
            .args(["--config", self.config.to_str().unwrap()])
            .output()
            .unwrap()
    }

    /// The pid of the LD path process answering for this host.
    fn hba_pid(&self) -> Option<u32> {
        let out = self.hba(&["status", "--output", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_u64().map(|p| p as u32)
    }

    fn hba_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/hba.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--endpoint", &self.endpoint])
            .env_remove("STILLPOINT_ENDPOINT")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run stillpoint")
    }

    fn volume(&self, args: &[&str]) -> Output {
        let mut full = vec!["volume"];
        full.extend_from_slice(args);
        full.extend(["--node", &self.name]);
        self.cli(&full)
    }

    fn volume_ok(&self, args: &[&str]) -> String {
        let out = self.volume(args);
        assert!(
            out.status.success(),
            "{}: volume {args:?} failed ({:?}): {}\nagent log:\n{}",
            self.name,
            out.status.code(),
            stderr(&out),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The volume's device as the agent reports it, once it is an attached loop device.
    fn device(&self) -> Option<String> {
        let out = self.volume(&["list", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let d = v.as_array()?.first()?["device"].as_str()?.to_string();
        d.starts_with("/dev/loop").then_some(d)
    }

    fn wait_device(&self) -> String {
        wait_for("the LD to be attached", || self.log(), || self.device())
    }
}

/// Detaches and unmounts whatever a test left, even when it fails: loop devices over its FUSE
/// files (a mounted one goes when its file system is unmounted), file systems under the test
/// dir, the FUSE mounts.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The hosts' LD path processes outlive their agents: stop them (they unmount and
        // detach); then whatever is left.
        for host in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let config = host.path().join("node.toml");
            if config.exists() {
                let _ = stillpoint_node::hba::stop_blocking(&config);
            }
        }
        // Loops first: once their FUSE directory is unmounted they no longer show its path.
        for (dev, _) in loops_under(&self.0) {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
        let prefix = format!("{}/", self.0.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|mp| mp.starts_with(&prefix))
            .collect();
        // Deepest first: file systems before the FUSE directories.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for mp in &points {
            let _ = Command::new("fsfreeze")
                .args(["-u", mp])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("umount")
                .args(["-l", mp])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Loop devices whose backing file is under `dir`: (device, backing file).
fn loops_under(dir: &Path) -> Vec<(String, String)> {
    let prefix = format!("{}/", dir.display());
    let mut out = Vec::new();
    for b in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = b.file_name().to_string_lossy().into_owned();
        if let Ok(back) = std::fs::read_to_string(b.path().join("loop/backing_file"))
            && back.trim().starts_with(&prefix)
        {
            out.push((format!("/dev/{name}"), back.trim().to_string()));
        }
    }
    out
}

fn is_mount_point(p: &Path) -> bool {
    let p = p.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

/// The whole LD as the host's loop device holds it, read with O_DIRECT (past the block
/// device's page cache, which a file system's own metadata writes need not go through): any
/// cache between the loop device and the array (FUSE's) would show here and not in the array.
fn read_device(dir: &Path, device: &str, capacity_bytes: u64) -> Vec<u8> {
    let copy = dir.join("device-copy");
    run(&[
        "dd",
        &format!("if={device}"),
        &format!("of={}", copy.display()),
        "bs=1M",
        "iflag=direct",
        "status=none",
    ]);
    let mut buf = Vec::with_capacity(capacity_bytes as usize);
    std::fs::File::open(&copy)
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    std::fs::remove_file(&copy).unwrap();
    assert_eq!(buf.len() as u64, capacity_bytes, "{device} size");
    buf
}

/// The whole LD as the array holds it, read through its data API on behalf of `host`.
fn read_array(
    rt: &tokio::runtime::Runtime,
    a: &RemoteArray,
    host: &str,
    ld: u32,
    cap: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(cap as usize);
    let mut off = 0;
    while off < cap {
        let n = (4 * MIB).min(cap - off);
        out.extend(rt.block_on(a.read(host, ld, off, n)).expect("array read"));
        off += n;
    }
    out
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Files with known content: (name, bytes).
fn files() -> Vec<(String, Vec<u8>)> {
    (0..6u64)
        .map(|i| {
            let len = (1 + i * 3) * 256 * 1024 + i * 17;
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i;
            let data = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            (format!("file-{i}.bin"), data)
        })
        .collect()
}

fn pair() -> PairId {
    PairId {
        mv: stillpoint_array::LdRef {
            array: "A".into(),
            ld: 0,
        },
        rv: stillpoint_array::LdRef {
            array: "A".into(),
            ld: 1,
        },
    }
}

/// An RV whose access is `nr` is attached but refuses I/O: a read of its loop device and a
/// mount both fail with an I/O error, promptly, and the agent lives on.
fn assert_unreadable(h2: &Host) {
    let dev = h2.wait_device();
    let started = Instant::now();
    let out = Command::new("dd")
        .args([
            &format!("if={dev}"),
            "of=/dev/null",
            "bs=4096",
            "count=1",
            "iflag=direct",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && stderr(&out).contains("Input/output error"),
        "reading an nr RV: {:?} {}",
        out.status,
        stderr(&out)
    );
    let mount = h2.volume(&["mount", "rv"]);
    assert!(
        !mount.status.success(),
        "mounting an nr RV succeeded:\n{}",
        h2.log()
    );
    let took = started.elapsed();
    eprintln!(
        "MEASURED nr RV: read and mount failed in {} ms: {}",
        took.as_millis(),
        stderr(&mount).trim()
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    // The agent still answers.
    h2.volume_ok(&["list"]);
}

/// The check for one file system: made on the MV LD through h1's loop device,
/// written, frozen (the array then holds exactly what the host sees), split off to the RV,
/// and mounted with its own file system on h2, holding the files.
fn a_file_system_on_an_ld_is_in_the_array_and_its_rv_mounts_on_another_host(
    fs: &str,
    mkfs: &[&str],
    capacity_bytes: u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = runtime();
    let mut array = ArraySite::new(d, capacity_bytes);
    // Dropped before the array: the hosts' LD path processes unmount while it answers.
    let _cleanup = Cleanup(d.to_path_buf());
    array.start();
    let a = array.client(&rt);
    let h1 = Host::start(d, "h1", &array, "mv", 0, fs);
    let h2 = Host::start(d, "h2", &array, "rv", 1, fs);

    let dev = h1.wait_device();
    let mut cmd = mkfs.to_vec();
    cmd.push(&dev);
    run(&cmd);
    h1.volume_ok(&["mount", "mv"]);
    let written = files();
    for (name, data) in &written {
        std::fs::write(h1.mount_point.join(name), data).unwrap();
    }
    run(&["sync", "-f", h1.mount_point.to_str().unwrap()]);

    // Frozen: the bytes are in the array, byte for byte what the host's loop device holds.
    h1.volume_ok(&["freeze", "mv"]);
    let host_view = read_device(d, &dev, capacity_bytes);
    let array_view = read_array(&rt, &a, "h1", 0, capacity_bytes);
    assert!(
        host_view == array_view,
        "{fs}: host and array differ at byte {:?} while frozen",
        first_difference(&host_view, &array_view)
    );
    h1.volume_ok(&["thaw", "mv"]);
    run(&["fsfreeze", "-f", h1.mount_point.to_str().unwrap()]);
    run(&["fsfreeze", "-u", h1.mount_point.to_str().unwrap()]);

    // Replicating: the RV is `nr` to h2.
    rt.block_on(a.pair_set(&pair())).expect("pair set");
    let opts = ReplicateOptions {
        wait_timeout_ms: Some(WAIT.as_millis() as u64),
        ..Default::default()
    };
    rt.block_on(a.replicate(&pair(), &opts)).expect("replicate");
    assert_unreadable(&h2);

    // Static point: freeze, separate (RV read-write to h2), thaw.
    h1.volume_ok(&["freeze", "mv"]);
    let sep = SeparateOptions {
        rv_access: RvAccess::Rw,
        wait_timeout_ms: Some(WAIT.as_millis() as u64),
        ..Default::default()
    };
    rt.block_on(a.separate(&pair(), &sep)).expect("separate");
    rt.block_on(a.wait(&pair(), WaitCondition::Sep, WAIT.as_millis() as u64))
        .expect("separated");
    h1.volume_ok(&["thaw", "mv"]);
    // Writes on the MV after the split do not reach the RV.
    std::fs::write(h1.mount_point.join("after-split"), b"later").unwrap();

    h2.volume_ok(&["mount", "rv", "--identity", "new"]);
    for (name, data) in &written {
        let got = std::fs::read(h2.mount_point.join(name)).unwrap();
        assert!(&got == data, "{fs}: {name} differs on the RV");
    }
    assert!(
        !h2.mount_point.join("after-split").exists(),
        "{fs}: a write after the split reached the RV"
    );
    let mv_id = run(&["blkid", "-s", "UUID", "-o", "value", &dev]);
    let rv_id = run(&["blkid", "-s", "UUID", "-o", "value", &h2.wait_device()]);
    assert_ne!(
        mv_id, rv_id,
        "{fs}: the RV's file system has its own identity"
    );
    h2.volume_ok(&["unmount", "rv"]);
    let check = h2.volume_ok(&["check", "rv"]);
    eprintln!("{fs}: RV check: {}", check.trim());
}

#[test]
fn ext4_on_an_ld_is_in_the_array_and_its_rv_mounts_on_another_host() {
    require!("mkfs.ext4", "e2fsck", "tune2fs", "fsfreeze", "dd");
    a_file_system_on_an_ld_is_in_the_array_and_its_rv_mounts_on_another_host(
        "ext4",
        &["mkfs.ext4", "-q"],
        64 * MIB,
    );
}

#[test]
fn xfs_on_an_ld_is_in_the_array_and_its_rv_mounts_on_another_host() {
    require!("mkfs.xfs", "xfs_repair", "xfs_admin", "fsfreeze", "dd");
    a_file_system_on_an_ld_is_in_the_array_and_its_rv_mounts_on_another_host(
        "xfs",
        &["mkfs.xfs", "-q", "-f"],
        320 * MIB,
    );
}

/// An agent that starts before the array attaches nothing; once the array answers,
/// `volume rescan` attaches the LD and the volume has its loop device.
#[test]
fn rescan_attaches_an_ld_that_became_visible() {
    require!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut array = ArraySite::new(d, 16 * MIB);
    // Dropped before the array: the hosts' LD path processes unmount while it answers.
    let _cleanup = Cleanup(d.to_path_buf());
    let h1 = Host::start(d, "h1", &array, "mv", 0, "ext4");
    assert_eq!(h1.device(), None, "attached with no array");
    assert!(loops_under(&h1.lds_dir()).is_empty());
    array.start();
    h1.volume_ok(&["rescan"]);
    let dev = h1.wait_device();
    assert_eq!(loops_under(&h1.lds_dir()).len(), 1, "{dev}");
    // The LD of h2 is not on h1's access list: not attached.
    assert!(!h1.lds_dir().join("A.1").exists());
}

/// The LD path outlives the agent (the defect: the agent served the LDs itself, so a killed
/// agent took its business server's file systems down with I/O errors). A SIGKILLed agent
/// leaves the volume mounted and writable, every write reaching the array; SIGTERM too; the
/// restarted agent uses the same LD path. A killed LD path process is replaced by the agent,
/// and the new one cleans up the dead one's loop device and mount (saying `stale`): the volume
/// mounts again with its files. `stillpoint hba stop` unmounts, detaches and ends it.
#[test]
fn the_ld_path_outlives_the_agent_and_a_killed_one_is_replaced_and_cleaned_up() {
    require!("mkfs.ext4", "fsfreeze", "dd");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = runtime();
    let mut array = ArraySite::new(d, 32 * MIB);
    // Dropped before the array: the hosts' LD path processes unmount while it answers.
    let _cleanup = Cleanup(d.to_path_buf());
    array.start();
    let a = array.client(&rt);
    let mut h1 = Host::start(d, "h1", &array, "mv", 0, "ext4");
    let dev = h1.wait_device();
    run(&["mkfs.ext4", "-q", &dev]);
    h1.volume_ok(&["mount", "mv"]);
    std::fs::write(h1.mount_point.join("kept"), b"through the array").unwrap();
    let first = h1.hba_pid().expect("the agent started its LD path process");

    // The agent dies: the business file system goes on, through the array.
    h1.sigkill();
    let while_dead: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(h1.mount_point.join("while-agent-dead"), &while_dead)
        .expect("a write with the agent dead");
    run(&["sync", "-f", h1.mount_point.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(h1.mount_point.join("kept")).unwrap(),
        b"through the array"
    );
    run(&["fsfreeze", "-f", h1.mount_point.to_str().unwrap()]);
    let host_view = read_device(d, &dev, 32 * MIB);
    let array_view = read_array(&rt, &a, "h1", 0, 32 * MIB);
    run(&["fsfreeze", "-u", h1.mount_point.to_str().unwrap()]);
    assert!(
        host_view == array_view,
        "with the agent dead, host and array differ at byte {:?}",
        first_difference(&host_view, &array_view)
    );

    // Restarted, then stopped gracefully, then restarted: the same LD path, nothing stale.
    h1.restart();
    assert_eq!(
        h1.hba_pid(),
        Some(first),
        "the restarted agent uses the running LD path"
    );
    h1.sigterm();
    assert!(
        is_mount_point(&h1.mount_point),
        "a stopped agent unmounted the volume"
    );
    assert_eq!(
        loops_under(&h1.lds_dir()),
        vec![(dev.clone(), format!("{}/A.0", h1.lds_dir().display()))]
    );
    h1.restart();
    assert!(!h1.hba_log().contains("stale"), "{}", h1.hba_log());
    assert_eq!(h1.wait_device(), dev);

    // The LD path process dies: the agent starts another, which cleans up after it.
    run(&["kill", "-KILL", &first.to_string()]);
    let second = wait_for(
        "the agent to start a new LD path process",
        || h1.hba_log(),
        || h1.hba_pid().filter(|p| *p != first),
    );
    let log = h1.hba_log();
    assert!(
        log.contains("detached a stale loop device")
            && log
                .contains("lazily unmounted a file system left mounted on a stale LD loop device")
            && log.contains("lazily unmounted the stale LD file system"),
        "{log}"
    );
    let dev = h1.wait_device();
    assert_eq!(loops_under(&h1.lds_dir()).len(), 1);
    h1.volume_ok(&["mount", "mv"]);
    assert_eq!(
        std::fs::read(h1.mount_point.join("kept")).unwrap(),
        b"through the array"
    );
    assert!(std::fs::read(h1.mount_point.join("while-agent-dead")).unwrap() == while_dead);

    // `hba stop` (agent stopped first): unmounted, detached, FUSE unmounted, process gone.
    h1.sigterm();
    let out = h1.hba(&["stop"]);
    assert!(out.status.success(), "hba stop: {}", stderr(&out));
    assert!(!is_mount_point(&h1.mount_point), "volume still mounted");
    assert_eq!(loops_under(&h1.lds_dir()), vec![], "loop devices left");
    assert!(!is_mount_point(&h1.lds_dir()), "FUSE still mounted");
    wait_for(
        "the LD path process to exit",
        || h1.hba_log(),
        || (!Path::new(&format!("/proc/{second}")).exists()).then_some(()),
    );
    let log = h1.hba_log();
    assert!(
        log.contains("LD detached") && log.contains("LD file system unmounted"),
        "{log}"
    );
    assert!(!dev.is_empty());

    // The next agent start attaches again; the files are there.
    h1.restart();
    h1.wait_device();
    h1.volume_ok(&["mount", "mv"]);
    assert_eq!(
        std::fs::read(h1.mount_point.join("kept")).unwrap(),
        b"through the array"
    );
}

/// An RV separated read-only: the backup host reads it (the MV's bytes) and its writes fail
/// with an I/O error (the array refuses them; the FUSE file answers EROFS, the loop device
/// reports an I/O error), promptly, and the agent lives on.
#[test]
fn a_read_only_rv_reads_and_refuses_writes() {
    require!("dd");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = runtime();
    let mut array = ArraySite::new(d, 8 * MIB);
    // Dropped before the array: the hosts' LD path processes unmount while it answers.
    let _cleanup = Cleanup(d.to_path_buf());
    array.start();
    let a = array.client(&rt);
    let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    rt.block_on(a.write("h1", 0, 0, &block)).expect("MV write");
    rt.block_on(a.pair_set(&pair())).expect("pair set");
    let opts = ReplicateOptions {
        wait_timeout_ms: Some(WAIT.as_millis() as u64),
        ..Default::default()
    };
    rt.block_on(a.replicate(&pair(), &opts)).expect("replicate");
    let sep = SeparateOptions {
        rv_access: RvAccess::Ro,
        wait_timeout_ms: Some(WAIT.as_millis() as u64),
        ..Default::default()
    };
    rt.block_on(a.separate(&pair(), &sep)).expect("separate");
    rt.block_on(a.wait(&pair(), WaitCondition::Sep, WAIT.as_millis() as u64))
        .expect("separated");

    let h2 = Host::start(d, "h2", &array, "rv", 1, "ext4");
    let dev = h2.wait_device();
    let copy = read_device(d, &dev, 8 * MIB);
    assert!(
        copy[..4096] == block[..],
        "the RV does not hold the MV's block"
    );
    let started = Instant::now();
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={dev}"),
            "bs=4096",
            "count=1",
            "oflag=direct",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && stderr(&out).contains("Input/output error"),
        "writing a read-only RV: {:?} {}",
        out.status,
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // Said by the LD path process, which serves the LD's I/O.
    assert!(
        h2.hba_log()
            .lines()
            .any(|l| l.contains("LD write failed") && l.contains("errno=\"EROFS\"")),
        "the refusal is answered EROFS: {}",
        h2.hba_log()
    );
    assert_eq!(
        rt.block_on(a.read("h2", 1, 0, 4096)).unwrap(),
        block,
        "the RV changed"
    );
    h2.volume_ok(&["list"]);
}
