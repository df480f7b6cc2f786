//! The job table of the replicated state: accepted jobs, who owns which pair and volume (S5),
//! the queue of jobs waiting for them, and the bounded history of ended jobs.
//!
//! Every operation costs what it touches: a submission or an event finds its job by id
//! (`O(log jobs)`), locks are a map from resource to job, and retention drops the oldest ended
//! job in `O(1)` amortised; the unfinished jobs have an index of their own. Nothing here walks
//! the history.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Response;
use crate::job::{Job, JobEvent, JobId, JobKind, JobState, Step};

/// Accepted jobs and their locks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "JobTableFields")]
pub struct JobTable {
    /// The id the next accepted job gets (ids follow log order).
    pub next_id: JobId,
    /// Each job behind an `Arc`: a copy of the table (a snapshot's, taken under the state's
    /// lock) shares the jobs instead of copying them, and a job changed afterwards is copied
    /// then, once (`Arc::make_mut`). Ended jobs never change, so a snapshot copies none of the
    /// history.
    pub jobs: BTreeMap<JobId, Arc<Job>>,
    /// Resource (`pair:NAME`, `volume:NODE:VOLUME`) → the running job that owns it.
    pub locks: BTreeMap<String, JobId>,
    /// Queued jobs, first come first served.
    pub queue: VecDeque<JobId>,
    /// Ended jobs, in the order they ended: the oldest is forgotten first.
    pub ended: VecDeque<JobId>,
    /// Jobs not ended yet, by id: an index over `jobs`, so that walking the unfinished jobs
    /// (the leader's driver, `apply` of an inventory) does not walk the history. Not written:
    /// rebuilt when a table is read back.
    #[serde(skip)]
    unfinished: BTreeSet<JobId>,
}

/// What is written of a [`JobTable`]; reading it back rebuilds the index.
#[derive(Deserialize)]
struct JobTableFields {
    next_id: JobId,
    jobs: BTreeMap<JobId, Arc<Job>>,
    locks: BTreeMap<String, JobId>,
    queue: VecDeque<JobId>,
    ended: VecDeque<JobId>,
}

impl From<JobTableFields> for JobTable {
    fn from(f: JobTableFields) -> JobTable {
        let unfinished = f
            .jobs
            .values()
            .filter(|j| !j.is_ended())
            .map(|j| j.id)
            .collect();
        JobTable {
            next_id: f.next_id,
            jobs: f.jobs,
            locks: f.locks,
            queue: f.queue,
            ended: f.ended,
            unfinished,
        }
    }
}

/// Where a job stands in a table, for an executor deciding whether an order of it may still
/// act, and what of it its journal may forget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStanding {
    /// Queued, running or cancelling.
    Open,
    /// Ended, still in the history.
    Ended,
    /// Ended and dropped from the history by the retention (its id was given, the table no
    /// longer holds it).
    Forgotten,
    /// Not accepted yet as far as this table knows: a copy of the log behind the leader's.
    NotYetSeen,
}

impl JobTable {
    /// Where job `id` stands here.
    pub fn standing(&self, id: JobId) -> JobStanding {
        match self.jobs.get(&id) {
            Some(j) if j.is_ended() => JobStanding::Ended,
            Some(_) => JobStanding::Open,
            None if id < self.next_id => JobStanding::Forgotten,
            None => JobStanding::NotYetSeen,
        }
    }

    /// Jobs not yet ended (queued, running or cancelling).
    pub fn unfinished(&self) -> impl Iterator<Item = &Job> {
        self.unfinished
            .iter()
            .filter_map(|id| self.jobs.get(id).map(|j| &**j))
    }

    /// Adds a job as it is (tests and tools that build a table by hand), keeping the index.
    pub fn insert(&mut self, job: Job) {
        if job.is_ended() {
            self.unfinished.remove(&job.id);
        } else {
            self.unfinished.insert(job.id);
        }
        self.jobs.insert(job.id, Arc::new(job));
    }

    /// The job owning `resource`, or the first queued one that will.
    fn holder_of(&self, needs: &BTreeSet<String>) -> Option<(JobId, String)> {
        let running = needs
            .iter()
            .find_map(|r| self.locks.get(r).map(|j| (*j, r.clone())));
        running.or_else(|| {
            self.queue.iter().find_map(|q| {
                let queued = self.jobs[q].resources();
                needs
                    .iter()
                    .find(|r| queued.contains(*r))
                    .map(|r| (*q, r.clone()))
            })
        })
    }

    /// Accepts a job with its plan: it starts at once if nothing it needs is owned or awaited
    /// by another job; otherwise it waits in the queue, or with `no_queue` it is refused naming
    /// the job that holds what it needs (S5).
    pub fn submit(
        &mut self,
        kind: JobKind,
        steps: Vec<Step>,
        submitted_by: &str,
        at_ms: u64,
        no_queue: bool,
    ) -> Response {
        let id = self.next_id.max(1);
        let mut job = Job::new(id, kind, submitted_by.to_string(), at_ms, steps);
        let needs = job.resources();
        let waiting_for = match self.holder_of(&needs) {
            Some((holder, resource)) if no_queue => {
                return Response::Refused {
                    rule: format!(
                        "S5: {} is owned by job {holder} ({}); without --no-queue the job would wait for it",
                        resource.replacen(':', " ", 1),
                        describe_state(&self.jobs[&holder].state),
                    ),
                };
            }
            Some((holder, _)) => {
                job.state = JobState::Queued {
                    waiting_for: holder,
                };
                self.queue.push_back(id);
                Some(holder)
            }
            None => {
                for r in needs {
                    self.locks.insert(r, id);
                }
                None
            }
        };
        self.jobs.insert(id, Arc::new(job));
        self.unfinished.insert(id);
        self.next_id = id + 1;
        Response::JobAccepted {
            job_id: id,
            waiting_for,
        }
    }

    /// Applies one event to job `id`. When it ends, its locks go, queued jobs that can now
    /// start do, and the history is trimmed to `retained_max` ended jobs.
    pub fn record(
        &mut self,
        id: JobId,
        event: &JobEvent,
        at_ms: u64,
        retained_max: u32,
    ) -> Response {
        let Some(job) = self.jobs.get_mut(&id).map(Arc::make_mut) else {
            return Response::Refused {
                rule: format!("no job {id} (it may have ended and been forgotten)"),
            };
        };
        let was_queued = matches!(job.state, JobState::Queued { .. });
        if let Err(e) = job.record(event, at_ms) {
            return Response::Refused {
                rule: e.to_string(),
            };
        }
        if job.is_ended() {
            job.shrink_to_fit();
            let resources = job.resources();
            if was_queued {
                self.queue.retain(|q| *q != id);
            } else {
                for r in resources {
                    if self.locks.get(&r) == Some(&id) {
                        self.locks.remove(&r);
                    }
                }
            }
            self.ended.push_back(id);
            self.unfinished.remove(&id);
            self.start_queued();
            while self.ended.len() > retained_max as usize {
                if let Some(old) = self.ended.pop_front() {
                    self.jobs.remove(&old);
                }
            }
        }
        Response::Applied { changed: true }
    }

    /// Starts, in queue order, every queued job whose resources are free and not wanted by a
    /// job ahead of it in the queue.
    fn start_queued(&mut self) {
        let mut wanted_ahead: BTreeSet<String> = BTreeSet::new();
        let mut started = Vec::new();
        for &q in &self.queue {
            let needs = self.jobs[&q].resources();
            let free = needs
                .iter()
                .all(|r| !self.locks.contains_key(r) && !wanted_ahead.contains(r));
            if free {
                for r in &needs {
                    self.locks.insert(r.clone(), q);
                }
                started.push(q);
            } else {
                wanted_ahead.extend(needs);
            }
        }
        for q in started {
            self.queue.retain(|x| *x != q);
            if let Some(job) = self.jobs.get_mut(&q) {
                Arc::make_mut(job).state = JobState::Running;
            }
        }
    }
}

fn describe_state(state: &JobState) -> &'static str {
    match state {
        JobState::Queued { .. } => "queued",
        JobState::Running => "running",
        JobState::Cancelling { .. } => "cancelling",
        JobState::Ended { .. } => "ended",
    }
}
