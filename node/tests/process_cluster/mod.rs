//! Agents as processes of the `stillpoint` binary on loopback, for tests and benches that must
//! see what an operator sees: exit codes, stderr, SIGKILL, SIGSTOP.
//!
//! Every agent logs to its own file under the cluster's temporary dir; every child is killed
//! (after a SIGCONT, in case it was paused) when the cluster is dropped, pass or fail. Every
//! wait is bounded.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

// The operator-level basics are shared with the other process tests.
#[path = "../common/mod.rs"]
mod common;
pub use common::{BIN, WAIT, free_port, stderr, stillpoint, wait_for};

/// Sends `signal` (e.g. "STOP", "CONT", "KILL") to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Whether this process runs as root (mounts and loop devices need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A size-limited tmpfs mounted for the test, unmounted when dropped.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at `path`, creating `path`.
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Writes zeros to `name` on the file system until it is full; returns the bytes written.
    pub fn fill(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut file = File::create(self.path.join(name)).expect("create the filler file");
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        // Bounded by the file system's size: the write fails with ENOSPC when it is full.
        loop {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        // Smaller writes take the last partial page.
        for _ in 0..64 {
            match file.write(&chunk[..512]) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        let _ = file.sync_all();
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Agents as child processes. Slot `i` is node id `i + 1`, named `n{i+1}`.
pub struct ProcessCluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<PathBuf>,
    pub endpoints: Vec<String>,
    pub children: Vec<Option<Child>>,
    /// Slots currently paused with SIGSTOP (resumed before they are killed on drop).
    paused: Vec<bool>,
    /// Slots started at least once: the first start is a brand-new node (`--new`), later ones
    /// restart it from its own data dir.
    started: Vec<bool>,
}

impl ProcessCluster {
    /// Writes configs for `n` agents with `raft_toml` as their `[raft]` table body and data dirs
    /// from `data_dir` (slot -> dir; `None` = under the cluster's temporary dir), and starts
    /// them; returns once every agent answers.
    pub fn start(
        n: usize,
        raft_toml: &str,
        data_dir: impl Fn(usize) -> Option<PathBuf>,
    ) -> ProcessCluster {
        let dir = tempfile::tempdir().expect("temporary dir");
        let mut configs = Vec::new();
        let mut endpoints = Vec::new();
        for slot in 0..n {
            let port = free_port();
            let id = slot + 1;
            let data = data_dir(slot).unwrap_or_else(|| dir.path().join(format!("data{id}")));
            let path = dir.path().join(format!("node{id}.toml"));
            let text = format!(
                "node_id = {id}\nname = \"n{id}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nroles = [\"business\"]\n\n[raft]\n{raft_toml}\n",
                data.display()
            );
            std::fs::write(&path, text).expect("write node.toml");
            configs.push(path);
            endpoints.push(format!("127.0.0.1:{port}"));
        }
        let mut cluster = ProcessCluster {
            dir,
            configs,
            endpoints,
            children: (0..n).map(|_| None).collect(),
            paused: vec![false; n],
            started: vec![false; n],
        };
        for slot in 0..n {
            cluster.spawn(slot);
        }
        for slot in 0..n {
            cluster.wait_answering(slot);
        }
        cluster
    }

    pub fn log_path(&self, slot: usize) -> PathBuf {
        self.dir.path().join(format!("agent{}.log", slot + 1))
    }

    /// Everything agent `slot` wrote to stderr, over all its runs.
    pub fn log(&self, slot: usize) -> String {
        std::fs::read_to_string(self.log_path(slot)).unwrap_or_default()
    }

    /// Starts agent `slot` (again), appending its stderr to its log file.
    pub fn spawn(&mut self, slot: usize) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(slot))
            .expect("open agent log");
        let mut command = Command::new(BIN);
        command.args(["agent", "--config"]).arg(&self.configs[slot]);
        if !self.started[slot] {
            command.arg("--new");
            self.started[slot] = true;
        }
        let child = command
            .env("RUST_LOG", "info,openraft=error")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.children[slot] = Some(child);
        self.paused[slot] = false;
    }

    pub fn pid(&self, slot: usize) -> u32 {
        self.children[slot].as_ref().expect("agent runs").id()
    }

    /// Waits until agent `slot` answers its identity.
    pub fn wait_answering(&self, slot: usize) {
        let endpoint = self.endpoints[slot].clone();
        wait_for(&format!("agent {} to answer", slot + 1), WAIT, || {
            let out = stillpoint(&["cluster", "status", "--endpoint", &endpoint]);
            out.status.success().then_some(())
        });
    }

    /// `cluster init` at agent `at`, with every agent as a first member.
    pub fn init(&self, at: usize) {
        let mut args = vec!["cluster", "init", "--endpoint", self.endpoints[at].as_str()];
        for e in &self.endpoints {
            args.extend(["--member", e.as_str()]);
        }
        let out = stillpoint(&args);
        assert!(out.status.success(), "cluster init: {}", stderr(&out));
    }

    /// `cluster status` at agent `slot` as JSON, or `None` with the CLI's output when it fails.
    pub fn status(&self, slot: usize, consistent: bool) -> Result<serde_json::Value, Output> {
        let mut args = vec![
            "cluster",
            "status",
            "--endpoint",
            self.endpoints[slot].as_str(),
            "--output",
            "json",
        ];
        if consistent {
            args.push("--consistent");
        }
        let out = stillpoint(&args);
        if !out.status.success() {
            return Err(out);
        }
        serde_json::from_slice(&out.stdout).map_err(|_| out)
    }

    /// Waits until the agents in `among` agree on one leader among them and it answers a
    /// consistent status; returns its slot.
    pub fn leader(&self, among: &[usize]) -> usize {
        wait_for("a leader every running agent agrees on", WAIT, || {
            let mut seen = Vec::new();
            for slot in among {
                let s = self.status(*slot, false).ok()?;
                seen.push(s["leader_id"].as_u64()?);
            }
            seen.dedup();
            let [id] = seen[..] else { return None };
            let slot = id as usize - 1;
            if !among.contains(&slot) {
                return None;
            }
            let s = self.status(slot, true).ok()?;
            (s["answered_by"].as_u64() == Some(id)).then_some(slot)
        })
    }

    /// Waits until agent `slot` sees `n` named (registered) members.
    pub fn wait_registered(&self, slot: usize, n: usize) {
        wait_for(&format!("{n} registered members"), WAIT, || {
            let s = self.status(slot, false).ok()?;
            let named = s["members"]
                .as_array()?
                .iter()
                .filter(|m| m["name"].as_str().is_some_and(|n| !n.is_empty()))
                .count();
            (named == n).then_some(())
        });
    }

    pub fn pause(&mut self, slot: usize) {
        signal(self.pid(slot), "STOP");
        self.paused[slot] = true;
    }

    pub fn resume(&mut self, slot: usize) {
        signal(self.pid(slot), "CONT");
        self.paused[slot] = false;
    }

    /// SIGKILLs agent `slot` and reaps it.
    pub fn kill(&mut self, slot: usize) {
        if let Some(mut child) = self.children[slot].take() {
            if self.paused[slot] {
                let _ = Command::new("kill")
                    .args(["-CONT", &child.id().to_string()])
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused[slot] = false;
    }

    /// The exit status of agent `slot` if it has exited (reaping it), else `None`.
    pub fn exited(&mut self, slot: usize) -> Option<ExitStatus> {
        let child = self.children[slot].as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        self.children[slot] = None;
        Some(status)
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for slot in 0..self.children.len() {
            self.kill(slot);
        }
    }
}
