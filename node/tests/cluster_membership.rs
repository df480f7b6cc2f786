//! Membership through real agent processes: a removed agent stays removed and stops writing to
//! the log (issue 8, defect 2); concurrent `cluster init` makes one cluster (defect 3).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// Three voters started `--new` and initialised from `endpoints[0]`; returns the agents, the
/// configs and the endpoints (index i is node i + 1), plus `extra` more agents started but not
/// members.
fn three_voters(dir: &std::path::Path, extra: usize) -> (Agents, Vec<PathBuf>, Vec<String>) {
    let n = 3 + extra;
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let configs: Vec<PathBuf> = (0..n)
        .map(|i| write_config(dir, i as u64 + 1, ports[i], ""))
        .collect();
    let agents = Agents(configs.iter().map(|c| Some(spawn_agent(c, true))).collect());
    for e in &endpoints {
        wait_for("agents to answer", WAIT, || {
            status_json(e, false).map(|_| ())
        });
    }
    let mut init = vec!["cluster", "init", "--endpoint", endpoints[0].as_str()];
    for e in &endpoints[..3] {
        init.extend(["--member", e.as_str()]);
    }
    let out = stillpoint(&init);
    assert!(out.status.success(), "init: {}", stderr(&out));
    (agents, configs, endpoints)
}

/// The registry as `cluster nodes --output json` prints it.
fn nodes_json(endpoint: &str) -> Option<serde_json::Value> {
    let out = stillpoint(&[
        "cluster",
        "nodes",
        "--endpoint",
        endpoint,
        "--consistent",
        "--output",
        "json",
    ]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Waits until the leader's applied index has not moved for `quiet` (bounded by WAIT), and
/// returns it; fails naming the indexes seen if it keeps growing.
fn applied_index_settles(endpoint: &str, quiet: Duration) -> u64 {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let before = status_json(endpoint, true).and_then(|s| s["last_applied_index"].as_u64());
        std::thread::sleep(quiet);
        let after = status_json(endpoint, true).and_then(|s| s["last_applied_index"].as_u64());
        seen.push((before, after));
        if let (Some(a), Some(b)) = (before, after)
            && a == b
        {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "the applied index never stopped growing: {seen:?}"
        );
    }
}

fn active_ids(nodes: &serde_json::Value) -> Vec<u64> {
    nodes
        .as_object()
        .map(|m| {
            m.values()
                .filter(|r| r["deregistered_at_ms"].is_null())
                .filter_map(|r| r["node_id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// `cluster add --learner` then `cluster remove` back to back, then the removed agent restarted:
/// it never comes back as active and the log stops growing.
#[test]
fn a_removed_agent_does_not_reregister_and_the_log_stops_growing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agents, configs, endpoints) = three_voters(dir.path(), 1);
    wait_for("three registered voters", WAIT, || {
        let nodes = nodes_json(&endpoints[0])?;
        (active_ids(&nodes).len() == 3).then_some(())
    });
    let out = stillpoint(&[
        "cluster",
        "add",
        "--learner",
        "--endpoint",
        &endpoints[0],
        &endpoints[3],
    ]);
    assert!(out.status.success(), "add: {}", stderr(&out));
    let out = stillpoint(&["cluster", "remove", "--endpoint", &endpoints[0], "4"]);
    assert!(out.status.success(), "remove: {}", stderr(&out));

    // Registration is one second apart at most: five quiet seconds mean it stopped.
    let quiet = Duration::from_secs(5);
    applied_index_settles(&endpoints[0], quiet);
    let nodes = nodes_json(&endpoints[0]).expect("cluster nodes");
    assert!(
        !active_ids(&nodes).contains(&4),
        "the removed node shows as active: {nodes}"
    );

    // Restarted from its data dir, it still does not come back.
    agents.kill(3);
    agents.0[3] = Some(spawn_agent(&configs[3], false));
    wait_for("the removed agent to answer again", WAIT, || {
        status_json(&endpoints[3], false).map(|_| ())
    });
    applied_index_settles(&endpoints[0], quiet);
    let nodes = nodes_json(&endpoints[0]).expect("cluster nodes");
    assert!(
        !active_ids(&nodes).contains(&4),
        "the restarted removed node shows as active: {nodes}"
    );
}

/// `cluster init` run at the same moment on every first member, ten times over: every run
/// ends in one cluster with every agent in it, and a repeated init is a no-op that says so.
#[test]
fn concurrent_init_on_every_member_makes_one_cluster() {
    const ITERATIONS: usize = 10;
    for iteration in 0..ITERATIONS {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let configs: Vec<PathBuf> = (0..3)
            .map(|i| write_config(dir.path(), i as u64 + 1, ports[i], ""))
            .collect();
        let _agents = Agents(configs.iter().map(|c| Some(spawn_agent(c, true))).collect());
        for e in &endpoints {
            wait_for("agents to answer", WAIT, || {
                status_json(e, false).map(|_| ())
            });
        }
        let runs: Vec<_> = endpoints
            .iter()
            .map(|endpoint| {
                let mut args = vec![
                    "cluster".to_string(),
                    "init".into(),
                    "--endpoint".into(),
                    endpoint.clone(),
                ];
                for m in &endpoints {
                    args.extend(["--member".to_string(), m.clone()]);
                }
                std::thread::spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    stillpoint(&args)
                })
            })
            .collect();
        for (i, run) in runs.into_iter().enumerate() {
            let out = run.join().unwrap();
            assert!(
                out.status.success(),
                "iteration {iteration}: init on agent {} failed: {}",
                i + 1,
                stderr(&out)
            );
        }
        let mut last = Vec::new();
        let one = poll_until(WAIT, || {
            last = endpoints.iter().map(|e| status_json(e, false)).collect();
            let views: Vec<serde_json::Value> = last.iter().cloned().collect::<Option<_>>()?;
            let first = &views[0];
            let same = views.iter().all(|v| {
                v["cluster_id"] == first["cluster_id"]
                    && v["leader_id"].is_u64()
                    && v["leader_id"] == first["leader_id"]
                    && member_ids(v) == vec![1, 2, 3]
            });
            same.then(|| first["cluster_id"].as_str().map(str::to_string))
                .flatten()
        });
        let Some(cluster_id) = one else {
            panic!("iteration {iteration}: the agents did not converge on one cluster: {last:?}");
        };
        // Running init again anywhere changes nothing and says so.
        let out = stillpoint(&[
            "cluster",
            "init",
            "--endpoint",
            &endpoints[2],
            "--member",
            &endpoints[0],
            "--member",
            &endpoints[1],
            "--member",
            &endpoints[2],
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "repeated init: {}", stderr(&out));
        assert!(
            text.contains("already") && text.contains(&cluster_id),
            "a repeated init says it changed nothing: {text}"
        );
    }
}

/// The client API's Propose accepts only what clients may propose: no deregistering a node, and
/// no registry record whose address differs from the one the membership admitted.
#[test]
fn propose_refuses_internal_commands_and_a_rewritten_address() {
    use stillpoint_coordinator::{Command, NodeRecord, Response};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let cfg = write_config(dir.path(), 1, port, "");
    let _agents = Agents(vec![Some(spawn_agent(&cfg, true))]);
    wait_for("the agent to answer", WAIT, || {
        status_json(&endpoint, false).map(|_| ())
    });
    let out = stillpoint(&[
        "cluster",
        "init",
        "--endpoint",
        &endpoint,
        "--member",
        &endpoint,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let registered = wait_for("the agent to register", WAIT, || {
        let nodes = nodes_json(&endpoint)?;
        let record: NodeRecord = serde_json::from_value(nodes["1"].clone()).ok()?;
        Some(record)
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = stillpoint_node::Client::new(&endpoint);
    let propose = |command: Command| runtime.block_on(client.propose(&command));
    let refused = |outcome: &Result<(Response, u64), stillpoint_node::NodeError>| {
        matches!(
            outcome,
            Ok((Response::Refused { .. }, _)) | Err(stillpoint_node::NodeError::Refused(_))
        )
    };

    let hijack = NodeRecord {
        address: "10.9.9.9:7401".into(),
        registered_at_ms: registered.registered_at_ms + 1,
        ..registered.clone()
    };
    let outcome = propose(Command::RegisterNode(hijack));
    assert!(refused(&outcome), "rewriting node 1's address: {outcome:?}");

    let outcome = propose(Command::DeregisterNode {
        node_id: 1,
        at_ms: 1,
    });
    assert!(
        refused(&outcome),
        "deregistering node 1 by a client: {outcome:?}"
    );

    let nodes = nodes_json(&endpoint).expect("cluster nodes");
    assert_eq!(nodes["1"]["address"], endpoint.as_str(), "{nodes}");
    assert!(nodes["1"]["deregistered_at_ms"].is_null(), "{nodes}");
}

/// A voter removed from the cluster learns it when it campaigns: it stops, saying so, and exits
/// with the documented code 10 instead of campaigning forever.
#[test]
fn a_removed_voter_learns_it_was_removed_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agents, _configs, endpoints) = three_voters(dir.path(), 0);
    let leader = wait_for("three registered voters and a leader", WAIT, || {
        let nodes = nodes_json(&endpoints[0])?;
        let status = status_json(&endpoints[0], true)?;
        (active_ids(&nodes).len() == 3)
            .then(|| status["leader_id"].as_u64())
            .flatten()
    });
    let removed = (1..=3).find(|id| *id != leader).unwrap();
    let out = stillpoint(&[
        "cluster",
        "remove",
        "--endpoint",
        &endpoints[leader as usize - 1],
        &removed.to_string(),
    ]);
    assert!(out.status.success(), "remove: {}", stderr(&out));
    let slot = removed as usize - 1;
    let child = agents.0[slot].as_mut().unwrap();
    let status = wait_exit(child, WAIT);
    agents.0[slot] = None;
    let log = std::fs::read_to_string(_configs[slot].with_extension("log")).unwrap_or_default();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(10),
        "the removed voter must stop and exit 10; its log:\n{log}"
    );
    assert!(log.contains("removed from the cluster"), "{log}");
}
