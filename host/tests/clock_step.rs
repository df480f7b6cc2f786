//! A step of the agent's wall clock while a volume is quiesced (an NTP step, an operator's
//! `date -s`): the quiesce must still end at its limit as measured by a clock nobody steps
//! (S4), and a step forward must not make a quiesce fail or refuse an extension it is owed.
//!
//! The step is struck with the test build's fault switches (`STILLPOINT_FAULT_SWITCHES`), so
//! the machine's clock is never touched. One test in this file: the switches are read once
//! per process.

mod common;

use std::time::Instant;

use common::{sim_agent_with_workload, wait_until, with_switches, write_switches};
use stillpoint_host::{Host, HostError};

/// The freeze window under test.
const LIMIT_MS: u64 = 1500;
/// What S4 allows beyond the limit on a loaded 2-core machine (the watchdog's wake-up and
/// the thaw).
const SLACK_MS: u64 = 3000;

fn step_clock(file: &std::path::Path, offset_ms: i64) {
    write_switches(file, &format!("clock_offset_ms = {offset_ms}\n"), || {
        stillpoint_host::switches::clock_offset_ms() == offset_ms
    });
}

#[test]
fn a_wall_clock_step_neither_stretches_nor_breaks_a_quiesce() {
    with_switches(|dir, switches| async move {
        let (host, _workload) = sim_agent_with_workload(
            dir.path(),
            "freeze_ms_max = 60000\nextend_ms_max_total = 5000\nstop = { app = \"workload\" }\n",
            1,
        )
        .await;
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
