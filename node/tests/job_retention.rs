//! The executors' side of an ended job, through processes of the `stillpoint` binary (see
//! `job_site`): an order of a job that has ended is refused, whatever term it carries; and an
//! agent's journal forgets the step records of jobs the history's retention dropped, so it
//! grows with the history's bound, not with every job ever run.

mod job_site;

use std::time::Duration;

use job_site::*;
use stillpoint_coordinator::job::wire::StepOrder;
use stillpoint_coordinator::job::{Dispatch, FencingToken, Job, StepCall};

/// How long one backup of the test site may take (a loaded 2-core box).
const JOB_WITHIN: Duration = Duration::from_secs(180);

/// The quiesce step of `job` on its business node: the step, and that node's slot.
fn quiesce_of(site: &JobSite, job: &Job) -> (stillpoint_coordinator::job::Step, usize) {
    let step = job
        .steps
        .iter()
        .find(|s| matches!(s.call, StepCall::Quiesce { .. }))
        .expect("a quiesce step")
        .clone();
    let StepCall::Quiesce { volume, .. } = &step.call else {
        unreachable!()
    };
    let slot = (0..site.site.agents.len())
        .find(|s| site.site.name(*s) == volume.node)
        .expect("the MV's node");
    (step, slot)
}

/// A job ended; its quiesce is sent again under the leader's current term, as a new attempt
/// (a leader that did not see the end, or a tool replaying an order): the business node's
/// executor refuses it, naming the ended job, and the MV is not quiesced. (Before, only a
/// stale term or token was refused: this order would have quiesced the MV of a job that was
/// over, and nothing would have released it but the host's deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_of_an_ended_job_is_refused_whatever_its_term() {
    let site = JobSite::start(SiteLayout::spread(1)).await;
    let id = site.submit_backup().await;
    let end = site.wait_ended(id, JOB_WITHIN).await;
    assert!(is_consistent(&end), "{end:?}\n{}", site.logs());
    let job = site.job(id).await.expect("job");
    let (q, slot) = quiesce_of(&site, &job);
    let token = q.token().expect("token");
    let order = StepOrder {
        dispatch: Dispatch {
            step: q.id,
            token: FencingToken {
                term: token.term,
                job_id: id,
                step_index: q.id,
                attempt: q.attempts + 1,
            },
            round: job.round,
            target: q.target.clone(),
            call: q.call.clone(),
            quiesce_id: None,
            check_first: false,
            postgres_copy: None,
        },
        pair: None,
        reply_within_ms: 5_000,
    };
    let refused = stillpoint_node::driver::execute_once(&site.site.endpoints[slot], &order).await;
    let why = refused.expect_err("an order of an ended job was executed");
    assert!(
        why.why.contains(&format!("job {id} has ended")),
        "refused without naming the ended job: {why}"
    );
    assert!(
        site.quiesced_mvs().await.is_empty(),
        "the order of the ended job quiesced an MV"
    );
}

/// With `jobs_retained_max = 1`, two backups: the first is dropped from the history when the
/// second ends. The business node's agent, restarted, forgets the first job's step records
/// (its log says so), and its journal, read once the site is stopped, holds the second job's
/// records only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_forgets_the_steps_of_jobs_the_history_dropped() {
    let mut site = JobSite::start(SiteLayout::spread(1)).await;
    site.apply(
        "site-retain-1.toml",
        &format!(
            "{}\n[settings]\njobs_retained_max = 1\n",
            site.site.layout.site_toml()
        ),
    );
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = site.submit_backup().await;
        let end = site.wait_ended(id, JOB_WITHIN).await;
        assert!(is_consistent(&end), "{end:?}\n{}", site.logs());
        ids.push(id);
    }
    let (first, second) = (ids[0], ids[1]);
    assert!(site.job(first).await.is_none(), "job {first} is still kept");
    let job = site.job(second).await.expect("the second job is kept");
    let (_, slot) = quiesce_of(&site, &job);

    site.site.kill(slot).await;
    site.site.restart(slot).await.expect("restart");
    let log = site.site.log_path(slot);
    wait_async("the restarted agent to forget the dropped job", || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("forgot the step records of jobs the history dropped"))
                .map(|_| ())
        }
    })
    .await;
    let data_dir = site.site.dir.join(format!("data-{}", site.site.name(slot)));
    site.site.kill(slot).await;
    let store = stillpoint_storage::Store::open(&data_dir).expect("open the agent's data dir");
    let journal = store.journal().expect("its journal");
    let jobs: Vec<u64> = journal.step_jobs().expect("the jobs in the journal");
    assert!(
        !jobs.contains(&first),
        "job {first} was dropped from the history but its steps are still in the journal: {jobs:?}"
    );
    assert!(
        jobs.contains(&second),
        "job {second} is kept but its steps are gone from the journal: {jobs:?}"
    );
}
