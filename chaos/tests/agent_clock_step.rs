//! The S4 defect of a wall-clock step, through a real agent process: an agent of a test build
//! of `stillpoint` holds a freeze whose release never comes, its wall clock is stepped back a
//! minute (the fault switches, as the harness's `clock-step` strikes it), and the agent must
//! still thaw the volume at its limit, not a minute later.
//!
//! `host/tests/clock_step.rs` is the same scenario inside one process (and the regression test
//! that failed before the fix: the freeze was held 61.5 s). This one runs it where the chaos
//! runs strike it: the agent's own process, its watchdog, its journal, over gRPC.

mod common;

use std::time::{Duration, Instant};

use stillpoint_host::Host;
use stillpoint_node::demo::site::{DB1, LocalSite, SiteLayout};

/// The freeze's limit.
const LIMIT_MS: u64 = 1500;
/// What S4 allows beyond the limit on a loaded 2-core machine: the watchdog's wake-up, the
/// thaw, and this test's polling.
const SLACK_MS: u64 = 3000;
/// The step back.
const STEP_MS: i64 = -60_000;

#[test]
fn a_real_agent_thaws_at_its_limit_when_its_clock_steps_back() {
    let bin = common::stillpoint();
    let dir = tempfile::tempdir().expect("temporary dir");
    let runtime = common::runtime();
    runtime.block_on(async {
        let layout = SiteLayout::spread(1);
        let volume = layout.pairs[0].mv_volume.clone();
        let site = LocalSite::start(&bin, dir.path(), layout)
            .await
            .expect("the site starts");
        site.start_applications()
            .await
            .expect("the MVs mounted and their applications writing");
        let db1 = site.host(DB1).expect("db1's host client");

        let q = db1
            .freeze(&volume, Some(LIMIT_MS), "test: a freeze nobody releases")
            .await
            .expect("freeze");
        let frozen_at = Instant::now();
        common::write_switches(
            &site.switches_path(DB1),
            &format!("clock_offset_ms = {STEP_MS}\n"),
        );

        // Bounded well past the limit plus slack, so a defect shows as the assertion below
        // with the time it took, not as a hang.
        let bound = Duration::from_millis(LIMIT_MS + SLACK_MS) * 10;
        let thawed_ms = loop {
            let held = db1.quiesces().await.expect("db1's quiesces");
            if held.is_empty() {
                break frozen_at.elapsed().as_millis() as u64;
            }
            assert!(
                frozen_at.elapsed() < bound,
                "db1 still holds the freeze {:?} after {bound:?} against a {LIMIT_MS} ms limit",
                held
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            thawed_ms <= LIMIT_MS + SLACK_MS,
            "a clock step back held the freeze for {thawed_ms} ms against a {LIMIT_MS} ms limit"
        );

        let resumes = db1.resumes().await.expect("db1's resumes");
        let resume = resumes
            .iter()
            .find(|r| r.quiesce_id == q.quiesce_id)
            .unwrap_or_else(|| panic!("no resume of quiesce {}: {resumes:?}", q.quiesce_id));
        assert!(resume.reason.contains("deadline passed"), "{resume:?}");
        assert!(resume.error.is_none(), "{resume:?}");
        // The agent's own stamps show its clock was stepped inside the freeze: it resumed
        // "before" it froze. Without this, a switch the agent never read would pass the test.
        assert!(
            resume.resumed_at_unix_ms + 30_000 < resume.taken_at_unix_ms,
            "the agent's clock was not stepped back inside the freeze: {resume:?}"
        );
        site.stop().await;
    });
}
