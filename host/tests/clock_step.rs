//! A step of the agent's wall clock while a volume is quiesced (an NTP step, an operator's
//! `date -s`): the quiesce must still end at its limit as measured by a clock nobody steps
//! (S4), and a step forward must not make a quiesce fail or refuse an extension it is owed.
//!
//! The step is struck with the test build's fault switches (`STILLPOINT_FAULT_SWITCHES`), so
//! the machine's clock is never touched. One test in this file: the switches are read once
//! per process.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::wait_until;
use stillpoint_host::{
    Agent, Engine, FileDevice, HookKind, Host, HostConfig, HostError, MountRequest, SimBackend,
    Workload,
};
use stillpoint_storage::journal::Journal;

const MV_BYTES: u64 = 4 << 20;
/// The freeze window under test.
const LIMIT_MS: u64 = 1500;
/// What S4 allows beyond the limit on a loaded 2-core machine (the watchdog's wake-up and
/// the thaw).
const SLACK_MS: u64 = 3000;

fn step_clock(file: &std::path::Path, offset_ms: i64) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("clock_offset_ms = {offset_ms}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
    // The agent reads the file every POLL_MS: wait until it has (the offset is visible
    // through the same function the agent uses).
    let deadline = Instant::now() + Duration::from_secs(30);
    while stillpoint_host::switches::clock_offset_ms() != offset_ms {
        assert!(
            Instant::now() < deadline,
            "the switches never read {offset_ms}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_wall_clock_step_neither_stretches_nor_breaks_a_quiesce() {
    if !stillpoint_host::switches::BUILT {
        eprintln!("SKIPPED: this build has no fault switches (feature fault-injection)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let switches = dir.path().join("switches.toml");
    // SAFETY: set before any thread of this process reads the environment: the runtime
    // and the agent start below.
    unsafe { std::env::set_var(stillpoint_host::switches::ENV_VAR, &switches) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let sim = SimBackend::new(7);
        let mv = Arc::new(FileDevice::create(&dir.path().join("mv.img"), MV_BYTES).unwrap());
        SimBackend::format(mv.as_ref()).await.unwrap();
        sim.attach("LD-MV", mv).await.unwrap();
        let pace = Some(Duration::from_millis(1));
        let workload = Workload::new(sim.clone(), "/sim/mv1", "workload", None, pace);
        sim.register_app("workload", workload.clone());
        let config = HostConfig::from_toml_str(
            "backend = \"sim\"\n[[volumes]]\nname = \"mv1\"\nld = \"LD-MV\"\n\
             mount_point = \"/sim/mv1\"\nfs = \"sim\"\nfreeze_ms_max = 60000\n\
             extend_ms_max_total = 5000\nstop = { app = \"workload\" }\n\
             start = { app = \"workload\" }\n",
            "test.toml",
        )
        .unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let host = Agent::start(config, Journal::open(&db).unwrap(), Engine::Sim(sim))
            .await
            .unwrap();
        host.mount("mv1", &MountRequest::default()).await.unwrap();
        host.run_hook("mv1", HookKind::Start).await.unwrap();

        // A step back inside the window: the watchdog must still thaw at the limit.
        let q = host
            .freeze("mv1", Some(LIMIT_MS), "job 1 step 4")
            .await
            .unwrap();
        let frozen_at = Instant::now();
        step_clock(&switches, -60_000);
        wait_until("the agent thaws the freeze nobody released", || async {
            host.quiesces().await.unwrap().is_empty()
        })
        .await;
        let frozen_ms = frozen_at.elapsed().as_millis() as u64;
        assert!(
            frozen_ms <= LIMIT_MS + SLACK_MS,
            "a clock step back held the freeze for {frozen_ms} ms against a {LIMIT_MS} ms limit"
        );
        let resumes = host.resumes().await.unwrap();
        assert_eq!(resumes.len(), 1, "{resumes:?}");
        assert_eq!(resumes[0].quiesce_id, q.quiesce_id);
        assert!(resumes[0].reason.contains("deadline passed"), "{resumes:?}");

        // A step forward inside the window: the quiesce is still held, may be extended,
        // and releases as held.
        step_clock(&switches, 0);
        let q = host
            .freeze("mv1", Some(LIMIT_MS * 4), "job 2 step 4")
            .await
            .unwrap();
        step_clock(&switches, 60_000);
        let extended = host.extend("mv1", q.quiesce_id, 1000).await;
        assert!(
            extended.is_ok(),
            "a clock step forward refused an extension inside the window: {extended:?}"
        );
        match host.release("mv1", Some(q.quiesce_id)).await {
            Ok(_) => {}
            Err(HostError::QuiesceLost { reason, .. }) => {
                panic!("a clock step forward lost a quiesce inside its window: {reason}")
            }
            Err(e) => panic!("release failed: {e}"),
        }
    });
}
