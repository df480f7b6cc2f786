//! What the driver does next with a job, and how an unknown step is resolved: pure functions
//! of the job, the driver's term and the time it read (no I/O, no clock of their own).

use serde::{Deserialize, Serialize};

use super::step::{Phase, Step, StepCall, StepId, StepResult, StepState, StepTarget, TokenOrder};
use crate::inventory::QuiesceMethod;
use crate::postgres::PostgresCopy;

use super::{
    CopyLabel, FencingToken, Job, JobEnd, JobEvent, JobState, ROUNDS_MAX, STEP_ATTEMPTS_MAX,
};

/// A step to send, with everything its executor needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    pub step: StepId,
    pub token: FencingToken,
    /// The job's round when it was sent: steps of a pair are sent in (round, step) order
    /// within a term, which is what the array's fencing token orders them by.
    #[serde(default)]
    pub round: u32,
    pub target: StepTarget,
    pub call: StepCall,
    /// For a release: the id the host gave the quiesce it ends.
    pub quiesce_id: Option<u64>,
    /// For an RV mount: check and repair the file system first (the copy is crash-consistent).
    pub check_first: bool,
    /// For an RV mount of a copy made in PostgreSQL's online backup mode: the label and
    /// recovery settings to write into its data directory before anything starts on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_copy: Option<Box<PostgresCopy>>,
}

/// What the driver does next. It performs them in order; for a [`Action::Dispatch`] it records
/// [`JobEvent::Dispatched`] first (on its own copy at once, in the log behind it). It sends at
/// most one probe per step at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Record(JobEvent),
    Dispatch(Dispatch),
    /// Ask the step's executor what became of `token` (and fence it: after the question, the
    /// executor refuses that token).
    Probe {
        step: StepId,
        token: FencingToken,
        target: StepTarget,
    },
}

/// A pair's sync state as the array reports it, reduced to what resolving a step needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairSync {
    Replicating,
    InSync,
    Separating,
    Separated,
    /// Any other state (restore, fault, abnormal suspend, forced separate), as the array says it.
    Other(String),
}

/// What a step's target looks like now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "observed", rename_all = "snake_case")]
pub enum Observed {
    Pair {
        sync: PairSync,
    },
    Volume {
        /// The id of a quiesce the host holds on it under this step's job and step, if any.
        quiesce_id: Option<u64>,
    },
}

/// What asking a step's executor found about an attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// Nothing recorded for this attempt (nor a later one); the executor now refuses its token.
    NotRecorded,
    /// The executor recorded an outcome under `token`.
    Finished {
        token: FencingToken,
        outcome: Result<StepResult, String>,
    },
    /// The executor recorded the start under `token`, no outcome, and no longer runs it (it
    /// restarted); `observed` is what the target looks like now, if it could be read.
    Interrupted {
        token: FencingToken,
        observed: Option<Observed>,
    },
    /// The executor is still running it.
    Running { token: FencingToken },
}

impl Finding {
    /// What the executor said, as the end of "the executor answered ...".
    pub fn describe(&self) -> &'static str {
        match self {
            Finding::NotRecorded => "that it has no record of it",
            Finding::Finished { .. } => "with an outcome",
            Finding::Interrupted { .. } => "that it was interrupted (the agent restarted)",
            Finding::Running { .. } => "that it is still running past the step's deadline",
        }
    }
}

/// The event an executor's answer to the send of `sent` makes of `step`, if any: an outcome
/// while the step is still dispatched under that token; anything else (no answer, a refusal,
/// "running" past the deadline, "interrupted") makes it unknown, to be asked about. An answer
/// that arrives after the step became unknown under that token resolves it as a probe's
/// finding would ([`resolve`]); a late answer about any other attempt changes nothing.
pub fn answered(
    step: &Step,
    sent: &FencingToken,
    answer: Result<Finding, String>,
) -> Option<JobEvent> {
    let id = step.id;
    match (&step.state, answer) {
        (StepState::Dispatched { token, .. }, answer) if token == sent => Some(match answer {
            Ok(Finding::Finished {
                token,
                outcome: Ok(result),
            }) => JobEvent::Completed {
                step: id,
                token,
                result,
            },
            Ok(Finding::Finished {
                token,
                outcome: Err(reason),
            }) => JobEvent::Failed {
                step: id,
                token,
                reason,
            },
            Ok(other) => JobEvent::LostTrack {
                step: id,
                token: *sent,
                why: format!("the executor answered {}", other.describe()),
            },
            Err(why) => JobEvent::LostTrack {
                step: id,
                token: *sent,
                why,
            },
        }),
        (StepState::Unknown { token, .. }, Ok(found)) if token == sent => resolve(step, &found),
        _ => None,
    }
}

/// How the unknown `step` resolves given what its executor said; `None` means it stays
/// unknown (ask again later). Never guesses: an interrupted quiesce or separate is settled by
/// what the host or array shows, and stays unknown while that cannot be read.
pub fn resolve(step: &Step, finding: &Finding) -> Option<JobEvent> {
    let StepState::Unknown { token: asked, .. } = &step.state else {
        return None;
    };
    // The executor may hold the asked attempt or a later one the log lost track of; either
    // way its record is the step's outcome. Anything older means the asked attempt never
    // reached it.
    // A record from before the step's floor term is not its execution, whatever its attempt:
    // it came before the step's round was armed (a deposed leader may have run a round the log
    // never heard of) or before a step it waits for completed (a deposed leader may have sent
    // it, e.g. a release abandoning its round, ahead of what this leader did since). Its
    // replicate, separate, wait or release says nothing of this step's place in the plan. A
    // quiesce is the exception: the host holds it or not, and its release reports whether it
    // held throughout (S3).
    let earlier_round = |t: &FencingToken| {
        t.term < step.floor_term && !matches!(step.call, StepCall::Quiesce { .. })
    };
    let same_attempt = |t: &FencingToken| t.supersedes_or_is(asked) && !earlier_round(t);
    let not_executed = JobEvent::NotExecuted {
        step: step.id,
        token: *asked,
    };
    let completed = |token: FencingToken, result| JobEvent::Completed {
        step: step.id,
        token,
        result,
    };
    match finding {
        Finding::NotRecorded => Some(not_executed),
        Finding::Finished { token, .. } | Finding::Interrupted { token, .. }
            if !same_attempt(token) =>
        {
            Some(not_executed)
        }
        // Whichever attempt runs, wait for it to end: an earlier round's still running may
        // yet act on the pair, so nothing is sent again before it has finished.
        Finding::Running { .. } => None,
        Finding::Finished {
            token,
            outcome: Ok(result),
        } => Some(completed(*token, result.clone())),
        Finding::Finished {
            token,
            outcome: Err(reason),
        } => Some(JobEvent::Failed {
            step: step.id,
            token: *token,
            reason: reason.clone(),
        }),
        Finding::Interrupted { token, observed } => match (&step.call, observed) {
            (StepCall::Quiesce { .. }, Some(Observed::Volume { quiesce_id })) => {
                Some(match quiesce_id {
                    Some(id) => completed(*token, StepResult::Quiesced { quiesce_id: *id }),
                    None => not_executed,
                })
            }
            (StepCall::Separate { .. }, Some(Observed::Pair { sync })) => Some(match sync {
                PairSync::Separating | PairSync::Separated => {
                    completed(*token, StepResult::SeparateAccepted)
                }
                PairSync::Replicating | PairSync::InSync => not_executed,
                PairSync::Other(state) => JobEvent::Failed {
                    step: step.id,
                    token: *token,
                    reason: format!("the pair is in {state} after an interrupted separate"),
                },
            }),
            (StepCall::Quiesce { .. } | StepCall::Separate { .. }, _) => None,
            // Every other call is idempotent on its executor: sending it again finishes it.
            _ => Some(not_executed),
        },
    }
}

fn describe(step: &Step) -> String {
    let what = match &step.call {
        StepCall::FreeRv { volume } => format!("free RV {volume}"),
        StepCall::SetPair { pair } => format!("set pair {pair}"),
        StepCall::Replicate { pair } => format!("replicate {pair}"),
        StepCall::Quiesce { volume, .. } => format!("quiesce {volume}"),
        StepCall::Separate { pair } => format!("separate {pair}"),
        StepCall::Release { volume, .. } => format!("release {volume}"),
        StepCall::AwaitSeparated { pair } => format!("wait for {pair} separated"),
        StepCall::MountRv { volume } => format!("mount RV {volume}"),
        StepCall::RunBackup { .. } => "backup command".to_string(),
    };
    format!("step {} ({what})", step.id)
}

fn is_outstanding(step: &Step) -> bool {
    matches!(
        step.state,
        StepState::Dispatched { .. } | StepState::Unknown { .. }
    )
}

/// Sends `step` under the next token of `term`, or, if a predecessor may have sent it already,
/// first marks it unknown and asks its executor.
fn send(job: &Job, step: &Step, term: u64) -> Vec<Action> {
    let token = step.next_token(term, job.id);
    if job.must_ask_first(step) {
        return vec![
            Action::Record(JobEvent::LostTrack {
                step: step.id,
                token,
                why: format!("leader changed (now term {term}): its predecessor may have sent it"),
            }),
            Action::Probe {
                step: step.id,
                token,
                target: step.target.clone(),
            },
        ];
    }
    let quiesce_id = match &step.call {
        StepCall::Release { quiesce_step, .. } => {
            match job.steps[*quiesce_step as usize].result() {
                Some(StepResult::Quiesced { quiesce_id }) => Some(*quiesce_id),
                _ => None,
            }
        }
        _ => None,
    };
    let check_first = matches!(step.call, StepCall::MountRv { .. })
        && matches!(job.label(), Some(CopyLabel::CrashConsistent { .. }));
    vec![Action::Dispatch(Dispatch {
        step: step.id,
        token,
        round: job.round,
        target: step.target.clone(),
        call: step.call.clone(),
        quiesce_id,
        check_first,
        postgres_copy: postgres_copy(job, step),
    })]
}

/// For the RV mount `step` of a member quiesced with PostgreSQL's online backup mode: what its
/// release got from `pg_backup_stop`, with where to write it. `None` for any other step, or
/// when the release has no label (the quiesce did not hold, or the round had no static point:
/// the copy is then crash-consistent and PostgreSQL recovers it from its own WAL).
fn postgres_copy(job: &Job, step: &Step) -> Option<Box<PostgresCopy>> {
    let StepCall::MountRv { volume } = &step.call else {
        return None;
    };
    let member = job.pairs.iter().find(|m| m.rv == *volume)?;
    let QuiesceMethod::Postgresql(pg) = &member.quiesce else {
        return None;
    };
    let label = job.steps.iter().find_map(|s| match (&s.call, s.result()) {
        (
            StepCall::Release { volume, .. },
            Some(StepResult::Released {
                held_throughout: true,
                backup_label: Some(label),
            }),
        ) if *volume == member.mv => Some(label.clone()),
        _ => None,
    })?;
    Some(Box::new(PostgresCopy {
        data_dir: pg.data_dir.clone(),
        wal_archive_dir: pg.wal_archive_dir.clone(),
        label,
        job_id: job.id,
    }))
}

/// Release steps whose quiesce is done and which have not been sent: sent at once, whatever
/// else they wait for (a cancelled job or an abandoned round holds no MV longer than needed).
fn release_held(job: &Job) -> Vec<&Step> {
    job.steps
        .iter()
        .filter(|s| s.state == StepState::Pending)
        .filter(|s| match &s.call {
            StepCall::Release { quiesce_step, .. } => {
                job.steps[*quiesce_step as usize].result().is_some()
            }
            _ => false,
        })
        .collect()
}

/// Ready steps a predecessor may have sent: a leader took the job over since each was last
/// known not to be out. A job asks about them before it ends, so it never ends (and gives up
/// its locks, S5) with one of its own steps still out with an executor.
fn maybe_out(job: &Job) -> impl Iterator<Item = &Step> {
    job.steps
        .iter()
        .filter(|s| job.ready(s) && job.must_ask_first(s))
}

/// Ends the job with `end`, unless a step may still be out: waits while any is outstanding,
/// and asks about any its predecessor may have sent.
fn end_or_ask(job: &Job, term: u64, end: JobEnd, actions: &mut Vec<Action>) {
    if job.steps.iter().any(is_outstanding) {
        return;
    }
    let ask: Vec<&Step> = maybe_out(job).collect();
    if ask.is_empty() {
        actions.push(Action::Record(JobEvent::Ended { end }));
    }
    for s in ask {
        actions.extend(send(job, s, term));
    }
}

/// What to do next with `job`, as the leader of `term` at `now_ms`.
pub fn decide(job: &Job, term: u64, now_ms: u64) -> Vec<Action> {
    if job.is_ended() || matches!(job.state, JobState::Queued { .. }) {
        return Vec::new();
    }
    let mut actions = Vec::new();
    for s in &job.steps {
        match &s.state {
            StepState::Dispatched { token, deadline_ms } if now_ms >= *deadline_ms => {
                actions.push(Action::Record(JobEvent::LostTrack {
                    step: s.id,
                    token: *token,
                    why: format!("no outcome within {} ms", s.timeout_ms),
                }));
                actions.push(Action::Probe {
                    step: s.id,
                    token: *token,
                    target: s.target.clone(),
                });
            }
            StepState::Unknown { token, .. } => actions.push(Action::Probe {
                step: s.id,
                token: *token,
                target: s.target.clone(),
            }),
            _ => {}
        }
    }
    let outstanding = job.steps.iter().any(is_outstanding);

    if let JobState::Cancelling { by } = &job.state {
        let releases = release_held(job);
        let ask: Vec<&Step> = maybe_out(job)
            .filter(|s| !releases.iter().any(|r| r.id == s.id))
            .collect();
        // A release whose quiesce is still out (or unknown) is kept: if the quiesce turns out
        // taken, the release is sent; if not, the release is skipped then.
        let skip: Vec<StepId> = job
            .steps
            .iter()
            .filter(|s| s.state == StepState::Pending && !releases.iter().any(|r| r.id == s.id))
            .filter(|s| !ask.iter().any(|a| a.id == s.id))
            .filter(|s| match &s.call {
                StepCall::Release { quiesce_step, .. } => {
                    !is_outstanding(&job.steps[*quiesce_step as usize])
                }
                _ => true,
            })
            .map(|s| s.id)
            .collect();
        if !skip.is_empty() {
            actions.push(Action::Record(JobEvent::Skipped {
                steps: skip,
                why: format!("job cancelled by {by}"),
            }));
        }
        if releases.is_empty() && !outstanding {
            end_or_ask(
                job,
                term,
                JobEnd::Cancelled { by: by.clone() },
                &mut actions,
            );
        } else {
            for s in ask {
                actions.extend(send(job, s, term));
            }
        }
        for r in releases {
            actions.extend(send(job, r, term));
        }
        return actions;
    }

    if let Some(failed) = job
        .steps
        .iter()
        .find(|s| matches!(s.state, StepState::Failed { .. }))
    {
        let StepState::Failed { reason, .. } = &failed.state else {
            unreachable!("matched Failed above");
        };
        let why = format!("{} failed: {reason}", describe(failed));
        if failed.phase == Phase::StaticPoint {
            return abort_round(job, failed, why, term, actions);
        }
        if !outstanding {
            end_or_ask(job, term, JobEnd::Failed { reason: why }, &mut actions);
        }
        return actions;
    }

    // The freeze window is over when every release of the round has reported: a quiesce that
    // did not hold spoils the round, which is re-run while rounds remain.
    let releases: Vec<&Step> = job
        .steps
        .iter()
        .filter(|s| matches!(s.call, StepCall::Release { .. }))
        .collect();
    if job.crash_consistent_why.is_none()
        && !releases.is_empty()
        && releases.iter().all(|s| s.result().is_some())
        && let Some(CopyLabel::CrashConsistent { why }) = job.label()
    {
        actions.push(Action::Record(if job.round < ROUNDS_MAX {
            JobEvent::NewRound {
                why: format!("round {}: {why}", job.round),
                without_static_point: false,
            }
        } else {
            JobEvent::AcceptCrashConsistent { why }
        }));
        return actions;
    }

    // A ready step that has used up its attempts fails the job: nothing else is sent, so the
    // job never ends with an order of its own still out with an executor.
    if let Some(s) = job
        .steps
        .iter()
        .find(|s| job.ready(s) && s.sent_in_round >= STEP_ATTEMPTS_MAX)
    {
        if !outstanding {
            let reason = format!(
                "{} was sent {} times without taking effect",
                describe(s),
                s.sent_in_round
            );
            end_or_ask(job, term, JobEnd::Failed { reason }, &mut actions);
        }
        return actions;
    }
    for s in job.steps.iter().filter(|s| job.ready(s)) {
        actions.extend(send(job, s, term));
    }
    if job.steps.iter().all(Step::is_settled) {
        let end = if job.kind.makes_copy() {
            JobEnd::Done {
                label: job.label().unwrap_or(CopyLabel::CrashConsistent {
                    why: "the plan has no static point".into(),
                }),
            }
        } else {
            JobEnd::Finished
        };
        actions.push(Action::Record(JobEvent::Ended { end }));
    }
    actions
}

/// A step of the static point failed: release every held quiesce at once, let the rest of
/// the round settle, then re-run the round (or, in the last round, separate without a static
/// point if it was a quiesce that failed, as the seeds do when an MV cannot be unmounted).
fn abort_round(
    job: &Job,
    failed: &Step,
    why: String,
    term: u64,
    mut actions: Vec<Action>,
) -> Vec<Action> {
    let releases = release_held(job);
    let round_busy = job
        .steps
        .iter()
        .any(|s| s.phase != Phase::Publish && is_outstanding(s));
    if !releases.is_empty() || round_busy {
        for r in releases {
            actions.extend(send(job, r, term));
        }
        return actions;
    }
    let event = if job.round < ROUNDS_MAX {
        JobEvent::NewRound {
            why: format!("round {}: {why}", job.round),
            without_static_point: false,
        }
    } else if matches!(failed.call, StepCall::Quiesce { .. }) && job.crash_consistent_why.is_none()
    {
        JobEvent::NewRound {
            why: format!("round {}: {why}", job.round),
            without_static_point: true,
        }
    } else {
        end_or_ask(job, term, JobEnd::Failed { reason: why }, &mut actions);
        return actions;
    };
    actions.push(Action::Record(event));
    actions
}
