//! The job driver: on the leader only, it moves every unfinished job forward by performing what
//! [`stillpoint_coordinator::job::decide`] says and proposing what came back.
//!
//! ## Life
//! It starts when this agent becomes leader of a term and stops the moment it is not (a new
//! term, another leader, shutdown): everything it had in flight is dropped, and the next
//! leader takes over from the log. On start it waits until its state machine has applied
//! everything committed before its term ([`openraft::Raft::ensure_linearizable`]), then
//! records a takeover on every unfinished job ([`Job::takeover_events`]): each step recorded
//! as dispatched becomes unknown and is probed before anything is sent, and every other step
//! is probed before its first send in this term, because the previous leader did not wait for
//! a commit before sending.
//!
//! ## Deciding apart from doing
//! All decisions are the coordinator's pure functions (`decide`, `resolve`); this module keeps
//! a local copy of each job, performs the actions, and applies every event to the copy at once
//! (so the next decision sees it) while proposing it to the log behind, in order, through one
//! proposer task. Nothing here waits for a commit before sending a step: a leader that dies
//! with events unproposed leaves steps its successor finds by asking. If the log refuses an
//! event the copy accepted, or a proposal fails, the driver drops its copies and takes over
//! again from the log (in the same term if it still leads).
//!
//! ## One request per executor per round
//! The orders one round of decisions sends (every MV of a group quiesced at once, every pair
//! separated at once) are grouped by the agent that executes them and sent as one
//! `ExecuteMany` each: that agent begins them in one journal write and answers each as soon
//! as it has its answer, so a business node with several MVs of the group, or the control
//! node of an array with many pairs, costs the freeze window one request and one journal
//! write instead of one per step. A lone order, and every order to an agent of an older
//! version (no `ExecuteMany`), goes as a single `Execute`. The round's events reach the
//! proposer only after its orders are out and the freeze window flag is set, so the events
//! that open a window (the last replicate's outcome, the quiesces' dispatches) are not
//! committed, and flushed by every agent, while the business servers are held. The flag is up
//! from the moment a job's replicates are out, not only once its quiesces are: a commit takes
//! a log flush on every agent, and one still under way when the quiesces arrive makes the
//! business nodes' own flush of their quiesce records wait (measured: the 8-pair window's
//! overhead over the bare calls fell from 3.8-4.6 ms to 2.0-2.5 ms, `cargo bench -p
//! stillpoint-node --bench jobs`).
//!
//! ## Caveats
//! - Array steps go to the control node the log records for the array (where a leader last
//!   moved them), else to its first registered one (by name), so a new leader first asks the
//!   agent most likely to hold the step's journal. When that agent does not answer
//!   (unreachable, or a probe without an answer), the driver passes over it to the next
//!   control node ([`Routes`]) and proposes the move (`Command::RouteArraySteps`): asked about
//!   a token it never saw, that agent says "not recorded" and the job sends a new attempt
//!   there. This is safe only because the array fences its pair operations by token
//!   (`stillpoint_array::FenceToken`): the old attempt, if it is still on the passed-over
//!   agent, is refused by the array once a newer token has acted on the pair. The move is
//!   proposed behind the job events, so a leader that dies first leaves its successor the
//!   older record, and the successor passes over again.
//! - Deadlines are on the lead's clock ([`LeadClock`]: the wall clock read when this lead
//!   began, advanced by the boot clock), `at_ms` of the dispatch plus the step's timeout; a
//!   step of the wall clock mid-lead moves none of them.

mod send;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use stillpoint_coordinator::job::wire::{ProbeOrder, StepOrder};
use stillpoint_coordinator::job::{
    Action, Dispatch, Finding, Job, JobEvent, JobId, JobState, StepId, StepState, StepTarget,
    answered, decide, resolve,
};
use stillpoint_coordinator::{Command, JobChange, Response};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub use send::{REPLY_WITHIN_MS, Routes, Unanswered, execute_once, executor_candidates};

use crate::agent::{AgentContext, LeadClock};

/// How often the driver looks at its jobs when nothing else woke it (deadlines, new jobs).
const TICK_MS: u64 = 200;
/// First and longest pause between two probes of the same step that found nothing settled.
/// Short at first: right after a leader change the executor asked is often an agent that is
/// restarting, and the job waits on its answer; growing by half each time after that.
const PROBE_BACKOFF_MIN_MS: u64 = 100;
const PROBE_BACKOFF_MAX_MS: u64 = 3_000;
/// Pause before leading again after a takeover failed (a proposal that did not commit).
const RETAKE_PAUSE_MS: u64 = 500;
/// Rounds of decide → perform per wake-up: each round acts on what the last one recorded.
const DECIDE_ROUNDS_MAX: usize = 16;

/// Runs until `shutdown`: leads jobs whenever this agent is the leader.
pub async fn run(ctx: Arc<AgentContext>, mut shutdown: watch::Receiver<bool>) {
    let me = ctx.node_id();
    let mut metrics = ctx.raft.metrics();
    loop {
        let term = loop {
            let m = metrics.borrow_and_update().clone();
            if m.current_leader == Some(me) && m.state.is_leader() {
                break m.current_term;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        };
        let mut watch_lost = ctx.raft.metrics();
        let lost = async move {
            let _ = watch_lost
                .wait_for(|m| m.current_leader != Some(me) || m.current_term != term)
                .await;
        };
        tracing::info!(term, "driver: leading jobs");
        let mut failed = false;
        tokio::select! {
            result = lead(&ctx, term) => {
                if let Err(e) = result {
                    tracing::warn!(term, error = %e, "driver: taking over again");
                    failed = true;
                }
            }
            _ = lost => tracing::info!(term, "driver: no longer the leader; stops"),
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(RETAKE_PAUSE_MS)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// What a task sent to an executor brought back.
enum Reply {
    Executed {
        job: JobId,
        step: StepId,
        token: stillpoint_coordinator::job::FencingToken,
        target: StepTarget,
        address: String,
        result: Result<Finding, Unanswered>,
    },
    Probed {
        job: JobId,
        step: StepId,
        token: stillpoint_coordinator::job::FencingToken,
        target: StepTarget,
        address: String,
        result: Result<Finding, Unanswered>,
    },
}

/// An order decided in this round, waiting to be sent with the others for its executor.
struct Outgoing {
    job: JobId,
    step: StepId,
    token: stillpoint_coordinator::job::FencingToken,
    target: StepTarget,
    order: StepOrder,
    deadline_ms: u64,
}

/// Most orders the driver sends an executor in one request (within the executor's
/// [`crate::executor::batch::BATCH_ORDERS_MAX`]).
const ORDERS_PER_SEND_MAX: usize = 32;

/// Why the proposer stopped.
enum ProposerStop {
    Failed(String),
    Refused { job: JobId, rule: String },
}

/// One leadership term's driving.
struct Lead<'a> {
    ctx: &'a AgentContext,
    term: u64,
    /// The driver's copy of every unfinished job (ahead of the log by what is unproposed).
    jobs: BTreeMap<JobId, Job>,
    dispatching: BTreeSet<(JobId, StepId)>,
    probing: BTreeSet<(JobId, StepId)>,
    /// Per step: (earliest next probe, current backoff), after a probe that settled nothing.
    probe_backoff: BTreeMap<(JobId, StepId), (u64, u64)>,
    /// The tasks sending orders and probes; they hand what came back to `replies`.
    tasks: JoinSet<()>,
    replies: mpsc::UnboundedSender<Reply>,
    /// Per executor address: the orders decided since the last send, sent together.
    outbox: BTreeMap<String, Vec<Outgoing>>,
    proposals: mpsc::UnboundedSender<Command>,
    /// What this round recorded, handed to the proposer once the round's orders are sent and
    /// the freeze window flag says whether they were quiesces (see [`propose_in_order`]).
    unsent: Vec<Command>,
    /// Targets that could not be resolved, so the warning is said once per target.
    unresolved_said: BTreeSet<String>,
    /// Which control node each array's steps go to.
    routes: Routes,
    /// The clock of every stamp, deadline and backoff of this lead.
    clock: LeadClock,
}

async fn lead(ctx: &AgentContext, term: u64) -> Result<(), String> {
    ctx.raft
        .ensure_linearizable()
        .await
        .map_err(|e| format!("cannot confirm leadership before taking over: {e}"))?;
    let (proposals, queue) = mpsc::unbounded_channel();
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel();
    let mut proposer = JoinSet::new();
    let (window, window_rx) = watch::channel(false);
    proposer.spawn(propose_in_order(
        ctx.raft.clone(),
        queue,
        window_rx,
        stop_tx,
    ));
    let (replies, mut replies_rx) = mpsc::unbounded_channel();
    let mut lead = Lead {
        ctx,
        term,
        jobs: BTreeMap::new(),
        dispatching: BTreeSet::new(),
        probing: BTreeSet::new(),
        probe_backoff: BTreeMap::new(),
        tasks: JoinSet::new(),
        replies,
        outbox: BTreeMap::new(),
        proposals,
        unsent: Vec::new(),
        unresolved_said: BTreeSet::new(),
        routes: Routes::default(),
        clock: LeadClock::start(),
    };
    lead.take_over();
    let mut applied = ctx.raft.metrics();
    loop {
        lead.sync_from_state();
        lead.act();
        lead.send_outbox();
        // The flag first, then the round's events: a round that sent replicates or quiesces
        // must not have its events (the replicates' dispatches and outcomes, the quiesces'
        // dispatches) proposed, and every agent flushing its log, as the business servers are
        // about to be held or are.
        let open = lead
            .jobs
            .values()
            .any(|j| j.in_freeze_window() || j.nearing_freeze_window());
        window.send_if_modified(|was| std::mem::replace(was, open) != open);
        for command in lead.unsent.drain(..) {
            let _ = lead.proposals.send(command);
        }
        tokio::select! {
            Some(reply) = replies_rx.recv() => lead.on_reply(reply),
            Some(Err(e)) = lead.tasks.join_next() => {
                tracing::error!(error = %e, "driver: a send task failed");
            }
            Some(stop) = stop_rx.recv() => return Err(match stop {
                ProposerStop::Failed(e) => format!("a proposal failed: {e}"),
                ProposerStop::Refused { job, rule } => format!(
                    "the log refused an event of job {job} the driver's copy accepted ({rule})"
                ),
            }),
            changed = applied.changed() => if changed.is_err() {
                return Err("raft stopped".into());
            },
            _ = tokio::time::sleep(Duration::from_millis(TICK_MS)) => {}
        }
    }
}

/// Proposes the driver's events one after another, in the order they were recorded: what
/// piled up while the last proposal committed goes as one [`Command::Jobs`] entry (up to
/// [`BATCH_EVENTS_MAX`]), so a busy freeze window costs each node a few log flushes, not one
/// per event.
///
/// While a job holds an MV quiesced, or is waiting for its pairs to sync before quiescing
/// (`window` is true), nothing is proposed for up to [`PROPOSE_DEFER_MS_MAX`]: a proposal
/// makes every agent flush its log, and those flushes queue in front of the array's and the
/// hosts' own in the window. Nothing waits on these commits (see the module essay), and a
/// successor leader asks about every step the log does not show settled, so deferring them
/// loses nothing but the time they would cost. Once a hold has lasted that long (a sync of a
/// large volume), what piled up is proposed batch after batch until none is left, then the
/// next event waits again: the log trails the driver by at most about that bound.
async fn propose_in_order(
    raft: stillpoint_coordinator::Raft,
    mut queue: mpsc::UnboundedReceiver<Command>,
    mut window: watch::Receiver<bool>,
    stop: mpsc::UnboundedSender<ProposerStop>,
) {
    let bound = Duration::from_millis(crate::agent::PROPOSE_TIMEOUT_MS);
    let defer_max = Duration::from_millis(PROPOSE_DEFER_MS_MAX);
    let mut carried: Option<Command> = None;
    // Events left over from the last batch: proposed without holding them again.
    let mut backlog = false;
    loop {
        let first = match carried.take() {
            Some(c) => c,
            None => match queue.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        if !backlog {
            let _ = tokio::time::timeout(defer_max, window.wait_for(|open| !open)).await;
        }
        let is_job = |c: &Command| matches!(c, Command::Job { .. });
        let mut batch = vec![first];
        while is_job(&batch[0]) && batch.len() < BATCH_EVENTS_MAX {
            match queue.try_recv() {
                Ok(c) if is_job(&c) => batch.push(c),
                Ok(c) => {
                    carried = Some(c);
                    break;
                }
                Err(_) => break,
            }
        }
        backlog = carried.is_some() || !queue.is_empty();
        let job = match &batch[0] {
            Command::Job { job_id, .. } => *job_id,
            _ => 0,
        };
        let command = batch_of(batch);
        match tokio::time::timeout(bound, raft.client_write(command)).await {
            Err(_) => {
                let _ = stop.send(ProposerStop::Failed(format!(
                    "not committed within {} ms",
                    bound.as_millis()
                )));
                return;
            }
            Ok(Err(e)) => {
                let _ = stop.send(ProposerStop::Failed(e.to_string()));
                return;
            }
            Ok(Ok(reply)) => {
                if let Response::Refused { rule } = reply.data {
                    let _ = stop.send(ProposerStop::Refused { job, rule });
                    return;
                }
            }
        }
    }
}

/// Most job events one log entry carries.
const BATCH_EVENTS_MAX: usize = 64;
/// Longest the proposer holds events back while a freeze window is open or about to: a window
/// is tens of milliseconds; a host slow to quiesce or release, or a long sync, must not hold
/// the log back for long.
const PROPOSE_DEFER_MS_MAX: u64 = 500;

/// One command for `batch`: itself when alone, else one [`Command::Jobs`] of its job events
/// (a batch holds nothing else).
fn batch_of(mut batch: Vec<Command>) -> Command {
    if batch.len() == 1 {
        return batch.remove(0);
    }
    let events = batch
        .into_iter()
        .filter_map(|c| match c {
            Command::Job {
                job_id,
                event,
                at_ms,
            } => Some(JobChange {
                job_id,
                event,
                at_ms,
            }),
            _ => None,
        })
        .collect();
    Command::Jobs { events }
}

impl Lead<'_> {
    /// Loads every unfinished job from the applied state and records the takeover.
    fn take_over(&mut self) {
        let jobs: Vec<Job> = self
            .ctx
            .state
            .read(|s| s.jobs.unfinished().cloned().collect());
        for job in jobs {
            let id = job.id;
            let queued = matches!(job.state, JobState::Queued { .. });
            self.jobs.insert(id, job);
            if !queued {
                let events = self.jobs[&id].takeover_events(self.term);
                for event in events {
                    self.record(id, event);
                }
            }
        }
        if !self.jobs.is_empty() {
            tracing::info!(
                term = self.term,
                jobs = self.jobs.len(),
                "driver: took over unfinished jobs"
            );
        }
    }

    /// Applies `event` to the copy of job `id` and proposes it. An event the copy refuses is a
    /// bug in the decisions: said loudly, not proposed.
    fn record(&mut self, id: JobId, event: JobEvent) -> bool {
        let Some(job) = self.jobs.get_mut(&id) else {
            return false;
        };
        let at_ms = self.clock.now_ms();
        if let Err(e) = job.record(&event, at_ms) {
            tracing::error!(job = id, error = %e, ?event, "driver: an event its own job copy refuses (a bug); not proposed");
            return false;
        }
        tracing::debug!(job = id, ?event, "driver: recorded");
        self.unsent.push(Command::Job {
            job_id: id,
            event,
            at_ms,
        });
        true
    }

    /// Brings in what changed in the log without the driver: new jobs, jobs started from the
    /// queue, cancel requests, queued jobs cancelled; forgets jobs the log shows ended.
    fn sync_from_state(&mut self) {
        let local: Vec<JobId> = self.jobs.keys().copied().collect();
        let (unfinished, known): (Vec<JobId>, Vec<(JobId, Option<JobState>)>) =
            self.ctx.state.read(|s| {
                (
                    s.jobs
                        .unfinished()
                        .map(|j| j.id)
                        .filter(|id| !self.jobs.contains_key(id))
                        .collect(),
                    local
                        .iter()
                        .map(|id| (*id, s.jobs.jobs.get(id).map(|j| j.state.clone())))
                        .collect(),
                )
            });
        for id in unfinished {
            if let Some(job) = self
                .ctx
                .state
                .read(|s| s.jobs.jobs.get(&id).map(|j| (**j).clone()))
            {
                tracing::info!(job = id, "driver: new job");
                self.jobs.insert(id, job);
            }
        }
        for (id, in_log) in known {
            let Some(mine) = self.jobs.get(&id).map(|j| j.state.clone()) else {
                continue;
            };
            match (mine, in_log) {
                // Ended here and in the log, or forgotten by the log's retention.
                (JobState::Ended { .. }, Some(JobState::Ended { .. }) | None) => self.forget(id),
                // Started from the queue, or cancelled while queued, by the log alone.
                (JobState::Queued { .. }, Some(s)) if !matches!(s, JobState::Queued { .. }) => {
                    match self
                        .ctx
                        .state
                        .read(|s| s.jobs.jobs.get(&id).map(|j| (**j).clone()))
                    {
                        Some(job) if !job.is_ended() => {
                            self.jobs.insert(id, job);
                        }
                        _ => self.forget(id),
                    }
                }
                (JobState::Running, Some(JobState::Cancelling { by })) => {
                    if let Some(job) = self.jobs.get_mut(&id) {
                        let _ = job.record(&JobEvent::CancelRequested { by }, self.clock.now_ms());
                    }
                }
                _ => {}
            }
        }
    }

    fn forget(&mut self, id: JobId) {
        self.jobs.remove(&id);
        self.probe_backoff.retain(|(j, _), _| *j != id);
    }

    /// Decides and performs, job by job, until nothing new comes of it.
    fn act(&mut self) {
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            for _ in 0..DECIDE_ROUNDS_MAX {
                let Some(job) = self.jobs.get(&id) else { break };
                let actions = decide(job, self.term, self.clock.now_ms());
                let mut progressed = false;
                for action in actions {
                    progressed |= self.perform(id, action);
                }
                if !progressed {
                    break;
                }
            }
        }
    }

    /// Performs one action; true if it changed the job's copy.
    fn perform(&mut self, id: JobId, action: Action) -> bool {
        match action {
            Action::Record(event) => self.record(id, event),
            Action::Dispatch(d) => self.dispatch(id, d),
            Action::Probe {
                step,
                token,
                target,
            } => {
                self.probe(id, step, token, target);
                false
            }
        }
    }

    fn resolve_target(&mut self, target: &StepTarget) -> Option<String> {
        let found = self.ctx.state.read(|s| self.routes.address(s, target));
        match found {
            Ok(address) => {
                self.unresolved_said.remove(&format!("{target:?}"));
                Some(address)
            }
            Err(why) => {
                if self.unresolved_said.insert(format!("{target:?}")) {
                    tracing::warn!(?target, %why, "driver: nobody to send steps of this target to; waiting");
                }
                None
            }
        }
    }

    fn dispatch(&mut self, id: JobId, d: Dispatch) -> bool {
        if self.dispatching.contains(&(id, d.step)) {
            return false;
        }
        let Some(address) = self.resolve_target(&d.target) else {
            return false;
        };
        let pair = self.ctx.state.read(|s| send::pair_of(s, &d.call));
        let (step, token, target) = (d.step, d.token, d.target.clone());
        if !self.record(id, JobEvent::Dispatched { step, token }) {
            return false;
        }
        let deadline_ms = match &self.jobs[&id].steps[step as usize].state {
            StepState::Dispatched { deadline_ms, .. } => *deadline_ms,
            _ => self.clock.now_ms(),
        };
        tracing::info!(job = id, step, term = token.term, attempt = token.attempt, call = ?d.call, %address, "driver: dispatch");
        let order = StepOrder {
            dispatch: d,
            pair,
            reply_within_ms: REPLY_WITHIN_MS,
        };
        self.dispatching.insert((id, step));
        self.outbox.entry(address).or_default().push(Outgoing {
            job: id,
            step,
            token,
            target,
            order,
            deadline_ms,
        });
        true
    }

    /// Sends the orders decided this round: one request per executor (up to
    /// [`ORDERS_PER_SEND_MAX`] orders each), so the steps of a phase that go to one agent cost
    /// it one request and one journal write, not one each. Each answer comes back on its own.
    fn send_outbox(&mut self) {
        let clock = self.clock;
        for (address, mut outgoing) in std::mem::take(&mut self.outbox) {
            while !outgoing.is_empty() {
                let rest = outgoing.split_off(outgoing.len().min(ORDERS_PER_SEND_MAX));
                let chunk = std::mem::replace(&mut outgoing, rest);
                let replies = self.replies.clone();
                let address = address.clone();
                self.tasks.spawn(async move {
                    let (meta, orders): (Vec<_>, Vec<_>) = chunk
                        .into_iter()
                        .map(|o| ((o.job, o.step, o.token, o.target), (o.order, o.deadline_ms)))
                        .unzip();
                    send::execute_all(&address, &orders, clock, &mut |i, result| {
                        let (job, step, token, target) = meta[i].clone();
                        let _ = replies.send(Reply::Executed {
                            job,
                            step,
                            token,
                            target,
                            address: address.clone(),
                            result,
                        });
                    })
                    .await;
                });
            }
        }
    }

    fn probe(
        &mut self,
        id: JobId,
        step: StepId,
        token: stillpoint_coordinator::job::FencingToken,
        target: StepTarget,
    ) {
        let key = (id, step);
        if self.probing.contains(&key) {
            return;
        }
        if self
            .probe_backoff
            .get(&key)
            .is_some_and(|(next, _)| self.clock.now_ms() < *next)
        {
            return;
        }
        let Some(address) = self.resolve_target(&target) else {
            self.back_off(key);
            return;
        };
        let Some((call, round)) = self.jobs.get(&id).and_then(|j| {
            j.steps
                .get(step as usize)
                .map(|s| (s.call.clone(), j.round))
        }) else {
            return;
        };
        let pair = self.ctx.state.read(|s| send::pair_of(s, &call));
        let order = ProbeOrder {
            step,
            token,
            round,
            target: target.clone(),
            call,
            pair,
        };
        self.probing.insert(key);
        let replies = self.replies.clone();
        self.tasks.spawn(async move {
            let result = send::probe(&address, &order).await;
            let _ = replies.send(Reply::Probed {
                job: id,
                step,
                token,
                target,
                address,
                result,
            });
        });
    }

    /// The executor at `address` gave no answer for `target`: array steps move on to the
    /// array's next control node.
    fn pass_over(&mut self, target: &StepTarget, address: &str) {
        let routes = &mut self.routes;
        if let Some(next) = self
            .ctx
            .state
            .read(|s| routes.pass_over(s, target, address))
        {
            tracing::warn!(?target, passed_over = %address, now = %next, "driver: a control node did not answer; array steps go to the next one");
            if let StepTarget::Array(array) = target {
                // Behind the job events already queued, in order; a successor that never
                // sees it starts from the older record and passes over again.
                self.unsent.push(Command::RouteArraySteps {
                    array: array.clone(),
                    control_node: next,
                });
            }
        }
    }

    fn back_off(&mut self, key: (JobId, StepId)) {
        let backoff = self
            .probe_backoff
            .get(&key)
            .map(|(_, b)| (b + b / 2).min(PROBE_BACKOFF_MAX_MS))
            .unwrap_or(PROBE_BACKOFF_MIN_MS);
        self.probe_backoff
            .insert(key, (self.clock.now_ms() + backoff, backoff));
    }

    /// Turns what an executor said into the job's next event.
    fn on_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Executed {
                job,
                step,
                token,
                target,
                address,
                result,
            } => {
                self.dispatching.remove(&(job, step));
                if result.as_ref().is_err_and(|e| e.unreachable) {
                    self.pass_over(&target, &address);
                }
                let result = result.map_err(|e| e.why);
                let Some(s) = self.jobs.get(&job).and_then(|j| j.steps.get(step as usize)) else {
                    return;
                };
                if let Err(why) = &result {
                    tracing::warn!(job, step, %why, "driver: outcome unknown; will ask");
                }
                let event = answered(s, &token, result);
                match &event {
                    Some(JobEvent::Completed { result, .. }) => {
                        tracing::info!(job, step, ?result, "driver: step done")
                    }
                    Some(JobEvent::Failed { reason, .. }) => {
                        tracing::warn!(job, step, %reason, "driver: step failed")
                    }
                    _ => {}
                }
                if let Some(event) = event {
                    self.record(job, event);
                }
            }
            Reply::Probed {
                job,
                step,
                token,
                target,
                address,
                result,
            } => {
                let key = (job, step);
                self.probing.remove(&key);
                if result.is_err() {
                    self.pass_over(&target, &address);
                }
                let Some(s) = self.jobs.get(&job).and_then(|j| j.steps.get(step as usize)) else {
                    return;
                };
                if !matches!(&s.state, StepState::Unknown { token: t, .. } if *t == token) {
                    return;
                }
                match result.map(|found| resolve(s, &found)) {
                    Ok(Some(event)) => {
                        tracing::info!(job, step, ?event, "driver: probe settled the step");
                        self.probe_backoff.remove(&key);
                        self.record(job, event);
                    }
                    Ok(None) => self.back_off(key),
                    Err(why) => {
                        tracing::debug!(job, step, %why, "driver: probe got no answer; will ask again");
                        self.back_off(key);
                    }
                }
            }
        }
    }
}
