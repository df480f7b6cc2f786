//! The replicated log and its leaders: appending, committing and applying entries to the
//! simulated job table, deposing a leader (its uncommitted tail partly lost) and electing
//! the next, which takes every job over.

use stillpoint_coordinator::Response;

use super::{Entry, Ev, RETAINED_MAX, Sim};
use crate::sim::driver::Lead;

impl Sim {
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

    pub(super) fn apply_committed(&mut self) {
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

    pub(super) fn leader_change(&mut self) {
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

    pub(super) fn elect(&mut self) {
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
}
