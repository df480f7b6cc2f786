//! Backups driven by the cluster, every part a process of the `stillpoint` binary (array and
//! agents, see `job_site`): a group of three pairs on two business nodes backed up to one
//! backup node and verified record by record on the RVs; the leader SIGKILLed at every step
//! boundary in turn; an agent killed while its MV is quiesced; the leader paused so a reply is
//! lost; a deposed leader's late step refused; a full-cluster restart in the middle of a job.

mod job_site;

use std::time::Duration;

use job_site::*;
use stillpoint_coordinator::job::wire::StepOrder;
use stillpoint_coordinator::job::{
    Dispatch, FencingToken, Job, JobEnd, StepCall, StepResult, StepState,
};
use stillpoint_host::Host;

/// How long one backup of the test site may take, failovers included (a loaded 2-core box).
const JOB_WITHIN: Duration = Duration::from_secs(180);

fn done_steps(job: &Job) -> usize {
    job.steps
        .iter()
        .filter(|s| matches!(s.state, StepState::Done { .. }))
        .count()
}

/// Every release of every round, with whether its quiesce held.
fn releases(job: &Job) -> Vec<bool> {
    job.steps
        .iter()
        .filter(|s| matches!(s.call, StepCall::Release { .. }))
        .flat_map(|s| s.history.iter())
        .filter_map(|e| match &e.state {
            StepState::Done {
                result:
                    StepResult::Released {
                        held_throughout,
                        backup_label: None,
                    },
                ..
            } => Some(*held_throughout),
            _ => None,
        })
        .collect()
}

/// The quiesce and release steps' histories, for a failure message.
fn freeze_window_history(job: &Job) -> String {
    job.steps
        .iter()
        .filter(|s| matches!(s.call, StepCall::Quiesce { .. } | StepCall::Release { .. }))
        .map(|s| {
            let states: Vec<String> = s
                .history
                .iter()
                .map(|e| format!("{}@{} {:?}", e.state.name(), e.at_ms % 100_000, e.state))
                .collect();
            format!("step {} {:?}:\n  {}", s.id, s.call, states.join("\n  "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn assert_rvs_intact(site: &JobSite, context: &str) {
    for (i, verified) in site.verify_rvs().await.into_iter().enumerate() {
        if let Err(e) = verified {
            let last = site
                .state()
                .await
                .and_then(|s| s.jobs.jobs.values().last().cloned());
            let steps = last.map(|j| {
                j.steps
                    .iter()
                    .map(|s| format!("{} {:?}: {:?}", s.id, s.call, s.history))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            panic!(
                "{context}: the RV of pair {i} is not a clean copy: {e}\nlast job:\n{}\n{}",
                steps.unwrap_or_default(),
                site.logs()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_two_business_nodes_is_backed_up_consistently_by_the_cluster() {
    let site = JobSite::start(SiteLayout::spread(3)).await;
    let job = site.submit_backup().await;
    let end = site.wait_ended(job, JOB_WITHIN).await;
    assert!(is_consistent(&end), "ended {end:?}\n{}", site.logs());
    assert_rvs_intact(&site, "after a plain backup").await;
    assert!(
        site.quiesced_mvs().await.is_empty(),
        "an MV is still quiesced"
    );
    // Every RV is mounted on the backup node, with a new file-system identity.
    let rvs = site
        .site
        .host(site.site.layout.backup_slot())
        .unwrap()
        .list_volumes()
        .await
        .unwrap();
    assert!(rvs.iter().all(|v| v.mounted_at.is_some()), "{rvs:#?}");
}

/// The leader's agent is SIGKILLed once per job, after 0, 1, 2, ... steps are recorded done
/// (every step boundary of the plan in turn, as far as polling every 20 ms can see them; the
/// leader proposes nothing from a job's replicates to its releases, so the boundaries in
/// between show in the log only once the window has closed, and kills inside it are the
/// chaos harness's, at random moments, and the demo's). At
/// even boundaries it is restarted at once (it may lead again in its own term: openraft keeps
/// its committed vote); at odd ones only once another agent leads (a new term takes the job
/// over). Every job ends done and consistent (a kill inside the freeze window is followed by a
/// second round), with clean RVs — also when the killed leader was a business node: with the
/// `sim` backend a killed agent is a rebooted host, whose MVs are back only once its boot has
/// mounted them, and a quiesce sent before that waits for the mount.
/// No MV is left quiesced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_at_every_step_boundary_the_backup_still_ends_consistent() {
    let mut site = JobSite::start(SiteLayout::spread(3)).await;
    let steps = site
        .job(site.submit_backup().await)
        .await
        .expect("job")
        .steps
        .len();
    // The first job (above) runs undisturbed; then one job per boundary.
    let mut killed_at = Vec::new();
    for boundary in 0..steps {
        let id = site.submit_backup().await;
        let mut killed = None;
        let deadline = tokio::time::Instant::now() + JOB_WITHIN;
        while killed.is_none() {
            let job = site.job(id).await;
            if let Some(job) = &job {
                if job.is_ended() {
                    break;
                }
                if done_steps(job) >= boundary {
                    let leader = site.site.leader().await.expect("leader");
                    site.site.kill(leader).await;
                    if boundary % 2 == 1 {
                        let new = site.site.leader().await.expect("a new leader");
                        assert_ne!(new, leader);
                    }
                    site.site.restart(leader).await.expect("restart");
                    killed = Some((done_steps(job), site.site.name(leader)));
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let end = site.wait_ended(id, JOB_WITHIN).await;
        let job = site.job(id).await.expect("job");
        assert!(
            is_consistent(&end),
            "boundary {boundary} (killed {killed:?}): ended {end:?}, releases {:?}\n{}\n{}",
            releases(&job),
            freeze_window_history(&job),
            site.logs()
        );
        assert_rvs_intact(&site, &format!("boundary {boundary}, killed {killed:?}")).await;
        killed_at.push((boundary, killed, job.round, is_consistent(&end)));
    }
    eprintln!(
        "kills (boundary, (steps done at the kill, leader killed), rounds, consistent): {killed_at:?}"
    );
    assert!(site.quiesced_mvs().await.is_empty());
}

/// db1's agent dies while it holds an MV quiesced (the test watches db1's quiesce list and
/// SIGKILLs the agent the moment a quiesce shows; a job whose freeze window slipped between
/// two looks is followed by another, at most 10). The restarted agent resumes the MV by itself
/// (S4), and the copy is never labelled from the lost quiesce: either the release reports the
/// quiesce did not hold and the static point is re-run as a new round, or the interrupted
/// quiesce is found not holding and is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_while_its_mv_is_quiesced_never_yields_a_copy_labelled_from_that_round() {
    let mut site = JobSite::start(SiteLayout::spread(3)).await;
    let db1 = site.site.host(DB1).unwrap();
    let mut caught = None;
    for _attempt in 0..10 {
        let id = site.submit_backup().await;
        let deadline = tokio::time::Instant::now() + JOB_WITHIN;
        loop {
            if let Ok(held) = db1.quiesces().await
                && !held.is_empty()
            {
                site.site.kill(DB1).await;
                caught = Some((id, held));
                break;
            }
            if site.job(id).await.is_some_and(|j| j.is_ended()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if caught.is_some() {
            break;
        }
    }
    let (id, held) = caught.expect("never saw db1 holding a quiesce in 10 backups");
    tokio::time::sleep(Duration::from_millis(500)).await;
    site.site.restart(DB1).await.expect("restart db1");
    let end = site.wait_ended(id, JOB_WITHIN).await;
    let job = site.job(id).await.expect("job");
    let lost_at_release = releases(&job).contains(&false);
    let quiesced_again = job.steps.iter().any(|s| {
        matches!(&s.call, StepCall::Quiesce { volume, .. } if volume.node == "db1")
            && s.attempts >= 2
    });
    assert!(
        (lost_at_release && job.round >= 2) || quiesced_again,
        "killed while holding {held:?}: neither a new round nor a new quiesce (round {}, releases {:?})\n{}",
        job.round,
        releases(&job),
        site.logs()
    );
    assert!(is_consistent(&end), "ended {end:?}");
    assert_rvs_intact(&site, "after db1 died while quiesced").await;
    let db1 = site.site.host(DB1).unwrap();
    let resumed = wait_async("db1 to answer", || async { db1.resumes().await.ok() }).await;
    assert!(
        resumed
            .iter()
            .any(|r| held.iter().any(|h| h.volume == r.volume)),
        "db1 did not record resuming {held:?}: {resumed:?}"
    );
    assert!(
        site.quiesced_mvs().await.is_empty(),
        "an MV is still quiesced"
    );
}

/// Every agent is SIGKILLed in the middle of a job and all are started again: the job is in the
/// log, the new leader takes it over, and it ends done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_a_full_cluster_restart() {
    let mut site = JobSite::start(SiteLayout::spread(3)).await;
    let id = site.submit_backup().await;
    let deadline = tokio::time::Instant::now() + JOB_WITHIN;
    while site.job(id).await.map(|j| done_steps(&j)).unwrap_or(0) < 6 {
        assert!(tokio::time::Instant::now() < deadline, "the job stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for slot in 0..site.site.agents.len() {
        site.site.kill(slot).await;
    }
    for slot in 0..site.site.agents.len() {
        site.site.restart(slot).await.expect("restart");
    }
    let end = site.wait_ended(id, JOB_WITHIN).await;
    assert!(matches!(end, JobEnd::Done { .. }), "ended {end:?}");
    assert!(is_consistent(&end), "ended {end:?}");
    assert_rvs_intact(&site, "after a full restart").await;
}

/// The leader is paused (SIGSTOP) while quiesces it sent are out: their replies reach nobody.
/// A new leader asks the executors, records what they did without doing it again (one
/// quiesce per MV per round), and finishes the job; the old leader, resumed, changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_resolved_by_asking_not_by_doing_it_again() {
    // The applications take 1 s to stop: each quiesce stays sent (and its reply unsent) long
    // enough for the test to see it and stop the leader before the reply comes back.
    let mut layout = SiteLayout::spread(3);
    layout.workload_stop_ms = 1_000;
    let site = JobSite::start(layout).await;
    let id = site.submit_backup().await;
    let deadline = tokio::time::Instant::now() + JOB_WITHIN;
    loop {
        let job = site.job(id).await.expect("job");
        if job.steps.iter().any(|s| {
            matches!(s.call, StepCall::Quiesce { .. })
                && matches!(s.state, StepState::Dispatched { .. })
        }) {
            break;
        }
        assert!(!job.is_ended() && tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let old = site.site.leader().await.expect("leader");
    site.site.signal(old, "STOP").unwrap();
    // A new leader among the others.
    let others: Vec<usize> = (0..site.site.agents.len()).filter(|s| *s != old).collect();
    let new = loop {
        let client = stillpoint_node::Client::new(site.site.endpoints[others[0]].clone());
        if let Ok(s) = client
            .on_endpoint("status", |mut c| async move {
                c.status(stillpoint_proto::cluster::StatusRequest { consistent: false })
                    .await
            })
            .await
            && let Some(l) = s.leader_id.map(|l| l as usize - 1)
            && l != old
        {
            break l;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The new leader takes the job over while the old one sleeps.
    while !std::fs::read_to_string(site.site.log_path(new))
        .unwrap_or_default()
        .contains("took over unfinished jobs")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new leader did not take the job over\n{}",
            site.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    site.site.signal(old, "CONT").unwrap();
    let end = site.wait_ended(id, JOB_WITHIN).await;
    let job = site.job(id).await.expect("job");
    assert!(matches!(end, JobEnd::Done { .. }), "ended {end:?}");
    // No quiesce executed twice: per quiesce step, the ids recorded done are distinct rounds.
    for s in job
        .steps
        .iter()
        .filter(|s| matches!(s.call, StepCall::Quiesce { .. }))
    {
        let done: Vec<u64> = s
            .history
            .iter()
            .filter_map(|e| match &e.state {
                StepState::Done {
                    result: StepResult::Quiesced { quiesce_id },
                    ..
                } => Some(*quiesce_id),
                _ => None,
            })
            .collect();
        assert!(
            done.len() as u32 <= job.round,
            "step {} quiesced {done:?}",
            s.id
        );
    }
    assert_rvs_intact(&site, "after a lost reply").await;
}

/// After a leader change, a step sent under the old leader's term is refused by its executor
/// (S6), even for a step the old leader never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_late_step_is_refused() {
    let mut site = JobSite::start(SiteLayout::spread(1)).await;
    let id = site.submit_backup().await;
    site.wait_ended(id, JOB_WITHIN).await;
    let job = site.job(id).await.expect("job");
    let quiesce = job
        .steps
        .iter()
        .find(|s| matches!(s.call, StepCall::Quiesce { .. }))
        .expect("a quiesce step");
    let old_term = quiesce.token().expect("token").term;
    // Depose that leader.
    // Depose it for good: another agent must lead (a leader restarted at once may lead again
    // in its own term, openraft keeping its committed vote).
    let leader = site.site.leader().await.expect("leader");
    site.site.kill(leader).await;
    let new = site.site.leader().await.expect("a new leader");
    assert_ne!(new, leader);
    site.site.restart(leader).await.expect("restart");
    // A new job, taken by the new leader (a newer term), so the executor has seen that term.
    let id2 = site.submit_backup().await;
    site.wait_ended(id2, JOB_WITHIN).await;
    let job2 = site.job(id2).await.expect("job");
    let q2 = &job2.steps[quiesce.id as usize];
    let new_term = q2.token().expect("token").term;
    assert!(new_term > old_term, "no leader change: term {new_term}");
    // What the deposed leader would send late: the quiesce of job 2, under its old term.
    let order = StepOrder {
        dispatch: Dispatch {
            step: q2.id,
            token: FencingToken {
                term: old_term,
                job_id: id2,
                step_index: q2.id,
                attempt: q2.attempts + 1,
            },
            round: 1,
            target: q2.target.clone(),
            call: q2.call.clone(),
            quiesce_id: None,
            check_first: false,
            postgres_copy: None,
        },
        pair: None,
        reply_within_ms: 5_000,
    };
    let StepCall::Quiesce { volume, .. } = &q2.call else {
        unreachable!()
    };
    let slot = (0..site.site.agents.len())
        .find(|s| site.site.name(*s) == volume.node)
        .unwrap();
    let refused = stillpoint_node::driver::execute_once(&site.site.endpoints[slot], &order).await;
    let why = refused.expect_err("a step under a deposed leader's term was executed");
    assert!(
        why.why.contains("term"),
        "refused without naming the term: {why}"
    );
    assert!(
        site.quiesced_mvs().await.is_empty(),
        "the late quiesce took effect"
    );
}

/// The array has two control nodes, db2 (first by name, so it runs the array steps) and
/// mgmt1. db2's agent is SIGKILLed once the job has a step done and stays down: the leader
/// passes over it, the array steps run through mgmt1, and this job and the next end
/// consistent. (Before, array steps went to the first control node only and the job waited
/// for db2 to come back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_steps_move_to_another_control_node_when_the_first_dies() {
    let mut layout = SiteLayout::spread(1);
    layout.control_nodes = vec!["db2".into(), "mgmt1".into()];
    let mut site = JobSite::start(layout).await;
    let id = site.submit_backup().await;
    let deadline = tokio::time::Instant::now() + JOB_WITHIN;
    while site.job(id).await.map(|j| done_steps(&j)).unwrap_or(0) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "job {id} stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    site.site.kill(DB2).await;
    for id in [id, site.submit_backup().await] {
        let end = site.wait_ended(id, JOB_WITHIN).await;
        assert!(
            is_consistent(&end),
            "job {id} with db2 down: {end:?}\n{}",
            site.logs()
        );
    }
    assert_rvs_intact(&site, "array steps through mgmt1").await;
}

/// How many times the agents' logs say a control node was passed over.
fn passed_over(site: &JobSite) -> usize {
    (0..site.site.agents.len())
        .map(|s| {
            std::fs::read_to_string(site.site.log_path(s))
                .unwrap_or_default()
                .matches("array steps go to the next one")
                .count()
        })
        .sum()
}

/// The move of an array's steps to another control node is in the log, so a new leader
/// sends there first: five voters, the array's control nodes db2 (first by name) and mgmt1.
/// db2 is killed and stays down; a job moves A1's steps to mgmt1, and the state records it.
/// Then the leader is killed (and restarted once another leads): the new leader sends the
/// next job's array steps to mgmt1 straight away, never to the dead db2 (before, every new
/// leader started from the first control node and passed over it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_sends_array_steps_where_the_last_leader_moved_them() {
    let mut layout = SiteLayout::spread_over(1, 3);
    layout.control_nodes = vec!["db2".into(), "mgmt1".into()];
    let mut site = JobSite::start(layout).await;
    site.site.kill(DB2).await;
    let id = site.submit_backup().await;
    let end = site.wait_ended(id, JOB_WITHIN).await;
    assert!(is_consistent(&end), "{end:?}\n{}", site.logs());
    wait_async(
        "the log to record that A1's steps went to mgmt1",
        || async {
            site.state()
                .await
                .filter(|s| s.array_routes.get("A1").map(String::as_str) == Some("mgmt1"))
                .map(|_| ())
        },
    )
    .await;
    let before = passed_over(&site);
    assert!(before >= 1, "db2 was never passed over:\n{}", site.logs());

    let old = site.site.leader().await.expect("leader");
    site.site.kill(old).await;
    let new = site.site.leader().await.expect("a new leader");
    assert_ne!(new, old);
    site.site.restart(old).await.expect("restart");
    let endpoint = site.site.endpoints[old].clone();
    wait_async("the restarted agent to answer", || {
        let client = stillpoint_node::Client::new(endpoint.clone());
        async move {
            client
                .on_endpoint("status", |mut c| async move {
                    c.status(stillpoint_proto::cluster::StatusRequest { consistent: false })
                        .await
                })
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    let id = site.submit_backup().await;
    let end = site.wait_ended(id, JOB_WITHIN).await;
    assert!(is_consistent(&end), "{end:?}\n{}", site.logs());
    assert_eq!(
        passed_over(&site),
        before,
        "the new leader sent array steps to db2 again:\n{}",
        site.logs()
    );
}

/// A group whose MVs are quiesced by their applications' hooks only (the volumes stay
/// mounted): the job runs each MV's stop hook and a flush inside the window and the start hook
/// at the release, and the copies are consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_quiesced_by_its_applications_hooks_only_is_backed_up_consistently() {
    let mut layout = SiteLayout::spread(2);
    layout.quiesce = "hooks_only".into();
    let site = JobSite::start(layout).await;
    let id = site.submit_backup().await;
    let end = site.wait_ended(id, JOB_WITHIN).await;
    assert!(is_consistent(&end), "{end:?}\n{}", site.logs());
    assert_rvs_intact(&site, "hooks-only quiesce").await;
    assert!(site.quiesced_mvs().await.is_empty());
}

/// The RV's users (here a stand-in for a tape backup agent, as the RV volume's hooks on the
/// backup node) are started once the copy is mounted, and stopped before the next backup
/// unmounts it: each job's log shows stop → free → ... → mount → start, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rv_users_are_stopped_before_the_rv_is_freed_and_started_after_it_is_mounted() {
    let marks = tempfile::tempdir().unwrap();
    let log = marks.path().join("rv-users.log");
    let mut layout = SiteLayout::spread(1);
    layout.rv_volume_toml = format!(
        "start = {{ command = [\"sh\", \"-c\", \"echo start >> {0}\"] }}\n\
         stop = {{ command = [\"sh\", \"-c\", \"echo stop >> {0}\"] }}\n",
        log.display()
    );
    let site = JobSite::start(layout).await;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    // group prepare freed an unmounted RV: there were no users to stop.
    assert_eq!(read(), "", "hooks ran while the RV was never mounted");
    let first = site.submit_backup().await;
    let end = site.wait_ended(first, JOB_WITHIN).await;
    assert!(is_consistent(&end), "{end:?}\n{}", site.logs());
    assert_eq!(read(), "start\n", "after the first backup");
    let second = site.submit_backup().await;
    let end = site.wait_ended(second, JOB_WITHIN).await;
    assert!(is_consistent(&end), "{end:?}\n{}", site.logs());
    assert_eq!(read(), "start\nstop\nstart\n", "after the second backup");
    assert_rvs_intact(&site, "with RV users").await;
}
