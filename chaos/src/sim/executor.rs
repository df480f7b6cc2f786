//! A step executor (one per agent): its journal and the fencing rules it keeps (S6).
//!
//! - A token older, in (term, attempt) order, than one seen for the same step is refused; so
//!   is a token whose term is older than one seen for the same job or the same resource.
//! - A repeated token is answered from the journal, never executed again.
//! - A probe fences the token it asks about: afterwards that token (and any older one of the
//!   step, and any token of the job from an older term) is refused.
//!
//! Its log of begins and probes is what the S6 checker reads.

use std::collections::BTreeMap;

use stillpoint_coordinator::job::{Dispatch, FencingToken, StepCall, StepResult};

/// (term, attempt): the order of two tokens of one step, as the executor's journal keeps it.
pub fn order(t: &FencingToken) -> (u64, u32) {
    (t.term, t.attempt)
}

/// One attempt in the journal.
#[derive(Clone, Debug)]
pub struct Record {
    pub token: FencingToken,
    /// `None` while begun and not finished.
    pub outcome: Option<Result<StepResult, String>>,
}

#[derive(Clone, Default, Debug)]
struct StepJournal {
    /// The newest token seen for the step (begun or asked about).
    fence: Option<(u64, u32)>,
    /// Attempts, by (attempt, term): the last is the latest.
    records: BTreeMap<(u32, u64), Record>,
}

/// What the executor's log says happened.
#[derive(Clone, Debug)]
pub enum ExecKind {
    Begin,
    Probe,
}

#[derive(Clone, Debug)]
pub struct ExecLog {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: ExecKind,
    pub token: FencingToken,
}

/// How the executor takes an order.
pub enum Begin {
    /// New: execute it.
    Start,
    /// Known and finished: answer from the journal.
    Finished(Result<StepResult, String>),
    /// Known and still running here: answer when it finishes.
    Running,
    /// Known, begun by an earlier life of this agent, never finished.
    Interrupted,
    /// Fenced (S6).
    Refused(String),
}

/// What the journal holds about a step, for a probe.
pub enum Seen {
    Nothing,
    Finished(FencingToken, Result<StepResult, String>),
    Running(FencingToken),
    Interrupted(FencingToken),
}

/// A step this life of the agent is executing.
#[derive(Clone, Debug)]
pub struct Work {
    pub dispatch: std::rc::Rc<Dispatch>,
    /// The pair or volume it acts on: one step at a time per resource, in the order begun.
    pub resource: Option<String>,
    /// When it was begun (the run's order of happenings).
    pub begun_seq: u64,
    /// For a backup command: when it exits.
    pub done_at_ms: Option<u64>,
}

/// An agent's executor.
pub struct Agent {
    pub name: String,
    pub up: bool,
    /// Bumped at every restart: work of an earlier life is dropped.
    pub incarnation: u32,
    steps: BTreeMap<(u64, u32), StepJournal>,
    job_fence: BTreeMap<u64, u64>,
    resource_fence: BTreeMap<String, u64>,
    /// Steps this life is executing, by token.
    pub work: BTreeMap<(u64, u32, u32, u64), Work>,
    pub log: Vec<ExecLog>,
    /// Host steps take this long on this agent until `slow_until_ms` (a slow host).
    pub slow_until_ms: u64,
    /// Mutation (tests only): keep no fences.
    pub no_fencing: bool,
    /// What the journal holds on disk: the state at its last flush. A crash goes back to it
    /// (sled writes not flushed are lost); the real agent flushes every begin and outcome but
    /// those of the freeze window (a separate's and a release's begin and outcome, a
    /// quiesce's outcome), and every probe's fence.
    durable: Box<DurableJournal>,
}

/// The journal's contents as of a flush.
#[derive(Clone, Debug, Default)]
struct DurableJournal {
    steps: BTreeMap<(u64, u32), StepJournal>,
    job_fence: BTreeMap<u64, u64>,
    resource_fence: BTreeMap<String, u64>,
}

/// Whether the real executor begins `call` without flushing the journal (the freeze window).
pub fn begins_unflushed(call: &StepCall) -> bool {
    matches!(call, StepCall::Separate { .. } | StepCall::Release { .. })
}

/// Whether the real executor records `call`'s outcome without flushing the journal.
pub fn finishes_unflushed(call: &StepCall) -> bool {
    matches!(
        call,
        StepCall::Quiesce { .. } | StepCall::Separate { .. } | StepCall::Release { .. }
    )
}

pub fn work_key(t: &FencingToken) -> (u64, u32, u32, u64) {
    (t.job_id, t.step_index, t.attempt, t.term)
}

impl Agent {
    pub fn new(name: String) -> Agent {
        Agent {
            name,
            up: true,
            incarnation: 0,
            steps: BTreeMap::new(),
            job_fence: BTreeMap::new(),
            resource_fence: BTreeMap::new(),
            work: BTreeMap::new(),
            log: Vec::new(),
            slow_until_ms: 0,
            no_fencing: false,
            durable: Box::default(),
        }
    }

    /// A durable write: everything recorded so far survives a crash.
    fn flush(&mut self) {
        *self.durable = DurableJournal {
            steps: self.steps.clone(),
            job_fence: self.job_fence.clone(),
            resource_fence: self.resource_fence.clone(),
        };
    }

    /// An order arrives under `token` for a step acting on `resource`.
    pub fn on_order(
        &mut self,
        token: &FencingToken,
        resource: Option<&str>,
        durable: bool,
        seq: u64,
        now_ms: u64,
    ) -> Begin {
        let key = (token.job_id, token.step_index);
        let j = self.steps.entry(key).or_default();
        if let Some(r) = j.records.get(&(token.attempt, token.term)) {
            return match &r.outcome {
                Some(o) => Begin::Finished(o.clone()),
                None if self.work.contains_key(&work_key(token)) => Begin::Running,
                None => Begin::Interrupted,
            };
        }
        if !self.no_fencing {
            if let Some(f) = j.fence.filter(|f| order(token) <= *f) {
                return Begin::Refused(format!(
                    "stale token: term {} attempt {}, the step has seen term {} attempt {}",
                    token.term, token.attempt, f.0, f.1
                ));
            }
            if let Some(t) = self
                .job_fence
                .get(&token.job_id)
                .filter(|t| token.term < **t)
            {
                return Begin::Refused(format!(
                    "stale token: term {}, job {} has seen term {t}",
                    token.term, token.job_id
                ));
            }
            if let Some(t) = resource
                .and_then(|r| self.resource_fence.get(r))
                .filter(|t| token.term < **t)
            {
                return Begin::Refused(format!(
                    "stale token: term {}, {} has seen term {t}",
                    token.term,
                    resource.unwrap_or_default()
                ));
            }
        }
        let j = self.steps.entry(key).or_default();
        j.fence = j.fence.max(Some(order(token)));
        j.records.insert(
            (token.attempt, token.term),
            Record {
                token: *token,
                outcome: None,
            },
        );
        let jf = self.job_fence.entry(token.job_id).or_default();
        *jf = (*jf).max(token.term);
        if let Some(r) = resource {
            let rf = self.resource_fence.entry(r.to_string()).or_default();
            *rf = (*rf).max(token.term);
        }
        self.log.push(ExecLog {
            seq,
            at_ms: now_ms,
            kind: ExecKind::Begin,
            token: *token,
        });
        if durable {
            self.flush();
        }
        Begin::Start
    }

    /// A probe about `token`: fences it, and says what the journal holds for the step.
    pub fn on_probe(&mut self, token: &FencingToken, seq: u64, now_ms: u64) -> Seen {
        let key = (token.job_id, token.step_index);
        self.log.push(ExecLog {
            seq,
            at_ms: now_ms,
            kind: ExecKind::Probe,
            token: *token,
        });
        let j = self.steps.entry(key).or_default();
        if !self.no_fencing {
            j.fence = j.fence.max(Some(order(token)));
            let jf = self.job_fence.entry(token.job_id).or_default();
            *jf = (*jf).max(token.term);
        }
        self.flush();
        let j = &self.steps[&key];
        match j.records.values().next_back() {
            None => Seen::Nothing,
            Some(r) => match &r.outcome {
                Some(o) => Seen::Finished(r.token, o.clone()),
                None if self.work.contains_key(&work_key(&r.token)) => Seen::Running(r.token),
                None => Seen::Interrupted(r.token),
            },
        }
    }

    /// Records the outcome of a step this life executed.
    pub fn finish(&mut self, token: &FencingToken, outcome: Result<StepResult, String>) {
        let durable = self
            .work
            .remove(&work_key(token))
            .is_some_and(|w| !finishes_unflushed(&w.dispatch.call));
        if let Some(r) = self
            .steps
            .get_mut(&(token.job_id, token.step_index))
            .and_then(|j| j.records.get_mut(&(token.attempt, token.term)))
        {
            r.outcome = Some(outcome);
        }
        if durable {
            self.flush();
        }
    }

    /// Whether a step begun earlier on the same resource is still running here: the executor
    /// runs one step at a time per pair or volume, in the order it began them, so a deposed
    /// leader's step already under way finishes before a newer one touches the resource.
    pub fn waits_for_earlier(&self, token: &FencingToken) -> bool {
        let Some(w) = self.work.get(&work_key(token)) else {
            return false;
        };
        w.resource.is_some()
            && self
                .work
                .values()
                .any(|o| o.resource == w.resource && o.begun_seq < w.begun_seq)
    }

    /// The agent dies: whatever it was executing stays begun, unfinished, in its journal, as
    /// far as the journal was flushed; what was not flushed is lost.
    pub fn crash(&mut self) {
        self.up = false;
        self.incarnation += 1;
        self.work.clear();
        let d = &*self.durable;
        self.steps = d.steps.clone();
        self.job_fence = d.job_fence.clone();
        self.resource_fence = d.resource_fence.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(term: u64, attempt: u32) -> FencingToken {
        FencingToken {
            term,
            job_id: 1,
            step_index: 2,
            attempt,
        }
    }

    #[test]
    fn a_probe_fences_the_token_it_asks_about_and_older_terms_of_the_job() {
        let mut a = Agent::new("x".into());
        assert!(matches!(a.on_probe(&t(2, 1), 1, 0), Seen::Nothing));
        assert!(matches!(
            a.on_order(&t(2, 1), None, true, 2, 0),
            Begin::Refused(_)
        ));
        assert!(matches!(
            a.on_order(&t(1, 5), None, true, 3, 0),
            Begin::Refused(_)
        ));
        assert!(matches!(
            a.on_order(&t(2, 2), None, true, 4, 0),
            Begin::Start
        ));
        // The same token again is answered, not begun.
        assert!(matches!(
            a.on_order(&t(2, 2), None, true, 5, 0),
            Begin::Interrupted
        ));
        a.finish(&t(2, 2), Ok(StepResult::PairSet));
        assert!(matches!(
            a.on_order(&t(2, 2), None, true, 6, 0),
            Begin::Finished(Ok(_))
        ));
        // Another step of the same job from an older term is refused too.
        let other = FencingToken {
            step_index: 3,
            ..t(1, 1)
        };
        assert!(matches!(
            a.on_order(&other, None, true, 7, 0),
            Begin::Refused(_)
        ));
        // A resource seen in a newer term refuses an older term, whatever the job.
        let newer = FencingToken {
            job_id: 9,
            ..t(5, 1)
        };
        assert!(matches!(
            a.on_order(&newer, Some("pair:p0"), true, 8, 0),
            Begin::Start
        ));
        let older = FencingToken {
            job_id: 8,
            ..t(4, 1)
        };
        assert!(matches!(
            a.on_order(&older, Some("pair:p0"), true, 9, 0),
            Begin::Refused(_)
        ));
    }
}
