//! Helpers for tests that run the `stillpoint` binary as an operator would: agent processes on
//! loopback, each with its own config and data dir under one temporary dir.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stillpoint");
/// Bound on any wait in these tests (a loaded 2-core CI machine).
pub const WAIT: Duration = Duration::from_secs(90);

/// Runs one CLI command to completion (client commands bound their own requests).
pub fn stillpoint(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("STILLPOINT_ENDPOINT")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run stillpoint")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `node{id}.toml` under `dir` with data dir `dir/data{id}` and fast raft timings.
pub fn write_config(dir: &Path, node_id: u64, port: u16, extra: &str) -> PathBuf {
    write_config_with_data(
        dir,
        node_id,
        port,
        &dir.join(format!("data{node_id}")),
        extra,
    )
}

pub fn write_config_with_data(
    dir: &Path,
    node_id: u64,
    port: u16,
    data: &Path,
    extra: &str,
) -> PathBuf {
    let path = dir.join(format!(
        "node{node_id}-{}.toml",
        data.file_name().unwrap().to_string_lossy()
    ));
    let text = format!(
        "node_id = {node_id}\nname = \"n{node_id}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nroles = [\"business\"]\n{extra}\n[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n",
        data.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Agent processes, killed (and reaped) when the test ends, pass or fail.
#[derive(Default)]
pub struct Agents(pub Vec<Option<Child>>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            signal(child, "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Agents {
    /// SIGKILLs the agent in `slot` and reaps it.
    pub fn kill(&mut self, slot: usize) {
        if let Some(mut child) = self.0[slot].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

/// Sends SIGSTOP/SIGCONT/... to a child through kill(1).
pub fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status();
}

/// Starts `stillpoint agent --config cfg [--new]`, its stderr appended to `cfg.log`.
pub fn spawn_agent(cfg: &Path, new: bool) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.with_extension("log"))
        .unwrap();
    let mut args = vec!["agent", "--config", cfg.to_str().unwrap()];
    if new {
        args.push("--new");
    }
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info,openraft=error")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn agent")
}

/// `cluster status` as answered by the agent at `endpoint` itself (its own view), as JSON.
pub fn status_json(endpoint: &str, consistent: bool) -> Option<serde_json::Value> {
    let mut args = vec![
        "cluster",
        "status",
        "--endpoint",
        endpoint,
        "--output",
        "json",
    ];
    if consistent {
        args.push("--consistent");
    }
    let out = stillpoint(&args);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Polls `probe` until it yields `Some`, for at most `bound`; panics naming `what` otherwise.
pub fn wait_for<T>(what: &str, bound: Duration, probe: impl FnMut() -> Option<T>) -> T {
    poll_until(bound, probe)
        .unwrap_or_else(|| panic!("timed out after {bound:?} waiting for {what}"))
}

/// Waits (bounded) for a child to exit; kills it and returns None if it is still running.
pub fn wait_exit(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Member ids (voters and learners) in a status JSON.
pub fn member_ids(status: &serde_json::Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Like [`wait_for`] but returns None at the deadline instead of failing, so the caller can
/// report what it last saw.
pub fn poll_until<T>(bound: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
