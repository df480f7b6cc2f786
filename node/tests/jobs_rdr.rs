//! RDR pairs driven by the cluster through real processes: the job tests' site with a second
//! software array `A2` (its own `stillpoint array serve`, linked from A1 as a remote site's
//! array is), a group mixing DDR pairs (RV on A1) and RDR pairs (RV on A2) over two business
//! nodes, backed up to `backup1` with `stillpoint backup payroll --wait`; and what a backup
//! does when the RDR link goes down before or while it waits for sync.

mod job_site;

use std::process::Output;
use std::time::Duration;

use job_site::{JobSite, SiteLayout, code, is_consistent, sp, stderr, stdout};
use stillpoint_array::{Array, LdRole, SyncState};
use stillpoint_coordinator::job::{Job, JobEnd, JobState, StepState};

const OK: i32 = 0;
const JOB_FAILED: i32 = 12;

fn job_id(o: &Output) -> u64 {
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)));
    doc["accepted"]["job_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no job id in {doc}"))
}

/// `stillpoint backup payroll --wait` through agent 0, bounded by `timeout_s`.
async fn backup(site: &JobSite, timeout_s: u64) -> Output {
    sp(&[
        "backup",
        "payroll",
        "--wait",
        "--timeout",
        &timeout_s.to_string(),
        "--endpoint",
        &site.site.endpoints[0],
        "--output",
        "json",
    ])
    .await
}

/// p0 (db1) and p3 (db2) DDR on A1; p1 (db2) and p2 (db1) RDR with their RVs on A2.
fn mixed_layout() -> SiteLayout {
    SiteLayout::spread(4).with_rdr(&[1, 2])
}

/// Brings the RDR link back up; the next backup then exits OK (consistent) and every RV
/// verifies.
async fn link_back_and_backup_consistent(site: &JobSite) {
    site.site.set_rdr_link(true).await.expect("link up");
    let out = backup(site, 180).await;
    assert_eq!(
        code(&out),
        OK,
        "backup after the link is back: {}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        site.logs()
    );
    let verified = site.verify_rvs().await;
    assert!(verified.iter().all(|v| v.is_ok()), "{verified:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_ddr_and_rdr_pairs_is_backed_up_consistent_and_every_rv_verifies_on_its_own_array()
 {
    let site = JobSite::start(mixed_layout()).await;
    let ep = site.site.endpoints[0].clone();

    // The site file passes apply's validation against both live arrays: A2 is read through
    // its control node backup1 (nothing left unchecked).
    let file = site.dir.path().join("site.toml");
    let out = sp(&[
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--dry-run",
        "--endpoint",
        &ep,
    ])
    .await;
    assert_eq!(code(&out), OK, "apply --dry-run: {}", stderr(&out));
    assert!(
        !stderr(&out).contains("not checked"),
        "every array is checked live: {}",
        stderr(&out)
    );

    // The pairs live on A1 (their MV's array); the RDR ones have their RVs on A2.
    let a1 = site.site.connect_array().await.expect("A1");
    let a2 = site.site.connect_array_of("A2").await.expect("A2");
    let pairs = a1.pair_list().await.expect("A1's pairs");
    let rv_arrays: Vec<(u32, String)> = {
        let mut v: Vec<_> = pairs
            .iter()
            .map(|p| (p.id.mv.ld, p.id.rv.array.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        rv_arrays,
        vec![
            (0, "A1".to_string()),
            (2, "A2".to_string()),
            (4, "A2".to_string()),
            (6, "A1".to_string())
        ]
    );
    let a2_lds = a2.ld_list().await.expect("A2's LDs");
    let mut a2_rvs: Vec<u32> = a2_lds
        .iter()
        .filter(|l| matches!(l.role, LdRole::Rv { .. }))
        .map(|l| l.number)
        .collect();
    a2_rvs.sort();
    assert_eq!(a2_rvs, vec![3, 5], "A2's RVs: {a2_lds:?}");

    let out = backup(&site, 180).await;
    assert_eq!(
        code(&out),
        OK,
        "backup --wait: {}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        site.logs()
    );
    let id = job_id(&out);
    let end = site.wait_ended(id, Duration::from_secs(30)).await;
    assert!(is_consistent(&end), "job {id} ended {end:?}");

    // Every RV verifies, each read from its own array (p1 and p2 from A2).
    let verified = site.verify_rvs().await;
    assert!(
        verified.iter().all(|v| v.is_ok()),
        "the verifier on every RV: {verified:?}"
    );
    for p in [1u32, 2] {
        let info = a1
            .pair_query(&pairs.iter().find(|i| i.id.mv.ld == 2 * p).unwrap().id)
            .await
            .expect("pair");
        assert_eq!(info.state.sync, SyncState::Separated, "{info:?}");
    }
    site.site.stop().await;
}

/// The reason a job failed, or a panic naming how it ended instead.
fn failed_reason(end: &JobEnd) -> String {
    match end {
        JobEnd::Failed { reason } => reason.clone(),
        other => panic!("the job should have failed, it ended {other:?}"),
    }
}

/// Runs a backup that must fail (`what` says why, for the message): its job id, the reason
/// it ended with, and the job.
async fn failing_backup(site: &JobSite, what: &str) -> (u64, String, Job) {
    let out = backup(site, 240).await;
    assert_eq!(
        code(&out),
        JOB_FAILED,
        "backup with {what}: {}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        site.logs()
    );
    let id = job_id(&out);
    let end = site.wait_ended(id, Duration::from_secs(30)).await;
    let job = site.job(id).await.expect("the job");
    (id, failed_reason(&end), job)
}

/// Waits (up to 120 s) for job `id` to end failed with a reason naming pair p1 and the link:
/// the reason, and the job.
async fn failed_naming_p1_and_the_link(site: &JobSite, id: u64) -> (String, Job) {
    let end = site.wait_ended(id, Duration::from_secs(120)).await;
    let job = site.job(id).await.expect("the job");
    let reason = failed_reason(&end);
    assert!(
        reason.contains("p1") && reason.contains("link"),
        "the reason names the pair and the link: {reason}\n{:#?}",
        steps(&job)
    );
    (reason, job)
}

/// Steps of `job` as `id call state`, for messages.
/// The job failed before its freeze window: no quiesce of it ran, and no MV is quiesced.
async fn assert_no_quiesce_ran(site: &JobSite, job: &Job) {
    assert!(
        !job.steps.iter().any(|s| matches!(
            (&s.call, &s.state),
            (
                stillpoint_coordinator::job::StepCall::Quiesce { .. },
                StepState::Done { .. } | StepState::Dispatched { .. }
            )
        )),
        "no quiesce ran: {:#?}",
        steps(job)
    );
    assert!(site.quiesced_mvs().await.is_empty());
}

fn steps(job: &Job) -> Vec<String> {
    job.steps
        .iter()
        .map(|s| format!("{} {:?} {:?}", s.id, s.call, s.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_the_rdr_link_down_fails_naming_the_link_and_the_next_one_after_it_is_back_is_consistent()
 {
    let site = JobSite::start(SiteLayout::spread(2).with_rdr(&[1])).await;
    site.site.set_rdr_link(false).await.expect("link down");
    // The workload keeps writing the MVs: p1 goes to abnormal suspend on the link fault.
    let a1 = site.site.connect_array().await.expect("A1");
    let pairs = a1.pair_list().await.expect("pairs");
    let rdr = pairs
        .iter()
        .find(|p| p.id.rv.array == "A2")
        .expect("the RDR pair")
        .id
        .clone();

    // Before the sync wait: the link is already down when the job starts.
    let started = std::time::Instant::now();
    let (_, reason, job) = failing_backup(&site, "the link down").await;
    let took = started.elapsed();
    assert!(
        reason.contains("p1") && (reason.contains("link") || reason.contains("suspend")),
        "the reason names the pair and the link: {reason}"
    );
    assert!(
        matches!(job.state, JobState::Ended { .. }),
        "{:?}",
        job.state
    );
    // It failed before the freeze window: no MV was quiesced, none is.
    assert_no_quiesce_ran(&site, &job).await;
    eprintln!("the job failed after {took:?}: {reason}");

    // The link back: the next backup resumes the suspended pair and makes a consistent copy.
    link_back_and_backup_consistent(&site).await;
    let info = a1.pair_query(&rdr).await.expect("pair");
    assert_eq!(info.state.sync, SyncState::Separated, "{info:?}");
    site.site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rdr_link_failing_while_a_backup_waits_for_sync_fails_the_job_before_any_quiesce() {
    let site = JobSite::start(SiteLayout::spread(2).with_rdr(&[1])).await;
    // A first backup leaves the pairs separated; the workload then dirties their MVs.
    let out = backup(&site, 180).await;
    assert_eq!(code(&out), OK, "first backup: {}", stderr(&out));
    // The RDR pair's RV is overwritten on A2 while separated (the backup node writing its
    // mounted copy): the next replicate must copy all of it back, and A1 copies one block a
    // second, so that replicate waits for sync for a minute, long enough to cut the link
    // under it.
    let a1 = site.site.connect_array().await.expect("A1");
    let a2 = site.site.connect_array_of("A2").await.expect("A2");
    let ld_bytes = site.site.layout.ld_bytes;
    a2.write("backup1", 3, 0, &vec![0xa5; ld_bytes as usize])
        .await
        .expect("the backup node writes its RV");
    a1.inject_fault(&stillpoint_array::Fault::CopyPace {
        bytes_per_s: stillpoint_array::DEFAULT_BLOCK_BYTES,
    })
    .await
    .expect("slow the copies");
    let id = site.submit_backup().await;
    // The job's replicate of p1 is running: the array has the pair copying.
    let rdr_id = a1
        .pair_list()
        .await
        .expect("pairs")
        .into_iter()
        .find(|p| p.id.rv.array == "A2")
        .expect("the RDR pair")
        .id;
    job_site::wait_async("the job's replicate of p1 to run", || async {
        let info = a1.pair_query(&rdr_id).await.ok()?;
        (info.state.sync == SyncState::RplExec).then_some(())
    })
    .await;
    site.site.set_rdr_link(false).await.expect("link down");
    // The DDR pair's replicate need not crawl on to the job's end.
    a1.inject_fault(&stillpoint_array::Fault::CopyPace { bytes_per_s: 0 })
        .await
        .expect("pace back");
    let (reason, job) = failed_naming_p1_and_the_link(&site, id).await;
    assert_no_quiesce_ran(&site, &job).await;
    let rdr = a1
        .pair_list()
        .await
        .expect("pairs")
        .into_iter()
        .find(|p| p.id.rv.array == "A2")
        .expect("the RDR pair");
    assert!(
        rdr.state.abnormal_suspend,
        "the pair is left as the job says: {rdr:?}"
    );
    eprintln!("job {id} failed: {reason}");

    // The link back: the next backup is consistent.
    link_back_and_backup_consistent(&site).await;
    site.site.stop().await;
}

/// The remote array's process down (killed, not the link cut) while the RDR pair is
/// separated (its MV's writes then need nothing of A2, so the pair is not suspended): the MV's
/// array answers the next replicate that it cannot reach A2, and the job fails at once with
/// that reason — not after sending the replicate again and again as if A1 itself had not
/// answered. Once A2 runs again the next backup is consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_the_remote_array_down_fails_at_once_naming_it_and_the_next_one_after_its_restart_is_consistent()
 {
    let mut site = JobSite::start(SiteLayout::spread(2).with_rdr(&[1])).await;
    let out = backup(&site, 180).await;
    assert_eq!(code(&out), OK, "first backup: {}", stderr(&out));
    site.site.kill_array_of("A2").await;

    let (id, reason, job) = failing_backup(&site, "A2 down").await;
    assert!(
        reason.contains("p1") && reason.contains("A2") && reason.contains("link"),
        "the reason names the pair, the remote array and the link: {reason}\n{:#?}",
        steps(&job)
    );
    assert!(
        !reason.contains("without taking effect"),
        "the array's answer settled it, no resends: {reason}"
    );
    assert_no_quiesce_ran(&site, &job).await;
    eprintln!("job {id} failed: {reason}");

    site.site.restart_array_of("A2").await.expect("A2 again");
    link_back_and_backup_consistent(&site).await;
    site.site.stop().await;
}

/// The RDR link down inside the freeze window: both MVs held quiesced, the separates not yet
/// admitted (the array holds each for a while, `Fault::SeparateDelay`), the link A1→A2 goes
/// down. The RDR pair, mirrored in sync, goes to abnormal suspend at once, so its separate is
/// refused: the static point fails, the MVs are released, and the job tries a new round,
/// whose replicate the link refuses. The job fails naming the pair and the link — never a copy
/// labelled consistent whose RV missed the instant — and leaves no MV quiesced; once the link
/// is back the next backup is consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rdr_link_down_inside_the_freeze_window_fails_the_job_naming_the_link_and_releases_the_mvs()
 {
    let site = JobSite::start(SiteLayout::spread(2).with_rdr(&[1])).await;
    let a1 = site.site.connect_array().await.expect("A1");
    a1.inject_fault(&stillpoint_array::Fault::SeparateDelay { ms: 2_000 })
        .await
        .expect("hold the separates");
    let id = site.submit_backup().await;
    job_site::wait_async("both MVs held quiesced", || async {
        (site.quiesced_mvs().await.len() == 2).then_some(())
    })
    .await;
    site.site.set_rdr_link(false).await.expect("link down");
    a1.inject_fault(&stillpoint_array::Fault::SeparateDelay { ms: 0 })
        .await
        .expect("lift the delay");

    let (reason, _) = failed_naming_p1_and_the_link(&site, id).await;
    assert!(
        site.quiesced_mvs().await.is_empty(),
        "no MV is left quiesced: {:?}",
        site.quiesced_mvs().await
    );
    eprintln!("job {id} failed: {reason}");

    link_back_and_backup_consistent(&site).await;
    site.site.stop().await;
}
