//! The step executor: the `stillpoint.job.StepExecutor` service every agent serves, which runs
//! the steps of jobs the leader's driver sends it, fenced and journaled.
//!
//! ## One order, in this order
//! An `Execute(order)` is checked before anything is touched: its token must not be from a
//! term older than this agent's own raft term (a deposed leader's late send), and its target
//! must be this agent (`StepTarget::Node` = this node's name; `StepTarget::Array` = an array in
//! this node's `[[arrays]]`). Then [`Journal::begin_step`] records the token durably, on the
//! blocking pool under [`JOURNAL_OP_MS`], refusing a fenced token, a token older than one begun
//! for the step, and a term older than one accepted for the job or for the step's resource
//! (`pair:NAME`, `volume:NODE:VOLUME`). Only a begun token runs, on its own task: the reply
//! waits for it up to `reply_within_ms` and says `Finished` or `Running`. The task journals the
//! outcome ([`Journal::finish_step`]) **before** any reply can show it, so an outcome a driver
//! saw is one the agent will report again after a crash — durably, except inside the freeze
//! window, where no write waits for a disk flush of its own: a quiesce's begin (made durable by
//! the host's flush of its quiesce record, in the same database, before the volume is
//! touched) and outcome, and a separate's and a release's begin and outcome
//! ([`Journal::begin_step_unflushed`]); those outcomes are even
//! answered before they are written (the claim on the token is held until they are, so a
//! re-sent order meanwhile gets the same answer). Lost in a crash, a record
//! reads back as interrupted (settled from the target) or not recorded (a new attempt): a
//! separate counts a pair already separated only when the array says an attempt of the same
//! step under the same term did it (`acted_by`); a release whose quiesce is gone reports it not
//! held throughout.
//!
//! Orders sent together (`ExecuteMany`, [`batch`]) are checked the same way and begun in one
//! journal transaction ([`Journal::begin_steps`]) with at most one flush; each then runs and
//! is answered as if it had come alone, as soon as it has its answer.
//!
//! ## Asking again
//! A token begun before is never run again: its record answers (`Finished`); a record with no
//! outcome is either running in this process (wait, then `Running`) or was cut short by a
//! restart (`Interrupted`, with what the target looks like now: for a quiesce, the quiesce the
//! host holds under that attempt's owner; for a separate, the pair's sync state). A `Probe`
//! first fences its token ([`Journal::fence_step`]: from then on that token and older attempts
//! of the step are refused, and the job's term floor rises to the token's term), then reports
//! the newest record of the asked attempt or a later one, or `NotRecorded`. A refusal is a
//! `FAILED_PRECONDITION` status saying why; a step whose effect is unknown (an array call that
//! timed out, a host command killed by its timeout, an outcome that could not be journaled) is a
//! `DEADLINE_EXCEEDED` "outcome unknown" status, never `Failed`: the driver probes, and the
//! record, still `Started`, answers `Interrupted` with the target's state.
//!
//! ## Steps
//! Host steps ([`host_steps`]) run on this agent's own host half; array steps
//! ([`array_steps`]) on the array's control path named in node.toml. Each is idempotent: sent
//! again after it took effect, it reports the effect (an RV already unmounted is freed, a pair
//! already in sync is in sync, a separate already accepted is accepted, an RV already mounted
//! is mounted). [`client`] is the driver's side of the service.
//!
//! ## Caveats
//! - An RV mount of a PostgreSQL online backup writes the label its order
//!   carries (`Dispatch::postgres_copy`) into the copy's data directory once mounted, on the
//!   blocking pool under `PG_COPY_WRITE_TIMEOUT_MS`; a repeated mount rewrites nothing (the
//!   settings carry the job's id and are written last).
//! - A release whose quiesce is gone is reported as not held throughout, even when an earlier
//!   attempt of the same release ended it before its outcome was journaled: the host cannot
//!   tell that from a quiesce it resumed by itself, and the safe side of S3 is
//!   crash-consistent.
//! - Waits on the array (replicate to sync, wait for separated) are bounded by
//!   [`array_steps::ARRAY_WAIT_MS`], not by the step's own timeout, which the order does not
//!   carry: past the driver's deadline a probe reports the step `Running`.
//! - The RV's users are the RV volume's hooks on the backup node: its stop hook runs before the
//!   RV is freed, its start hook once the RV is mounted (a volume without one runs none). An
//!   attempt sent again after an unknown outcome runs them again: they must be idempotent.
//! - An order of a job this agent's copy of the log shows ended is refused; the step records,
//!   fences and job term floors of jobs the history's retention dropped are forgotten every
//!   minute ([`retention`]). The resource floors are kept for good (one per pair and volume).
//! - A probe answers `Running` while another request of the same token is between its begin
//!   and its answer; the driver asks again.

pub mod array_steps;
pub mod batch;
pub mod client;
pub mod host_steps;
mod probe;
pub mod retention;

pub use probe::pair_sync;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use stillpoint_array::RemoteArray;
use stillpoint_coordinator::inventory::PairSpec;
use stillpoint_coordinator::job::wire::{ProbeOrder, StepOrder, step_resource};
use stillpoint_coordinator::job::{FencingToken, Finding, StepCall, StepResult, StepTarget};
use stillpoint_host::Host;
use stillpoint_proto::job as pb;
use stillpoint_proto::job::step_executor_server::{StepExecutor, StepExecutorServer};
use stillpoint_storage::journal::{Journal, JournalError, StepBegin, StepOutcome};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::agent::{AgentContext, now_ms};

/// Longest a journal operation (sled transaction + flush + fdatasync, on the blocking pool) may
/// take before the request fails; a write that did not finish in time may still land, so a
/// timed-out begin is "outcome unknown", not "not begun".
pub const JOURNAL_OP_MS: u64 = 30_000;

/// Longest an `Execute` holds its reply for the outcome, whatever the order asks; above it the
/// gRPC server's own cap would cut the request.
pub const REPLY_WITHIN_MS_MAX: u64 = 60_000;

/// Longest a read made to describe an interrupted step (host quiesces, pair state) may take.
pub(crate) const OBSERVE_MS: u64 = 10_000;

/// How many times an `Execute` re-reads a token that another request was beginning and gave up.
const CLAIM_ROUNDS_MAX: u32 = 3;

/// How a step ended on its executor, before it is journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEnd {
    Done(StepResult),
    /// The executor could not do it; nothing to undo beyond what the plan does next.
    Failed(String),
    /// Maybe done, maybe not (a call timed out, a command was killed): never journaled as an
    /// outcome; the driver probes and the target's state settles it.
    Unknown(String),
}

/// What a running step's waiters receive.
#[derive(Clone, Debug)]
enum TaskEnd {
    /// The outcome is the step's: journaled durably, or (a quiesce's, separate's or
    /// release's, which the target settles) being journaled without a flush.
    Recorded(Result<StepResult, String>),
    /// Not journaled: the effect is unknown.
    Unknown(String),
}

/// Where a running token's end arrives, and who sends it.
type EndRx = watch::Receiver<Option<TaskEnd>>;
type EndTx = watch::Sender<Option<TaskEnd>>;
type Claims = StdMutex<HashMap<FencingToken, EndRx>>;

/// The executor's state: what it runs on, and the steps running in this process.
pub struct Executor {
    ctx: Arc<AgentContext>,
    journal: Journal,
    host: Option<Arc<dyn Host>>,
    arrays: StdMutex<HashMap<String, RemoteArray>>,
    /// Tokens being begun or run in this process, with the channel their outcome arrives on.
    running: Claims,
    /// The tasks running steps, to end them when the agent stops.
    tasks: StdMutex<HashMap<FencingToken, tokio::task::AbortHandle>>,
    /// Set by [`Executor::stop`]: no new step begins.
    stopped: AtomicBool,
    /// Per resource (`pair:NAME`, `volume:NODE:VOLUME`): taken around a step's begin, holding
    /// the "done" signal of the last step begun on it. A step acts only once the step begun
    /// before it on the same resource has ended, so steps on one pair or volume run one at a
    /// time in the order the journal began them: fencing refuses a deposed leader's new step,
    /// but cannot stop one already under way, and the newer leader's step must not overtake it.
    resource_order: StdMutex<HashMap<String, ResourceTail>>,
}

/// Per resource, the "done" signal of the step begun last on it, behind a lock taken around
/// each begin.
type ResourceTail = Arc<tokio::sync::Mutex<Option<watch::Receiver<bool>>>>;

/// Removes a token's claim when its holder (a begin that did not start, or the step's task)
/// is done; waiters whose channel closed without an outcome read the journal again.
struct Claim {
    exec: Arc<Executor>,
    token: FencingToken,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.exec.running).remove(&self.token);
        lock(&self.exec.tasks).remove(&self.token);
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `found` is the asked attempt, as sent in its term or an earlier one, or a later attempt
/// (the rule of `stillpoint_coordinator::job::resolve`, which settles the step from it).
pub fn supersedes_or_is(found: &FencingToken, asked: &FencingToken) -> bool {
    found.attempt > asked.attempt || (found.attempt == asked.attempt && found.term <= asked.term)
}

/// A journal's answer as the status an order ends with: a fencing refusal is
/// `FAILED_PRECONDITION`, anything else the journal's failure.
fn journal_status(what: &str, e: JournalError) -> Status {
    match e {
        JournalError::StaleToken { .. }
        | JournalError::StaleTerm { .. }
        | JournalError::Fenced { .. } => refused(e),
        e => Status::internal(format!("{what}: {e}")),
    }
}

/// How long an `Execute` of `order` holds its reply for the outcome.
fn reply_wait(order: &StepOrder) -> Duration {
    Duration::from_millis(order.reply_within_ms.min(REPLY_WITHIN_MS_MAX))
}

/// Inside the freeze window every durable write is a disk flush the business servers wait
/// through: a separate and a release begin without waiting for it (see
/// `Journal::begin_step_unflushed` for why a lost record is safe for them). A quiesce's begin
/// is durable before the volume is touched all the same: the host records its quiesce in this
/// same journal (one sled database) with a flush before it acts, and that flush carries every
/// earlier write, this one too. So the quiesce costs one flush, not two.
fn begins_unflushed(call: &StepCall) -> bool {
    matches!(
        call,
        StepCall::Quiesce { .. } | StepCall::Separate { .. } | StepCall::Release { .. }
    )
}

fn refused(e: impl std::fmt::Display) -> Status {
    Status::failed_precondition(e.to_string())
}

fn outcome_unknown(what: impl std::fmt::Display) -> Status {
    Status::deadline_exceeded(format!(
        "outcome unknown: {what}; probe the step before sending it again"
    ))
}

impl Executor {
    pub fn new(
        ctx: Arc<AgentContext>,
        journal: Journal,
        host: Option<Arc<dyn Host>>,
    ) -> Arc<Executor> {
        Arc::new(Executor {
            ctx,
            journal,
            host,
            arrays: StdMutex::new(HashMap::new()),
            running: StdMutex::new(HashMap::new()),
            tasks: StdMutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            resource_order: StdMutex::new(HashMap::new()),
        })
    }

    /// The gRPC service over this executor.
    pub fn into_server(self: Arc<Self>) -> StepExecutorServer<StepExecutorService> {
        StepExecutorServer::new(StepExecutorService { exec: self })
            .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
    }

    /// The agent's journal the executor records steps in (for inspection, and for tests that
    /// recreate what a crash mid-step leaves behind).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub(crate) fn host(&self) -> Result<&Arc<dyn Host>, String> {
        self.host
            .as_ref()
            .ok_or_else(|| format!("agent {} has no [host] section", self.ctx.config.name))
    }

    /// The control path to `array`, from this agent's `[[arrays]]`.
    pub(crate) fn array(&self, array: &str) -> Result<RemoteArray, String> {
        if let Some(a) = lock(&self.arrays).get(array) {
            return Ok(a.clone());
        }
        let endpoint = self
            .ctx
            .config
            .arrays
            .iter()
            .find(|a| a.name == array)
            .ok_or_else(|| format!("array {array} is not in this agent's [[arrays]]"))?;
        let remote = RemoteArray::lazy(&endpoint.endpoint)
            .map_err(|e| format!("array {array} at {}: {e}", endpoint.endpoint))?;
        lock(&self.arrays).insert(array.to_string(), remote.clone());
        Ok(remote)
    }

    /// Runs `op` on the journal on the blocking pool, bounded by [`JOURNAL_OP_MS`]. A fencing
    /// refusal is `FAILED_PRECONDITION`; a timeout is "outcome unknown" (it may still land).
    async fn journal_op<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, Status> {
        let journal = self.journal.clone();
        let task = tokio::task::spawn_blocking(move || op(&journal));
        match tokio::time::timeout(Duration::from_millis(JOURNAL_OP_MS), task).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(journal_status(what, e)),
            Ok(Err(e)) => Err(Status::internal(format!("{what}: the task failed: {e}"))),
            Err(_) => Err(outcome_unknown(format!(
                "{what} did not complete within {JOURNAL_OP_MS} ms (check the disk holding the agent's data directory)"
            ))),
        }
    }

    /// Refuses a token from a term older than this agent's own: its sender was deposed.
    fn check_term(&self, token: &FencingToken) -> Result<(), Status> {
        let current = self.ctx.raft.metrics().borrow().current_term;
        if token.term < current {
            return Err(refused(format!(
                "stale term for job {} step {}: the order is from term {}, but agent {} is already in term {}; \
                 its sender was deposed, the leader of term {} or newer drives the job (refused by S6)",
                token.job_id, token.step_index, token.term, self.ctx.config.name, current, current
            )));
        }
        Ok(())
    }

    /// Refuses a step that is not this agent's to execute.
    fn check_target(&self, target: &StepTarget, call: &StepCall) -> Result<(), Status> {
        let me = &self.ctx.config.name;
        let host_step = !matches!(
            call,
            StepCall::SetPair { .. }
                | StepCall::Replicate { .. }
                | StepCall::Separate { .. }
                | StepCall::AwaitSeparated { .. }
        );
        match target {
            StepTarget::Node(node) if node != me => Err(refused(format!(
                "the step is for node {node}, this agent is {me}: send it to {node}'s agent"
            ))),
            StepTarget::Node(_) if !host_step => Err(refused(format!(
                "an array step was sent to node {me} as a host step: it targets an array"
            ))),
            StepTarget::Node(_) => self.host().map(|_| ()).map_err(refused),
            StepTarget::Array(array) if host_step => Err(refused(format!(
                "a host step was sent to array {array}: it targets a node"
            ))),
            StepTarget::Array(array) => {
                if self.ctx.config.arrays.iter().any(|a| &a.name == array) {
                    Ok(())
                } else {
                    Err(refused(format!(
                        "agent {me} has no control path to array {array} (not in its [[arrays]]): send the step to an agent that has"
                    )))
                }
            }
        }
    }

    /// Claims `token` for this request, or returns the channel of whoever holds it.
    fn claim(self: &Arc<Self>, token: FencingToken) -> Result<(Claim, EndTx), EndRx> {
        let mut running = lock(&self.running);
        if let Some(rx) = running.get(&token) {
            return Err(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        running.insert(token, rx);
        Ok((
            Claim {
                exec: self.clone(),
                token,
            },
            tx,
        ))
    }

    /// Waits up to `wait` for a running token's end. `None`: the holder gave up without one
    /// (read the journal again).
    async fn await_end(
        token: FencingToken,
        mut rx: watch::Receiver<Option<TaskEnd>>,
        wait: Duration,
    ) -> Option<Result<Finding, Status>> {
        let end = match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Err(_) => return Some(Ok(Finding::Running { token })),
            Ok(Err(_)) => return None,
            Ok(Ok(end)) => end.clone()?,
        };
        Some(match end {
            TaskEnd::Recorded(outcome) => Ok(Finding::Finished { token, outcome }),
            TaskEnd::Unknown(why) => Err(outcome_unknown(format!(
                "job {} step {} attempt {} (term {}): {why}",
                token.job_id, token.step_index, token.attempt, token.term
            ))),
        })
    }

    /// Ends every step running in this process (the agent is stopping): their records stay
    /// `Started`, so after the restart they are reported `Interrupted` with their target's
    /// state. A backup command is killed with its task. No new step begins afterwards.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = lock(&self.tasks).drain().collect();
        for (token, task) in tasks {
            tracing::warn!(
                job = token.job_id,
                step = token.step_index,
                attempt = token.attempt,
                "the agent is stopping: the step is cut short and will be reported interrupted"
            );
            task.abort();
        }
    }

    /// Refuses an order before anything is touched: the agent is stopping, the token is not
    /// the order's, a deposed leader's term, an ended job, a step that is not this agent's.
    fn admit(&self, order: &StepOrder) -> Result<(), Status> {
        let token = order.dispatch.token;
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Status::unavailable(format!(
                "agent {} is stopping: send the step again once it is back",
                self.ctx.config.name
            )));
        }
        if token.step_index != order.dispatch.step {
            return Err(Status::invalid_argument(format!(
                "the token is for step {}, the order for step {}",
                token.step_index, order.dispatch.step
            )));
        }
        self.check_term(&token)?;
        self.check_job_open(&token)?;
        self.check_target(&order.dispatch.target, &order.dispatch.call)?;
        check_pair(&order.dispatch.target, order.pair.as_ref())
    }

    /// The lock ordering the steps of `call`'s resource, if it has one.
    fn resource_lock(&self, call: &StepCall) -> Option<ResourceTail> {
        step_resource(call).map(|r| lock(&self.resource_order).entry(r).or_default().clone())
    }

    /// `Execute`: see the module essay.
    pub async fn execute(self: &Arc<Self>, order: StepOrder) -> Result<Finding, Status> {
        let token = order.dispatch.token;
        self.admit(&order)?;
        let wait = reply_wait(&order);
        for _ in 0..CLAIM_ROUNDS_MAX {
            let (claim, tx) = match self.claim(token) {
                Ok(claimed) => claimed,
                Err(rx) => match Self::await_end(token, rx, wait).await {
                    Some(reply) => return reply,
                    None => continue,
                },
            };
            let resource = step_resource(&order.dispatch.call);
            let tail = match self.resource_lock(&order.dispatch.call) {
                Some(m) => Some(m.lock_owned().await),
                None => None,
            };
            let durable = !begins_unflushed(&order.dispatch.call);
            let begun = self
                .journal_op("beginning the step in the journal", move |j| {
                    if durable {
                        j.begin_step(token, resource.as_deref(), now_ms())
                    } else {
                        j.begin_step_unflushed(token, resource.as_deref(), now_ms())
                    }
                })
                .await?;
            return self.proceed(order, begun, claim, tx, tail).await;
        }
        Err(Status::unavailable(format!(
            "job {} step {}: the token is being begun by another request; ask again",
            token.job_id, token.step_index
        )))
    }

    /// After the begin: answers a token begun before from its record, or runs a token begun
    /// now on its own task and waits for its end up to the order's `reply_within_ms`. `tail`
    /// is the order's resource lock, held since before the begin.
    async fn proceed(
        self: &Arc<Self>,
        order: StepOrder,
        begun: StepBegin,
        claim: Claim,
        tx: EndTx,
        mut tail: Option<tokio::sync::OwnedMutexGuard<Option<watch::Receiver<bool>>>>,
    ) -> Result<Finding, Status> {
        let token = order.dispatch.token;
        let wait = reply_wait(&order);
        match begun {
            StepBegin::AlreadyRecorded(rec) => {
                drop(tail);
                // We hold the claim: nobody in this process runs it.
                let answer = self
                    .answer_from(
                        &rec,
                        &order.dispatch.call,
                        order.pair.as_ref(),
                        order.dispatch.round,
                    )
                    .await;
                drop(claim);
                answer
            }
            StepBegin::Started(_) => {
                let rx = tx.subscribe();
                let (done_tx, done_rx) = watch::channel(false);
                let before = tail.as_mut().and_then(|t| t.replace(done_rx));
                drop(tail);
                {
                    // Under the lock the task's end takes to remove itself: no stale handle.
                    let mut tasks = lock(&self.tasks);
                    let task = tokio::spawn(self.clone().run(order, tx, claim, before, done_tx));
                    tasks.insert(token, task.abort_handle());
                }
                match Self::await_end(token, rx, wait).await {
                    Some(reply) => reply,
                    None => Err(Status::internal(
                        "the step's task ended without an outcome (a bug; report it)",
                    )),
                }
            }
        }
    }

    /// The step's task: run it, journal the outcome, then let the waiters see it.
    async fn run(
        self: Arc<Self>,
        order: StepOrder,
        tx: watch::Sender<Option<TaskEnd>>,
        claim: Claim,
        before: Option<watch::Receiver<bool>>,
        done: watch::Sender<bool>,
    ) {
        let token = order.dispatch.token;
        // The step begun before this one on the same resource ends first (its sender dropped
        // counts as ended: its task is gone).
        if let Some(mut before) = before {
            let _ = before.wait_for(|ended| *ended).await;
        }
        let end = match &order.dispatch.call {
            StepCall::SetPair { .. }
            | StepCall::Replicate { .. }
            | StepCall::Separate { .. }
            | StepCall::AwaitSeparated { .. } => array_steps::run(&self, &order).await,
            _ => host_steps::run(&self, &order).await,
        };
        let (outcome, recorded) = match end {
            StepEnd::Done(result) => match serde_json::to_string(&result) {
                Ok(detail) => (StepOutcome::Done { detail }, Ok(result)),
                Err(e) => (
                    StepOutcome::Failed {
                        reason: format!("the result could not be encoded (a bug): {e}"),
                    },
                    Err(format!("the result could not be encoded (a bug): {e}")),
                ),
            },
            StepEnd::Failed(reason) => (
                StepOutcome::Failed {
                    reason: reason.clone(),
                },
                Err(reason),
            ),
            StepEnd::Unknown(why) => {
                tracing::warn!(job = token.job_id, step = token.step_index, attempt = token.attempt, %why, "step outcome unknown");
                // Let go of the claim first: a request that comes once this one's waiters
                // have their answer must find no task running the token and answer from the
                // journal (begun, no outcome: interrupted), not this task's "unknown".
                drop(claim);
                let _ = tx.send(Some(TaskEnd::Unknown(why)));
                return;
            }
        };
        // Inside the freeze window every durable write is a disk flush the business servers
        // wait through. A quiesce's, a separate's or a release's outcome is written without
        // waiting for the flush, and the leader hears it before it is written at all: lost in
        // a crash (or not written), it reads back from the target or as "not recorded" (see
        // the module essay). The claim is held until the write is done, so a re-sent order
        // meanwhile gets this answer, and one after it the journal's. Every other outcome is
        // durable before any reply shows it.
        if begins_unflushed(&order.dispatch.call) {
            let _ = tx.send(Some(TaskEnd::Recorded(recorded)));
            if let Err(e) = self
                .journal_op("journaling the step's outcome", move |j| {
                    j.finish_step_unflushed(token, outcome, now_ms())
                })
                .await
            {
                tracing::warn!(job = token.job_id, step = token.step_index, attempt = token.attempt, error = %e.message(),
                    "the step's outcome was answered but not journaled: asking about it reads the target");
            }
            drop(claim);
            let _ = done.send(true);
            return;
        }
        let finished = self
            .journal_op("journaling the step's outcome", move |j| {
                j.finish_step(token, outcome, now_ms())
            })
            .await;
        let end = match finished {
            Ok(_) => TaskEnd::Recorded(recorded),
            Err(e) => TaskEnd::Unknown(format!(
                "the step ran ({recorded:?}) but its outcome could not be journaled: {}",
                e.message()
            )),
        };
        let _ = tx.send(Some(end));
        drop(claim);
        let _ = done.send(true);
    }
}

/// An array step's order carries its pair, whose MV is on the target array (pair operations
/// go to the MV's array).
fn check_pair(target: &StepTarget, pair: Option<&PairSpec>) -> Result<(), Status> {
    match (target, pair) {
        (StepTarget::Array(array), None) => Err(Status::invalid_argument(format!(
            "an array step for {array} must carry its pair"
        ))),
        (StepTarget::Array(array), Some(p)) if p.mv.array != *array => {
            Err(Status::invalid_argument(format!(
                "pair {} has its MV on array {}, but the step targets array {array}",
                p.name, p.mv.array
            )))
        }
        _ => Ok(()),
    }
}

/// The tonic service.
pub struct StepExecutorService {
    exec: Arc<Executor>,
}

fn decode<T: serde::de::DeserializeOwned>(json: &[u8], what: &str) -> Result<T, Status> {
    serde_json::from_slice(json)
        .map_err(|e| Status::invalid_argument(format!("the {what} is not valid JSON of it: {e}")))
}

fn reply(finding: Finding) -> Result<Response<pb::StepReply>, Status> {
    let finding_json = serde_json::to_vec(&finding)
        .map_err(|e| Status::internal(format!("the finding could not be encoded (a bug): {e}")))?;
    Ok(Response::new(pb::StepReply { finding_json }))
}

#[tonic::async_trait]
impl StepExecutor for StepExecutorService {
    async fn execute(
        &self,
        request: Request<pb::StepOrderMessage>,
    ) -> Result<Response<pb::StepReply>, Status> {
        let order: StepOrder = decode(&request.into_inner().json, "step order")?;
        reply(self.exec.execute(order).await?)
    }

    type ExecuteManyStream = futures::stream::BoxStream<'static, Result<pb::StepAnswer, Status>>;

    async fn execute_many(
        &self,
        request: Request<pb::StepOrderBatch>,
    ) -> Result<Response<Self::ExecuteManyStream>, Status> {
        use futures::StreamExt;
        let orders = request
            .into_inner()
            .orders
            .iter()
            .map(|o| decode(&o.json, "step order"))
            .collect();
        let answers = self.exec.execute_many(orders).await?;
        Ok(Response::new(
            answers
                .map(|(index, answer)| {
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    Ok(match answer.and_then(reply) {
                        Ok(r) => pb::StepAnswer {
                            index,
                            code: 0,
                            message: String::new(),
                            finding_json: r.into_inner().finding_json,
                        },
                        Err(status) => pb::StepAnswer {
                            index,
                            code: status.code() as i32,
                            message: status.message().to_string(),
                            finding_json: Vec::new(),
                        },
                    })
                })
                .boxed(),
        ))
    }

    async fn probe(
        &self,
        request: Request<pb::ProbeOrderMessage>,
    ) -> Result<Response<pb::StepReply>, Status> {
        let order: ProbeOrder = decode(&request.into_inner().json, "probe order")?;
        reply(self.exec.probe(order).await?)
    }
}
