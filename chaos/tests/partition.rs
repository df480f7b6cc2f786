//! A partitioned old leader cannot act: real processes of the `stillpoint` binary, each in its
//! own network namespace ([`stillpoint_chaos::net`]), three voters (mgmt1, db1, backup1), every
//! agent a control node of the array. A backup runs; when its replicate (an array step) is
//! dispatched, the leader is cut off from the other two agents — alive, and still reaching the
//! array, so its driver keeps trying to drive the step, through itself once the other control
//! nodes stop answering. The majority elects a new leader that takes the job over.
//!
//! Judged from the array's audit log, not from what stillpoint says: no pair operation was
//! accepted under a token lower than one already accepted (S6), no job acted on the pair after
//! another had (S5), no RV I/O accepted while the RV's access forbade it (S1); and the job ends
//! done. Skips (saying why) where network namespaces cannot be made (not root, no `ip netns`).

mod common;

use std::path::Path;
use std::time::Duration;

use stillpoint_array::{Array, AuditEvent, AuditLine, Fault};
use stillpoint_chaos::net;
use stillpoint_chaos::run::records::{Records, read_audit};
use stillpoint_chaos::run::{check, fencing};
use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::job::{Job, JobEnd, JobKind, JobState, StepCall, StepState};
use stillpoint_coordinator::{Command, Response};
use stillpoint_node::Client;
use stillpoint_node::demo::site::{LocalSite, SiteLayout};
use stillpoint_proto::cluster::{Empty, QueryRequest};

/// The array's copy pace while the partitioned job runs: the MVs' writes since the last
/// separate take seconds to copy. Above what the applications write (two MVs, a 1,536-byte
/// record every 50 ms each), or the replicate would never reach sync.
const COPY_PACE_BYTES_PER_S: u64 = 128 * 1024;

/// Bound on one look at one agent (it may be cut off).
const LOOK: Duration = Duration::from_millis(1_500);

/// (leader slot, term) as agent `endpoint` sees it (its own view: `status` would ask every
/// member too, and wait on those it is cut off from).
async fn status(endpoint: &str) -> Option<(Option<usize>, u64)> {
    let client = Client::new(endpoint.to_string());
    let reply = tokio::time::timeout(
        LOOK,
        client.on_endpoint("local status", |mut c| async move {
            c.local_status(Empty {}).await
        }),
    )
    .await
    .ok()?
    .ok()?;
    Some((
        reply.leader_id.map(|id| id as usize - 1),
        reply.current_term,
    ))
}

/// The replicated state read through the leader the agents at `endpoints` follow (confirmed by
/// a quorum), from the first that answers in time.
async fn state(endpoints: &[String]) -> Option<ClusterState> {
    for endpoint in endpoints {
        let reply = tokio::time::timeout(
            LOOK * 2,
            Client::new(endpoint.clone()).on_leader("query", |mut c| async move {
                c.query(QueryRequest {
                    what: "state".into(),
                    consistent: true,
                })
                .await
            }),
        )
        .await;
        if let Ok(Ok(reply)) = reply {
            return serde_json::from_slice(&reply.json).ok();
        }
    }
    None
}

/// Polls `f` every 50 ms until it gives a value, at most `within`.
async fn until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{what}: not within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes `want` the leader, if a few leader changes do it: while another agent leads, it is
/// stopped (SIGSTOP) until someone else leads, then continued. Returns the leader at the end
/// (the test holds whoever leads; `want` only makes the job finishable inside the partition).
async fn prefer_leader(site: &LocalSite, want: usize) -> usize {
    let mut leader = 0;
    for _ in 0..6 {
        leader = until("a leader", Duration::from_secs(30), || async {
            status(&site.endpoints[want]).await.and_then(|(l, _)| l)
        })
        .await
        .expect("a leader");
        if leader == want {
            return leader;
        }
        site.signal(leader, "STOP").expect("SIGSTOP the leader");
        let others: Vec<String> = (0..site.agents.len())
            .filter(|s| *s != leader)
            .map(|s| site.endpoints[s].clone())
            .collect();
        let changed = until("another leader", Duration::from_secs(30), || {
            let others = others.clone();
            async move {
                for e in &others {
                    if let Some((Some(l), _)) = status(e).await
                        && l != leader
                    {
                        return Some(l);
                    }
                }
                None
            }
        })
        .await;
        site.signal(leader, "CONT").expect("SIGCONT the leader");
        changed.expect("a new leader while the old one is stopped");
    }
    leader
}

/// Every RV of `job` is free: the leader's next step is a replicate, an array step.
fn rvs_freed(job: &Job) -> bool {
    job.steps
        .iter()
        .filter(|s| matches!(s.call, StepCall::FreeRv { .. }))
        .all(|s| matches!(s.state, StepState::Done { .. }))
}

#[test]
fn a_partitioned_old_leader_cannot_act_on_the_pairs() {
    if let Some(why) = net::unavailable() {
        eprintln!("SKIPPED: network partitions cannot be made here: {why}");
        return;
    }
    let bin = common::stillpoint();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(scenario(&bin));
}

async fn scenario(bin: &Path) {
    // Kept when the test fails (every process's log, the audit log); removed when it passes.
    let dir = tempfile::Builder::new()
        .prefix("stillpoint-partition-")
        .tempdir()
        .expect("temporary dir")
        .keep();
    eprintln!("site dir {}", dir.display());
    // mgmt1, db1, backup1: three voters; two pairs on db1.
    let mut layout = SiteLayout::spread_over(2, 1);
    layout.audit_log = true;
    layout.quiesce_ms_max = 10_000;
    layout.workload_pace_ms = 50;
    layout.control_nodes = vec!["mgmt1".into(), "db1".into(), "backup1".into()];
    let mut net = stillpoint_chaos::run::place(&mut layout)
        .await
        .expect("the site's network");
    let mut site = stillpoint_chaos::run::setup(bin, dir.as_path(), layout)
        .await
        .expect("set up the site");

    let endpoints = site.endpoints.clone();
    let submit = |via: String| async move {
        let command = Command::SubmitJob {
            kind: JobKind::Backup {
                group: "payroll".into(),
            },
            submitted_by: "test".into(),
            at_ms: stillpoint_node::agent::now_ms(),
            no_queue: false,
        };
        match tokio::time::timeout(Duration::from_secs(30), Client::new(via).propose(&command))
            .await
        {
            Ok(Ok((Response::JobAccepted { job_id, .. }, _))) => job_id,
            other => panic!("the backup was not accepted: {other:?}"),
        }
    };
    let ended = |eps: Vec<String>, job_id: u64| async move {
        let s = state(&eps).await?;
        match s.jobs.jobs.get(&job_id).map(|j| &**j) {
            Some(Job {
                state: JobState::Ended { end, .. },
                ..
            }) => Some(end.clone()),
            _ => None,
        }
    };
    // A first backup leaves every pair separated under a mounted RV, so the next one's
    // replicate is a real pair operation (after `group prepare` the pairs are in sync and a
    // replicate finds nothing to do).
    let first = submit(site.endpoints[0].clone()).await;
    let first_end = until("the first backup to end", Duration::from_secs(120), || {
        ended(endpoints.clone(), first)
    })
    .await
    .expect("the first backup ends");
    assert!(
        matches!(first_end, JobEnd::Done { .. }),
        "first backup: {first_end:?}"
    );
    // Copies slow from now on, so the next replicate (the MVs' writes since the separate)
    // runs for seconds: the cut lands while the leader drives it.
    let array = site.connect_array().await.expect("the array answers");
    array
        .inject_fault(&Fault::CopyPace {
            bytes_per_s: COPY_PACE_BYTES_PER_S,
        })
        .await
        .expect("slow the array's copies");
    drop(array);
    let paced_at = stillpoint_node::agent::now_ms();
    until(
        "the applications to write a while",
        Duration::from_secs(60),
        || {
            let path = site.audit_path();
            async move {
                let audit = read_audit(&path).ok()?;
                let writes = audit
                    .iter()
                    .filter(|l| {
                        l.at_unix_ms > paced_at && matches!(l.event, AuditEvent::MvWrite { .. })
                    })
                    .count();
                (writes >= 100).then_some(())
            }
        },
    )
    .await
    .expect("the applications write");

    // mgmt1 leads if we can make it: then the majority (db1, backup1) holds every node the
    // job needs and finishes it inside the partition.
    let old = prefer_leader(&site, 0).await;
    let old_name = site.name(old);
    let (_, old_term) = status(&site.endpoints[old])
        .await
        .expect("the leader's term");
    let job_id = submit(site.endpoints[old].clone()).await;
    let everyone = site.endpoints.clone();
    // Cut when every RV is free: the leader's next move is the replicate, an array step.
    until("the job's RVs to be freed", Duration::from_secs(60), || {
        let everyone = everyone.clone();
        async move {
            let s = state(&everyone).await?;
            s.jobs.jobs.get(&job_id).filter(|j| rvs_freed(j)).map(drop)
        }
    })
    .await
    .expect("the RVs freed");

    // Cut the leader off from every other agent; it still reaches the array.
    let others: Vec<usize> = (0..site.agents.len()).filter(|s| *s != old).collect();
    let other_names: Vec<String> = others.iter().map(|s| site.name(*s)).collect();
    tokio::task::block_in_place(|| net.split(std::slice::from_ref(&old_name), &other_names))
        .expect("cut the leader off");
    let cut_at = stillpoint_node::agent::now_ms();
    let pairs_at_cut = pairs(&site).await;
    // The cut landed inside the replicate; copies go at full speed again so the majority's
    // leader can finish the job well before the old leader's step times out (15 s) and it
    // drives the step again, through itself.
    let array = site.connect_array().await.expect("the array answers");
    array
        .inject_fault(&Fault::CopyPace { bytes_per_s: 0 })
        .await
        .expect("copies at full speed again");
    drop(array);
    eprintln!(
        "{old_name} (leader in term {old_term}) cut off from {other_names:?} at {cut_at}, job {job_id}"
    );
    let majority: Vec<String> = others.iter().map(|s| site.endpoints[*s].clone()).collect();
    let (new, new_term) = until(
        "a new leader on the majority side",
        Duration::from_secs(60),
        || {
            let majority = majority.clone();
            async move {
                for e in &majority {
                    if let Some((Some(l), term)) = status(e).await
                        && l != old
                        && term > old_term
                    {
                        return Some((l, term));
                    }
                }
                None
            }
        },
    )
    .await
    .expect("the majority elects a leader");
    eprintln!(
        "{} leads in term {new_term}; pairs at the cut: {pairs_at_cut:?}",
        site.name(new)
    );

    // Hold the cut until the job ends (mgmt1 cut off: the majority can finish it) or 40 s
    // (the old leader holds a node the job needs), then heal; the job must end either way.
    let inside = until(
        "the job to end inside the partition",
        Duration::from_secs(40),
        || ended(majority.clone(), job_id),
    )
    .await;
    let ended_inside_ms = stillpoint_node::agent::now_ms() - cut_at;
    // Keep the cut a while after the job ended: the old leader, still in its term and still
    // reaching the array, goes on driving the step it was on — through itself once the other
    // control nodes stop answering. Its token must be refused now that a newer one acted.
    let stale_refused = until(
        "a pair operation of the old term refused",
        Duration::from_secs(if inside.is_ok() { 30 } else { 0 }),
        || {
            let path = site.audit_path();
            async move {
                let audit = read_audit(&path).ok()?;
                audit
                    .iter()
                    .find(|l| {
                        matches!(&l.event, AuditEvent::PairRefused { fence: Some(t), .. } if t.term <= old_term)
                    })
                    .map(|l| l.at_unix_ms)
            }
        },
    )
    .await;
    let old_alive = site.agents[old]
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
    let old_status = status(&site.endpoints[old]).await;
    tokio::task::block_in_place(|| net.heal()).expect("heal the network");
    let healed_at = stillpoint_node::agent::now_ms();
    let inside_ok = inside.is_ok();
    let end: JobEnd = match inside {
        Ok(end) => end,
        Err(_) => until(
            "the job to end after the heal",
            Duration::from_secs(120),
            || ended(everyone.clone(), job_id),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}")),
    };
    let steps: Vec<String> = state(&everyone)
        .await
        .and_then(|s| s.jobs.jobs.get(&job_id).cloned())
        .map(|j| {
            j.steps
                .iter()
                .flat_map(|st| {
                    st.history.iter().map(move |e| {
                        (
                            e.at_ms,
                            format!(
                                "{:+.3} s step {} {} {:?}",
                                (e.at_ms as f64 - cut_at as f64) / 1000.0,
                                st.id,
                                e.state.name(),
                                st.call
                            ),
                        )
                    })
                })
                .collect::<std::collections::BTreeSet<(u64, String)>>()
                .into_iter()
                .map(|(_, line)| line)
                .collect()
        })
        .unwrap_or_default();
    eprintln!("job {job_id}'s steps, from the cut:\n{}", steps.join("\n"));
    let audit: Vec<AuditLine> = read_audit(&site.audit_path()).expect("the audit log");
    eprintln!("a stale operation refused by the array: {stale_refused:?}");
    site.stop().await;
    drop(net);

    assert!(
        old_alive,
        "{old_name} must have stayed alive through the cut"
    );
    let (v, counts) = fencing::s5_s6(&audit);
    assert!(v.is_empty(), "S5/S6 violated: {v:#?}");
    let facts = check::SiteFacts {
        backup_host: "backup1".into(),
        rv_pairs: Default::default(),
        rv_arrays: Default::default(),
        rv_mv_hosts: Default::default(),
        mvs: Default::default(),
        quiesce_ms_max: 10_000,
        stall_slack_ms: 3_000,
        real_fs: false,
    };
    let (v, _) = check::s1_s2(&audit, &Records::default(), &facts);
    assert!(v.is_empty(), "S1 violated: {v:#?}");
    assert!(
        matches!(end, JobEnd::Done { .. }),
        "job {job_id} ended {end:?}"
    );
    // What the old and new terms did on the pairs, as the array saw it.
    let fenced = |l: &AuditLine| match &l.event {
        AuditEvent::Pair {
            fence: Some(t),
            reason,
            ..
        } => Some((t.term, format!("accepted {reason}"))),
        AuditEvent::PairRefused {
            fence: Some(t),
            operation,
            ..
        } => Some((t.term, format!("refused {operation}"))),
        _ => None,
    };
    let during: Vec<String> = audit
        .iter()
        .filter(|l| l.at_unix_ms >= cut_at)
        .filter_map(|l| {
            fenced(l).map(|(term, what)| format!("term {term} {what} at {}", l.at_unix_ms))
        })
        .collect();
    eprintln!(
        "{old_name}'s (leader, term) at the end of the cut: {old_status:?}; job {job_id} ended {end:?} ({}inside the partition); heal at {healed_at}; fenced ops accepted {}, refused {}; since the cut: {during:#?}",
        if inside_ok { "" } else { "not " },
        counts.fenced_ops,
        counts.fenced_refused
    );
    // The old leader drives its step again only once its send to the first control node
    // times out (about 15 s): a job the majority finished well before that leaves the old
    // leader's next pair operation to the fence.
    if inside_ok && ended_inside_ms < 10_000 {
        assert!(
            stale_refused.is_ok(),
            "the majority finished the job {ended_inside_ms} ms after the cut, but no pair operation of the old leader's term {old_term} reached the array and was refused: {stale_refused:?}"
        );
    }
    assert!(
        audit
            .iter()
            .filter_map(fenced)
            .any(|(term, what)| term > old_term && what.starts_with("accepted")),
        "no pair operation of a term after {old_term} reached the array: the new leader never acted"
    );
    if std::env::var_os("STILLPOINT_KEEP_SITE").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Each pair's state and copy progress, for the test's output.
async fn pairs(site: &LocalSite) -> Vec<String> {
    let Ok(Ok(array)) = tokio::time::timeout(LOOK, site.connect_array()).await else {
        return vec!["the array did not answer".into()];
    };
    match array.pair_list().await {
        Ok(list) => list
            .iter()
            .map(|p| {
                format!(
                    "{}: {} ({} of {} blocks left)",
                    p.id, p.state, p.copy_diff_blocks, p.copy_total_blocks
                )
            })
            .collect(),
        Err(e) => vec![format!("pair list: {e}")],
    }
}
