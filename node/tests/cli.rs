//! The `stillpoint` binary as an operator runs it: bad input is named and changes nothing, and
//! three agent processes form a cluster that survives SIGKILL of its leader.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stillpoint");
/// Bound on any wait in these tests (a loaded 2-core CI machine).
const WAIT: Duration = Duration::from_secs(60);

fn stillpoint(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("STILLPOINT_ENDPOINT")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run stillpoint")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, node_id: u64, port: u16, extra: &str) -> PathBuf {
    let path = dir.join(format!("node{node_id}.toml"));
    let text = format!(
        "node_id = {node_id}\nname = \"n{node_id}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nroles = [\"business\"]\n{extra}\n[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n",
        dir.join(format!("data{node_id}")).display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_unknown_field_is_named_with_file_and_line_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 1, free_port(), "flavour = \"x\"");
    let out = stillpoint(&["agent", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(cfg.to_str().unwrap()) && err.contains("line 6") && err.contains("flavour"),
        "{err}"
    );
    assert!(
        !dir.path().join("data1").exists(),
        "no data dir is created for a bad config"
    );
}

#[test]
fn a_missing_node_id_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "name = \"x\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/tmp/x\"\n",
    )
    .unwrap();
    let out = stillpoint(&["agent", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("node_id"), "{}", stderr(&out));
}

#[test]
fn a_port_in_use_is_named_and_the_data_dir_is_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg = write_config(dir.path(), 1, port, "");
    let out = stillpoint(&["agent", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("data1").exists());
}

#[test]
fn an_unreachable_endpoint_is_named_with_exit_code_4() {
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let out = stillpoint(&["cluster", "status", "--endpoint", &endpoint]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains(&endpoint), "{}", stderr(&out));
}

/// Agent processes killed when the test ends, pass or fail.
struct Agents(Vec<Option<Child>>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts an agent; `new` makes a brand-new node (creates its data dir).
fn spawn_agent(cfg: &Path, new: bool) -> Child {
    let mut args = vec!["agent", "--config", cfg.to_str().unwrap()];
    if new {
        args.push("--new");
    }
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent")
}

fn status_json(endpoint: &str) -> Option<serde_json::Value> {
    let out = stillpoint(&[
        "cluster",
        "status",
        "--endpoint",
        endpoint,
        "--output",
        "json",
    ]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

#[test]
fn three_agent_processes_form_a_cluster_that_survives_sigkill_of_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let configs: Vec<PathBuf> = (0..3)
        .map(|i| write_config(dir.path(), i as u64 + 1, ports[i], ""))
        .collect();
    let mut agents = Agents(configs.iter().map(|c| Some(spawn_agent(c, true))).collect());

    for e in &endpoints {
        wait_for("agents to listen", || {
            let out = stillpoint(&["cluster", "status", "--endpoint", e]);
            out.status.success().then_some(())
        });
    }
    let mut init = vec!["cluster", "init", "--endpoint", endpoints[0].as_str()];
    for e in &endpoints {
        init.extend(["--member", e.as_str()]);
    }
    let out = stillpoint(&init);
    assert!(out.status.success(), "{}", stderr(&out));

    let status = wait_for("a leader and three registered members", || {
        let s = status_json(&endpoints[1])?;
        let members = s["members"].as_array()?;
        let named = members
            .iter()
            .filter(|m| m["name"].as_str().is_some_and(|n| !n.is_empty()))
            .count();
        (s["leader_id"].is_u64() && named == 3).then_some(s)
    });
    let leader = status["leader_id"].as_u64().unwrap();

    // Kill the leader outright; the other two elect a new one and still answer consistently.
    let slot = leader as usize - 1;
    let mut child = agents.0[slot].take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let survivor = &endpoints[(slot + 1) % 3];
    let after = wait_for("a new leader", || {
        let out = stillpoint(&[
            "cluster",
            "status",
            "--endpoint",
            survivor,
            "--consistent",
            "--output",
            "json",
        ]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let new = s["leader_id"].as_u64()?;
        (out.status.success() && new != leader).then_some(s)
    });
    let dead = after["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"].as_u64() == Some(leader))
        .unwrap()
        .clone();
    assert_eq!(
        dead["reachable"], false,
        "the killed agent shows as unreachable: {dead}"
    );

    // It restarts from its data dir and rejoins.
    agents.0[slot] = Some(spawn_agent(&configs[slot], false));
    wait_for("the restarted agent to be reachable again", || {
        let s = status_json(survivor)?;
        let m = s["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"].as_u64() == Some(leader))?
            .clone();
        (m["reachable"] == true).then_some(())
    });
}

/// The README's first command: a local site forms, and the hand-run backup ends with a copy the
/// backup server finds consistent (the demo exits non-zero otherwise).
#[test]
fn the_demo_takes_a_consistent_backup_copy() {
    let out = stillpoint(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", stderr(&out));
    for expected in [
        "Leader",
        "set pair p1",
        "SIGKILL the leader's agent",
        "leads now; it takes the job over",
        "copy labelled CONSISTENT",
        "verifier on backup1:rv0 (p0)",
        "0 torn/corrupt, 0 missing",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    // Inside the freeze window: the leader died before any MV was released (the timeline
    // prints what the log recorded, in order).
    let kill = stdout.find(">>> SIGKILL").expect("the kill line");
    let release = stdout
        .lines()
        .find(|l| l.contains("release mv") && l.trim_end().ends_with("done"))
        .and_then(|l| stdout.find(l))
        .expect("a release done");
    assert!(
        kill < release,
        "the leader was killed after an MV was released, not inside the freeze window:\n{stdout}"
    );
}

#[test]
fn an_unknown_key_under_a_table_is_named_with_its_table_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        1,
        free_port(),
        "[cluster]\ninitial_members = []\ninitial_memebers = []",
    );
    let out = stillpoint(&["agent", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(cfg.to_str().unwrap())
            && err.contains("line 8")
            && err.contains("cluster.initial_memebers"),
        "{err}"
    );
}

/// A refusal relayed from the agent to the CLI reads once as a refusal, not twice.
#[test]
fn a_refusal_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let configs: Vec<PathBuf> = (0..2)
        .map(|i| write_config(dir.path(), i as u64 + 1, ports[i], ""))
        .collect();
    let _agents = Agents(configs.iter().map(|c| Some(spawn_agent(c, true))).collect());
    for e in &endpoints {
        wait_for("agents to listen", || {
            stillpoint(&["cluster", "status", "--endpoint", e])
                .status
                .success()
                .then_some(())
        });
        let out = stillpoint(&["cluster", "init", "--endpoint", e, "--member", e]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Two one-node clusters: adding one's agent to the other is refused.
    let out = wait_for("a refusal", || {
        let out = stillpoint(&["cluster", "add", "--endpoint", &endpoints[0], &endpoints[1]]);
        (out.status.code() == Some(3)).then_some(out)
    });
    let err = stderr(&out);
    assert_eq!(err.matches("refused by the cluster").count(), 1, "{err}");
}
