//! An MV's applications that will not let go, struck with the test build's fault switches
//! (`app_stop` in `STILLPOINT_FAULT_SWITCHES`): a stop hook that fails, one that hangs, and an
//! application that stops writing but keeps the volume open. Each time the static point by
//! unmount must fail within its window, name what is wrong, and leave the volume mounted with
//! its application writing; once the switch is lifted the same quiesce works.
//!
//! One test in this file: the switches are read once per process.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::wait_until;
use stillpoint_host::{
    Agent, Engine, FileDevice, HookKind, Host, HostConfig, MountRequest, QuiesceMode,
    QuiesceRequest, SimBackend, Workload,
};
use stillpoint_storage::journal::Journal;

const MV_BYTES: u64 = 4 << 20;
/// The static point's window, and the stop hook's timeout.
const LIMIT_MS: u64 = 2000;
const HOOK_TIMEOUT_MS: u64 = 800;
/// What a failed quiesce may take beyond its window on a loaded 2-core machine.
const SLACK_MS: u64 = 3000;

fn switch(file: &std::path::Path, app_stop: Option<&str>) {
    let tmp = file.with_extension("tmp");
    let text = match app_stop {
        Some(a) => format!("app_stop = \"{a}\"\n"),
        None => String::new(),
    };
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
    let want = match app_stop {
        None => stillpoint_host::switches::AppStop::Stops,
        Some("fails") => stillpoint_host::switches::AppStop::Fails,
        Some("hangs") => stillpoint_host::switches::AppStop::Hangs,
        Some(_) => stillpoint_host::switches::AppStop::Holds,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while stillpoint_host::switches::app_stop() != want {
        assert!(
            Instant::now() < deadline,
            "the switches never read {want:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_application_that_will_not_let_go_fails_the_quiesce_and_keeps_writing() {
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
        let sim = SimBackend::new(9);
        let mv = Arc::new(FileDevice::create(&dir.path().join("mv.img"), MV_BYTES).unwrap());
        SimBackend::format(mv.as_ref()).await.unwrap();
        sim.attach("LD-MV", mv).await.unwrap();
        let pace = Some(Duration::from_millis(2));
        let workload = Workload::new(sim.clone(), "/sim/mv1", "workload", None, pace);
        sim.register_app("workload", workload.clone());
        let config = HostConfig::from_toml_str(
            &format!(
                "backend = \"sim\"\n[[volumes]]\nname = \"mv1\"\nld = \"LD-MV\"\n\
                 mount_point = \"/sim/mv1\"\nfs = \"sim\"\nunmount_ms_max = 60000\n\
                 stop = {{ app = \"workload\", timeout_ms = {HOOK_TIMEOUT_MS} }}\n\
                 start = {{ app = \"workload\" }}\n"
            ),
            "test.toml",
        )
        .unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let host = Agent::start(config, Journal::open(&db).unwrap(), Engine::Sim(sim))
            .await
            .unwrap();
        host.mount("mv1", &MountRequest::default()).await.unwrap();
        host.run_hook("mv1", HookKind::Start).await.unwrap();
        let written = || workload.records_written().unwrap_or(0);
        let quiesce = |owner: &str| QuiesceRequest {
            volume: "mv1".into(),
            mode: QuiesceMode::Unmount,
            limit_ms: Some(LIMIT_MS),
            owner: owner.into(),
        };

        for (fault, names) in [
            ("fails", "refused to stop"),
            ("hangs", "did not finish within"),
            ("holds", "holding on"),
        ] {
            switch(&switches, Some(fault));
            let before = written();
            let asked = Instant::now();
            let err = match host.quiesce(&quiesce(fault)).await {
                Err(e) => e.to_string(),
                Ok(q) => panic!("app_stop = {fault}: the quiesce was taken: {q:?}"),
            };
            let took_ms = asked.elapsed().as_millis() as u64;
            assert!(
                err.contains(names),
                "app_stop = {fault}: the error does not say {names:?}: {err}"
            );
            assert!(
                took_ms <= LIMIT_MS + SLACK_MS,
                "app_stop = {fault}: the failed quiesce took {took_ms} ms against a {LIMIT_MS} ms window"
            );
            assert!(host.quiesces().await.unwrap().is_empty());
            // The volume is mounted and its application writes again.
            wait_until(&format!("the application writes after {fault}"), || async {
                written() > before + 5
            })
            .await;
            let info = host.volume("mv1").await.unwrap();
            assert!(info.mounted_at.is_some(), "app_stop = {fault}: {info:?}");
        }

        // Lifted: the same static point is taken and released.
        switch(&switches, None);
        let q = host.quiesce(&quiesce("lifted")).await.unwrap();
        host.release("mv1", Some(q.quiesce_id)).await.unwrap();
    });
}
