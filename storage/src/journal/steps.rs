//! Step records and fencing: see the module essay in [`super`].

use serde::{Deserialize, Serialize};

use super::{
    JOB_TERM_TREE, Journal, JournalError, STEP_FENCE_TREE, STEP_TREE, decode, decode_all, encode,
};

/// The fencing token a step is executed under (S6). Tokens of the same job step are ordered by
/// (term, attempt): a higher term is a newer leader; within a term, a higher attempt is a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FencingToken {
    pub term: u64,
    pub job_id: u64,
    pub step_index: u32,
    pub attempt: u32,
}

impl FencingToken {
    pub(super) fn order(&self) -> (u64, u32) {
        (self.term, self.attempt)
    }
}

/// Where a step stands in this agent's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepOutcome {
    /// Begun, no outcome recorded: the agent died or is still working. Resolve by inspecting
    /// the host, never by assuming either way.
    Started,
    /// Finished; `detail` is the executor's own encoding of the result.
    Done { detail: String },
    /// Finished with an error the executor reported back.
    Failed { reason: String },
}

/// One executed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub token: FencingToken,
    pub outcome: StepOutcome,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: Option<u64>,
    /// What the step acted on, as given to [`Journal::begin_step`] (`pair:NAME`,
    /// `volume:NODE:VOLUME`; `None` for a step that touches neither, and for records written
    /// before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Where the record stands among every step begun in this journal: sled's monotonic id
    /// (it only grows, across crashes too), taken inside the transaction that began the
    /// step. The order in which steps began, which no wall-clock step can reorder; 0 in
    /// records written before it existed.
    #[serde(default)]
    pub begun_seq: u64,
}

pub(super) fn step_key(job_id: u64, step_index: u32, attempt: u32) -> [u8; 16] {
    // Big-endian so sled's byte order is (job, step, attempt) order and a prefix scan over
    // (job, step) finds every attempt of that step.
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&job_id.to_be_bytes());
    k[8..12].copy_from_slice(&step_index.to_be_bytes());
    k[12..].copy_from_slice(&attempt.to_be_bytes());
    k
}

/// A term stored as 8 big-endian bytes.
pub(super) fn term_value(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<u64, JournalError> {
    let raw: [u8; 8] = bytes.try_into().map_err(|_| JournalError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("a term is 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(raw))
}

impl Journal {
    /// Every record of a job step (each attempt begun on this agent), in attempt order.
    pub fn step_records(
        &self,
        job_id: u64,
        step_index: u32,
    ) -> Result<Vec<StepRecord>, JournalError> {
        let mut prefix = Vec::with_capacity(12);
        prefix.extend_from_slice(&job_id.to_be_bytes());
        prefix.extend_from_slice(&step_index.to_be_bytes());
        decode_all(STEP_TREE, self.steps.scan_prefix(&prefix))
    }

    /// Every step record in this journal, in key order (job, step, attempt), each with the
    /// resource it was begun on. Reads only; for tools that judge what the agent did (the
    /// chaos harness reads a stopped agent's journal with it).
    pub fn all_step_records(&self) -> Result<Vec<StepRecord>, JournalError> {
        decode_all(STEP_TREE, self.steps.iter())
    }

    /// The latest record of a job step (highest (term, attempt)), if any.
    pub fn latest_step(
        &self,
        job_id: u64,
        step_index: u32,
    ) -> Result<Option<StepRecord>, JournalError> {
        Ok(self
            .step_records(job_id, step_index)?
            .into_iter()
            .max_by_key(|r| r.token.order()))
    }

    /// The record of exactly this token's attempt, if any.
    pub fn step(&self, token: &FencingToken) -> Result<Option<StepRecord>, JournalError> {
        let key = step_key(token.job_id, token.step_index, token.attempt);
        match self.steps.get(key)? {
            Some(v) => {
                let rec: StepRecord = decode(STEP_TREE, &key, &v)?;
                Ok((rec.token == *token).then_some(rec))
            }
            None => Ok(None),
        }
    }

    /// Records, durably, that a probe asked about `token`: from now on [`Journal::begin_step`]
    /// refuses it and every older token (term, attempt) of its step, so what the probe reports
    /// stays true; and the job's term floor rises to `token.term`, so a deposed leader's late
    /// sends for the job's other steps are refused too. Fences only rise: asking about an older
    /// token than one already fenced changes nothing.
    pub fn fence_step(&self, token: FencingToken) -> Result<(), JournalError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let latest_key = step_key(token.job_id, token.step_index, token.attempt)[..12].to_vec();
        let job_key = token.job_id.to_be_bytes();
        let token_bytes = encode(&token)?;
        let abort = ConflictableTransactionError::Abort;
        let done = (&self.step_fences, &self.job_terms).transaction(|(fences, jobs)| {
            let raise = match fences.get(&latest_key)? {
                Some(f) => {
                    let fence: FencingToken =
                        decode(STEP_FENCE_TREE, &latest_key, &f).map_err(abort)?;
                    token.order() > fence.order()
                }
                None => true,
            };
            if raise {
                fences.insert(latest_key.as_slice(), token_bytes.as_slice())?;
            }
            let job_floor = match jobs.get(job_key)? {
                Some(v) => term_value(JOB_TERM_TREE, &job_key, &v).map_err(abort)?,
                None => 0,
            };
            if token.term > job_floor {
                jobs.insert(&job_key[..], &token.term.to_be_bytes()[..])?;
            }
            Ok(())
        });
        match done {
            Ok(()) => self.flush(),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// The newest token a probe fenced for this step, if any.
    pub fn step_fence(
        &self,
        job_id: u64,
        step_index: u32,
    ) -> Result<Option<FencingToken>, JournalError> {
        let key = step_key(job_id, step_index, 0)[..12].to_vec();
        match self.step_fences.get(&key)? {
            Some(v) => Ok(Some(decode(STEP_FENCE_TREE, &key, &v)?)),
            None => Ok(None),
        }
    }

    /// Records the outcome of a step begun with [`Journal::begin_step`], durably.
    pub fn finish_step(
        &self,
        token: FencingToken,
        outcome: StepOutcome,
        now_unix_ms: u64,
    ) -> Result<StepRecord, JournalError> {
        let rec = self.finish_step_unflushed(token, outcome, now_unix_ms)?;
        self.flush()?;
        Ok(rec)
    }

    /// As [`Journal::finish_step`], without waiting for the record to be durable (it becomes
    /// durable with the next flush: sled's own, every few hundred ms, or any durable write).
    /// Only for steps whose outcome can be read back from their target after a crash (a
    /// quiesce from the host's quiesce records, a separate from the pair's state): a lost
    /// record then shows the step begun and interrupted, and asking settles it from the target.
    pub fn finish_step_unflushed(
        &self,
        token: FencingToken,
        outcome: StepOutcome,
        now_unix_ms: u64,
    ) -> Result<StepRecord, JournalError> {
        let key = step_key(token.job_id, token.step_index, token.attempt);
        let (started, resource, begun_seq) = match self.step(&token)? {
            Some(r) => (r.started_at_unix_ms, r.resource, r.begun_seq),
            None => (now_unix_ms, None, 0),
        };
        let rec = StepRecord {
            token,
            outcome,
            started_at_unix_ms: started,
            finished_at_unix_ms: Some(now_unix_ms),
            resource,
            begun_seq,
        };
        self.steps.insert(key, encode(&rec)?)?;
        Ok(rec)
    }
}

/// What [`Journal::begin_step`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepBegin {
    /// Nothing recorded for this token: the caller executes the step.
    Started(StepRecord),
    /// This exact token was recorded before: answer from the record (and if it is still
    /// `Started`, resolve the outcome by inspecting the host first).
    AlreadyRecorded(StepRecord),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::StepToBegin;

    fn token(term: u64, attempt: u32) -> FencingToken {
        at(7, 3, term, attempt)
    }

    fn at(job_id: u64, step_index: u32, term: u64, attempt: u32) -> FencingToken {
        FencingToken {
            term,
            job_id,
            step_index,
            attempt,
        }
    }

    fn journal() -> Journal {
        let db = sled::Config::new().temporary(true).open().unwrap();
        Journal::open(&db).unwrap()
    }

    fn started(j: &Journal, t: FencingToken, resource: Option<&str>) -> bool {
        matches!(j.begin_step(t, resource, 1).unwrap(), StepBegin::Started(_))
    }

    #[test]
    fn every_step_record_is_listed_with_the_resource_it_was_begun_on() {
        let j = journal();
        assert!(j.all_step_records().unwrap().is_empty());
        assert!(started(&j, at(8, 1, 3, 1), Some("volume:db1:mv0")));
        assert!(started(&j, at(7, 0, 3, 2), Some("pair:p0")));
        assert!(started(&j, at(7, 2, 3, 1), None));
        // The outcome keeps the resource the step was begun on.
        j.finish_step(
            at(8, 1, 3, 1),
            StepOutcome::Failed {
                reason: "hook failed".into(),
            },
            9,
        )
        .unwrap();
        let all = j.all_step_records().unwrap();
        let seen: Vec<(u64, u32, Option<&str>)> = all
            .iter()
            .map(|r| (r.token.job_id, r.token.step_index, r.resource.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (7, 0, Some("pair:p0")),
                (7, 2, None),
                (8, 1, Some("volume:db1:mv0")),
            ]
        );
        assert_eq!(all[2].finished_at_unix_ms, Some(9));
        assert!(matches!(all[2].outcome, StepOutcome::Failed { .. }));
        // Their sequence is the order they began in (8/1 first), kept by the outcome.
        let seq = |job, step| {
            all.iter()
                .find(|r| r.token.job_id == job && r.token.step_index == step)
                .map(|r| r.begun_seq)
                .unwrap()
        };
        assert!(
            0 < seq(8, 1) && seq(8, 1) < seq(7, 0) && seq(7, 0) < seq(7, 2),
            "{all:?}"
        );
        // A refused begin writes nothing to list.
        assert!(j.begin_step(at(9, 0, 2, 1), Some("pair:p0"), 10).is_err());
        assert_eq!(j.all_step_records().unwrap().len(), 3);
        // A record written before the field existed reads with no resource.
        let old = br#"{"token":{"term":1,"job_id":1,"step_index":0,"attempt":1},"outcome":"Started","started_at_unix_ms":5,"finished_at_unix_ms":null}"#;
        let rec: StepRecord = serde_json::from_slice(old).unwrap();
        assert_eq!(rec.resource, None);
        assert_eq!(rec.begun_seq, 0);
    }

    #[test]
    fn a_term_older_than_one_accepted_for_the_job_is_refused_for_its_other_steps() {
        let j = journal();
        assert!(started(&j, at(7, 0, 3, 1), Some("volume:b1:rv")));
        // A deposed leader (term 2) sends another step of the same job: refused.
        let err = j.begin_step(at(7, 1, 2, 1), None, 2).unwrap_err();
        assert!(
            matches!(&err, JournalError::StaleTerm { floor_term: 3, scope, .. } if scope == "job 7"),
            "{err}"
        );
        assert!(err.to_string().contains("deposed leader"), "{err}");
        // Nothing was recorded for the refused token; the same term goes on.
        assert_eq!(j.latest_step(7, 1).unwrap(), None);
        assert!(started(&j, at(7, 1, 3, 1), None));
        // Another job is not affected by job 7's floor.
        assert!(started(&j, at(8, 0, 2, 1), None));
    }

    #[test]
    fn a_term_older_than_one_accepted_for_the_resource_is_refused_whatever_the_job() {
        let j = journal();
        assert!(started(&j, at(7, 2, 5, 1), Some("pair:p0")));
        // Job 8 from term 4 on the same pair: refused, naming the resource.
        let err = j
            .begin_step(at(8, 0, 4, 1), Some("pair:p0"), 2)
            .unwrap_err();
        assert!(
            matches!(&err, JournalError::StaleTerm { floor_term: 5, scope, .. } if scope.contains("pair:p0")),
            "{err}"
        );
        // On another pair, or touching no resource, term 4 is fine.
        assert!(started(&j, at(8, 0, 4, 1), Some("pair:p1")));
        assert!(started(&j, at(9, 0, 4, 1), None));
        // The same term on the resource is fine (a later step of a job of that leader).
        assert!(started(&j, at(10, 0, 5, 1), Some("pair:p0")));
    }

    #[test]
    fn a_fenced_token_and_older_attempts_are_refused_and_a_later_attempt_accepted() {
        let j = journal();
        assert!(started(&j, token(2, 1), None));
        j.fence_step(token(3, 2)).unwrap();
        assert_eq!(j.step_fence(7, 3).unwrap(), Some(token(3, 2)));
        for t in [token(3, 2), token(2, 2), token(3, 1), token(2, 1)] {
            let err = j.begin_step(t, None, 2).unwrap_err();
            assert!(
                matches!(
                    err,
                    JournalError::Fenced {
                        fence_term: 3,
                        fence_attempt: 2,
                        ..
                    }
                ),
                "{t:?}: {err}"
            );
        }
        // The fence raised the job's floor: a term-2 send for another step is refused.
        let err = j.begin_step(at(7, 4, 2, 1), None, 3).unwrap_err();
        assert!(
            matches!(err, JournalError::StaleTerm { floor_term: 3, .. }),
            "{err}"
        );
        // An older question does not lower the fence.
        j.fence_step(token(2, 1)).unwrap();
        assert_eq!(j.step_fence(7, 3).unwrap(), Some(token(3, 2)));
        // The asker's next attempt goes ahead.
        assert!(started(&j, token(3, 3), None));
    }

    #[test]
    fn fences_and_floors_survive_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(&sled::open(dir.path()).unwrap()).unwrap();
            assert!(started(&j, at(1, 0, 4, 1), Some("pair:p0")));
            j.fence_step(at(2, 0, 6, 1)).unwrap();
        }
        // `Store::open` waits for sled's flusher to let the dropped database's lock go.
        let store = crate::Store::open(dir.path()).unwrap();
        let j = Journal::open(store.db()).unwrap();
        assert!(matches!(
            j.begin_step(at(3, 0, 3, 1), Some("pair:p0"), 1),
            Err(JournalError::StaleTerm { floor_term: 4, .. })
        ));
        assert!(matches!(
            j.begin_step(at(2, 0, 6, 1), None, 1),
            Err(JournalError::Fenced { .. })
        ));
        assert!(matches!(
            j.begin_step(at(2, 1, 5, 1), None, 1),
            Err(JournalError::StaleTerm { floor_term: 6, .. })
        ));
    }

    #[test]
    fn a_resent_identical_token_is_answered_from_the_journal_even_after_newer_terms() {
        let j = journal();
        assert!(started(&j, at(7, 0, 3, 1), Some("pair:p0")));
        j.finish_step(
            at(7, 0, 3, 1),
            StepOutcome::Done {
                detail: "in sync".into(),
            },
            5,
        )
        .unwrap();
        // A newer term drove another job on the pair and another step of the job since.
        assert!(started(&j, at(8, 0, 4, 1), Some("pair:p0")));
        assert!(started(&j, at(7, 1, 4, 1), None));
        // The identical token re-sent: answered from the record, not begun again.
        match j.begin_step(at(7, 0, 3, 1), Some("pair:p0"), 9).unwrap() {
            StepBegin::AlreadyRecorded(r) => assert_eq!(
                r.outcome,
                StepOutcome::Done {
                    detail: "in sync".into()
                }
            ),
            other => panic!("expected AlreadyRecorded, got {other:?}"),
        }
    }

    #[test]
    fn steps_are_idempotent_and_stale_tokens_refused() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let j = Journal::open(&db).unwrap();
        assert!(matches!(
            j.begin_step(token(2, 0), None, 10).unwrap(),
            StepBegin::Started(_)
        ));
        // The same token again is answered from the journal, not started twice.
        match j.begin_step(token(2, 0), None, 11).unwrap() {
            StepBegin::AlreadyRecorded(r) => assert_eq!(r.outcome, StepOutcome::Started),
            other => panic!("expected AlreadyRecorded, got {other:?}"),
        }
        j.finish_step(
            token(2, 0),
            StepOutcome::Done {
                detail: "ok".into(),
            },
            20,
        )
        .unwrap();
        match j.begin_step(token(2, 0), None, 21).unwrap() {
            StepBegin::AlreadyRecorded(r) => {
                assert_eq!(
                    r.outcome,
                    StepOutcome::Done {
                        detail: "ok".into()
                    }
                );
                assert_eq!(r.started_at_unix_ms, 10);
            }
            other => panic!("expected AlreadyRecorded, got {other:?}"),
        }
        // A newer leader's retry supersedes; after that, the old term is stale.
        assert!(matches!(
            j.begin_step(token(3, 1), None, 30).unwrap(),
            StepBegin::Started(_)
        ));
        let err = j.begin_step(token(2, 2), None, 31).unwrap_err();
        assert!(
            matches!(err, JournalError::StaleToken { seen_term: 3, .. }),
            "{err}"
        );
        assert_eq!(j.latest_step(7, 3).unwrap().unwrap().token, token(3, 1));
        assert_eq!(j.latest_step(7, 4).unwrap(), None);
    }

    #[test]
    fn concurrent_begins_of_one_step_start_it_once() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let j = Journal::open(&db).unwrap();
        for step in 0..20u32 {
            let token = FencingToken {
                term: 1,
                job_id: 9,
                step_index: step,
                attempt: 0,
            };
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let started: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        let (j, barrier) = (j.clone(), barrier.clone());
                        s.spawn(move || {
                            barrier.wait();
                            matches!(j.begin_step(token, None, 1).unwrap(), StepBegin::Started(_))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap() as usize)
                    .sum()
            });
            assert_eq!(started, 1, "step {step} was started {started} times");
        }
    }

    fn step(token: FencingToken, resource: &str) -> StepToBegin<'_> {
        StepToBegin {
            token,
            resource: Some(resource),
        }
    }

    #[test]
    fn steps_begun_together_are_each_answered_as_if_begun_alone() {
        let j = journal();
        // The pair's floor is term 5 (another job's step there under a newer leader).
        assert!(matches!(
            j.begin_step(at(1, 0, 5, 1), Some("pair:p1"), 1).unwrap(),
            StepBegin::Started(_)
        ));
        let (a, stale, b) = (at(2, 4, 4, 1), at(2, 5, 4, 1), at(2, 6, 4, 1));
        let found = j
            .begin_steps(
                &[
                    step(a, "pair:p0"),
                    step(stale, "pair:p1"),
                    step(b, "pair:p2"),
                ],
                2,
                false,
            )
            .unwrap();
        assert!(matches!(&found[0], Ok(StepBegin::Started(r)) if r.token == a));
        assert!(
            matches!(
                &found[1],
                Err(JournalError::StaleTerm { floor_term: 5, .. })
            ),
            "{:?}",
            found[1]
        );
        assert!(matches!(&found[2], Ok(StepBegin::Started(r)) if r.token == b));
        // The refused one left nothing behind; the others are recorded, in the order given.
        assert_eq!(j.step(&stale).unwrap(), None);
        let (ra, rb) = (j.step(&a).unwrap().unwrap(), j.step(&b).unwrap().unwrap());
        assert!(ra.begun_seq < rb.begun_seq);
        // Sent again, together or alone, they are answered from their records.
        let again = j
            .begin_steps(&[step(b, "pair:p2"), step(a, "pair:p0")], 3, true)
            .unwrap();
        assert_eq!(again[0].as_ref().unwrap(), &StepBegin::AlreadyRecorded(rb));
        assert_eq!(again[1].as_ref().unwrap(), &StepBegin::AlreadyRecorded(ra));
        // And they raised the job's and their resources' floors like single begins.
        assert!(matches!(
            j.begin_step(at(2, 7, 3, 1), None, 4),
            Err(JournalError::StaleTerm { floor_term: 4, .. })
        ));
        assert!(matches!(
            j.begin_step(at(3, 0, 3, 1), Some("pair:p0"), 4),
            Err(JournalError::StaleTerm { floor_term: 4, .. })
        ));
    }

    #[test]
    fn a_fenced_step_in_a_batch_is_refused_and_the_rest_begin() {
        let j = journal();
        let fenced = at(4, 1, 2, 1);
        j.fence_step(fenced).unwrap();
        let other = at(4, 2, 2, 1);
        let found = j
            .begin_steps(
                &[
                    StepToBegin {
                        token: fenced,
                        resource: None,
                    },
                    StepToBegin {
                        token: other,
                        resource: None,
                    },
                ],
                1,
                true,
            )
            .unwrap();
        assert!(matches!(&found[0], Err(JournalError::Fenced { .. })));
        assert!(matches!(&found[1], Ok(StepBegin::Started(_))));
    }
}
