//! The executors: orders and probes as an agent answers them, steps running against the
//! simulated world, answers held until a step ends (or "running"), and an agent's crash and
//! return.

use std::rc::Rc;

use stillpoint_coordinator::job::wire::step_resource;
use stillpoint_coordinator::job::{
    Dispatch, FencingToken, Finding, JobId, Observed, PairSync, StepCall, StepId, StepResult,
};

use super::{Ev, REPLY_WITHIN_MS, RpcKind, Sim, Waiter};
use crate::sim::executor::{Begin, Seen, Work, begins_unflushed, work_key};
use crate::sim::world::PairState;

impl Sim {
    pub(super) fn latency(&mut self, agent: usize) -> u64 {
        if self.now < self.agents[agent].slow_until_ms && !self.healing {
            self.rng.range(3_000, 12_000)
        } else {
            self.rng.range(5, 300)
        }
    }

    /// Answers the order `w` was held for (its agent, term, nonce and step).
    pub(super) fn answer(&mut self, w: &Waiter, result: Result<Finding, String>) {
        self.reply(
            w.term,
            w.token.job_id,
            w.token.step_index,
            w.nonce,
            RpcKind::Exec,
            result,
        );
    }

    pub(super) fn add_waiter(&mut self, agent: usize, term: u64, nonce: u64, token: FencingToken) {
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

    pub(super) fn observe(&mut self, call: &StepCall, token: &FencingToken) -> Option<Observed> {
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

    pub(super) fn on_order(
        &mut self,
        a: usize,
        term: u64,
        nonce: u64,
        job: JobId,
        d: Rc<Dispatch>,
    ) {
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

    pub(super) fn on_probe(
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

    pub(super) fn finish(
        &mut self,
        a: usize,
        token: FencingToken,
        outcome: Result<StepResult, String>,
    ) {
        self.agents[a].finish(&token, outcome.clone());
        let done: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.agent == a && w.token == token)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let w = self.waiters.remove(&id).expect("listed above");
            self.answer(
                &w,
                Ok(Finding::Finished {
                    token,
                    outcome: outcome.clone(),
                }),
            );
        }
    }

    pub(super) fn on_exec(&mut self, a: usize, incarnation: u32, token: FencingToken) {
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
    pub(super) fn on_poll(&mut self, a: usize, incarnation: u32, token: FencingToken) {
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

    pub(super) fn crash_agent(&mut self, a: usize) {
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
            self.answer(&w, Err(why));
        }
    }

    pub(super) fn agent_up(&mut self, a: usize) {
        if self.agents[a].up {
            return;
        }
        self.agents[a].up = true;
        let name = self.agents[a].name.clone();
        self.note(|| format!("agent {name} is back; it resumes every quiesce it held"));
        self.world.agent_restarted(&name, self.now);
    }
}
