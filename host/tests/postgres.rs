//! A live PostgreSQL under pgbench, backed up at the host level on loop devices (issue 13):
//! its data directory on an ext4 MV, a quiesce (PostgreSQL's online backup mode, or freeze),
//! the copy, the release, and a second PostgreSQL started on the copy through a second agent
//! (the backup node), checked with pgbench's own invariant and pg_amcheck.
//!
//! The array's separate is stood in for by a reflink clone (`cp --reflink=always`, FICLONE) of
//! the MV's image file, which lives on an XFS pool: the clone is the byte-for-byte image of
//! every write the MV's loop device had completed at one instant, taken while PostgreSQL keeps
//! writing — an atomic point, as a separate is (a `dd` of the live device would not be).
//! Only where the devices come from changes when the same steps run on the software array's
//! LDs. Root, loop devices, ext4/XFS tools and PostgreSQL 15+ are needed; otherwise each test
//! prints why it skipped.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::loopdev::{Fixture, Loop, MountGuard, require, run};
use common::{open_db, wait_until};
use stillpoint_host::pgctl::{PgInstall, PgServer, max_latency_in, pgbench_wait};
use stillpoint_host::{
    Agent, Engine, Host, HostConfig, HostError, MountIdentity, MountRequest, PostgresConnect,
    QuiesceMode, QuiesceRequest, prepare_copy,
};
use stillpoint_storage::journal::Journal;

const MV_IMAGE_BYTES: u64 = 768 * 1024 * 1024;
const POOL_IMAGE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
const PGBENCH_SCALE: u32 = 2;
const PGBENCH_SECONDS: u32 = 20;

macro_rules! require_pg {
    () => {
        require!(
            "losetup",
            "mkfs.ext4",
            "mkfs.xfs",
            "blkid",
            "e2fsck",
            "tune2fs",
            "cp"
        );
        if let Err(why) = PgInstall::find() {
            eprintln!(
                "SKIPPED {}: {why}",
                std::thread::current().name().unwrap_or("postgres test")
            );
            return;
        }
    };
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn agent(dir: &Path, volume: &str, dev: &str, mp: &Path) -> Arc<Agent> {
    let toml = format!(
        "backend = \"linux\"\n[[volumes]]\nname = \"{volume}\"\ndevice = \"{dev}\"\nmount_point = \"{}\"\nfs = \"ext4\"\nfreeze_ms_max = 30000\n",
        mp.display()
    );
    let cfg = HostConfig::from_toml_str(&toml, "test.toml").unwrap();
    let db = open_db(dir).await;
    Agent::start(cfg, Journal::open(&db).unwrap(), Engine::Linux)
        .await
        .unwrap()
}

/// A business node: an ext4 MV (image on the XFS pool) mounted by its agent, PostgreSQL's data
/// directory on it. Field order is drop order: servers, agents, mounts, loops, pool.
struct Site {
    pg: PgServer,
    host: Arc<Agent>,
    mounts: Vec<MountGuard>,
    loops: Vec<Loop>,
    mv_image: PathBuf,
    root: PathBuf,
    archive: Option<PathBuf>,
    _fx: Fixture,
}

impl Site {
    async fn new(archive: bool) -> Site {
        let mut fx = Fixture::new();
        let root = fx.dir.path().to_path_buf();
        // PostgreSQL runs as postgres: it must reach its directories under the fixture's.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // The pool: XFS with reflink on a sparse image, unmounted and detached last.
        let pool_img = root.join("pool.img");
        std::fs::File::create(&pool_img)
            .unwrap()
            .set_len(POOL_IMAGE_BYTES)
            .unwrap();
        let pool = Loop::new(&pool_img);
        run(&["mkfs.xfs", "-q", "-f", "-m", "reflink=1", &pool.dev]);
        let pool_mp = root.join("pool");
        std::fs::create_dir(&pool_mp).unwrap();
        run(&["mount", &pool.dev, pool_mp.to_str().unwrap()]);
        fx.loops.push(pool);
        fx._mounts.push(MountGuard(pool_mp.clone()));
        let mv_image = pool_mp.join("mv.img");
        std::fs::File::create(&mv_image)
            .unwrap()
            .set_len(MV_IMAGE_BYTES)
            .unwrap();
        let mv = Loop::new(&mv_image);
        run(&["mkfs.ext4", "-q", &mv.dev]);
        let mv_mp = root.join("mnt-mv");
        std::fs::create_dir(&mv_mp).unwrap();
        let mounts = vec![MountGuard(mv_mp.clone())];
        let host = agent(&root.join("db-business"), "mv", &mv.dev, &mv_mp).await;
        host.mount("mv", &MountRequest::default()).await.unwrap();
        let archive = archive.then(|| root.join("wal-archive"));
        let install = PgInstall::find().unwrap();
        let mut pg = PgServer::new(
            &install,
            &mv_mp.join("pgdata"),
            &root.join("sock-mv"),
            5432,
            &root.join("pglogs").join("mv.log"),
        );
        pg.initdb(archive.as_deref(), None).await.unwrap();
        pg.start(true).await.unwrap();
        pg.pgbench_init(PGBENCH_SCALE).await.unwrap();
        Site {
            pg,
            host,
            mounts,
            loops: vec![mv],
            mv_image,
            root,
            archive,
            _fx: fx,
        }
    }

    fn connect(&self) -> PostgresConnect {
        PostgresConnect {
            host: self.pg.sock.display().to_string(),
            port: self.pg.port,
            user: "postgres".into(),
            database: "postgres".into(),
            password: None,
        }
    }

    fn online_backup(&self, limit_ms: u64) -> QuiesceRequest {
        QuiesceRequest {
            volume: "mv".into(),
            mode: QuiesceMode::Postgresql(self.connect()),
            limit_ms: Some(limit_ms),
            owner: "test".into(),
        }
    }

    /// The separate's stand-in: an atomic reflink clone of the MV's image.
    fn separate(&self) -> PathBuf {
        let copy = self.mv_image.with_file_name("rv.img");
        run(&[
            "cp",
            "--reflink=always",
            self.mv_image.to_str().unwrap(),
            copy.to_str().unwrap(),
        ]);
        copy
    }

    /// The backup node: the copy as a loop device, its own agent, the RV mounted with a new
    /// identity (as the job's RV mount does). Returns the agent and the mount point.
    async fn backup_node(&mut self, copy: &Path) -> (Arc<Agent>, PathBuf) {
        let rv = Loop::new(copy);
        let rv_mp = self.root.join("mnt-rv");
        std::fs::create_dir(&rv_mp).unwrap();
        self.mounts.push(MountGuard(rv_mp.clone()));
        let host = agent(&self.root.join("db-backup"), "rv", &rv.dev, &rv_mp).await;
        self.loops.push(rv);
        host.mount(
            "rv",
            &MountRequest {
                mount_point: None,
                identity: MountIdentity::New,
                read_only: false,
            },
        )
        .await
        .unwrap();
        (host, rv_mp)
    }

    /// Waits until pgbench has committed at least `n` transactions.
    async fn wait_history(&self, client: &tokio_postgres::Client, n: i64) {
        wait_until(&format!("pgbench commits {n} transactions"), || async {
            client
                .query_one("SELECT count(*) FROM pgbench_history", &[])
                .await
                .map(|r| r.get::<_, i64>(0) >= n)
                .unwrap_or(false)
        })
        .await;
    }
}

/// Starts PostgreSQL on the copy and waits until it is open for writes (recovery finished).
async fn open_copy(root: &Path, data: &Path) -> PgServer {
    let mut copy = PgServer::new(
        &PgInstall::find().unwrap(),
        data,
        &root.join("sock-rv"),
        5433,
        &root.join("pglogs").join("rv.log"),
    );
    if let Err(e) = copy.start(false).await {
        panic!("PostgreSQL does not start on the copy: {e}");
    }
    copy.wait_promoted().await.unwrap();
    copy
}

/// pgbench's invariant and row counts on the copy, and pg_amcheck when it is installed.
async fn check_copy(copy: &PgServer) {
    let totals = copy.totals().await.unwrap();
    println!("copy: {totals:?}");
    let problems = totals.problems(i64::from(PGBENCH_SCALE));
    assert!(
        problems.is_empty(),
        "the copy breaks pgbench's invariant: {problems:?}"
    );
    assert!(totals.history > 0, "the copy holds no pgbench transaction");
    match copy.amcheck().await {
        None => println!("pg_amcheck is not installed: skipped"),
        Some(Ok(())) => println!("pg_amcheck: the copy's heap and indexes are intact"),
        Some(Err(e)) => panic!("pg_amcheck found corruption on the copy: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_under_pgbench_opens_on_the_backup_node_and_keeps_the_invariant() {
    require_pg!();
    let mut site = Site::new(true).await;
    let bench_logs = site.root.join("pgbench-logs");
    let bench = site.pg.pgbench_run(PGBENCH_SECONDS, &bench_logs).unwrap();
    let client = site.pg.client().await.unwrap();
    site.wait_history(&client, 200).await;

    let from_ms = now_ms();
    let q = site
        .host
        .quiesce(&site.online_backup(30_000))
        .await
        .unwrap();
    let copy = site.separate();
    let released = site.host.release("mv", Some(q.quiesce_id)).await.unwrap();
    let to_ms = now_ms();
    let label = released
        .backup_label
        .expect("the release returns the backup label");
    assert!(
        label.label_file.contains("BACKUP METHOD: streamed")
            && label
                .label_file
                .contains(&format!("LABEL: stillpoint quiesce {}", q.quiesce_id)),
        "{}",
        label.label_file
    );

    let (ok, out) = pgbench_wait(bench, Duration::from_secs(180)).await.unwrap();
    assert!(ok, "pgbench saw an error during the backup: {out}");
    let (max_ms, n) = max_latency_in(&bench_logs, from_ms, to_ms);
    let (run_max_ms, run_n) = max_latency_in(&bench_logs, 0, u64::MAX);
    println!(
        "online backup window {} ms: pgbench max latency {max_ms:.1} ms over {n} transactions (whole run: {run_max_ms:.1} ms over {run_n})",
        to_ms - from_ms
    );

    let (_rv_host, rv_mp) = site.backup_node(&copy).await;
    let data = rv_mp.join("pgdata");
    let archive = site.archive.clone().unwrap();
    assert!(prepare_copy("rv", &data, &label, archive.to_str().unwrap(), 1).unwrap());
    assert!(
        !prepare_copy("rv", &data, &label, archive.to_str().unwrap(), 1).unwrap(),
        "a second write of the same job's label changes nothing"
    );
    let copy_pg = open_copy(&site.root, &data).await;
    let log = copy_pg.log_text();
    assert!(
        log.contains("starting backup recovery") && log.contains("consistent recovery state"),
        "the copy did not recover as an online backup: {log}"
    );
    check_copy(&copy_pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_terminated_mid_window_makes_the_release_report_the_quiesce_lost() {
    require_pg!();
    let site = Site::new(true).await;
    let q = site
        .host
        .quiesce(&site.online_backup(30_000))
        .await
        .unwrap();
    let client = site.pg.client().await.unwrap();
    let killed: bool = client
        .query_one(
            "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'stillpoint'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed, "no stillpoint session to terminate");
    match site.host.release("mv", Some(q.quiesce_id)).await {
        Err(HostError::QuiesceLost { reason, .. }) => {
            assert!(reason.contains("session"), "{reason}")
        }
        other => panic!("a release after the session died must report it lost, got {other:?}"),
    }
    assert_eq!(site.host.resumes().await.unwrap().len(), 1);
    // The server has no backup left in progress: a new one starts.
    let again = site
        .host
        .quiesce(&site.online_backup(30_000))
        .await
        .unwrap();
    let r = site
        .host
        .release("mv", Some(again.quiesce_id))
        .await
        .unwrap();
    assert!(r.backup_label.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_dies_mid_window_loses_the_backup_and_its_successor_says_so() {
    require_pg!();
    let mut site = Site::new(true).await;
    let q = site
        .host
        .quiesce(&site.online_backup(30_000))
        .await
        .unwrap();
    let client = site.pg.client().await.unwrap();
    let sessions = || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stillpoint'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(sessions().await, 1);
    // The agent dies (its process state goes: the session with it).
    let dev = site.loops[0].dev.clone();
    let mv_mp = site.root.join("mnt-mv");
    site.host = agent(&site.root.join("db-other"), "mv", &dev, &mv_mp).await;
    wait_until("PostgreSQL sees the dead agent's session end", || async {
        sessions().await == 0
    })
    .await;
    let successor = agent(&site.root.join("db-business"), "mv", &dev, &mv_mp).await;
    match successor.release("mv", Some(q.quiesce_id)).await {
        Err(HostError::QuiesceLost { reason, .. }) => {
            assert!(reason.contains("restarted"), "{reason}")
        }
        other => panic!("the successor must report the quiesce lost, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_copy_under_pgbench_recovers_from_its_own_wal() {
    require_pg!();
    require!("fsfreeze");
    let mut site = Site::new(false).await;
    let bench_logs = site.root.join("pgbench-logs");
    let bench = site.pg.pgbench_run(PGBENCH_SECONDS, &bench_logs).unwrap();
    let client = site.pg.client().await.unwrap();
    site.wait_history(&client, 200).await;

    let from_ms = now_ms();
    let q = site.host.freeze("mv", Some(10_000), "test").await.unwrap();
    let copy = site.separate();
    let released = site.host.release("mv", Some(q.quiesce_id)).await.unwrap();
    let to_ms = now_ms();
    assert_eq!(released.backup_label, None);

    let (ok, out) = pgbench_wait(bench, Duration::from_secs(180)).await.unwrap();
    assert!(ok, "pgbench saw an error during the freeze: {out}");
    let (max_ms, n) = max_latency_in(&bench_logs, from_ms, to_ms);
    let (run_max_ms, run_n) = max_latency_in(&bench_logs, 0, u64::MAX);
    println!(
        "freeze window {} ms: pgbench max latency {max_ms:.1} ms over {n} transactions (whole run: {run_max_ms:.1} ms over {run_n})",
        to_ms - from_ms
    );

    let (_rv_host, rv_mp) = site.backup_node(&copy).await;
    let data = rv_mp.join("pgdata");
    // Nothing is written into a freeze copy. Its postmaster.pid names the production server,
    // alive on this same machine (on a real backup node it is not); remove it here only.
    std::fs::remove_file(data.join("postmaster.pid")).unwrap();
    let copy_pg = open_copy(&site.root, &data).await;
    let log = copy_pg.log_text();
    assert!(
        log.contains("not properly shut down") && log.contains("redo done"),
        "the freeze copy is crash-consistent: PostgreSQL recovers it from its WAL: {log}"
    );
    check_copy(&copy_pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_of_a_server_without_a_wal_archive_is_refused_and_leaves_nothing() {
    // Its copy could never be opened: PostgreSQL stops with "WAL ends before end of online
    // backup" unless the WAL written until pg_backup_stop (after the separate) is replayed.
    require_pg!();
    let site = Site::new(false).await;
    match site.host.quiesce(&site.online_backup(30_000)).await {
        Err(HostError::Refused { reason, .. }) => {
            assert!(reason.contains("archive_mode is off"), "{reason}")
        }
        other => panic!("an online backup without archiving must be refused, got {other:?}"),
    }
    assert!(site.host.quiesces().await.unwrap().is_empty());
    let client = site.pg.client().await.unwrap();
    wait_until("the refused quiesce's session is closed", || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stillpoint'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await;
}
