//! The PostgreSQL quiesce through the step executor over gRPC: a live server (run as the
//! `postgres` user; root and PostgreSQL 15+ needed, else the tests say why they skip) put in
//! online backup mode by db1's quiesce step, and its label coming back in the release step's
//! journaled result — or, when the session died inside the window, no label and "did not
//! hold". The volume itself is the demo's sim MV: the method talks to the database only.

use std::time::Duration;

use stillpoint_coordinator::inventory::{QuiesceMethod, VolumeRef};
use stillpoint_coordinator::job::wire::StepOrder;
use stillpoint_coordinator::job::{
    Dispatch, FencingToken, Finding, StepCall, StepResult, StepTarget,
};
use stillpoint_coordinator::postgres::PostgresQuiesce;
use stillpoint_host::{HookKind, Host, MountRequest};
use stillpoint_node::RunningAgent;
use stillpoint_node::demo::{DemoArray, start_local_cluster};
use stillpoint_node::executor::client::execute;

fn skip_reason() -> Option<String> {
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if uid != 0 {
        return Some("not running as root (PostgreSQL runs as the postgres user)".into());
    }
    stillpoint_host::pgctl::PgInstall::find()
        .err()
        .map(|e| e.to_string())
}

macro_rules! require_pg {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!(
                "SKIPPED {}: {why}",
                std::thread::current()
                    .name()
                    .unwrap_or("executor postgres test")
            );
            return;
        }
    };
}

struct Site {
    server: stillpoint_host::pgctl::PgServer,
    archive: std::path::PathBuf,
    agents: Vec<RunningAgent>,
    array: Option<DemoArray>,
    _dir: tempfile::TempDir,
}

impl Site {
    async fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let archive = root.join("wal-archive");
        let mut server = stillpoint_host::pgctl::PgServer::new(
            &stillpoint_host::pgctl::PgInstall::find().unwrap(),
            &root.join("pgdata"),
            &root.join("sock"),
            5432,
            &root.join("pglogs").join("pg.log"),
        );
        server.initdb(Some(&archive), None).await.unwrap();
        server.start(true).await.unwrap();
        let array = DemoArray::start(root).await.unwrap();
        let agents = start_local_cluster(root, &array.address).await.unwrap();
        let db1 = agents[1].host.clone().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while db1
            .volume("data")
            .await
            .map(|v| v.problem.is_some())
            .unwrap_or(true)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "db1's MV never attached"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        db1.mount("data", &MountRequest::default()).await.unwrap();
        db1.run_hook("data", HookKind::Start).await.unwrap();
        Site {
            server,
            archive,
            agents,
            array: Some(array),
            _dir: dir,
        }
    }

    fn method(&self) -> QuiesceMethod {
        QuiesceMethod::Postgresql(Box::new(PostgresQuiesce {
            host: self.server.sock.display().to_string(),
            port: self.server.port,
            user: "postgres".into(),
            database: "postgres".into(),
            password: None,
            data_dir: "pgdata".into(),
            wal_archive_dir: self.archive.display().to_string(),
        }))
    }

    fn db1(&self) -> String {
        self.agents[1].local_addr.to_string()
    }

    fn term(&self) -> u64 {
        self.agents
            .iter()
            .map(|a| a.context.raft.metrics().borrow().current_term)
            .max()
            .unwrap()
            + 5
    }

    async fn stop(mut self) {
        for a in self.agents.drain(..) {
            a.shutdown().await.unwrap();
        }
        if let Some(array) = self.array.take() {
            array.stop().await.unwrap();
        }
    }
}

fn order(token: FencingToken, call: StepCall, quiesce_id: Option<u64>) -> StepOrder {
    StepOrder {
        dispatch: Dispatch {
            step: token.step_index,
            token,
            round: 1,
            target: StepTarget::Node("db1".into()),
            call,
            quiesce_id,
            check_first: false,
            postgres_copy: None,
        },
        pair: None,
        reply_within_ms: 30_000,
    }
}

async fn done(addr: &str, o: &StepOrder) -> StepResult {
    match execute(addr, o).await {
        Ok(Finding::Finished { outcome: Ok(r), .. }) => r,
        other => panic!("{:?} was not done: {other:?}", o.dispatch.call),
    }
}

fn mv() -> VolumeRef {
    VolumeRef {
        node: "db1".into(),
        volume: "data".into(),
    }
}

/// Quiesces db1's MV with the PostgreSQL method as step 3 of job `job`; returns the order of
/// its release (step 5) and the quiesce id.
async fn quiesce(site: &Site, job: u64) -> (StepOrder, u64) {
    let term = site.term();
    let tok = |step| FencingToken {
        term,
        job_id: job,
        step_index: step,
        attempt: 1,
    };
    let q = order(
        tok(3),
        StepCall::Quiesce {
            volume: mv(),
            method: site.method(),
            limit_ms: 30_000,
        },
        None,
    );
    let StepResult::Quiesced { quiesce_id } = done(&site.db1(), &q).await else {
        panic!("the quiesce reported no id")
    };
    let release = order(
        tok(5),
        StepCall::Release {
            volume: mv(),
            quiesce_step: 3,
        },
        Some(quiesce_id),
    );
    (release, quiesce_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_step_returns_the_online_backups_label_from_its_journal() {
    require_pg!();
    let site = Site::start().await;
    let (release, quiesce_id) = quiesce(&site, 1).await;
    let client = site.server.client().await.unwrap();
    let sessions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stillpoint'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 1, "the agent holds one session in backup mode");
    let result = done(&site.db1(), &release).await;
    let StepResult::Released {
        held_throughout: true,
        backup_label: Some(label),
    } = &result
    else {
        panic!("the release did not return a label: {result:?}")
    };
    assert!(
        label.label_file.contains(&format!(
            "LABEL: stillpoint quiesce {quiesce_id} (job 1 step 3 attempt 1"
        )),
        "{}",
        label.label_file
    );
    assert!(!label.stop_lsn.is_empty());
    // Sent again: answered from the journal, label and all (the backup is not stopped twice).
    assert_eq!(done(&site.db1(), &release).await, result);
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_killed_inside_the_window_makes_the_release_step_report_it_did_not_hold() {
    require_pg!();
    let site = Site::start().await;
    let (release, _) = quiesce(&site, 2).await;
    let client = site.server.client().await.unwrap();
    let killed: bool = client
        .query_one(
            "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'stillpoint'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    assert_eq!(
        done(&site.db1(), &release).await,
        StepResult::Released {
            held_throughout: false,
            backup_label: None,
        }
    );
    site.stop().await;
}
