//! Backups driven by the cluster, every part a process of the `stillpoint` binary: a group of
//! three pairs on two business nodes backed up to one backup node, verified record by record
//! on the RVs; the leader killed in the middle of jobs; an agent killed while its MV is
//! quiesced.

mod job_site;

use std::time::Duration;

use job_site::*;

/// How long one backup of the test site may take, failovers included (a loaded 2-core box).
const JOB_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_two_business_nodes_is_backed_up_consistently_by_the_cluster() {
    let site = JobSite::start(SiteLayout::spread(3)).await;
    let job = site.submit_backup().await;
    let end = site.wait_ended(job, JOB_WITHIN).await;
    assert!(is_consistent(&end), "ended {end:?}\n{}", site.logs());
    for (i, verified) in site.verify_rvs().await.into_iter().enumerate() {
        let records = verified.unwrap_or_else(|e| panic!("RV of pair {i}: {e}"));
        assert!(records > 0);
    }
    assert!(
        site.quiesced_mvs().await.is_empty(),
        "an MV is still quiesced"
    );
}
