//! The host half of real `stillpoint` agent processes on ext4 and XFS loop devices, where a
//! defect involves the agent dying (issue 10). Root only: without root, loop devices or the
//! file-system tools each test prints why it skipped. Loop devices, mounts and processes are
//! cleaned up by guards even when a test fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_stillpoint");
/// Bound on any wait in these tests (a loaded 2-core CI machine).
const WAIT: Duration = Duration::from_secs(60);

const EXT4: (&str, &[&str]) = ("ext4", &["mkfs.ext4", "-q"]);
const XFS: (&str, &[&str]) = ("xfs", &["mkfs.xfs", "-q", "-f"]);

fn skip_reason(need: &[&str]) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok();
    if uid.is_none_or(|o| String::from_utf8_lossy(&o.stdout).trim() != "0") {
        return Some("not running as root".into());
    }
    for tool in need {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control (loop devices unavailable)".into());
    }
    None
}

macro_rules! require {
    ($($tool:expr),*) => {
        if let Some(why) = skip_reason(&[$($tool),*]) {
            eprintln!(
                "SKIPPED {}: {why}",
                std::thread::current().name().unwrap_or("host_linux test")
            );
            return;
        }
    };
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
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
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Loop device (detached on drop) and mount point (thawed and lazily unmounted on drop).
struct Volume {
    dev: String,
    mp: PathBuf,
}

impl Drop for Volume {
    fn drop(&mut self) {
        let mp = self.mp.to_str().unwrap();
        let _ = Command::new("fsfreeze")
            .args(["-u", mp])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .args(["-l", mp])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn volume(dir: &Path, name: &str, mkfs: &[&str]) -> Volume {
    let img = dir.join(format!("{name}.img"));
    let bytes = if mkfs[0] == "mkfs.xfs" { 320 } else { 64 } << 20;
    std::fs::File::create(&img).unwrap().set_len(bytes).unwrap();
    let dev = run(&["losetup", "--find", "--show", img.to_str().unwrap()]);
    let mp = dir.join(format!("mnt-{name}"));
    std::fs::create_dir(&mp).unwrap();
    let v = Volume { dev, mp };
    let mut cmd = mkfs.to_vec();
    cmd.push(&v.dev);
    run(&cmd);
    v
}

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One agent process with a linux `[host]`, in a one-node cluster.
struct Site {
    dir: PathBuf,
    config: PathBuf,
    endpoint: String,
    agent: Option<Proc>,
}

impl Site {
    /// `volumes`: (name, volume, fs, extra TOML lines for the volume).
    fn start(dir: &Path, volumes: &[(&str, &Volume, &str, &str)]) -> Site {
        let site = Site::start_unregistered(dir, volumes);
        site.wait_for("the node to be registered", || {
            site.cli(&["volume", "list", "--node", "h1"])
                .status
                .success()
                .then_some(())
        });
        site
    }

    /// As `start`, returning as soon as `cluster init` answered.
    fn start_unregistered(dir: &Path, volumes: &[(&str, &Volume, &str, &str)]) -> Site {
        let port = free_port();
        let mut text = format!(
            "node_id = 1\nname = \"h1\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nroles = [\"business\"]\n\
             [raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n\
             [host]\nbackend = \"linux\"\n",
            dir.join("data").display()
        );
        for (name, v, fs, extra) in volumes {
            text.push_str(&format!(
                "[[host.volumes]]\nname = \"{name}\"\ndevice = \"{}\"\nmount_point = \"{}\"\nfs = \"{fs}\"\nfreeze_ms_max = 60000\n{extra}\n",
                v.dev,
                v.mp.display()
            ));
        }
        let config = dir.join("node.toml");
        std::fs::write(&config, text).unwrap();
        let mut site = Site {
            dir: dir.to_path_buf(),
            config,
            endpoint: format!("127.0.0.1:{port}"),
            agent: None,
        };
        site.spawn();
        site.wait_for("the agent to listen", || {
            site.cli(&["cluster", "status"])
                .status
                .success()
                .then_some(())
        });
        let init = site.cli(&["cluster", "init", "--member", &site.endpoint.clone()]);
        assert!(init.status.success(), "init: {}", stderr(&init));
        site
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("agent.log")).unwrap();
        let child = Command::new(BIN)
            // Started once, as a brand-new node (its data dir is created by --new).
            .args(["agent", "--config", self.config.to_str().unwrap(), "--new"])
            .env("RUST_LOG", "info,openraft=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.agent = Some(Proc(child));
    }

    /// SIGKILL of the agent; it is not restarted.
    fn kill_agent(&mut self) {
        let mut p = self.agent.take().expect("agent running");
        p.0.kill().unwrap();
        p.0.wait().unwrap();
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

    fn volume_ok(&self, args: &[&str]) -> String {
        let mut full = vec!["volume"];
        full.extend_from_slice(args);
        full.extend(["--node", "h1"]);
        let out = self.cli(&full);
        assert!(
            out.status.success(),
            "stillpoint {full:?} failed ({:?}): {}\nagent log:\n{}",
            out.status.code(),
            stderr(&out),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                self.log()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A process that may be stuck in the kernel (a writer on a frozen file system): killed on
/// drop but not waited for, so a failing test never hangs on it.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.try_wait();
    }
}

/// A small synchronous write: blocks while the file system is frozen.
fn writer(path: &Path) -> Writer {
    Writer(
        Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", path.display()),
                "bs=4096",
                "count=1",
                "conv=fsync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Issue 10 defect 2: SIGKILL of the agent during a freeze, agent NOT restarted: the file
/// system is thawed at the freeze's deadline anyway. Returns the measured lateness (ms) of a
/// blocked writer's completion after the deadline.
fn a_killed_agents_freeze_ends_at_its_deadline(fs: (&str, &[&str])) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let v = volume(dir.path(), "mv", fs.1);
    let mut site = Site::start(dir.path(), &[("mv", &v, fs.0, "")]);
    site.volume_ok(&["mount", "mv"]);
    let out = site.volume_ok(&["freeze", "mv", "--limit-ms", "4000", "--output", "json"]);
    let q: serde_json::Value = serde_json::from_str(&out).unwrap();
    let deadline = q["deadline_unix_ms"]
        .as_u64()
        .expect("deadline in the freeze's answer");
    let mut w = writer(&v.mp.join("after-freeze"));
    let guard = guards(&v.mp);
    assert_eq!(guard.len(), 1, "one freeze guard: {guard:?}");
    site.kill_agent();
    assert!(
        w.0.try_wait().unwrap().is_none(),
        "the writer finished although the file system is frozen"
    );
    // Poll the guard and the writer often, within a generous bound, to time the thaw: the
    // guard exits right after its FITHAW returns; the writer then still has to fsync.
    let bound = deadline + 30_000;
    let mut guard_gone_at = None;
    let finished_at = loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", guard[0]));
        if guard_gone_at.is_none() && stat.ok().is_none_or(|s| s.contains(") Z")) {
            guard_gone_at = Some(now_unix_ms());
        }
        if w.0.try_wait().unwrap().is_some() {
            break now_unix_ms();
        }
        if now_unix_ms() >= bound {
            let _ = Command::new("fsfreeze")
                .args(["-u", v.mp.to_str().unwrap()])
                .status();
            panic!(
                "{}: still frozen 30 s after the deadline with the agent dead\nagent log:\n{}",
                fs.0,
                site.log()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        finished_at + 5 >= deadline,
        "{}: thawed {} ms before the deadline",
        fs.0,
        deadline - finished_at
    );
    let late = finished_at.saturating_sub(deadline);
    let guard_late = guard_gone_at
        .map(|t| t.saturating_sub(deadline).to_string())
        .unwrap_or_else(|| "?".into());
    eprintln!(
        "MEASURED {}: guard thawed and exited {guard_late} ms, blocked writer done {late} ms after the freeze deadline (agent SIGKILLed, not restarted)",
        fs.0
    );
    assert!(late < 2_000, "{}: thawed {late} ms late", fs.0);
    late
}

#[test]
fn ext4_a_killed_agents_freeze_ends_at_its_deadline() {
    require!("losetup", "mkfs.ext4", "blkid", "dd", "fsfreeze");
    a_killed_agents_freeze_ends_at_its_deadline(EXT4);
}

#[test]
fn xfs_a_killed_agents_freeze_ends_at_its_deadline() {
    require!("losetup", "mkfs.xfs", "blkid", "dd", "fsfreeze");
    a_killed_agents_freeze_ends_at_its_deadline(XFS);
}

/// Kills the processes whose pids a test's hooks wrote into files, whatever happens.
struct KillPids(Vec<PathBuf>);

impl Drop for KillPids {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Ok(p) = std::fs::read_to_string(f) {
                let _ = Command::new("kill").args(["-9", p.trim()]).status();
            }
        }
    }
}

fn alive(pid_file: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    // A zombie (exited, not yet reaped) is not alive.
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// Issue 10 defect 6: an agent killed during a stop hook does not orphan the hook: the hook
/// and its child are ended before the restarted agent runs the start hook.
fn a_killed_agents_stop_hook_is_ended_before_the_start_hook(fs: (&str, &[&str])) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v = volume(d, "mv", fs.1);
    let (stop_pid, child_pid, log) = (d.join("stop.pid"), d.join("child.pid"), d.join("start.log"));
    let _cleanup = KillPids(vec![stop_pid.clone(), child_pid.clone()]);
    // The start hook records whether the stop hook or its child still runs (a zombie, exited
    // and waiting for its new parent to reap it, does not count).
    let start_sh = d.join("start.sh");
    std::fs::write(
        &start_sh,
        format!(
            "for f in {sp} {cp}; do\n\
             st=$(awk '{{print $3}}' /proc/$(cat $f)/stat 2>/dev/null)\n\
             if [ -n \"$st\" ] && [ \"$st\" != Z ]; then echo ALIVE >> {log}; exit 0; fi\n\
             done\n\
             echo DEAD >> {log}\n",
            sp = stop_pid.display(),
            cp = child_pid.display(),
            log = log.display()
        ),
    )
    .unwrap();
    let extra = format!(
        "unmount_ms_max = 600000\n\
         stop = {{ command = [\"sh\", \"-c\", \"echo $$ > {sp}; sleep 300 & echo $! > {cp}; wait\"] }}\n\
         start = {{ command = [\"sh\", \"{start}\"] }}\n",
        sp = stop_pid.display(),
        cp = child_pid.display(),
        start = start_sh.display()
    );
    let mut site = Site::start(d, &[("mv", &v, fs.0, &extra)]);
    site.volume_ok(&["mount", "mv"]);
    let quiesce = Proc(
        Command::new(BIN)
            .args([
                "volume",
                "quiesce",
                "mv",
                "--node",
                "h1",
                "--endpoint",
                &site.endpoint,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    site.wait_for("the stop hook and its child to run", || {
        (alive(&stop_pid) && alive(&child_pid)).then_some(())
    });
    site.kill_agent();
    drop(quiesce);
    site.spawn();
    site.wait_for("the restarted agent to run the start hook", || {
        std::fs::read_to_string(&log).ok().filter(|s| !s.is_empty())
    });
    let seen = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        seen.trim(),
        "DEAD",
        "{}: the start hook ran while the dead agent's stop hook was alive\nagent log:\n{}",
        fs.0,
        site.log()
    );
    assert!(!alive(&stop_pid), "{}: the stop hook survived", fs.0);
    assert!(
        !alive(&child_pid),
        "{}: the stop hook's child survived",
        fs.0
    );
    site.volume_ok(&["unmount", "mv"]);
}

#[test]
fn ext4_a_killed_agents_stop_hook_is_ended_before_the_start_hook() {
    require!("losetup", "mkfs.ext4", "blkid", "sh", "sleep");
    a_killed_agents_stop_hook_is_ended_before_the_start_hook(EXT4);
}

#[test]
fn xfs_a_killed_agents_stop_hook_is_ended_before_the_start_hook() {
    require!("losetup", "mkfs.xfs", "blkid", "sh", "sleep");
    a_killed_agents_stop_hook_is_ended_before_the_start_hook(XFS);
}

/// Issue 10 defect 8: right after `cluster init`, `volume list --node NAME` waits briefly for
/// the node to register instead of answering "no node named ... (known: )".
#[test]
fn a_volume_command_right_after_init_finds_the_node() {
    require!("losetup", "mkfs.ext4", "blkid");
    let dir = tempfile::tempdir().unwrap();
    let v = volume(dir.path(), "mv", EXT4.1);
    let site = Site::start_unregistered(dir.path(), &[("mv", &v, EXT4.0, "")]);
    let out = site.cli(&["volume", "list", "--node", "h1"]);
    assert!(
        out.status.success(),
        "volume list right after init exited {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mv"));
    // A name that never registers is still refused, naming what is known.
    let out = site.cli(&["volume", "list", "--node", "nobody"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("h1"), "{}", stderr(&out));
}

/// Live processes named `sp-freeze-guard` that hold `mp` (the root of the file system they
/// froze) open.
fn guards(mp: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.contains("(sp-freeze-guard)") && !s.contains("(sp-freeze-guard) Z")
            })
        })
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == mp))
        })
        .collect()
}

/// Issue 10 defect 2, second half: an agent restarted before the deadline finds the dead
/// agent's freeze guard through its journal, thaws at once (it cannot vouch for the freeze) and
/// ends the guard.
fn a_restarted_agent_ends_the_dead_agents_freeze_guard(fs: (&str, &[&str])) {
    let dir = tempfile::tempdir().unwrap();
    let v = volume(dir.path(), "mv", fs.1);
    let mut site = Site::start(dir.path(), &[("mv", &v, fs.0, "")]);
    site.volume_ok(&["mount", "mv"]);
    site.volume_ok(&["freeze", "mv", "--limit-ms", "60000"]);
    let ours = guards(&v.mp);
    assert_eq!(ours.len(), 1, "one freeze guard per freeze: {ours:?}");
    let mut w = writer(&v.mp.join("after-freeze"));
    site.kill_agent();
    assert!(
        w.0.try_wait().unwrap().is_none(),
        "frozen while the agent is dead"
    );
    site.spawn();
    site.wait_for("the restarted agent to thaw", || {
        w.0.try_wait().unwrap().map(|_| ())
    });
    site.wait_for("the dead agent's guard to end", || {
        guards(&v.mp).is_empty().then_some(())
    });
    let out = site.volume_ok(&["quiesces", "--output", "json"]);
    assert!(out.contains("restarted"), "{out}");
    site.volume_ok(&["unmount", "mv"]);
}

#[test]
fn ext4_a_restarted_agent_ends_the_dead_agents_freeze_guard() {
    require!("losetup", "mkfs.ext4", "blkid", "dd");
    a_restarted_agent_ends_the_dead_agents_freeze_guard(EXT4);
}

#[test]
fn xfs_a_restarted_agent_ends_the_dead_agents_freeze_guard() {
    require!("losetup", "mkfs.xfs", "blkid", "dd");
    a_restarted_agent_ends_the_dead_agents_freeze_guard(XFS);
}
