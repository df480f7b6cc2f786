//! The site inventory and job acceptance through a real 3-agent cluster (gRPC on loopback):
//! a site file applied with `stillpoint apply` is replicated to every agent, is idempotent,
//! names the file line of each broken rule, and cannot change under an unfinished job (S5);
//! conflicting jobs queue or are refused.

use std::path::Path;

use stillpoint_coordinator::job::{JobKind, JobState};
use stillpoint_coordinator::{Command, Response};
use stillpoint_node::NodeError;
use stillpoint_node::output::OutputFormat;
use stillpoint_node::site::{run_apply, run_show};
use stillpoint_tests::{TestCluster, fast_raft};

/// agent1 is a business node, agent2 a backup node, agent3 a management node.
const SITE: &str = r#"
[[arrays]]
name = "A1"
control_nodes = ["agent3"]

[[pairs]]
name = "p0"
mv = "A1:0"
rv = "A1:1"
kind = "ddr"

[[volumes]]
node = "agent1"
name = "data"
ld = "A1:0"

[[volumes]]
node = "agent2"
name = "rv"
ld = "A1:1"

[[groups]]
name = "payroll"
[[groups.members]]
pair = "p0"
mv = "agent1:data"
rv = "agent2:rv"
quiesce = "freeze"
quiesce_ms_max = 10000
"#;

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("site.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn submit(cluster: &TestCluster, no_queue: bool) -> Response {
    let command = Command::SubmitJob {
        kind: JobKind::Backup {
            group: "payroll".into(),
        },
        submitted_by: "test".into(),
        at_ms: 1,
        no_queue,
    };
    cluster.client().propose(&command).await.expect("propose").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_file_is_applied_replicated_and_guarded() {
    let cluster = TestCluster::start(3, fast_raft()).await;
    cluster.init(3).await;
    cluster.wait_registered(3).await;
    let dir = tempfile::tempdir().unwrap();
    let client = cluster.client();

    // An RV volume on the business node breaks two rules; both are named with their line.
    let bad = write(
        dir.path(),
        &SITE.replace("rv = \"agent2:rv\"", "rv = \"agent1:data\""),
    );
    let err = run_apply(&client, OutputFormat::Table, &bad, false, false)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, NodeError::Invalid(_)), "{err:?}");
    assert!(
        text.contains("site.toml:27: groups.payroll.members[0].rv: node \"agent1\" does not have the backup role"),
        "{text}"
    );
    assert!(
        text.contains("site.toml:27: groups.payroll.members[0].rv: volume agent1:data is on LD A1:0, but pair p0's rv is LD A1:1"),
        "{text}"
    );
    let leader = cluster.leader().await;
    assert!(
        cluster.state(leader).inventory.pairs.is_empty(),
        "nothing applied"
    );

    let good = write(dir.path(), SITE);
    run_apply(&client, OutputFormat::Table, &good, false, false)
        .await
        .expect("apply");
    let index = cluster.write(&client, 2).await.unwrap();
    for slot in 0..3 {
        cluster.wait_applied(slot, index).await;
        let inv = cluster.state(slot).inventory;
        assert_eq!(inv.groups["payroll"].members[0].rv.to_string(), "agent2:rv");
    }
    // Applying again changes nothing (dry run included).
    run_apply(&client, OutputFormat::Table, &good, true, false)
        .await
        .expect("dry run");
    run_show(&client, OutputFormat::Json)
        .await
        .expect("inventory show");
    let before = cluster.state(leader).inventory;
    run_apply(&client, OutputFormat::Table, &good, false, false)
        .await
        .expect("re-apply");
    assert_eq!(cluster.state(cluster.leader().await).inventory, before);

    // A job owns its pair: a second one queues, or with --no-queue is refused naming it; the
    // inventory it uses cannot change until it ends.
    let Response::JobAccepted {
        job_id,
        waiting_for: None,
    } = submit(&cluster, false).await
    else {
        panic!("first job not started")
    };
    let refused = submit(&cluster, true).await;
    assert!(
        matches!(&refused, Response::Refused { rule } if rule.contains(&format!("owned by job {job_id}"))),
        "{refused:?}"
    );
    let queued = submit(&cluster, false).await;
    assert_eq!(
        queued,
        Response::JobAccepted {
            job_id: job_id + 1,
            waiting_for: Some(job_id)
        }
    );
    let changed = write(
        dir.path(),
        &SITE.replace("quiesce = \"freeze\"", "quiesce = \"unmount\""),
    );
    let err = run_apply(&client, OutputFormat::Table, &changed, false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NodeError::Refused(rule) if rule.contains(&format!("group payroll is used by job {job_id}"))),
        "{err:?}"
    );
    let state = cluster.state(cluster.leader().await);
    assert_eq!(state.jobs.jobs[&job_id].state, JobState::Running);
    assert!(matches!(
        state.jobs.jobs[&(job_id + 1)].state,
        JobState::Queued { .. }
    ));
    cluster.shutdown().await;
}
