//! A process killed without any clean-up (no destructor, no final flush) still finds every vote
//! and log entry it acknowledged, and a state machine that restarts from its snapshot.
//!
//! The test re-runs its own binary as the child that writes and then aborts. An abort keeps the
//! kernel's page cache, so this checks recovery after a process crash (what sled had handed to
//! the kernel is replayed consistently); it cannot check that fsync happened before an
//! acknowledgement, which only a power cut would show.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Kv, TestConfig, log_id, set};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, Vote};
use stillpoint_storage::Store;

const CHILD_DIR_VAR: &str = "STILLPOINT_STORAGE_CRASH_CHILD_DIR";
const ENTRIES: u64 = 40;
const CHILD_RUN_S_MAX: u64 = 60;

/// The child: appends and applies entry by entry, as a follower does, then dies abruptly.
fn child(dir: &Path) -> ! {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = Store::open(dir).expect("open");
        let mut log = store.log_store::<TestConfig>().expect("log store");
        let mut sm = store
            .state_machine_store::<TestConfig, Kv>()
            .expect("sm store");
        log.save_vote(&Vote::new_committed(4, 1))
            .await
            .expect("vote");
        for i in 1..=ENTRIES {
            log.blocking_append([set(4, i, &format!("k{i}"), "v")])
                .await
                .expect("append");
            sm.apply([set(4, i, &format!("k{i}"), "v")])
                .await
                .expect("apply");
        }
        std::fs::write(dir.join("child-done"), b"").expect("marker");
    });
    std::process::abort();
}

#[test]
fn acknowledged_writes_survive_an_abort() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_VAR) {
        child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut process = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_writes_survive_an_abort",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VAR, dir.path())
        .spawn()
        .expect("spawn the child");
    let deadline = Instant::now() + Duration::from_secs(CHILD_RUN_S_MAX);
    let status = loop {
        if let Some(status) = process.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            process.kill().ok();
            panic!("child did not finish within {CHILD_RUN_S_MAX} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !status.success(),
        "the child must die by abort, got {status}"
    );
    assert!(
        dir.path().join("child-done").exists(),
        "the child failed before its last write"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let mut log = store.log_store::<TestConfig>().unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(4, 1))
        );
        let entries = log.try_get_log_entries(1..=ENTRIES).await.unwrap();
        assert_eq!(
            entries.len() as u64,
            ENTRIES,
            "every acknowledged entry survives"
        );
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(4, ENTRIES))
        );

        // The state machine writes nothing per apply: it restarts from its snapshot (none
        // here), and openraft re-applies the committed entries from the log above.
        let sm = store.state_machine_store::<TestConfig, Kv>().unwrap();
        assert_eq!(sm.last_applied(), None);
        sm.read(|kv| assert_eq!(kv.commands_applied, 0, "state and last applied agree"));
    });
}
