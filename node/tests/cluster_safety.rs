//! Cluster safety as an operator meets it, through real agent processes: an agent never starts
//! a member from an empty data dir, and a node that lost its state can neither vote nor be
//! counted (issue 8, defect 1).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// An agent refuses a missing or an empty data dir (exit 6, saying what to do) unless it is
/// started with `--new`, the explicit act that creates a brand-new node.
#[test]
fn a_missing_or_empty_data_dir_is_refused_unless_the_agent_is_started_new() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), 1, port, "");
    let data = dir.path().join("data1");

    for case in ["missing", "empty"] {
        if case == "empty" {
            std::fs::create_dir(&data).unwrap();
        }
        let mut agent = spawn_agent(&cfg, false);
        let status = wait_exit(&mut agent, Duration::from_secs(30));
        let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(6),
            "an agent on a {case} data dir must refuse to start; log:\n{log}"
        );
        assert!(
            log.contains("--new") && log.contains(data.to_str().unwrap()),
            "the refusal names the dir and the explicit act: {log}"
        );
        match case {
            "missing" => assert!(!data.exists(), "a refused start creates nothing"),
            _ => assert_eq!(
                std::fs::read_dir(&data).unwrap().count(),
                0,
                "nothing written"
            ),
        }
    }

    // `--new` creates the node; later starts need no flag and find their own data.
    let endpoint = format!("127.0.0.1:{port}");
    let mut agents = Agents(vec![Some(spawn_agent(&cfg, true))]);
    wait_for("the new agent to answer", WAIT, || {
        status_json(&endpoint, false).map(|_| ())
    });
    agents.kill(0);
    agents.0[0] = Some(spawn_agent(&cfg, false));
    wait_for("the agent to answer again from its data dir", WAIT, || {
        status_json(&endpoint, false).map(|_| ())
    });
}

/// The scenario: with one follower paused, a membership change is acknowledged; the
/// leader and the other follower are killed and one comes back on a mistyped (empty) data dir;
/// the paused follower resumes. The forgetful agent must not help elect a leader that lacks the
/// change, and once everyone is back on their own data the replicas agree on it.
#[test]
fn a_voter_back_on_an_empty_data_dir_cannot_lose_an_acknowledged_membership_change() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let configs: Vec<_> = (0..4)
        .map(|i| write_config(dir.path(), i as u64 + 1, ports[i], ""))
        .collect();
    let mut agents = Agents(configs.iter().map(|c| Some(spawn_agent(c, true))).collect());
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
    let leader = wait_for("a leader that reaches both followers", WAIT, || {
        let s = status_json(&endpoints[0], true)?;
        let all_up = s["members"]
            .as_array()?
            .iter()
            .all(|m| m["reachable"] == true && m["last_applied_index"].is_u64());
        (all_up && member_ids(&s).len() == 3)
            .then(|| s["leader_id"].as_u64())
            .flatten()
    });
    let l = leader as usize - 1;
    let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (p, q) = (followers[0], followers[1]);

    // Pause P; the change commits on the leader and Q and is confirmed by a consistent read.
    signal(agents.0[p].as_ref().unwrap(), "STOP");
    let out = stillpoint(&[
        "cluster",
        "add",
        "--learner",
        "--endpoint",
        &endpoints[l],
        &endpoints[3],
    ]);
    assert!(out.status.success(), "add learner: {}", stderr(&out));
    let confirmed = status_json(&endpoints[l], true).expect("a consistent read");
    assert_eq!(member_ids(&confirmed), vec![1, 2, 3, 4], "{confirmed}");
    let acknowledged_term = confirmed["term"].as_u64().unwrap();

    // Kill the leader and Q. Q comes back on a mistyped data dir: refused outright.
    agents.kill(l);
    agents.kill(q);
    let typo = dir.path().join(format!("data{}-typo", q + 1));
    let typo_cfg = write_config_with_data(dir.path(), q as u64 + 1, ports[q], &typo, "");
    let mut forgetful = spawn_agent(&typo_cfg, false);
    let status = wait_exit(&mut forgetful, Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(6),
        "an agent on a mistyped data dir must refuse to start"
    );
    assert!(!typo.exists(), "the refused start created the mistyped dir");

    // An operator who forces a new node there with --new gets one the cluster does not count.
    agents.0[q] = Some(spawn_agent(&typo_cfg, true));
    signal(agents.0[p].as_ref().unwrap(), "CONT");
    // Safety must hold throughout this window (an absence can only be watched, not awaited).
    let window = Instant::now() + Duration::from_secs(10);
    while Instant::now() < window {
        for e in [&endpoints[p], &endpoints[q]] {
            // A leader elected after the change was acknowledged must have it.
            if let Some(s) = status_json(e, false)
                && s["leader_id"].is_u64()
                && s["term"].as_u64().is_some_and(|t| t > acknowledged_term)
            {
                assert_eq!(
                    member_ids(&s),
                    vec![1, 2, 3, 4],
                    "a leader was elected without the acknowledged change: {s}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // Everyone back on their own data: the replicas agree on the acknowledged change.
    agents.kill(q);
    agents.0[l] = Some(spawn_agent(&configs[l], false));
    agents.0[q] = Some(spawn_agent(&configs[q], false));
    let mut last_views = Vec::new();
    let agreed = common::poll_until(WAIT, || {
        last_views = (0..4)
            .map(|i| status_json(&endpoints[i], false))
            .collect::<Vec<_>>();
        let views: Option<Vec<_>> = last_views.iter().cloned().collect();
        let views = views?;
        let same = views.iter().all(|v| {
            member_ids(v) == vec![1, 2, 3, 4]
                && v["leader_id"].is_u64()
                && v["leader_id"] == views[0]["leader_id"]
                && v["last_applied_index"] == views[0]["last_applied_index"]
        });
        same.then_some(())
    });
    assert!(
        agreed.is_some(),
        "the replicas never agreed on the acknowledged change; last views:\n{}",
        last_views
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let confirmed = wait_for("a consistent read after recovery", WAIT, || {
        status_json(&endpoints[0], true)
    });
    assert_eq!(member_ids(&confirmed), vec![1, 2, 3, 4], "{confirmed}");
}

/// Every file under `dir` with its bytes, to prove a refused start wrote nothing.
fn snapshot_dir(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// A data dir of node 1 given to an agent configured as node 9 is refused (exit 6, naming both)
/// before anything in it is opened for writing: every byte of every file is unchanged.
#[test]
fn a_foreign_data_dir_is_refused_without_a_byte_changed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let owner = write_config(dir.path(), 1, port, "");
    let mut agents = Agents(vec![Some(spawn_agent(&owner, true))]);
    wait_for("the owner to answer", WAIT, || {
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
    assert!(out.status.success(), "init: {}", stderr(&out));
    wait_for("a leader", WAIT, || {
        status_json(&endpoint, true).map(|_| ())
    });
    agents.kill(0);

    let data = dir.path().join("data1");
    let before = snapshot_dir(&data);
    let intruder = write_config_with_data(dir.path(), 9, port, &data, "");
    for new in [false, true] {
        let mut agent = spawn_agent(&intruder, new);
        let status = wait_exit(&mut agent, Duration::from_secs(30));
        let log = std::fs::read_to_string(intruder.with_extension("log")).unwrap_or_default();
        assert_eq!(status.and_then(|s| s.code()), Some(6), "new={new}: {log}");
        assert!(log.contains("node 1") && log.contains("node 9"), "{log}");
        assert!(
            snapshot_dir(&data) == before,
            "new={new}: the refused start changed files in the foreign data dir"
        );
    }
}
