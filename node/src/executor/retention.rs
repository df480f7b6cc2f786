//! The journal's side of the job history's retention: orders of ended jobs are refused, and
//! the step records of jobs the cluster no longer keeps are forgotten.
//!
//! Every agent applies the replicated state, so each knows, from its own copy of the log,
//! which jobs have ended and which the history's retention (`jobs_retained_max`) dropped. An
//! order of a job its copy shows ended is refused before the journal is touched: nothing of an
//! ended job acts again, whatever a deposed leader still sends. A copy behind the leader's
//! (a job it has not seen yet) refuses nothing.
//!
//! Once a job is dropped from the history, [`run`] removes its step records, fences and term
//! floor from the journal ([`stillpoint_storage::journal::Journal::forget_job`]), soon after
//! the agent starts ([`RETENTION_FIRST_CHECK_MS`]) and then every [`RETENTION_CHECK_MS`], so
//! the journal grows with the history's bound, not with every job ever run. A late order of a
//! forgotten job is refused by the first rule, not by its records. The resource floors (one
//! per pair and volume) are kept for good. The host's log of volumes it resumed by itself is
//! trimmed at the same time to its newest [`RESUMES_KEPT`] records.

use std::sync::Arc;
use std::time::Duration;

use stillpoint_coordinator::JobStanding;
use stillpoint_coordinator::job::FencingToken;
use tokio::sync::watch;
use tonic::Status;

use super::{Executor, refused};

/// How often the journal is checked for jobs to forget.
pub const RETENTION_CHECK_MS: u64 = 60_000;
/// Resume records (volumes the host resumed by itself) kept: the newest ones.
pub const RESUMES_KEPT: usize = 1_000;
/// The first check after the agent starts (its copy of the log is caught up by then, mostly;
/// a copy still behind forgets nothing it should not, it only sees fewer jobs dropped).
pub const RETENTION_FIRST_CHECK_MS: u64 = 5_000;

/// Of the jobs a journal holds records of, those to forget given where each stands in this
/// agent's copy of the log. Pure.
pub fn to_forget(in_journal: &[u64], standing: impl Fn(u64) -> JobStanding) -> Vec<u64> {
    in_journal
        .iter()
        .copied()
        .filter(|id| standing(*id) == JobStanding::Forgotten)
        .collect()
}

impl Executor {
    /// Refuses an order of a job this agent's copy of the log shows ended (or ended and
    /// forgotten).
    pub(super) fn check_job_open(&self, token: &FencingToken) -> Result<(), Status> {
        let standing = self.ctx.state.read(|s| s.jobs.standing(token.job_id));
        match standing {
            JobStanding::Ended | JobStanding::Forgotten => Err(refused(format!(
                "job {} has ended (as agent {}'s copy of the log shows): no step of it runs any more; \
                 the order (step {}, term {}) is a late one from a leader that has not seen the end (refused by S6)",
                token.job_id, self.ctx.config.name, token.step_index, token.term
            ))),
            JobStanding::Open | JobStanding::NotYetSeen => Ok(()),
        }
    }

    /// Forgets the step records of every job the history no longer keeps, and trims the resume
    /// log. Returns how many jobs were forgotten.
    pub async fn forget_dropped_jobs(&self) -> Result<usize, Status> {
        let in_journal = self
            .journal_op("listing the jobs in the journal", |j| j.step_jobs())
            .await?;
        let forget = self
            .ctx
            .state
            .read(|s| to_forget(&in_journal, |id| s.jobs.standing(id)));
        for &id in &forget {
            let records = self
                .journal_op("forgetting a job's step records", move |j| j.forget_job(id))
                .await?;
            tracing::debug!(
                job = id,
                records,
                "journal: forgot the step records of a job the history no longer keeps"
            );
        }
        self.journal_op("trimming the resume log", |j| j.trim_resumes(RESUMES_KEPT))
            .await?;
        Ok(forget.len())
    }
}

/// Runs until `shutdown`: [`RETENTION_FIRST_CHECK_MS`] after the start, then every
/// [`RETENTION_CHECK_MS`], forgets what the history dropped.
pub async fn run(exec: Arc<Executor>, mut shutdown: watch::Receiver<bool>) {
    let mut delay_ms = RETENTION_FIRST_CHECK_MS;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
        }
        delay_ms = RETENTION_CHECK_MS;
        match exec.forget_dropped_jobs().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                jobs = n,
                "journal: forgot the step records of jobs the history dropped"
            ),
            Err(e) => {
                tracing::warn!(error = %e.message(), "journal: could not forget dropped jobs; will try again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jobs_the_history_dropped_are_forgotten() {
        let standing = |id: u64| match id {
            1 | 2 => JobStanding::Forgotten,
            3 => JobStanding::Ended,
            4 => JobStanding::Open,
            _ => JobStanding::NotYetSeen,
        };
        assert_eq!(to_forget(&[1, 2, 3, 4, 9], standing), vec![1, 2]);
        assert!(to_forget(&[], standing).is_empty());
    }
}
