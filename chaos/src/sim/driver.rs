//! The leader's job driver, as node/src/driver runs it, on the simulator's clock.
//!
//! Same rules: the driver keeps its own copy of each unfinished job, applies every event to
//! it at once and appends it to the log behind (no waiting for a commit before sending); a
//! dispatch is recorded before it is sent; one send and one probe per step at a time; a
//! probe that settles nothing backs off; an order answered "running" is sent again until its
//! deadline. A new leader loads the jobs of the committed log and records their takeover
//! ([`Job::takeover_events`]). A deposed leader may run on for a while (it does not know yet):
//! what it records goes nowhere, what it sends still reaches executors.

use std::collections::BTreeMap;
use std::rc::Rc;

use stillpoint_coordinator::job::{
    Action, Dispatch, FencingToken, Finding, Job, JobEvent, JobId, JobState, StepCall, StepId,
    StepState, StepTarget, answered, decide, resolve,
};

use super::engine::{
    Entry, Ev, Msg, PROBE_TIMEOUT_MS, REPLY_WITHIN_MS, RpcKind, Sim, TRANSPORT_MARGIN_MS,
};
use super::world::Prop;

/// First and longest pause between two probes of a step that found nothing settled.
const PROBE_BACKOFF_MIN_MS: u64 = 200;
const PROBE_BACKOFF_MAX_MS: u64 = 5_000;
/// Rounds of decide → perform per wake-up.
const DECIDE_ROUNDS_MAX: usize = 16;

/// An order out with an executor.
#[derive(Clone, Debug)]
pub(super) struct Rpc {
    pub nonce: u64,
    pub deadline_ms: u64,
    pub dispatch: Rc<Dispatch>,
}

/// One leadership term's driver.
pub(super) struct Lead {
    pub jobs: BTreeMap<JobId, Job>,
    pub dispatching: BTreeMap<(JobId, StepId), Rpc>,
    pub probing: BTreeMap<(JobId, StepId), u64>,
    pub probe_backoff: BTreeMap<(JobId, StepId), (u64, u64)>,
    /// Deposed, not knowing it yet.
    pub zombie: bool,
    /// The log refused an event the copy accepted: take over again.
    pub retake: bool,
    pub wake_at_ms: Option<u64>,
}

impl Lead {
    pub fn new() -> Lead {
        Lead {
            jobs: BTreeMap::new(),
            dispatching: BTreeMap::new(),
            probing: BTreeMap::new(),
            probe_backoff: BTreeMap::new(),
            zombie: false,
            retake: false,
            wake_at_ms: None,
        }
    }
}

pub(super) fn call_name(call: &StepCall) -> String {
    match call {
        StepCall::FreeRv { volume } => format!("free RV {volume}"),
        StepCall::SetPair { pair } => format!("set pair {pair}"),
        StepCall::Replicate { pair } => format!("replicate {pair}"),
        StepCall::Quiesce { volume, .. } => format!("quiesce {volume}"),
        StepCall::Separate { pair } => format!("separate {pair}"),
        StepCall::Release { volume, .. } => format!("release {volume}"),
        StepCall::AwaitSeparated { pair } => format!("await {pair} separated"),
        StepCall::MountRv { volume } => format!("mount RV {volume}"),
        StepCall::RunBackup { .. } => "backup command".into(),
    }
}

impl Sim {
    /// Loads every unfinished job from the applied state and records the takeover.
    pub(super) fn take_over(&mut self, term: u64) {
        let jobs: Vec<Job> = self.applied.unfinished().cloned().collect();
        let skip = self.cfg.mutations.skip_takeover;
        for job in jobs {
            let id = job.id;
            let queued = matches!(job.state, JobState::Queued { .. });
            let events = if queued || skip {
                Vec::new()
            } else {
                job.takeover_events(term)
            };
            if let Some(l) = self.leads.get_mut(&term) {
                l.jobs.insert(id, job);
            }
            for e in events {
                self.record(term, id, e);
            }
        }
    }

    /// Applies `event` to the lead's copy of job `id` and, if it still leads, appends it.
    pub(super) fn record(&mut self, term: u64, id: JobId, event: JobEvent) -> bool {
        let now = self.now;
        let Some(lead) = self.leads.get_mut(&term) else {
            return false;
        };
        let zombie = lead.zombie;
        let Some(job) = lead.jobs.get_mut(&id) else {
            return false;
        };
        if let Err(e) = job.record(&event, now) {
            let what =
                format!("term {term}: the driver's own copy of job {id} refused {event:?}: {e}");
            self.note(|| what.clone());
            self.violation(Prop::Engine, what);
            return false;
        }
        self.note(|| {
            format!(
                "t{term}{} job {id}: {}",
                if zombie { " (deposed)" } else { "" },
                event_line(&event)
            )
        });
        if !zombie && self.leader_term() == Some(term) {
            self.append(Entry::Event {
                job: id,
                event,
                at_ms: now,
                term,
            });
        }
        true
    }

    /// Brings in what changed in the log without the driver (as the real driver does).
    pub(super) fn sync_from_state(&mut self, term: u64) {
        let Some(lead) = self.leads.get(&term) else {
            return;
        };
        let new: Vec<Job> = self
            .applied
            .unfinished()
            .filter(|j| !lead.jobs.contains_key(&j.id))
            .cloned()
            .collect();
        let local: Vec<(JobId, JobState)> = lead
            .jobs
            .iter()
            .map(|(id, j)| (*id, j.state.clone()))
            .collect();
        let now = self.now;
        let mut forget = Vec::new();
        let mut reload = Vec::new();
        let mut cancel = Vec::new();
        for (id, mine) in local {
            let in_log = self.applied.jobs.get(&id).map(|j| j.state.clone());
            match (mine, in_log) {
                (JobState::Ended { .. }, Some(JobState::Ended { .. }) | None) => forget.push(id),
                (JobState::Queued { .. }, Some(s)) if !matches!(s, JobState::Queued { .. }) => {
                    match self.applied.jobs.get(&id) {
                        Some(job) if !job.is_ended() => reload.push((**job).clone()),
                        _ => forget.push(id),
                    }
                }
                (JobState::Running, Some(JobState::Cancelling { by })) => cancel.push((id, by)),
                _ => {}
            }
        }
        let lead = self.leads.get_mut(&term).expect("looked up above");
        for job in new {
            lead.jobs.insert(job.id, job);
        }
        for job in reload {
            lead.jobs.insert(job.id, job);
        }
        for id in forget {
            lead.jobs.remove(&id);
            lead.probe_backoff.retain(|(j, _), _| *j != id);
        }
        for (id, by) in cancel {
            if let Some(job) = lead.jobs.get_mut(&id) {
                let _ = job.record(&JobEvent::CancelRequested { by }, now);
            }
        }
    }

    /// Decides and performs, job by job, until nothing new comes of it.
    pub(super) fn act(&mut self, term: u64) {
        let Some(lead) = self.leads.get_mut(&term) else {
            return;
        };
        if lead.retake && !lead.zombie {
            *lead = Lead::new();
            self.note(|| format!("t{term}: the driver takes over again from the log"));
            self.take_over(term);
        }
        let ids: Vec<JobId> = self.leads[&term].jobs.keys().copied().collect();
        for id in ids {
            for _ in 0..DECIDE_ROUNDS_MAX {
                let Some(job) = self.leads.get(&term).and_then(|l| l.jobs.get(&id)) else {
                    break;
                };
                let actions = decide(job, term, self.now);
                let mut progressed = false;
                for action in actions {
                    progressed |= self.perform(term, id, action);
                }
                if !progressed {
                    break;
                }
            }
        }
        self.schedule_wake(term);
    }

    /// Wakes the driver at the next step deadline or probe backoff, as its tick would.
    fn schedule_wake(&mut self, term: u64) {
        let now = self.now;
        let Some(lead) = self.leads.get(&term) else {
            return;
        };
        let deadlines = lead.jobs.values().flat_map(|j| {
            j.steps.iter().filter_map(|s| match &s.state {
                StepState::Dispatched { deadline_ms, .. } => Some(*deadline_ms),
                _ => None,
            })
        });
        let backoffs = lead.probe_backoff.values().map(|(next, _)| *next);
        let Some(next) = deadlines.chain(backoffs).filter(|t| *t > now).min() else {
            return;
        };
        if lead.wake_at_ms.is_some_and(|w| w <= next && w > now) {
            return;
        }
        if let Some(l) = self.leads.get_mut(&term) {
            l.wake_at_ms = Some(next);
        }
        self.schedule(next, Ev::Wake { term });
    }

    fn perform(&mut self, term: u64, id: JobId, action: Action) -> bool {
        match action {
            Action::Record(event) => self.record(term, id, event),
            Action::Dispatch(d) => self.dispatch(term, id, d),
            Action::Probe {
                step,
                token,
                target,
            } => {
                self.probe(term, id, step, token, target);
                false
            }
        }
    }

    fn dispatch(&mut self, term: u64, id: JobId, d: Dispatch) -> bool {
        if self.leads[&term].dispatching.contains_key(&(id, d.step)) {
            return false;
        }
        let (step, token) = (d.step, d.token);
        if !self.record(term, id, JobEvent::Dispatched { step, token }) {
            return false;
        }
        let deadline_ms = match &self.leads[&term].jobs[&id].steps[step as usize].state {
            StepState::Dispatched { deadline_ms, .. } => *deadline_ms,
            _ => self.now,
        };
        self.note(|| {
            format!(
                "t{term} job {id}: sends step {step} ({}) t{}a{}",
                call_name(&d.call),
                token.term,
                token.attempt
            )
        });
        self.send_order(term, id, Rc::new(d), deadline_ms);
        true
    }

    fn send_order(&mut self, term: u64, id: JobId, d: Rc<Dispatch>, deadline_ms: u64) {
        self.nonce += 1;
        let nonce = self.nonce;
        let agent = self.agent_of(&d.target);
        let step = d.step;
        if let Some(l) = self.leads.get_mut(&term) {
            l.dispatching.insert(
                (id, step),
                Rpc {
                    nonce,
                    deadline_ms,
                    dispatch: d.clone(),
                },
            );
        }
        self.schedule(
            self.now + REPLY_WITHIN_MS + TRANSPORT_MARGIN_MS,
            Ev::RpcTimeout {
                term,
                job: id,
                step,
                nonce,
                kind: RpcKind::Exec,
            },
        );
        self.send(
            agent,
            Msg::Order {
                term,
                nonce,
                job: id,
                dispatch: d,
            },
        );
    }

    fn probe(
        &mut self,
        term: u64,
        id: JobId,
        step: StepId,
        token: FencingToken,
        target: StepTarget,
    ) {
        let key = (id, step);
        let lead = &self.leads[&term];
        if lead.probing.contains_key(&key) {
            return;
        }
        if lead
            .probe_backoff
            .get(&key)
            .is_some_and(|(next, _)| self.now < *next)
        {
            return;
        }
        let Some(call) = lead
            .jobs
            .get(&id)
            .and_then(|j| j.steps.get(step as usize))
            .map(|s| s.call.clone())
        else {
            return;
        };
        self.nonce += 1;
        let nonce = self.nonce;
        if let Some(l) = self.leads.get_mut(&term) {
            l.probing.insert(key, nonce);
        }
        self.schedule(
            self.now + PROBE_TIMEOUT_MS,
            Ev::RpcTimeout {
                term,
                job: id,
                step,
                nonce,
                kind: RpcKind::Probe,
            },
        );
        let agent = self.agent_of(&target);
        self.send(
            agent,
            Msg::Probe {
                term,
                nonce,
                step,
                token,
                call,
            },
        );
    }

    fn back_off(&mut self, term: u64, key: (JobId, StepId)) {
        let now = self.now;
        if let Some(l) = self.leads.get_mut(&term) {
            let backoff = l
                .probe_backoff
                .get(&key)
                .map(|(_, b)| (b * 2).min(PROBE_BACKOFF_MAX_MS))
                .unwrap_or(PROBE_BACKOFF_MIN_MS);
            l.probe_backoff.insert(key, (now + backoff, backoff));
        }
    }

    /// An answer (or, with `None`, no answer in time) to an order or a probe.
    pub(super) fn on_reply(
        &mut self,
        term: u64,
        job: JobId,
        step: StepId,
        nonce: u64,
        kind: RpcKind,
        result: Option<Result<Finding, String>>,
    ) {
        let Some(lead) = self.leads.get(&term) else {
            return;
        };
        let key = (job, step);
        match kind {
            RpcKind::Exec => {
                let Some(rpc) = lead
                    .dispatching
                    .get(&key)
                    .filter(|r| r.nonce == nonce)
                    .cloned()
                else {
                    return;
                };
                let result = result.unwrap_or_else(|| {
                    Err(format!(
                        "no answer within {} ms",
                        REPLY_WITHIN_MS + TRANSPORT_MARGIN_MS
                    ))
                });
                // Still running: the real driver sends the same order again until its deadline.
                if matches!(result, Ok(Finding::Running { .. })) && self.now < rpc.deadline_ms {
                    self.send_order(term, job, rpc.dispatch, rpc.deadline_ms);
                    return;
                }
                if let Some(l) = self.leads.get_mut(&term) {
                    l.dispatching.remove(&key);
                }
                let token = rpc.dispatch.token;
                let Some(s) = self.leads[&term]
                    .jobs
                    .get(&job)
                    .and_then(|j| j.steps.get(step as usize))
                else {
                    return;
                };
                let event = answered(s, &token, result);
                if let Some(event) = event {
                    self.record(term, job, event);
                }
                self.act(term);
            }
            RpcKind::Probe => {
                if lead.probing.get(&key) != Some(&nonce) {
                    return;
                }
                if let Some(l) = self.leads.get_mut(&term) {
                    l.probing.remove(&key);
                }
                let Some(s) = self.leads[&term]
                    .jobs
                    .get(&job)
                    .and_then(|j| j.steps.get(step as usize))
                else {
                    return;
                };
                let StepState::Unknown { .. } = &s.state else {
                    return;
                };
                match result {
                    Some(Ok(found)) => match resolve(s, &found) {
                        Some(event) => {
                            if let Some(l) = self.leads.get_mut(&term) {
                                l.probe_backoff.remove(&key);
                            }
                            self.record(term, job, event);
                        }
                        None => self.back_off(term, key),
                    },
                    _ => self.back_off(term, key),
                }
                self.act(term);
            }
        }
    }
}

fn event_line(e: &JobEvent) -> String {
    let t = |t: &FencingToken| format!("t{}a{}", t.term, t.attempt);
    match e {
        JobEvent::Dispatched { step, token } => format!("step {step} dispatched {}", t(token)),
        JobEvent::Completed {
            step,
            token,
            result,
        } => format!("step {step} done {} {result:?}", t(token)),
        JobEvent::Failed {
            step,
            token,
            reason,
        } => format!("step {step} failed {}: {reason}", t(token)),
        JobEvent::LostTrack { step, token, why } => {
            format!("step {step} unknown {}: {why}", t(token))
        }
        JobEvent::NotExecuted { step, token } => format!("step {step} not executed {}", t(token)),
        other => format!("{other:?}"),
    }
}
