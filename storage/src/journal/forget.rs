//! Forgetting the step records of jobs the cluster no longer keeps: the journal's side of the
//! job history's retention (see the module essay in [`super`]).

use super::{Journal, JournalError, STEP_LATEST_TREE};

impl Journal {
    /// The jobs this journal holds step records of, in id order.
    pub fn step_jobs(&self) -> Result<Vec<u64>, JournalError> {
        let mut out: Vec<u64> = Vec::new();
        for kv in self.steps_latest.iter() {
            let (k, _) = kv?;
            let Some(id) = k.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                return Err(JournalError::Corrupt {
                    tree: STEP_LATEST_TREE,
                    key: format!("{:?}", k.as_ref()),
                    reason: "a key is a job id and a step index (12 bytes)".into(),
                });
            };
            let id = u64::from_be_bytes(id);
            if out.last() != Some(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Forgets job `job_id` durably: its step records, the newest token begun and the fence
    /// of each of its steps, and its term floor. For a job the cluster itself no longer keeps
    /// (ended, and dropped from the history by its retention): the executor refuses every
    /// order of such a job before it looks here. The resource floors stay (they are one per
    /// pair and volume, and fence every later job). Returns how many step records went.
    pub fn forget_job(&self, job_id: u64) -> Result<u64, JournalError> {
        let prefix = job_id.to_be_bytes();
        let mut records = 0;
        // The newest-token entries go last: they are what [`Journal::step_jobs`] lists, so a
        // crash half-way leaves the job listed and the next pass finishes it.
        for (tree, counts) in [(&self.steps, true), (&self.step_fences, false)] {
            for kv in tree.scan_prefix(prefix) {
                let (k, _) = kv?;
                tree.remove(k)?;
                records += u64::from(counts);
            }
        }
        self.job_terms.remove(prefix)?;
        for kv in self.steps_latest.scan_prefix(prefix) {
            let (k, _) = kv?;
            self.steps_latest.remove(k)?;
        }
        self.flush()?;
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FencingToken, StepBegin, StepOutcome};
    use super::*;

    fn token(job_id: u64, step_index: u32, term: u64) -> FencingToken {
        FencingToken {
            term,
            job_id,
            step_index,
            attempt: 1,
        }
    }

    #[test]
    fn a_forgotten_job_leaves_nothing_but_the_resource_floors_and_the_other_jobs() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let j = Journal::open(&db).unwrap();
        for (job, step) in [(7, 0), (7, 1), (8, 0), (300, 2)] {
            let t = token(job, step, 3);
            assert!(matches!(
                j.begin_step(t, Some("pair:p0"), 1).unwrap(),
                StepBegin::Started(_)
            ));
            j.finish_step(
                t,
                StepOutcome::Done {
                    detail: "ok".into(),
                },
                2,
            )
            .unwrap();
        }
        j.fence_step(token(7, 1, 4)).unwrap();
        assert_eq!(j.step_jobs().unwrap(), vec![7, 8, 300]);

        assert_eq!(j.forget_job(7).unwrap(), 2);
        assert_eq!(j.step_jobs().unwrap(), vec![8, 300]);
        assert!(j.step_records(7, 0).unwrap().is_empty());
        assert_eq!(j.step_fence(7, 1).unwrap(), None);
        let kept: Vec<u64> = j
            .all_step_records()
            .unwrap()
            .iter()
            .map(|r| r.token.job_id)
            .collect();
        assert_eq!(kept, vec![8, 300]);
        // The pair's floor (term 3) still refuses a deposed leader's older term, whatever the
        // job.
        assert!(matches!(
            j.begin_step(token(9, 0, 2), Some("pair:p0"), 1),
            Err(JournalError::StaleTerm { .. })
        ));
        // Forgetting a job with nothing here changes nothing.
        assert_eq!(j.forget_job(7).unwrap(), 0);
    }
}
