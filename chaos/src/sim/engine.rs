//! The event loop: virtual time, the events, the network, and [`run`]. The rest of the
//! simulation is in `engine/`, each part an `impl Sim` block over the state defined here:
//! the replicated log and its leaders (`replicated_log`), the executors (`executors`), the
//! fault schedule and the heal (`faults`), and the client (`client`). The leader's driver is
//! in `driver.rs`.

mod client;
mod executors;
mod faults;
mod replicated_log;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::rc::Rc;

use stillpoint_coordinator::JobTable;
use stillpoint_coordinator::inventory::VolumeRef;
use stillpoint_coordinator::job::{
    Dispatch, FencingToken, Finding, JobEvent, JobId, JobKind, Step, StepCall, StepId, StepLimits,
};

use super::driver::Lead;
use super::executor::Agent;
use super::rng::Rng;
use super::site::{Site, array_agent};
use super::world::{Prop, World};
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
                    self.answer(&w, Ok(Finding::Running { token }));
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
