//! An agent whose raft storage fails (here: its data dir's file system fills up) stops at once
//! and exits non-zero naming the cause, instead of lingering as a zombie leader; it never
//! confirms a read once it cannot write; a supervisor's restart brings it back.

mod process_cluster;

use std::time::{Duration, Instant};

use process_cluster::{ProcessCluster, Tmpfs, WAIT, is_root, wait_for};
use stillpoint_coordinator::{Command, NodeRecord};
use stillpoint_node::Client;
use stillpoint_proto::cluster::QueryRequest;

/// How long the agent may take to notice its storage failed and exit. The store's flush bound
/// is 30 s (a stalled disk); a full one fails at once.
const EXIT_BOUND: Duration = Duration::from_secs(90);

/// The exit code the table in `node/src/error.rs` gives a fatal raft or storage error.
const RAFT_STOPPED_EXIT: i32 = 9;

/// Makes `victim` the leader: pauses whoever else leads until the others elect another one.
fn make_leader(cluster: &mut ProcessCluster, victim: usize) {
    for _ in 0..6 {
        let leader = cluster.leader(&[0, 1, 2]);
        if leader == victim {
            return;
        }
        cluster.pause(leader);
        let others: Vec<usize> = (0..3).filter(|s| *s != leader).collect();
        cluster.leader(&others);
        cluster.resume(leader);
    }
    panic!(
        "agent {} never became the leader in 6 elections",
        victim + 1
    );
}

/// The registry record agent `node_id` registered for itself, as the agent at `endpoint` sees it.
async fn own_record(endpoint: &str, node_id: u64) -> NodeRecord {
    let reply = Client::new(endpoint)
        .on_endpoint("registry", |mut c| async move {
            c.query(QueryRequest {
                what: "registry".into(),
                consistent: false,
            })
            .await
        })
        .await
        .expect("registry");
    let mut nodes: std::collections::BTreeMap<u64, NodeRecord> =
        serde_json::from_slice(&reply.json).expect("registry json");
    nodes.remove(&node_id).expect("the agent registered itself")
}

#[test]
fn an_agent_whose_data_dir_fills_up_exits_naming_the_error_and_never_confirms_a_read() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to mount a size-limited tmpfs for the data dir");
        return;
    }
    let scratch = tempfile::tempdir().expect("temporary dir");
    let fs = match Tmpfs::mount(&scratch.path().join("victim-fs"), "16m") {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs: {e}");
            return;
        }
    };
    let victim = 0;
    let victim_data = fs.path.join("data");
    let mut cluster =
        ProcessCluster::start(3, "", |slot| (slot == victim).then(|| victim_data.clone()));
    cluster.init(victim);
    make_leader(&mut cluster, victim);
    cluster.wait_registered(victim, 3);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let endpoint = cluster.endpoints[victim].clone();
    let record = runtime.block_on(own_record(&endpoint, victim as u64 + 1));
    let command = Command::RegisterNode(record);
    let mut writer = Client::new(&endpoint);
    writer.request_timeout = Duration::from_secs(5);
    writer.leader_wait = Duration::ZERO;

    let filled = fs.fill("filler");
    println!("filled the victim's file system with {filled} bytes");

    // Writes to the victim until it exits; between writes, a consistent read at it. Once one
    // write has failed, the victim cannot write, and must not confirm a read.
    let started = Instant::now();
    let mut writes = 0u32;
    let mut first_failed_write: Option<Duration> = None;
    let mut confirmed_after_failure = Vec::new();
    let exit = loop {
        if let Some(status) = cluster.exited(victim) {
            break status;
        }
        assert!(
            started.elapsed() < EXIT_BOUND,
            "the agent whose file system is full still runs {:?} after the disk filled ({writes} writes, first failed at {first_failed_write:?}): a zombie. Its log:\n{}",
            started.elapsed(),
            cluster.log(victim)
        );
        let written = runtime.block_on(writer.propose(&command));
        writes += 1;
        if let Err(e) = &written
            && first_failed_write.is_none()
        {
            println!("write {writes} failed at {:?}: {e}", started.elapsed());
            first_failed_write = Some(started.elapsed());
        }
        if first_failed_write.is_some()
            && let Ok(s) = cluster.status(victim, true)
            && s["answered_by"].as_u64() == Some(victim as u64 + 1)
        {
            confirmed_after_failure.push(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = cluster.log(victim);
    println!(
        "the victim exited with {exit} {:?} after the disk filled",
        started.elapsed()
    );
    assert!(
        confirmed_after_failure.is_empty(),
        "the victim confirmed {} consistent reads after it failed a write, e.g. {}",
        confirmed_after_failure.len(),
        confirmed_after_failure[0]
    );
    assert_eq!(
        exit.code(),
        Some(RAFT_STOPPED_EXIT),
        "exit status {exit}; log:\n{log}"
    );
    let data_dir = victim_data.display().to_string();
    let cause = log
        .lines()
        .find(|l| l.contains("raft stopped") && l.contains(&data_dir))
        .unwrap_or_else(|| panic!("no line naming the stop and the data dir in:\n{log}"));
    println!("the victim said: {cause}");

    // The other two carry on with a leader of their own.
    let leader = cluster.leader(&[1, 2]);
    assert_ne!(leader, victim);

    // A supervisor restarts it once the disk has room again; it rejoins and catches up.
    std::fs::remove_file(fs.path.join("filler")).expect("remove the filler");
    cluster.spawn(victim);
    cluster.wait_answering(victim);
    let leader_applied = cluster.status(leader, true).expect("status")["last_applied_index"]
        .as_u64()
        .expect("applied index");
    wait_for("the restarted agent to catch up", WAIT, || {
        let s = cluster.status(victim, false).ok()?;
        let me = s["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"].as_u64() == Some(victim as u64 + 1))?
            .clone();
        (me["last_applied_index"].as_u64()? >= leader_applied).then_some(())
    });
}
