//! Beginning steps: the fencing checks and the record a step's executor writes before it
//! touches anything (see the module essay in [`super`]), one step or several in one
//! transaction.

use super::steps::{step_key, term_value};
use super::{
    FencingToken, JOB_TERM_TREE, Journal, JournalError, RESOURCE_TERM_TREE, STEP_FENCE_TREE,
    STEP_LATEST_TREE, STEP_TREE, StepBegin, StepOutcome, StepRecord, decode, encode,
};

/// One step for [`Journal::begin_steps`]: its token and what it acts on (`pair:NAME`,
/// `volume:NODE:VOLUME`; `None` for a step that touches neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepToBegin<'a> {
    pub token: FencingToken,
    pub resource: Option<&'a str>,
}

/// What the transaction found for one step.
enum Found {
    Started(StepRecord),
    Same,
    Refused(JournalError),
}

impl Journal {
    /// Records that the step is starting under `token`, durably, before the executor touches
    /// anything. `resource` is what the step acts on (`pair:NAME`, `volume:NODE:VOLUME`; `None`
    /// for a step that touches neither). Refused (S6), in this order, with what to do in the
    /// error:
    /// - [`JournalError::Fenced`]: a probe asked about this token or a later one of the step;
    /// - [`JournalError::StaleToken`]: a newer token (term, attempt) was begun for the step;
    /// - [`JournalError::StaleTerm`]: a step of the same job, or any step of any job on the
    ///   same resource, was begun (or for the job, probed) in a newer term.
    ///
    /// If this exact token was begun before (and not fenced since), returns that record instead
    /// of starting again, so the executor answers a repeated request from the journal. Checks
    /// and records happen in one sled transaction: two requests never both start a step, and a
    /// refusal changes nothing.
    pub fn begin_step(
        &self,
        token: FencingToken,
        resource: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<StepBegin, JournalError> {
        self.begin_one(token, resource, now_unix_ms, true)
    }

    /// As [`Journal::begin_step`], without waiting for the record to be durable. Only for a
    /// step whose every effect is settled by asking its target and whose resource is fenced
    /// elsewhere, so that after a crash "not recorded" (the record lost) is answered safely by
    /// a new attempt: a separate (idempotent on the pair's state, and the array fences pair
    /// operations by token) and a release (a quiesce already ended reads as not held
    /// throughout: the safe side of S3).
    ///
    /// Also for a step whose executor makes another record of this journal durable before it
    /// acts (a quiesce: the host's [`Journal::put_quiesce`] flushes before the volume is
    /// touched). A flush makes every earlier write of the database durable, this one too, so
    /// the record is durable before the step acts, for one flush instead of two.
    pub fn begin_step_unflushed(
        &self,
        token: FencingToken,
        resource: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<StepBegin, JournalError> {
        self.begin_one(token, resource, now_unix_ms, false)
    }

    /// [`Journal::begin_step`] for several steps in one sled transaction and (with `durable`)
    /// one flush: each step is checked and recorded as if begun alone, in the order given, and
    /// answered on its own (one refused changes nothing of the others). The outer error is the
    /// storage's: nothing was recorded. `durable: false` is
    /// [`Journal::begin_step_unflushed`]'s rule, for every step given.
    pub fn begin_steps(
        &self,
        steps: &[StepToBegin<'_>],
        now_unix_ms: u64,
        durable: bool,
    ) -> Result<Vec<Result<StepBegin, JournalError>>, JournalError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        for step in steps {
            self.seed_latest(&step.token)?;
        }
        let trees = (
            &self.steps,
            &self.steps_latest,
            &self.step_fences,
            &self.job_terms,
            &self.resource_terms,
        );
        let found = trees.transaction(|(steps_tree, latest, fences, jobs, resources)| {
            let abort = ConflictableTransactionError::Abort;
            let mut found = Vec::with_capacity(steps.len());
            for step in steps {
                let token = step.token;
                let key = step_key(token.job_id, token.step_index, token.attempt);
                let latest_key = &key[..12];
                let job_key = token.job_id.to_be_bytes();
                if let Some(f) = fences.get(latest_key)? {
                    let fence: FencingToken =
                        decode(STEP_FENCE_TREE, latest_key, &f).map_err(abort)?;
                    if token.order() <= fence.order() {
                        found.push(Found::Refused(JournalError::Fenced {
                            job_id: token.job_id,
                            step_index: token.step_index,
                            term: token.term,
                            attempt: token.attempt,
                            fence_term: fence.term,
                            fence_attempt: fence.attempt,
                        }));
                        continue;
                    }
                }
                if let Some(cur) = latest.get(latest_key)? {
                    let cur: FencingToken =
                        decode(STEP_LATEST_TREE, latest_key, &cur).map_err(abort)?;
                    if cur == token {
                        found.push(Found::Same);
                        continue;
                    }
                    if token.order() < cur.order() {
                        found.push(Found::Refused(JournalError::StaleToken {
                            job_id: token.job_id,
                            step_index: token.step_index,
                            term: token.term,
                            attempt: token.attempt,
                            seen_term: cur.term,
                            seen_attempt: cur.attempt,
                        }));
                        continue;
                    }
                }
                let stale = |scope: String, floor_term: u64| {
                    Found::Refused(JournalError::StaleTerm {
                        job_id: token.job_id,
                        step_index: token.step_index,
                        term: token.term,
                        scope,
                        floor_term,
                    })
                };
                let job_floor = match jobs.get(job_key)? {
                    Some(v) => term_value(JOB_TERM_TREE, &job_key, &v).map_err(abort)?,
                    None => 0,
                };
                if token.term < job_floor {
                    found.push(stale(format!("job {}", token.job_id), job_floor));
                    continue;
                }
                if let Some(resource) = step.resource
                    && let Some(v) = resources.get(resource.as_bytes())?
                {
                    let floor =
                        term_value(RESOURCE_TERM_TREE, resource.as_bytes(), &v).map_err(abort)?;
                    if token.term < floor {
                        found.push(stale(format!("resource {resource} (by any job)"), floor));
                        continue;
                    }
                }
                latest.insert(latest_key, encode(&token).map_err(abort)?)?;
                let rec = StepRecord {
                    token,
                    outcome: StepOutcome::Started,
                    started_at_unix_ms: now_unix_ms,
                    finished_at_unix_ms: None,
                    resource: step.resource.map(str::to_string),
                    // Plus one: sled's ids start at 0, which means "no sequence" here.
                    begun_seq: steps_tree.generate_id()? + 1,
                };
                steps_tree.insert(&key[..], encode(&rec).map_err(abort)?)?;
                let term = token.term.to_be_bytes();
                if token.term > job_floor {
                    jobs.insert(&job_key[..], &term[..])?;
                }
                if let Some(resource) = step.resource {
                    // Not below the stored floor: checked above.
                    resources.insert(resource.as_bytes(), &term[..])?;
                }
                found.push(Found::Started(rec));
            }
            Ok(found)
        });
        let found = match found {
            Ok(f) => f,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        if durable && found.iter().any(|f| matches!(f, Found::Started(_))) {
            self.flush()?;
        }
        Ok(found
            .into_iter()
            .zip(steps)
            .map(|(found, step)| match found {
                Found::Started(rec) => Ok(StepBegin::Started(rec)),
                Found::Same => match self.step(&step.token)? {
                    Some(r) => Ok(StepBegin::AlreadyRecorded(r)),
                    None => Err(JournalError::Corrupt {
                        tree: STEP_TREE,
                        key: format!("{:?}", step.token),
                        reason: "the step's token is recorded as begun but its record is missing"
                            .into(),
                    }),
                },
                Found::Refused(e) => Err(e),
            })
            .collect())
    }

    fn begin_one(
        &self,
        token: FencingToken,
        resource: Option<&str>,
        now_unix_ms: u64,
        durable: bool,
    ) -> Result<StepBegin, JournalError> {
        let mut found =
            self.begin_steps(&[StepToBegin { token, resource }], now_unix_ms, durable)?;
        found.pop().unwrap_or_else(|| {
            Err(JournalError::Corrupt {
                tree: STEP_TREE,
                key: format!("{token:?}"),
                reason: "beginning one step answered nothing (a bug)".into(),
            })
        })
    }

    /// A journal written before the latest-token tree existed: seeds it from the records.
    fn seed_latest(&self, token: &FencingToken) -> Result<(), JournalError> {
        let latest_key = step_key(token.job_id, token.step_index, token.attempt)[..12].to_vec();
        if self.steps_latest.get(&latest_key)?.is_none()
            && let Some(old) = self.latest_step(token.job_id, token.step_index)?
        {
            let _ = self.steps_latest.compare_and_swap(
                &latest_key,
                None as Option<&[u8]>,
                Some(encode(&old.token)?),
            )?;
        }
        Ok(())
    }
}
