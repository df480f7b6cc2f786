//! Shared helpers for the host crate's integration tests.
#![allow(dead_code)]

pub mod loopdev;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

/// Generous bound for anything a test waits for (CI is a loaded 2-core box).
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// Polls `cond` every 20 ms until it holds or `WAIT_MAX` passes; panics naming `what`.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < WAIT_MAX {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {WAIT_MAX:?} waiting for: {what}");
}

/// Opens the sled database at `dir`, retrying while a dropped agent's tasks still hold it.
pub async fn open_db(dir: &Path) -> sled::Db {
    let start = Instant::now();
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if start.elapsed() < WAIT_MAX => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen sled at {}: {e}", dir.display()),
        }
    }
}

/// Runs `test` for a test binary that strikes the fault switches (`stillpoint_host::switches`),
/// given a temporary dir and the switches file named for this process, on a runtime of its
/// own; says it skipped in a build without the switches. Call it first thing in the test,
/// before any thread reads the environment; one such test per file, since the switches are
/// read once per process.
pub fn with_switches<F, Fut>(test: F)
where
    F: FnOnce(tempfile::TempDir, std::path::PathBuf) -> Fut,
    Fut: Future<Output = ()>,
{
    if !stillpoint_host::switches::BUILT {
        eprintln!("SKIPPED: this build has no fault switches (feature fault-injection)");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary dir");
    let file = dir.path().join("switches.toml");
    // SAFETY: called before the runtime and the agent start, so no other thread of this
    // process reads the environment yet.
    unsafe { std::env::set_var(stillpoint_host::switches::ENV_VAR, &file) };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(test(dir, file));
}

/// Writes the switches file whole (a temporary file renamed over) and waits, bounded, until
/// the switches read it (`seen`).
pub fn write_switches(file: &Path, text: &str, seen: impl Fn() -> bool) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the switches");
    std::fs::rename(&tmp, file).expect("rename the switches");
    let start = Instant::now();
    while !seen() {
        assert!(
            start.elapsed() < WAIT_MAX,
            "the switches never read {text:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A sim agent in `dir` with one volume `mv1` on a 4 MiB LD, the `[[volumes]]` lines
/// `volume_toml` added, and the workload application (paced at `pace_ms`) stopped and
/// started by its hooks; mounted, its application running.
pub async fn sim_agent_with_workload(
    dir: &Path,
    volume_toml: &str,
    pace_ms: u64,
) -> (
    std::sync::Arc<stillpoint_host::Agent>,
    std::sync::Arc<stillpoint_host::Workload>,
) {
    use stillpoint_host::{
        Agent, Engine, FileDevice, HookKind, Host, HostConfig, MountRequest, SimBackend, Workload,
    };
    let sim = SimBackend::new(7);
    let mv = std::sync::Arc::new(FileDevice::create(&dir.join("mv.img"), 4 << 20).unwrap());
    SimBackend::format(mv.as_ref()).await.unwrap();
    sim.attach("LD-MV", mv).await.unwrap();
    let pace = Some(Duration::from_millis(pace_ms));
    let workload = Workload::new(sim.clone(), "/sim/mv1", "workload", None, pace);
    sim.register_app("workload", workload.clone());
    let config = HostConfig::from_toml_str(
        &format!(
            "backend = \"sim\"\n[[volumes]]\nname = \"mv1\"\nld = \"LD-MV\"\n\
             mount_point = \"/sim/mv1\"\nfs = \"sim\"\nstart = {{ app = \"workload\" }}\n\
             {volume_toml}"
        ),
        "test.toml",
    )
    .unwrap();
    let db = sled::open(dir.join("db")).unwrap();
    let journal = stillpoint_storage::journal::Journal::open(&db).unwrap();
    let host = Agent::start(config, journal, Engine::Sim(sim))
        .await
        .unwrap();
    host.mount("mv1", &MountRequest::default()).await.unwrap();
    host.run_hook("mv1", HookKind::Start).await.unwrap();
    (host, workload)
}
