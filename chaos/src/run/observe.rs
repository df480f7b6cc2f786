//! The harness's eyes and hands besides faults, each a task that runs until told to stop:
//! the client submitting backups, the look at the backup node's mounts, and the watcher of
//! job ends that runs the workload's verifier on every RV of a copy labelled consistent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stillpoint_coordinator::job::{CopyLabel, JobEnd, JobKind, JobState};
use stillpoint_coordinator::{ClusterState, Command, Response};
use stillpoint_host::{Host, HostClient};
use stillpoint_node::{Client, NodeError};
use stillpoint_proto::cluster::{Empty, QueryRequest};
use tokio::sync::watch;

use super::records::{JobSeen, MountPoll, Records, Verification, VerifyOutcome, now_ms};
use super::schedule::Submission;

/// Bound on one look (status, volume list, state query) at a process that may be stopped.
const LOOK_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Bound on one submission, leader changes included.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on reading one RV with the verifier.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
const MOUNT_POLL_EVERY: Duration = Duration::from_millis(150);
const JOB_POLL_EVERY: Duration = Duration::from_millis(400);

pub type Shared = Arc<Mutex<Records>>;

pub fn with<T>(records: &Shared, f: impl FnOnce(&mut Records) -> T) -> T {
    f(&mut records.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The agent's own view of (leader slot, term), or `None` if it does not answer within
/// [`LOOK_TIMEOUT`]: `status` would ask every member too, and wait on those a partition cuts
/// it off from.
async fn own_view(endpoint: &str) -> Option<(Option<usize>, u64)> {
    let client = Client::new(endpoint.to_string());
    let status = tokio::time::timeout(
        LOOK_TIMEOUT,
        client.on_endpoint("local status", |mut c| async move {
            c.local_status(Empty {}).await
        }),
    )
    .await;
    match status {
        Ok(Ok(s)) => Some((s.leader_id.map(|id| id as usize - 1), s.current_term)),
        _ => None,
    }
}

/// The leader's slot as the first agent that answers in time sees it.
pub async fn leader(endpoints: &[String], alive: &[bool]) -> Option<usize> {
    for (slot, endpoint) in endpoints.iter().enumerate() {
        if !alive.get(slot).copied().unwrap_or(false) {
            continue;
        }
        if let Some((Some(leader), _)) = own_view(endpoint).await {
            return Some(leader);
        }
    }
    None
}

/// Each agent's own (leader slot, term), `None` for one stopped, dead or not answering in
/// time (each look bounded).
pub async fn views(endpoints: &[String], alive: &[bool]) -> Vec<Option<(Option<usize>, u64)>> {
    let mut out = Vec::new();
    for (slot, endpoint) in endpoints.iter().enumerate() {
        if !alive.get(slot).copied().unwrap_or(false) {
            out.push(None);
            continue;
        }
        out.push(own_view(endpoint).await);
    }
    out
}

/// The replicated state, read through the leader (confirmed by a quorum) from the first agent
/// that gets an answer in time; otherwise what each agent said.
pub async fn cluster_state(endpoints: &[String]) -> Result<ClusterState, String> {
    let mut why = Vec::new();
    for endpoint in endpoints {
        let client = Client::new(endpoint.clone());
        let reply = tokio::time::timeout(
            LOOK_TIMEOUT * 2,
            client.on_leader("query", |mut c| async move {
                c.query(QueryRequest {
                    what: "state".into(),
                    consistent: true,
                })
                .await
            }),
        )
        .await;
        match reply {
            Ok(Ok(reply)) => {
                return serde_json::from_slice(&reply.json)
                    .map_err(|e| format!("{endpoint}: undecodable state: {e}"));
            }
            Ok(Err(e)) => why.push(format!("{endpoint}: {e}")),
            Err(_) => why.push(format!(
                "{endpoint}: no answer in {} ms",
                (LOOK_TIMEOUT * 2).as_millis()
            )),
        }
    }
    Err(why.join("; "))
}

/// Submits the schedule's backups at their times (from `start_ms`), through the agents in
/// turn; a job counts as accepted only when the client was told so.
pub async fn submitter(
    endpoints: Vec<String>,
    submissions: Vec<Submission>,
    start_ms: u64,
    records: Shared,
    mut stop: watch::Receiver<bool>,
) {
    for (i, s) in submissions.into_iter().enumerate() {
        let wait = (start_ms + s.at_ms).saturating_sub(now_ms());
        if tokio::time::timeout(Duration::from_millis(wait), stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
        let command = Command::SubmitJob {
            kind: JobKind::Backup {
                group: "payroll".into(),
            },
            submitted_by: "chaos".into(),
            at_ms: now_ms(),
            no_queue: s.no_queue,
        };
        let mut outcome = None;
        for k in 0..endpoints.len() {
            let endpoint = &endpoints[(i + k) % endpoints.len()];
            let client = Client::new(endpoint.clone());
            match tokio::time::timeout(SUBMIT_TIMEOUT, client.propose(&command)).await {
                // Nothing was sent: try the next agent.
                Ok(Err(NodeError::Unreachable { .. })) => continue,
                Ok(r) => {
                    outcome = Some(r);
                    break;
                }
                Err(_) => {
                    outcome = Some(Err(NodeError::OutcomeUnknown(format!(
                        "no answer from {endpoint} within {} ms",
                        SUBMIT_TIMEOUT.as_millis()
                    ))));
                    break;
                }
            }
        }
        with(&records, |r| match outcome {
            Some(Ok((Response::JobAccepted { job_id, .. }, _))) => {
                r.note(format!(
                    "client: backup job {job_id} accepted{}",
                    if s.no_queue { " (no_queue)" } else { "" }
                ));
                r.jobs.insert(
                    job_id,
                    JobSeen {
                        accepted_ms: now_ms(),
                        end: None,
                    },
                );
            }
            Some(Ok((Response::Refused { rule }, _))) => {
                r.submissions_refused += 1;
                r.note(format!("client: backup refused: {rule}"));
            }
            Some(Ok((other, _))) => {
                r.submissions_unknown += 1;
                r.note(format!("client: unexpected answer {other:?}"));
            }
            Some(Err(e)) => {
                r.submissions_unknown += 1;
                r.note(format!("client: submission outcome unknown: {e}"));
            }
            None => {
                r.submissions_unknown += 1;
                r.note("client: no agent reachable");
            }
        });
    }
}

/// Looks at the backup node's volumes every [`MOUNT_POLL_EVERY`] and records which RVs it
/// says are mounted (a look that gets no answer records nothing).
pub async fn mount_poller(
    backup_endpoint: String,
    rv_lds: BTreeMap<String, u32>,
    records: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let host = match stillpoint_node::peer::channel_to(&backup_endpoint) {
        Ok(c) => HostClient::new(c),
        Err(e) => {
            with(&records, |r| {
                r.note(format!("mount poller cannot reach backup1: {e}"))
            });
            return;
        }
    };
    loop {
        let sent_ms = now_ms();
        if let Ok(Ok(volumes)) = tokio::time::timeout(LOOK_TIMEOUT, host.list_volumes()).await {
            let recv_ms = now_ms();
            let mounted_rv_lds = volumes
                .iter()
                .filter(|v| v.mounted_at.is_some())
                .filter_map(|v| rv_lds.get(&v.name).copied())
                .collect();
            with(&records, |r| {
                r.polls.push(MountPoll {
                    sent_ms,
                    recv_ms,
                    mounted_rv_lds,
                })
            });
        }
        if tokio::time::timeout(MOUNT_POLL_EVERY, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// When a job ended, as the checkers use it: the leader's stamp `stamped_ms`, kept within what
/// the harness saw itself — after `not_ended_at_ms` (a read that did not show it ended was sent
/// then) and no later than `seen_ended_ms` (a read showed it). The leader stamps with its own
/// wall clock, which a `clock-step` fault moves; on one machine with no step the stamp is
/// always inside and kept as is.
pub fn end_instant(stamped_ms: u64, not_ended_at_ms: u64, seen_ended_ms: u64) -> u64 {
    stamped_ms.clamp(not_ended_at_ms.min(seen_ended_ms), seen_ended_ms)
}

/// Watches the replicated state for the ends of accepted jobs; for every backup that ended
/// done and labelled consistent, reads each RV with the workload's verifier at once, from the
/// storage of the array that holds it (the LD's file in that array's data dir, A2's for an
/// RDR pair: no host, no array API in between). `rvs`: (pair, RV array's data dir, RV LD).
/// Keeps the last state it saw in `last`.
pub async fn job_watcher(
    endpoints: Vec<String>,
    rvs: Vec<(String, std::path::PathBuf, u32)>,
    check: RvCheck,
    records: Shared,
    last: Arc<Mutex<Option<ClusterState>>>,
    mut stop: watch::Receiver<bool>,
) {
    // Failed reads are noted (at most every 10 s): a job whose end the harness never sees
    // must say whether the cluster or the reading failed.
    let mut noted_ms = 0;
    // When the last read that answered was sent: a job first seen ended then ended after it.
    let mut answered_sent_ms = now_ms();
    loop {
        let sent_ms = now_ms();
        let read = cluster_state(&endpoints).await;
        if let Err(why) = &read
            && now_ms() >= noted_ms + 10_000
        {
            noted_ms = now_ms();
            with(&records, |r| {
                r.note(format!("cannot read the cluster's state: {why}"))
            });
        }
        if let Ok(state) = read {
            let mut ended = Vec::new();
            with(&records, |r| {
                for (id, seen) in r.jobs.iter_mut() {
                    if seen.end.is_some() {
                        continue;
                    }
                    if let Some(JobState::Ended { end, at_ms }) =
                        state.jobs.jobs.get(id).map(|j| &j.state)
                    {
                        let at_ms = end_instant(*at_ms, answered_sent_ms, now_ms());
                        seen.end = Some((end.clone(), at_ms));
                        ended.push((*id, end.clone(), at_ms));
                    }
                }
                for (id, end, _) in &ended {
                    r.note(format!("job {id} ended: {end:?}"));
                }
            });
            answered_sent_ms = sent_ms;
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
            // Of several consistent copies seen ended at once, only the last can still be on
            // the RVs (a group's backups run one after another): the others are not read.
            let consistent = JobEnd::Done {
                label: CopyLabel::Consistent,
            };
            let newest = ended
                .iter()
                .filter(|(_, end, _)| *end == consistent)
                .map(|(id, _, at_ms)| (*id, *at_ms))
                .next_back();
            if let Some((id, at_ms)) = newest {
                verify_copy(&rvs, &check, id, at_ms, &records).await;
            }
        }
        if tokio::time::timeout(JOB_POLL_EVERY, stop.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// How the RVs of a copy labelled consistent are judged.
#[derive(Clone, Debug)]
pub enum RvCheck {
    /// The sim workload's records, read with its verifier from the RV's LD file.
    SimRecords,
    /// An ext4 file system holding the file application's records ([`super::fs_copy`]);
    /// images are taken in `scratch_dir`.
    Ext4 { scratch_dir: std::path::PathBuf },
}

/// Runs the verifier on every RV of job `id`'s copy. Once its pair is separated an RV's file
/// holds the whole copy (the array writes it only while copying, which the checker rules out
/// from the audit log).
async fn verify_copy(
    rvs: &[(String, std::path::PathBuf, u32)],
    check: &RvCheck,
    job_id: u64,
    job_ended_ms: u64,
    records: &Shared,
) {
    for (pair, array_dir, rv_ld) in rvs {
        let started_ms = now_ms();
        let path = array_dir.join(format!("ld-{rv_ld}.img"));
        let outcome = match check {
            RvCheck::SimRecords => verify_sim_records(&path).await,
            RvCheck::Ext4 { scratch_dir } => {
                let scratch = super::fs_copy::scratch_for(scratch_dir, *rv_ld);
                super::fs_copy::verify_ext4(&path, &scratch).await
            }
        };
        with(records, |r| {
            r.note(format!(
                "verifier on {pair} after job {job_id}: {outcome:?}"
            ));
            r.verifications.push(Verification {
                job_id,
                rv_ld: *rv_ld,
                pair: pair.clone(),
                job_ended_ms,
                started_ms,
                finished_ms: now_ms(),
                outcome,
            })
        });
    }
}

/// The sim workload's verifier on the RV's LD file.
async fn verify_sim_records(path: &std::path::Path) -> VerifyOutcome {
    let verified = async {
        let device = stillpoint_host::FileDevice::open(path)?;
        stillpoint_host::verify(&device).await
    };
    match tokio::time::timeout(VERIFY_TIMEOUT, verified).await {
        Ok(Ok(report)) if report.torn.is_empty() && report.gaps.is_empty() => {
            VerifyOutcome::Intact {
                records: report.intact_count,
            }
        }
        Ok(Ok(report)) => VerifyOutcome::Damaged {
            what: format!(
                "{} intact, torn {:?}, missing {:?}",
                report.intact_count, report.torn, report.gaps
            ),
        },
        Ok(Err(e)) => VerifyOutcome::Unreadable { why: e.to_string() },
        Err(_) => VerifyOutcome::Unreadable {
            why: format!("no answer within {} ms", VERIFY_TIMEOUT.as_millis()),
        },
    }
}

/// MVs the running business nodes say are quiesced (`None` when one did not answer).
pub async fn quiesced_mvs(endpoints: &[(String, String)]) -> Option<Vec<String>> {
    let mut held = Vec::new();
    for (name, endpoint) in endpoints {
        let host = HostClient::new(stillpoint_node::peer::channel_to(endpoint).ok()?);
        let q = tokio::time::timeout(LOOK_TIMEOUT, host.quiesces())
            .await
            .ok()?
            .ok()?;
        held.extend(q.into_iter().map(|q| format!("{name}:{}", q.volume)));
    }
    Some(held)
}
