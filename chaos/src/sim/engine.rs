//! The event loop: virtual time, the network, the executors, the replicated log and its
//! leaders, the client, and the fault schedule. The leader's driver is in `driver.rs`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::rc::Rc;

use stillpoint_coordinator::JobTable;
use stillpoint_coordinator::Response;
use stillpoint_coordinator::inventory::VolumeRef;
use stillpoint_coordinator::job::wire::step_resource;
use stillpoint_coordinator::job::{
    Dispatch, FencingToken, Finding, JobEvent, JobId, JobKind, Observed, PairSync, Step, StepCall,
    StepId, StepLimits, StepResult, plan_backup, plan_prepare,
};

use super::driver::Lead;
use super::executor::{Agent, Begin, Seen, Work, begins_unflushed, work_key};
use super::rng::Rng;
use super::site::{Site, array_agent};
use super::world::{PairState, Prop, World};
use super::{Report, RunConfig, check};

/// How long an executor holds an order before answering "running" (the driver then sends it
/// again), and the transport's margin on top: the driver's RPC bound for an order.
pub(super) const REPLY_WITHIN_MS: u64 = 2_000;
pub(super) const TRANSPORT_MARGIN_MS: u64 = 500;
/// The driver's RPC bound for a probe.
pub(super) const PROBE_TIMEOUT_MS: u64 = 1_000;
/// Ended jobs the simulated state keeps (all of them: a run has few).
const RETAINED_MAX: u32 = 10_000;
/// A run processes at most this many events (a livelock is then reported under S7).
const EVENTS_MAX: u64 = 2_000_000;

/// Step limits of the simulated plans: short, so runs are short in virtual time.
pub(super) fn limits() -> StepLimits {
    StepLimits {
        host_step_ms: 20_000,
        replicate_ms: 60_000,
        separate_ms: 10_000,
        release_ms: 20_000,
        await_separated_ms: 60_000,
        report_margin_ms: 2_000,
    }
}

/// A log entry.
#[derive(Clone, Debug)]
pub(super) enum Entry {
    Submit {
        kind: JobKind,
        steps: Vec<Step>,
        no_queue: bool,
        at_ms: u64,
        client: u32,
    },
    Event {
        job: JobId,
        event: JobEvent,
        at_ms: u64,
        /// The proposing leader's term; 0 for a client's request (a cancel).
        term: u64,
    },
    /// An entry already applied to the state (its content moved there).
    Applied,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RpcKind {
    Exec,
    Probe,
}

#[derive(Clone, Debug)]
pub(super) enum Msg {
    Order {
        term: u64,
        nonce: u64,
        job: JobId,
        dispatch: Rc<Dispatch>,
    },
    Probe {
        term: u64,
        nonce: u64,
        step: StepId,
        token: FencingToken,
        call: StepCall,
    },
}

#[derive(Clone, Debug)]
pub(super) enum Ev {
    Wake {
        term: u64,
    },
    Deliver {
        agent: usize,
        /// Boxed: events are moved around the queue, and orders are large.
        msg: Box<Msg>,
    },
    Reply {
        term: u64,
        job: JobId,
        step: StepId,
        nonce: u64,
        kind: RpcKind,
        result: Box<Result<Finding, String>>,
    },
    RpcTimeout {
        term: u64,
        job: JobId,
        step: StepId,
        nonce: u64,
        kind: RpcKind,
    },
    Exec {
        agent: usize,
        incarnation: u32,
        token: FencingToken,
    },
    Poll {
        agent: usize,
        incarnation: u32,
        token: FencingToken,
    },
    AnswerDue {
        waiter: u64,
    },
    Deadline {
        volume: VolumeRef,
        id: u64,
    },
    Commit,
    Elect,
    ZombieStops {
        term: u64,
    },
    Fault,
    AgentUp {
        agent: usize,
    },
    LinkUp,
    Submit {
        client: u32,
        tries: u32,
    },
    Cancel,
    Heal,
}

struct Sched {
    at_ms: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Sched {
    fn cmp(&self, other: &Self) -> Ordering {
        // Earliest first from a max-heap.
        (other.at_ms, other.seq).cmp(&(self.at_ms, self.seq))
    }
}

/// An order an executor answers when the step finishes, or with "running" at `REPLY_WITHIN_MS`.
#[derive(Clone, Debug)]
struct Waiter {
    agent: usize,
    term: u64,
    nonce: u64,
    token: FencingToken,
}

pub(super) struct Sim {
    pub cfg: RunConfig,
    pub rng: Rng,
    pub now: u64,
    sched_seq: u64,
    queue: BinaryHeap<Sched>,
    pub site: Site,
    pub world: World,
    pub agents: Vec<Agent>,
    agent_index: BTreeMap<String, usize>,
    // The replicated log and its leaders.
    pub log: Vec<Entry>,
    pub committed: usize,
    pub applied: JobTable,
    applied_idx: usize,
    pub term: u64,
    /// Driver instances by term: the current leader's and deposed ones still running.
    pub leads: BTreeMap<u64, Lead>,
    /// A leader is elected (the lead of `term`).
    pub leading: bool,
    commit_scheduled: bool,
    // The client.
    pub accepted: Vec<JobId>,
    pending_submits: BTreeMap<usize, (u32, u32)>,
    // Faults.
    pub healing: bool,
    pub heal_at_ms: u64,
    storm_until_ms: u64,
    commit_lag_until_ms: u64,
    pub nonce: u64,
    waiter_seq: u64,
    waiters: BTreeMap<u64, Waiter>,
    pub report: Report,
    /// Timeline notes (seq, text), when tracing.
    pub notes: Vec<(u64, String)>,
}

impl Sim {
    pub fn schedule(&mut self, at_ms: u64, ev: Ev) {
        self.sched_seq += 1;
        self.queue.push(Sched {
            at_ms,
            seq: self.sched_seq,
            ev,
        });
    }

    pub fn note(&mut self, f: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = format!("{:>10.3}s  {}", self.now as f64 / 1000.0, f());
            self.notes.push((self.world.seq, line));
        }
    }

    pub fn count_fault(&mut self, kind: &'static str) {
        *self.report.faults.entry(kind).or_default() += 1;
    }

    pub fn violation(&mut self, prop: Prop, what: String) {
        let at_ms = self.now;
        self.world
            .violations
            .push(super::Violation { prop, at_ms, what });
    }

    /// The agent that executes steps for `target`.
    pub fn agent_of(&self, target: &stillpoint_coordinator::job::StepTarget) -> usize {
        use stillpoint_coordinator::job::StepTarget;
        let name = match target {
            StepTarget::Node(n) => n.clone(),
            StepTarget::Array(a) => array_agent(a),
        };
        self.agent_index[&name]
    }

    // ---- the network ----------------------------------------------------------------

    /// The delay of one message, or `None` if it is lost.
    fn net(&mut self) -> Option<u64> {
        if self.healing {
            return Some(self.rng.range(1, 10));
        }
        let storm = self.now < self.storm_until_ms;
        let drop_per_mille = if storm { 150 } else { 15 };
        if self.rng.chance(drop_per_mille) {
            self.count_fault("message lost");
            return None;
        }
        if storm {
            let d = self.rng.range(0, 3_000);
            if d > 500 {
                self.count_fault("message delayed");
            }
            Some(d)
        } else {
            Some(self.rng.range(1, 10))
        }
    }

    pub fn send(&mut self, agent: usize, msg: Msg) {
        if let Some(d) = self.net() {
            self.schedule(
                self.now + d,
                Ev::Deliver {
                    agent,
                    msg: Box::new(msg),
                },
            );
        }
    }

    fn reply(
        &mut self,
        term: u64,
        job: JobId,
        step: StepId,
        nonce: u64,
        kind: RpcKind,
        result: Result<Finding, String>,
    ) {
        if let Some(d) = self.net() {
            self.schedule(
                self.now + d,
                Ev::Reply {
                    term,
                    job,
                    step,
                    nonce,
                    kind,
                    result: Box::new(result),
                },
            );
        }
    }

    // ---- the log ------------------------------------------------------------------------

    pub fn append(&mut self, entry: Entry) {
        self.log.push(entry);
        if !self.commit_scheduled {
            self.commit_scheduled = true;
            let lag = if !self.healing && self.now < self.commit_lag_until_ms {
                self.rng.range(500, 4_000)
            } else {
                self.rng.range(1, 30)
            };
            self.schedule(self.now + lag, Ev::Commit);
        }
    }

    fn apply_committed(&mut self) {
        while self.applied_idx < self.committed {
            let idx = self.applied_idx;
            self.applied_idx += 1;
            // Applied entries are never read again (the log is only cut above the commit
            // point): the entry's content moves into the state instead of being copied.
            match std::mem::replace(&mut self.log[idx], Entry::Applied) {
                Entry::Applied => {}
                Entry::Submit {
                    kind,
                    steps,
                    no_queue,
                    at_ms,
                    client,
                    ..
                } => {
                    self.pending_submits.remove(&idx);
                    match self.applied.submit(kind, steps, "client", at_ms, no_queue) {
                        Response::JobAccepted {
                            job_id,
                            waiting_for,
                        } => {
                            self.accepted.push(job_id);
                            self.note(|| {
                                format!(
                                    "client {client}: job {job_id} accepted{}",
                                    waiting_for
                                        .map(|w| format!(", queued behind job {w}"))
                                        .unwrap_or_default()
                                )
                            });
                        }
                        Response::Refused { rule } => {
                            *self
                                .report
                                .jobs
                                .entry("refused (S5, no queue)")
                                .or_default() += 1;
                            self.note(|| format!("client {client}: refused: {rule}"));
                        }
                        _ => {}
                    }
                }
                Entry::Event {
                    job,
                    event,
                    at_ms,
                    term,
                } => {
                    let r = self.applied.record(job, &event, at_ms, RETAINED_MAX);
                    if let Response::Refused { rule } = r {
                        if term != 0 {
                            // The log refused what the driver's copy accepted: the real driver
                            // drops its copies and takes over again from the log.
                            if let Some(l) = self.leads.get_mut(&term).filter(|l| !l.zombie) {
                                l.retake = true;
                            }
                            self.note(|| format!("log refused job {job} {event:?}: {rule}"));
                        } else {
                            self.note(|| format!("client: cancel of job {job} refused: {rule}"));
                        }
                    }
                }
            }
        }
    }

    pub fn leader_term(&self) -> Option<u64> {
        self.leading.then_some(self.term)
    }

    // ---- executors ----------------------------------------------------------------------

    fn latency(&mut self, agent: usize) -> u64 {
        if self.now < self.agents[agent].slow_until_ms && !self.healing {
            self.rng.range(3_000, 12_000)
        } else {
            self.rng.range(5, 300)
        }
    }

    fn add_waiter(&mut self, agent: usize, term: u64, nonce: u64, token: FencingToken) {
        self.waiter_seq += 1;
        let id = self.waiter_seq;
        self.waiters.insert(
            id,
            Waiter {
                agent,
                term,
                nonce,
                token,
            },
        );
        self.schedule(self.now + REPLY_WITHIN_MS, Ev::AnswerDue { waiter: id });
    }

    fn observe(&mut self, call: &StepCall, token: &FencingToken) -> Option<Observed> {
        match call {
            StepCall::Quiesce { volume, .. } => Some(Observed::Volume {
                quiesce_id: self.world.held_by(volume, token.job_id, token.step_index),
            }),
            StepCall::Separate { pair } => {
                let sync = match self.world.pair_state(pair, self.now) {
                    PairState::Replicating { .. } => PairSync::Replicating,
                    PairState::InSync => PairSync::InSync,
                    PairState::Separating { .. } | PairState::Separated
                        if !self.world.separated_by_step(pair, token) =>
                    {
                        PairSync::Other("separated, not by this step".into())
                    }
                    PairState::Separating { .. } => PairSync::Separating,
                    PairState::Separated => PairSync::Separated,
                    other => PairSync::Other(other.name().to_string()),
                };
                Some(Observed::Pair { sync })
            }
            _ => None,
        }
    }

    fn on_order(&mut self, a: usize, term: u64, nonce: u64, job: JobId, d: Rc<Dispatch>) {
        let step = d.step;
        if !self.agents[a].up {
            let why = format!("{}: connection refused", self.agents[a].name);
            self.reply(term, job, step, nonce, RpcKind::Exec, Err(why));
            return;
        }
        let resource = step_resource(&d.call);
        let seq = self.world.next_seq();
        let token = d.token;
        let durable = !begins_unflushed(&d.call);
        match self.agents[a].on_order(&token, resource.as_deref(), durable, seq, self.now) {
            Begin::Start => {
                self.agents[a].work.insert(
                    work_key(&token),
                    Work {
                        dispatch: d,
                        resource,
                        begun_seq: seq,
                        done_at_ms: None,
                    },
                );
                let incarnation = self.agents[a].incarnation;
                let lat = self.latency(a);
                self.schedule(
                    self.now + lat,
                    Ev::Exec {
                        agent: a,
                        incarnation,
                        token,
                    },
                );
                self.add_waiter(a, term, nonce, token);
            }
            Begin::Running => self.add_waiter(a, term, nonce, token),
            Begin::Finished(outcome) => self.reply(
                term,
                job,
                step,
                nonce,
                RpcKind::Exec,
                Ok(Finding::Finished { token, outcome }),
            ),
            Begin::Interrupted => {
                let observed = self.observe(&d.call, &token);
                self.reply(
                    term,
                    job,
                    step,
                    nonce,
                    RpcKind::Exec,
                    Ok(Finding::Interrupted { token, observed }),
                )
            }
            Begin::Refused(why) => {
                let why = format!("{}: {why}", self.agents[a].name);
                self.note(|| format!("{why} (job {job} step {step})"));
                self.reply(term, job, step, nonce, RpcKind::Exec, Err(why))
            }
        }
    }

    fn on_probe(
        &mut self,
        a: usize,
        term: u64,
        nonce: u64,
        step: StepId,
        token: FencingToken,
        call: StepCall,
    ) {
        let job = token.job_id;
        if !self.agents[a].up {
            let why = format!("{}: connection refused", self.agents[a].name);
            self.reply(term, job, step, nonce, RpcKind::Probe, Err(why));
            return;
        }
        let seq = self.world.next_seq();
        let finding = match self.agents[a].on_probe(&token, seq, self.now) {
            Seen::Nothing => Finding::NotRecorded,
            Seen::Finished(token, outcome) => Finding::Finished { token, outcome },
            Seen::Running(token) => Finding::Running { token },
            Seen::Interrupted(token) => {
                let observed = self.observe(&call, &token);
                Finding::Interrupted { token, observed }
            }
        };
        self.reply(term, job, step, nonce, RpcKind::Probe, Ok(finding));
    }

    fn finish(&mut self, a: usize, token: FencingToken, outcome: Result<StepResult, String>) {
        self.agents[a].finish(&token, outcome.clone());
        let done: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.agent == a && w.token == token)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let w = self.waiters.remove(&id).expect("listed above");
            self.reply(
                w.term,
                token.job_id,
                token.step_index,
                w.nonce,
                RpcKind::Exec,
                Ok(Finding::Finished {
                    token,
                    outcome: outcome.clone(),
                }),
            );
        }
    }

    fn on_exec(&mut self, a: usize, incarnation: u32, token: FencingToken) {
        if !self.agents[a].up || self.agents[a].incarnation != incarnation {
            return;
        }
        if self.agents[a].waits_for_earlier(&token) {
            self.schedule(
                self.now + 100,
                Ev::Exec {
                    agent: a,
                    incarnation,
                    token,
                },
            );
            return;
        }
        let Some(work) = self.agents[a].work.get(&work_key(&token)).cloned() else {
            return;
        };
        let d = &work.dispatch;
        let now = self.now;
        let out = match &d.call {
            StepCall::FreeRv { volume } => Some(
                self.world
                    .free_rv(volume, token, now)
                    .map(|_| StepResult::RvFreed),
            ),
            StepCall::SetPair { .. } => Some(Ok(StepResult::PairSet)),
            StepCall::Replicate { pair } => {
                let copy_ms = self.rng.range(500, 10_000);
                match self.world.replicate(pair, token, now, copy_ms) {
                    Err(e) => Some(Err(e)),
                    Ok(()) => {
                        self.on_poll(a, incarnation, token);
                        None
                    }
                }
            }
            StepCall::Quiesce {
                volume, limit_ms, ..
            } => match self.world.quiesce(volume, token, *limit_ms, now) {
                Ok(id) => {
                    self.schedule(
                        now + limit_ms,
                        Ev::Deadline {
                            volume: volume.clone(),
                            id,
                        },
                    );
                    Some(Ok(StepResult::Quiesced { quiesce_id: id }))
                }
                Err(e) => Some(Err(e)),
            },
            StepCall::Separate { pair } => {
                let copy_ms = self.rng.range(200, 5_000);
                Some(
                    self.world
                        .separate(pair, token, now, copy_ms)
                        .map(|_| StepResult::SeparateAccepted),
                )
            }
            StepCall::Release { volume, .. } => Some(
                self.world
                    .release(volume, d.quiesce_id, token, now)
                    .map(|held_throughout| StepResult::Released {
                        held_throughout,
                        backup_label: None,
                    }),
            ),
            StepCall::AwaitSeparated { .. } => {
                self.on_poll(a, incarnation, token);
                None
            }
            StepCall::MountRv { volume } => Some(self.world.mount_rv(volume, token, now).map(
                |_| StepResult::RvMounted {
                    repaired: d.check_first,
                },
            )),
            StepCall::RunBackup { .. } => {
                let done_at = now + self.rng.range(100, 5_000);
                if let Some(w) = self.agents[a].work.get_mut(&work_key(&token)) {
                    w.done_at_ms = Some(done_at);
                }
                self.schedule(
                    done_at,
                    Ev::Poll {
                        agent: a,
                        incarnation,
                        token,
                    },
                );
                None
            }
        };
        if let Some(o) = out {
            self.finish(a, token, o);
        }
    }

    /// A step that waits for its target checks it again.
    fn on_poll(&mut self, a: usize, incarnation: u32, token: FencingToken) {
        if !self.agents[a].up || self.agents[a].incarnation != incarnation {
            return;
        }
        let Some(work) = self.agents[a].work.get(&work_key(&token)).cloned() else {
            return;
        };
        let now = self.now;
        let again = |sim: &mut Sim, pair: &str| {
            let at = sim
                .world
                .copy_done_at(pair)
                .unwrap_or(now + 2_000)
                .max(now + 1);
            sim.schedule(
                at,
                Ev::Poll {
                    agent: a,
                    incarnation,
                    token,
                },
            );
        };
        match &work.dispatch.call {
            StepCall::Replicate { pair } => match self.world.pair_state(pair, now) {
                PairState::InSync => self.finish(a, token, Ok(StepResult::InSync)),
                PairState::Replicating { .. } => again(self, pair),
                other => self.finish(
                    a,
                    token,
                    Err(format!("{pair} went to {} while replicating", other.name())),
                ),
            },
            StepCall::AwaitSeparated { pair } => match self.world.pair_state(pair, now) {
                PairState::Separated => self.finish(a, token, Ok(StepResult::Separated)),
                PairState::Separating { .. } => again(self, pair),
                other => self.finish(
                    a,
                    token,
                    Err(format!("{pair} is {}, not separating", other.name())),
                ),
            },
            StepCall::RunBackup { .. } if work.done_at_ms.is_some_and(|t| now >= t) => {
                let node = self.agents[a].name.clone();
                self.world.run_backup(&node, token, now);
                self.finish(a, token, Ok(StepResult::BackupRan { exit_code: 0 }));
            }
            _ => {}
        }
    }

    fn crash_agent(&mut self, a: usize) {
        self.agents[a].crash();
        let lost: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.agent == a)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let w = self.waiters.remove(&id).expect("listed above");
            let why = format!("{}: connection reset", self.agents[a].name);
            self.reply(
                w.term,
                w.token.job_id,
                w.token.step_index,
                w.nonce,
                RpcKind::Exec,
                Err(why),
            );
        }
    }

    fn agent_up(&mut self, a: usize) {
        if self.agents[a].up {
            return;
        }
        self.agents[a].up = true;
        let name = self.agents[a].name.clone();
        self.note(|| format!("agent {name} is back; it resumes every quiesce it held"));
        self.world.agent_restarted(&name, self.now);
    }

    // ---- leaders ------------------------------------------------------------------------

    fn leader_change(&mut self) {
        let Some(term) = self.leader_term() else {
            return;
        };
        self.count_fault("leader change");
        self.leading = false;
        let zombie_ms = if self.rng.chance(500) {
            0
        } else {
            self.rng.range(1, 3_000)
        };
        if let Some(l) = self.leads.get_mut(&term) {
            l.zombie = true;
        }
        self.schedule(self.now + zombie_ms, Ev::ZombieStops { term });
        let uncommitted = (self.log.len() - self.committed) as u64;
        let keep = self.committed + self.rng.below(uncommitted + 1) as usize;
        let lost = self.log.len() - keep;
        self.log.truncate(keep);
        let lost_submits: Vec<(usize, (u32, u32))> = self
            .pending_submits
            .range(keep..)
            .map(|(i, c)| (*i, *c))
            .collect();
        for (i, (client, tries)) in lost_submits {
            self.pending_submits.remove(&i);
            self.note(|| format!("client {client}: submission lost with the leader; retrying"));
            self.schedule(
                self.now + 500,
                Ev::Submit {
                    client,
                    tries: tries + 1,
                },
            );
        }
        let elect_ms = self.rng.range(150, 2_500);
        self.schedule(self.now + elect_ms, Ev::Elect);
        self.note(|| {
            format!("leader of term {term} deposed (runs on for {zombie_ms} ms); log keeps {keep} entries, loses {lost} uncommitted")
        });
    }

    fn elect(&mut self) {
        if self.leading {
            return;
        }
        self.term += 1;
        self.committed = self.log.len();
        self.commit_scheduled = false;
        self.apply_committed();
        let term = self.term;
        self.leads.insert(term, Lead::new());
        self.leading = true;
        self.note(|| format!("leader of term {term} elected; takes over"));
        self.take_over(term);
        self.act(term);
    }

    // ---- faults -------------------------------------------------------------------------

    fn fault(&mut self) {
        const KINDS: [(&str, u64); 9] = [
            ("leader change", 20),
            ("agent restart", 12),
            ("copy fault", 10),
            ("RDR link down", 6),
            ("holder refuses unmount", 10),
            ("stop hook fails", 8),
            ("slow host", 8),
            ("commit lag", 8),
            ("network storm", 10),
        ];
        let total: u64 = KINDS.iter().map(|(_, w)| w).sum();
        let mut r = self.rng.below(total);
        let kind = KINDS
            .iter()
            .find(|(_, w)| {
                if r < *w {
                    true
                } else {
                    r -= w;
                    false
                }
            })
            .map(|(k, _)| *k)
            .unwrap_or("leader change");
        let now = self.now;
        match kind {
            "leader change" => self.leader_change(),
            "agent restart" => {
                let a = self.rng.below(self.agents.len() as u64) as usize;
                if self.agents[a].up {
                    self.count_fault(kind);
                    self.crash_agent(a);
                    let down_ms = self.rng.range(200, 8_000);
                    let name = self.agents[a].name.clone();
                    self.note(|| format!("FAULT agent {name} killed (back in {down_ms} ms)"));
                    self.schedule(now + down_ms, Ev::AgentUp { agent: a });
                }
            }
            "copy fault" => {
                let p = self.rng.pick(&self.site.pairs).name.clone();
                if self.world.copy_fault(&p, now) {
                    self.count_fault(kind);
                    self.note(|| format!("FAULT copy fault on {p}"));
                }
            }
            "RDR link down" => {
                if self.world.link_up && self.site.pairs.iter().any(|p| p.rdr) {
                    self.count_fault(kind);
                    self.world.set_link(false, now, 0);
                    let up_ms = self.rng.range(1_000, 15_000);
                    self.note(|| format!("FAULT RDR link down for {up_ms} ms"));
                    self.schedule(now + up_ms, Ev::LinkUp);
                }
            }
            "holder refuses unmount" => {
                let p = self.rng.pick(&self.site.pairs).clone();
                let v = if self.rng.chance(500) { p.mv } else { p.rv };
                let ms = self.rng.range(1_000, 20_000);
                self.count_fault(kind);
                self.note(|| format!("FAULT a process holds {v} for {ms} ms"));
                self.world.busy_until.insert(v, now + ms);
            }
            "stop hook fails" => {
                let mut nodes = self.site.business.clone();
                nodes.push(self.site.backup.clone());
                let n = self.rng.pick(&nodes).clone();
                let ms = self.rng.range(1_000, 15_000);
                self.count_fault(kind);
                self.note(|| format!("FAULT stop hooks on {n} fail for {ms} ms"));
                self.world.hook_fails_until.insert(n, now + ms);
            }
            "slow host" => {
                let a = self.rng.below(self.agents.len() as u64) as usize;
                let ms = self.rng.range(2_000, 20_000);
                self.count_fault(kind);
                self.agents[a].slow_until_ms = now + ms;
                let name = self.agents[a].name.clone();
                self.note(|| format!("FAULT {name} executes slowly for {ms} ms"));
            }
            "commit lag" => {
                let ms = self.rng.range(1_000, 10_000);
                self.count_fault(kind);
                self.commit_lag_until_ms = now + ms;
                self.note(|| format!("FAULT the log commits slowly for {ms} ms"));
            }
            _ => {
                let ms = self.rng.range(500, 8_000);
                self.count_fault("network storm");
                self.storm_until_ms = now + ms;
                self.note(|| format!("FAULT network storm (loss, delay, reordering) for {ms} ms"));
            }
        }
        let next = self.rng.range(300, 4_000);
        self.schedule(now + next, Ev::Fault);
    }

    fn heal(&mut self) {
        self.healing = true;
        self.heal_at_ms = self.now;
        self.note(|| "HEAL: every fault removed".to_string());
        self.storm_until_ms = 0;
        self.commit_lag_until_ms = 0;
        self.world.busy_until.clear();
        self.world.hook_fails_until.clear();
        for a in 0..self.agents.len() {
            self.agents[a].slow_until_ms = 0;
            self.agent_up(a);
        }
        if !self.world.link_up {
            let ms = self.rng.range(500, 5_000);
            self.world.set_link(true, self.now, ms);
        }
    }

    // ---- the client ---------------------------------------------------------------------

    fn submit(&mut self, client: u32, tries: u32) {
        if !self.leading {
            if tries < 40 {
                self.schedule(
                    self.now + 500,
                    Ev::Submit {
                        client,
                        tries: tries + 1,
                    },
                );
            }
            return;
        }
        let group = self.rng.pick(&self.site.groups).clone();
        let prepare = self.rng.chance(150);
        let (kind, steps) = if prepare {
            (
                JobKind::Prepare {
                    group: group.name.clone(),
                },
                plan_prepare(&group, &limits()),
            )
        } else {
            (
                JobKind::Backup {
                    group: group.name.clone(),
                },
                plan_backup(&group, &limits()),
            )
        };
        let no_queue = self.rng.chance(250);
        let idx = self.log.len();
        self.note(|| {
            format!(
                "client {client}: submits {kind:?}{}",
                if no_queue { " (no queue)" } else { "" }
            )
        });
        self.append(Entry::Submit {
            kind,
            steps,
            no_queue,
            at_ms: self.now,
            client,
        });
        self.pending_submits.insert(idx, (client, tries));
    }

    fn cancel(&mut self) {
        if !self.leading || self.accepted.is_empty() {
            return;
        }
        let job = *self.rng.pick(&self.accepted);
        self.count_fault("cancel (operator)");
        self.note(|| format!("client: cancel job {job}"));
        self.append(Entry::Event {
            job,
            event: JobEvent::CancelRequested {
                by: "operator".into(),
            },
            at_ms: self.now,
            term: 0,
        });
    }

    // ---- the loop -----------------------------------------------------------------------

    fn all_done(&self) -> bool {
        self.healing
            && self.pending_submits.is_empty()
            && self.committed == self.log.len()
            && self.applied.unfinished().next().is_none()
            && self.world.still_quiesced().is_empty()
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Wake { term } => {
                if self
                    .leads
                    .get(&term)
                    .is_some_and(|l| l.wake_at_ms == Some(self.now))
                {
                    if let Some(l) = self.leads.get_mut(&term) {
                        l.wake_at_ms = None;
                    }
                    self.act(term);
                }
            }
            Ev::Deliver { agent, msg } => match *msg {
                Msg::Order {
                    term,
                    nonce,
                    job,
                    dispatch,
                } => self.on_order(agent, term, nonce, job, dispatch),
                Msg::Probe {
                    term,
                    nonce,
                    step,
                    token,
                    call,
                } => self.on_probe(agent, term, nonce, step, token, call),
            },
            Ev::Reply {
                term,
                job,
                step,
                nonce,
                kind,
                result,
            } => self.on_reply(term, job, step, nonce, kind, Some(*result)),
            Ev::RpcTimeout {
                term,
                job,
                step,
                nonce,
                kind,
            } => self.on_reply(term, job, step, nonce, kind, None),
            Ev::Exec {
                agent,
                incarnation,
                token,
            } => self.on_exec(agent, incarnation, token),
            Ev::Poll {
                agent,
                incarnation,
                token,
            } => self.on_poll(agent, incarnation, token),
            Ev::AnswerDue { waiter } => {
                if let Some(w) = self.waiters.remove(&waiter) {
                    let token = w.token;
                    self.reply(
                        w.term,
                        token.job_id,
                        token.step_index,
                        w.nonce,
                        RpcKind::Exec,
                        Ok(Finding::Running { token }),
                    );
                }
            }
            Ev::Deadline { volume, id } => self.world.deadline_passed(&volume, id, self.now),
            Ev::Commit => {
                self.commit_scheduled = false;
                self.committed = self.log.len();
                self.apply_committed();
                if let Some(term) = self.leader_term() {
                    self.sync_from_state(term);
                    self.act(term);
                }
            }
            Ev::Elect => self.elect(),
            Ev::ZombieStops { term } => {
                if self.leads.get(&term).is_some_and(|l| l.zombie) {
                    self.leads.remove(&term);
                }
            }
            Ev::Fault => {
                if !self.healing {
                    self.fault();
                }
            }
            Ev::AgentUp { agent } => self.agent_up(agent),
            Ev::LinkUp => {
                if !self.world.link_up {
                    let ms = self.rng.range(500, 5_000);
                    self.world.set_link(true, self.now, ms);
                    self.note(|| "RDR link up again".into());
                }
            }
            Ev::Submit { client, tries } => self.submit(client, tries),
            Ev::Cancel => self.cancel(),
            Ev::Heal => self.heal(),
        }
    }
}

/// Runs one seed to its end and judges it.
pub fn run(seed: u64, cfg: &RunConfig) -> Report {
    let mut rng = Rng::new(seed);
    let site = Site::draw(&cfg.site, &mut rng);
    let separated: Vec<bool> = site.pairs.iter().map(|_| rng.chance(400)).collect();
    let mut world = World::new(&site, &separated);
    world.host_claims_held = cfg.mutations.host_claims_held;
    let agents: Vec<Agent> = site
        .agents()
        .into_iter()
        .map(|n| {
            let mut a = Agent::new(n);
            a.no_fencing = cfg.mutations.no_fencing;
            a
        })
        .collect();
    let agent_index = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.clone(), i))
        .collect();
    let mut sim = Sim {
        cfg: cfg.clone(),
        rng,
        now: 0,
        sched_seq: 0,
        queue: BinaryHeap::new(),
        site,
        world,
        agents,
        agent_index,
        log: Vec::new(),
        committed: 0,
        applied: JobTable::default(),
        applied_idx: 0,
        term: 0,
        leads: BTreeMap::new(),
        leading: false,
        commit_scheduled: false,
        accepted: Vec::new(),
        pending_submits: BTreeMap::new(),
        healing: false,
        heal_at_ms: cfg.fault_ms,
        storm_until_ms: 0,
        commit_lag_until_ms: 0,
        nonce: 0,
        waiter_seq: 0,
        waiters: BTreeMap::new(),
        report: Report {
            seed,
            ..Report::default()
        },
        notes: Vec::new(),
    };
    if cfg.trace {
        let site = describe_site(&sim.site);
        sim.note(|| format!("seed {seed}: site {site}"));
    }
    let first = sim.rng.range(100, 500);
    sim.schedule(first, Ev::Elect);
    let jobs = sim.rng.range(1, cfg.jobs_max.max(1) as u64) as u32;
    for client in 0..jobs {
        let at = sim.rng.range(0, cfg.fault_ms * 7 / 10);
        sim.schedule(at, Ev::Submit { client, tries: 0 });
    }
    for _ in 0..sim.rng.below(3) {
        let at = sim.rng.range(0, cfg.fault_ms);
        sim.schedule(at, Ev::Cancel);
    }
    let first_fault = sim.rng.range(200, 3_000);
    sim.schedule(first_fault, Ev::Fault);
    sim.schedule(cfg.fault_ms, Ev::Heal);
    let mut events = 0u64;
    let mut bounded_out = None;
    while let Some(s) = sim.queue.pop() {
        if sim.healing && s.at_ms > sim.heal_at_ms + cfg.heal_ms_max {
            bounded_out = Some(format!(
                "the heal phase passed its bound of {} ms",
                cfg.heal_ms_max
            ));
            break;
        }
        if events >= EVENTS_MAX {
            bounded_out = Some(format!("the run passed {EVENTS_MAX} events"));
            break;
        }
        sim.now = s.at_ms;
        sim.step(s.ev);
        events += 1;
        if sim.all_done() {
            break;
        }
    }
    if let Some(why) = bounded_out {
        sim.violation(Prop::S7, format!("{why} with jobs unfinished"));
    }
    sim.report.events = events;
    sim.report.end_ms = sim.now;
    check::judge(&mut sim);
    sim.report.violations = std::mem::take(&mut sim.world.violations);
    if cfg.trace {
        sim.report.timeline = super::summary::timeline(&sim);
    }
    sim.report
}

fn describe_site(site: &Site) -> String {
    let pairs: Vec<String> = site
        .pairs
        .iter()
        .map(|p| {
            format!(
                "{} ({} {}→{}, MV {}, RV {}, quiesce ≤ {} ms)",
                p.name,
                if p.rdr { "RDR" } else { "DDR" },
                p.mv_array,
                p.rv_array,
                p.mv,
                p.rv,
                p.quiesce_ms_max
            )
        })
        .collect();
    let groups: Vec<String> = site
        .groups
        .iter()
        .map(|g| {
            format!(
                "{} = [{}]",
                g.name,
                g.members
                    .iter()
                    .map(|m| m.pair.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    format!("pairs: {}; groups: {}", pairs.join(", "), groups.join(", "))
}
