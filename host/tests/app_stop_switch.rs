//! An MV's applications that will not let go, struck with the test build's fault switches
//! (`app_stop` in `STILLPOINT_FAULT_SWITCHES`): a stop hook that fails, one that hangs, and an
//! application that stops writing but keeps the volume open. Each time the static point by
//! unmount must fail within its window, name what is wrong, and leave the volume mounted with
//! its application writing; once the switch is lifted the same quiesce works.
//!
//! One test in this file: the switches are read once per process.

mod common;

use std::time::Instant;

use common::{sim_agent_with_workload, wait_until, with_switches, write_switches};
use stillpoint_host::switches::AppStop;
use stillpoint_host::{Host, QuiesceMode, QuiesceRequest};

/// The static point's window, and the stop hook's timeout.
const LIMIT_MS: u64 = 2000;
const HOOK_TIMEOUT_MS: u64 = 800;
/// What a failed quiesce may take beyond its window on a loaded 2-core machine.
const SLACK_MS: u64 = 3000;

fn switch(file: &std::path::Path, app_stop: Option<&str>) {
    let (text, want) = match app_stop {
        None => (String::new(), AppStop::Stops),
        Some(a) => (
            format!("app_stop = \"{a}\"\n"),
            match a {
                "fails" => AppStop::Fails,
                "hangs" => AppStop::Hangs,
                _ => AppStop::Holds,
            },
        ),
    };
    write_switches(file, &text, || {
        stillpoint_host::switches::app_stop() == want
    });
}

#[test]
fn an_application_that_will_not_let_go_fails_the_quiesce_and_keeps_writing() {
    with_switches(|dir, switches| async move {
        let (host, workload) = sim_agent_with_workload(
            dir.path(),
            &format!(
                "unmount_ms_max = 60000\nstop = {{ app = \"workload\", timeout_ms = {HOOK_TIMEOUT_MS} }}\n"
            ),
            2,
        )
        .await;
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
