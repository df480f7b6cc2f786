//! What the CLI says, and with which exit code, when the cluster cannot answer plainly: an
//! isolated leader's consistent read, a write to a paused agent, a membership change that
//! cannot commit. A read that was not confirmed says why; a write whose outcome is unknown
//! says so and exits 5, never 4 ("nothing happened").

mod process_cluster;

use std::time::{Duration, Instant};

use process_cluster::{ProcessCluster, stderr, stillpoint};

/// Exit codes of the one table in `node/src/error.rs`.
const UNREACHABLE: i32 = 4;
const TIMED_OUT: i32 = 5;

#[test]
fn a_consistent_read_on_an_isolated_leader_says_quorum_lost() {
    let mut cluster = ProcessCluster::start(3, "", |_| None);
    cluster.init(0);
    let leader = cluster.leader(&[0, 1, 2]);
    for slot in (0..3).filter(|s| *s != leader) {
        cluster.pause(slot);
    }
    let started = Instant::now();
    let out = cluster
        .status(leader, true)
        .expect_err("an isolated leader confirms nothing");
    let err = stderr(&out);
    println!("after {:?}: {err}", started.elapsed());
    assert!(err.contains("quorum lost"), "{err}");
    assert!(!err.contains("after 0 ms"), "{err}");
    assert_eq!(out.status.code(), Some(UNREACHABLE), "{err}");
}

#[test]
fn a_write_to_a_paused_agent_reports_outcome_unknown_with_exit_5() {
    let mut cluster = ProcessCluster::start(3, "", |_| None);
    cluster.init(0);
    let leader = cluster.leader(&[0, 1, 2]);
    cluster.wait_registered(leader, 3);
    // The request reaches the paused agent's socket: were it resumed, it would act on it.
    cluster.pause(leader);
    let started = Instant::now();
    let out = stillpoint(&[
        "cluster",
        "promote",
        "3",
        "--endpoint",
        &cluster.endpoints[leader],
    ]);
    let err = stderr(&out);
    println!("after {:?}: {err}", started.elapsed());
    assert_eq!(out.status.code(), Some(TIMED_OUT), "{err}");
    assert!(err.contains("outcome unknown"), "{err}");

    // Where nothing listens, no request was sent: that stays "unreachable", exit 4.
    let nobody = format!("127.0.0.1:{}", process_cluster::free_port());
    let out = stillpoint(&["cluster", "promote", "3", "--endpoint", &nobody]);
    assert_eq!(out.status.code(), Some(UNREACHABLE), "{}", stderr(&out));
}

#[test]
fn a_membership_change_that_cannot_commit_is_answered_by_the_server_as_outcome_unknown() {
    let mut cluster = ProcessCluster::start(3, "", |_| None);
    cluster.init(0);
    let leader = cluster.leader(&[0, 1, 2]);
    let follower = (0..3).find(|s| *s != leader).expect("a follower");
    for slot in (0..3).filter(|s| *s != leader) {
        cluster.pause(slot);
    }
    let started = Instant::now();
    let id = (follower + 1).to_string();
    let out = stillpoint(&[
        "cluster",
        "remove",
        &id,
        "--endpoint",
        &cluster.endpoints[leader],
    ]);
    let err = stderr(&out);
    let took = started.elapsed();
    println!("after {took:?}: {err}");
    assert_eq!(out.status.code(), Some(TIMED_OUT), "{err}");
    assert!(err.contains("outcome unknown"), "{err}");
    // The server's own bound answered, naming what did not finish; the client did not give up
    // first with a bare "did not answer".
    assert!(err.contains("membership change"), "{err}");
    assert!(took < Duration::from_secs(60), "{took:?}");
}
