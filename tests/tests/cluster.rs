//! A three-agent cluster over gRPC on loopback: election, failover under writes, restart and
//! catch-up, snapshot catch-up after compaction, learners, removal, foreign data dirs.

use std::time::Duration;

use stillpoint_node::NodeError;
use stillpoint_tests::{TestCluster, WAIT, fast_raft, registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_bootstrap_elect_a_leader_and_register() {
    let cluster = TestCluster::start(3, fast_raft()).await;
    let cluster_id = cluster.init(3).await;
    let leader = cluster.leader().await;
    cluster.wait_registered(3).await;

    let status = cluster
        .status(leader, true)
        .await
        .expect("consistent status");
    assert_eq!(status.cluster_id, cluster_id);
    assert_eq!(status.leader_id, Some(cluster.configs[leader].node_id));
    assert!(status.consistent);
    assert_eq!(status.members.len(), 3);
    for m in &status.members {
        let ident = m.identity.as_ref().expect("identity");
        assert!(m.voter, "{ident:?} should vote");
        assert!(m.reachable, "{ident:?} should be reachable");
        assert!(!ident.name.is_empty(), "{ident:?} should be registered");
    }
    // Every replica holds the same registry.
    let first = registry(&cluster.state(0));
    for slot in 1..3 {
        assert_eq!(registry(&cluster.state(slot)), first);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_writes_continue_and_it_catches_up_after_restart() {
    let mut cluster = TestCluster::start(3, fast_raft()).await;
    cluster.init(3).await;
    let old_leader = cluster.leader().await;
    cluster.wait_registered(3).await;

    // A writer that keeps proposing through whichever agent leads.
    let client = cluster.client();
    let before = cluster
        .write(&client, 1)
        .await
        .expect("write before failover");
    cluster.stop(old_leader).await;

    let survivor = cluster.running()[0];
    let client = stillpoint_node::Client::new(cluster.address(survivor));
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    let mut last = before;
    for stamp in 2..12 {
        last = cluster
            .write(&client, stamp)
            .await
            .expect("writes continue after failover");
    }
    assert!(last > before, "new writes committed after the failover");

    cluster.restart(old_leader).await;
    cluster.wait_applied(old_leader, last).await;
    assert_eq!(
        registry(&cluster.state(old_leader)),
        registry(&cluster.state(new_leader))
    );
    let restarted = cluster
        .agent(old_leader)
        .context
        .state
        .read(|s| s.nodes[&1].registered_at_ms);
    assert!(
        restarted >= 11,
        "the restarted agent applied the writes it missed"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_joins_after_compaction_catches_up_by_snapshot() {
    let mut tuning = fast_raft();
    tuning.snapshot_after_logs = 20;
    tuning.logs_kept_after_snapshot = 0;
    let mut cluster = TestCluster::start(3, tuning).await;
    cluster.init(3).await;
    let leader = cluster.leader().await;
    cluster.wait_registered(3).await;
    let client = cluster.client();
    let mut last = 0;
    for stamp in 0..60 {
        last = cluster.write(&client, stamp).await.expect("write");
    }
    // Wait until the leader has compacted its log past the start.
    let raft = cluster.agent(leader).raft().clone();
    stillpoint_node::wait::until("the leader to purge its log", WAIT, || {
        let purged = raft.metrics().borrow().purged.map(|l| l.index);
        async move { purged.filter(|p| *p > 10) }
    })
    .await
    .expect("log purged");

    let newcomer = cluster.add_agent().await;
    cluster
        .add_member(newcomer, true)
        .await
        .expect("add and promote");
    cluster.wait_applied(newcomer, last).await;
    let metrics = cluster.agent(newcomer).raft().metrics().borrow().clone();
    assert!(
        metrics.snapshot.is_some(),
        "the newcomer installed a snapshot: {metrics:?}"
    );
    assert_eq!(
        registry(&cluster.state(newcomer)),
        registry(&cluster.state(leader))
    );
    let (voters, _) = cluster.membership(leader);
    assert!(voters.contains(&(newcomer as u64 + 1)));
    cluster.wait_registered(4).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_added_promoted_and_a_voter_removed() {
    let mut cluster = TestCluster::start(3, fast_raft()).await;
    cluster.init(3).await;
    let leader = cluster.leader().await;
    let learner = cluster.add_agent().await;
    let learner_id = learner as u64 + 1;

    cluster
        .add_member(learner, false)
        .await
        .expect("add learner");
    let (voters, learners) = cluster.membership(leader);
    assert!(
        learners.contains(&learner_id) && !voters.contains(&learner_id),
        "{voters:?} {learners:?}"
    );
    cluster.wait_registered(4).await;

    cluster.promote(learner_id).await.expect("promote");
    let (voters, _) = cluster.membership(leader);
    assert!(voters.contains(&learner_id));

    // Remove a voter that is not the leader; the rest keep committing.
    let victim = (0..3).find(|s| *s != leader).expect("a follower");
    let victim_id = victim as u64 + 1;
    cluster.remove(victim_id).await.expect("remove voter");
    let (voters, learners) = cluster.membership(leader);
    assert!(!voters.contains(&victim_id) && !learners.contains(&victim_id));
    let index = cluster
        .write(&cluster.client(), 99)
        .await
        .expect("write after removal");
    cluster.wait_applied(learner, index).await;
    let record = cluster.state(leader).nodes[&victim_id].clone();
    assert!(
        record.deregistered_at_ms.is_some(),
        "the registry marks the removed agent"
    );

    // Removing the last voter, or a stranger, is refused with a reason.
    let err = cluster.remove(4242).await.unwrap_err();
    assert!(
        matches!(err, NodeError::Invalid(ref m) if m.contains("not a member")),
        "{err}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_foreign_data_dir_is_refused_and_the_dir_is_untouched() {
    let mut cluster = TestCluster::start(1, fast_raft()).await;
    cluster.init(1).await;
    cluster.leader().await;
    cluster.stop(0).await;

    let mut config = cluster.configs[0].clone();
    config.node_id = 9;
    // In-process, the stopped agent's last handles on the dir are dropped a moment after
    // shutdown; wait (bounded) until the lock is free so the identity check is what answers.
    let err = stillpoint_node::wait::until("the data dir lock to be released", WAIT, || {
        let config = config.clone();
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
            match stillpoint_node::start(config, listener).await {
                Ok(_) => panic!("a data dir of node 1 must not start as node 9"),
                Err(e) if e.to_string().contains("in use") => None,
                Err(e) => Some(e),
            }
        }
    })
    .await
    .expect("the data dir is released");
    let text = err.to_string();
    assert!(matches!(err, NodeError::Storage(_)), "{text}");
    assert!(
        text.contains('1') && text.contains('9'),
        "names both ids: {text}"
    );

    // Nor may it start as a member of another cluster than the one it belongs to.
    let mut config = cluster.configs[0].clone();
    config.cluster_id = Some("some-other-cluster".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    match stillpoint_node::start(config, listener).await {
        Ok(_) => panic!("a data dir of one cluster must not start in another"),
        Err(e) => assert!(e.to_string().contains("some-other-cluster"), "{e}"),
    }

    // The rightful owner still starts from it and still leads its one-node cluster.
    cluster.restart(0).await;
    cluster.leader().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_an_agent_of_another_cluster_and_an_unreachable_address() {
    let a = TestCluster::start(1, fast_raft()).await;
    a.init(1).await;
    a.leader().await;
    let b = TestCluster::start(1, fast_raft()).await;
    b.init(1).await;
    b.leader().await;

    // Adding the agent of cluster B to cluster A is refused, naming the other cluster.
    let foreign = b.address(0);
    let err = a
        .client()
        .on_leader("add", |mut c| {
            let address = foreign.clone();
            async move {
                c.add_member(stillpoint_proto::cluster::AddMemberRequest {
                    address,
                    promote: true,
                })
                .await
            }
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Refused(ref m) if m.contains("belongs to cluster")),
        "{err}"
    );

    // An address nobody listens on is reported as unreachable, naming it.
    let mut client = a.client();
    client.request_timeout = Duration::from_secs(20);
    let err = client
        .on_leader("add", |mut c| async move {
            c.add_member(stillpoint_proto::cluster::AddMemberRequest {
                address: "127.0.0.1:1".into(),
                promote: true,
            })
            .await
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A membership change asked for while an earlier one is still being committed (as right after
/// an election, when the leader has not yet committed the membership it inherited, which is
/// how `stillpoint demo` once failed adding its learner) waits for it and is made, instead of
/// failing with "already undergoing a configuration change".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_while_another_membership_change_commits_waits_for_it() {
    let mut cluster = TestCluster::start(3, fast_raft()).await;
    cluster.init(3).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|s| *s != leader).collect();
    // With both followers down, the first change is proposed and cannot commit.
    for f in &followers {
        cluster.stop(*f).await;
    }
    let first = cluster.add_agent().await;
    let second = cluster.add_agent().await;
    let add = |slot: usize| {
        let mut client = cluster.client();
        client.request_timeout = WAIT;
        client.leader_wait = WAIT;
        tokio::spawn(cluster.adding_member(slot, false, client))
    };
    let adding_first = add(first);
    let first_id = first as u64 + 1;
    let pending = stillpoint_node::wait::until("the first change to be proposed", WAIT, || {
        let (_, learners) = cluster.membership(leader);
        std::future::ready(learners.contains(&first_id).then_some(()))
    })
    .await;
    pending.expect("the first change is in the leader's log");
    let adding_second = add(second);
    for f in &followers {
        cluster.restart(*f).await;
    }
    let first_added = adding_first.await.expect("task");
    let second_added = adding_second.await.expect("task");
    assert!(first_added.is_ok(), "first: {first_added:?}");
    assert!(second_added.is_ok(), "second: {second_added:?}");
    let leader = cluster.leader().await;
    let (_, learners) = cluster.membership(leader);
    assert!(
        learners.contains(&first_id) && learners.contains(&(second as u64 + 1)),
        "{learners:?}"
    );
    cluster.shutdown().await;
}
