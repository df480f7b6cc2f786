//! `job watch` and `backup --wait`: following a job until it ends.

use std::time::{Duration, Instant};

use stillpoint_coordinator::job::{Job, JobId, JobState};
use stillpoint_coordinator::views::{self, StepChange};

use super::progress::{CopyProgress, ProgressReader};
use super::read_job;
use super::tables::summary_state;
use crate::client::Client;
use crate::error::{NodeError, job_end_exit_code};
use crate::output::{OutputFormat, utc_time};

/// Shortest pause between two reads of a watched job (right after it changed).
pub const WATCH_POLL_MS_MIN: u64 = 100;
/// Longest pause between two reads of a watched job (while nothing changes).
pub const WATCH_POLL_MS_MAX: u64 = 1_000;
/// How long a watch keeps retrying reads that fail (no leader, agent unreachable) before it
/// gives up with that error.
pub const WATCH_UNREACHABLE_MS_MAX: u64 = 60_000;

/// A followed job, at its end.
#[derive(Debug)]
pub struct Watched {
    /// The job as it ended.
    pub job: Job,
    /// Every step change seen, in time order.
    pub timeline: Vec<StepChange>,
    /// Copy progress of the pairs its steps waited on, as read live while it ran.
    pub copy_progress: Vec<CopyProgress>,
    /// The exit code of its end.
    pub exit_code: u8,
}

fn timeline_line(c: &StepChange) -> String {
    let mut line = format!(
        "{}  step {} {}  {} → {}",
        utc_time(c.at_ms),
        c.step,
        c.what,
        c.from,
        c.to
    );
    if let Some(d) = &c.detail {
        line.push_str(&format!(" ({d})"));
    }
    line
}

/// Whether a failed read may succeed if tried again: anything but a job that is not there or
/// an answer that cannot be read (a leader change, an agent restarting or cut off mid-request).
/// Reads change nothing, so trying again is always safe.
fn transient(e: &NodeError) -> bool {
    !matches!(e, NodeError::NotFound(_) | NodeError::Invalid(_))
}

/// Follows job `id` until it ends or `bound` passes ([`NodeError::Timeout`], exit 5),
/// printing each step change as a timeline line (table output; json prints nothing here).
pub async fn watch(
    client: &Client,
    id: JobId,
    bound: Duration,
    output: OutputFormat,
) -> Result<Watched, NodeError> {
    let started = Instant::now();
    let deadline = started + bound;
    let timed_out = || NodeError::Timeout {
        what: format!(
            "following job {id} until it ends (it goes on: `stillpoint job watch {id}` follows it again)"
        ),
        ms: bound.as_millis() as u64,
    };
    let mut seen: Option<Job> = None;
    let mut timeline = Vec::new();
    let mut copy_progress = Vec::new();
    let mut progress = ProgressReader::default();
    let mut pause = Duration::from_millis(WATCH_POLL_MS_MIN);
    let mut failing_since: Option<Instant> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(remaining, read_job(client, id, true))
            .await
            .map_err(|_| timed_out())?;
        match read {
            Ok(job) => {
                failing_since = None;
                let changes = views::step_changes(seen.as_ref(), &job);
                if output == OutputFormat::Table {
                    let before = seen.as_ref().map(views::job_summary);
                    let now = views::job_summary(&job);
                    if before.as_ref().map(summary_state) != Some(summary_state(&now))
                        && now.end.is_none()
                    {
                        println!(
                            "{}  job {id} {}: {}",
                            utc_time(crate::agent::now_ms()),
                            views::job_text(&now.kind),
                            summary_state(&now)
                        );
                    }
                    for c in &changes {
                        println!("{}", timeline_line(c));
                    }
                }
                pause = if changes.is_empty() {
                    (pause * 2).min(Duration::from_millis(WATCH_POLL_MS_MAX))
                } else {
                    Duration::from_millis(WATCH_POLL_MS_MIN)
                };
                timeline.extend(changes);
                let moved = progress.sample(client, &job).await;
                if output == OutputFormat::Table {
                    for m in &moved {
                        println!("{}", m.line());
                    }
                }
                copy_progress.extend(moved);
                if let JobState::Ended { end, at_ms } = &job.state {
                    let exit_code = job_end_exit_code(end);
                    if output == OutputFormat::Table {
                        println!(
                            "{}  job {id} ended: {}",
                            utc_time(*at_ms),
                            views::end_text(end)
                        );
                    }
                    return Ok(Watched {
                        job,
                        timeline,
                        copy_progress,
                        exit_code,
                    });
                }
                seen = Some(job);
            }
            Err(e) if transient(&e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(WATCH_UNREACHABLE_MS_MAX) {
                    return Err(e);
                }
                tracing::warn!(error = %e, "cannot read job {id} now; trying again");
            }
            Err(e) => return Err(e),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out());
        }
        tokio::time::sleep(pause.min(remaining)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_line_reads_time_step_what_and_transition() {
        let change = StepChange {
            // 2026-11-22 10:31:02.117 UTC
            at_ms: 1_795_343_462_117,
            step: 2,
            what: "quiesce db1:data".into(),
            from: "dispatched".into(),
            to: "done".into(),
            detail: Some("quiesce 17".into()),
        };
        assert_eq!(
            timeline_line(&change),
            "10:31:02.117  step 2 quiesce db1:data  dispatched → done (quiesce 17)"
        );
    }
}
