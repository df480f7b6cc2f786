//! `job list`, `job show` and `copies list`: reading a view and printing it.

use stillpoint_coordinator::job::{CopyLabel, JobId, JobState, Phase, StepTarget};
use stillpoint_coordinator::views::{self, CopyEntry, JobSummary};

use super::{read_copies, read_job, read_jobs};
use crate::client::Client;
use crate::error::{NodeError, job_end_exit_code};
use crate::output::{OutputFormat, json, table, utc_datetime};

pub(super) fn opt_time(ms: Option<u64>) -> String {
    ms.map(utc_datetime).unwrap_or_else(|| "-".into())
}

/// `stillpoint job list`.
pub async fn list(client: &Client, output: OutputFormat) -> Result<Vec<JobSummary>, NodeError> {
    let jobs = read_jobs(client).await?;
    if output == OutputFormat::Json {
        println!("{}", json(&jobs));
        return Ok(jobs);
    }
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(jobs);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let state = match (j.waiting_for, &j.end) {
                (Some(w), _) => format!("queued behind job {w}"),
                (_, Some(end)) => views::end_text(end),
                _ => j.state.clone(),
            };
            vec![
                j.id.to_string(),
                views::job_text(&j.kind),
                state,
                j.submitted_by.clone(),
                utc_datetime(j.submitted_at_ms),
                opt_time(j.ended_at_ms),
                format!("{}/{}", j.steps_settled, j.steps_total),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "JOB",
                "STATE",
                "SUBMITTED BY",
                "SUBMITTED (UTC)",
                "ENDED (UTC)",
                "STEPS"
            ],
            &rows
        )
    );
    Ok(jobs)
}

fn target_text(target: &StepTarget) -> String {
    match target {
        StepTarget::Node(n) => format!("node {n}"),
        StepTarget::Array(a) => format!("array {a}"),
    }
}

/// `stillpoint job show ID`: the exit code (the job's outcome if it has ended, else 0).
pub async fn show(client: &Client, id: JobId, output: OutputFormat) -> Result<u8, NodeError> {
    let job = read_job(client, id, true).await?;
    let code = match &job.state {
        JobState::Ended { end, .. } => job_end_exit_code(end),
        _ => 0,
    };
    if output == OutputFormat::Json {
        println!("{}", json(&job));
        return Ok(code);
    }
    let s = views::job_summary(&job);
    println!(
        "job {}  {}  {}  round {}",
        job.id,
        views::job_text(&job.kind),
        summary_state(&s),
        job.round
    );
    println!(
        "submitted by {} at {} UTC",
        job.submitted_by,
        utc_datetime(job.submitted_at_ms)
    );
    if let Some(why) = &job.crash_consistent_why {
        println!("the copy cannot be consistent: {why}");
    }
    let rows: Vec<Vec<String>> = job
        .steps
        .iter()
        .map(|st| {
            vec![
                st.id.to_string(),
                match st.phase {
                    Phase::Prepare => "prepare",
                    Phase::StaticPoint => "static-point",
                    Phase::Publish => "publish",
                }
                .to_string(),
                target_text(&st.target),
                views::step_what(&st.call),
                if st.after.is_empty() {
                    "-".into()
                } else {
                    st.after
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                st.state.name().to_string(),
                st.attempts.to_string(),
                views::state_detail(&st.state).unwrap_or_default(),
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        table(
            &[
                "STEP", "PHASE", "TARGET", "WHAT", "AFTER", "STATE", "ATTEMPTS", "DETAIL"
            ],
            &rows
        )
    );
    Ok(code)
}

pub(super) fn summary_state(s: &JobSummary) -> String {
    match (&s.end, s.waiting_for, &s.cancelled_by) {
        (Some(end), _, _) => format!(
            "ended {} UTC: {}",
            opt_time(s.ended_at_ms),
            views::end_text(end)
        ),
        (_, Some(w), _) => format!("queued behind job {w}"),
        (_, _, Some(by)) => format!("cancelling (asked by {by})"),
        _ => s.state.clone(),
    }
}

/// How a pair's MV was brought to its static point, as the catalogue shows it: a PostgreSQL
/// copy in online backup mode says so; one taken by freeze is crash-consistent for PostgreSQL
/// by design (it recovers from its WAL).
fn method(quiesce: &str) -> String {
    match quiesce {
        "" => "(not recorded)".into(),
        "postgresql" => "postgresql (online backup)".into(),
        other => other.into(),
    }
}

/// `stillpoint copies list [--group G]`.
pub async fn copies(
    client: &Client,
    group: Option<&str>,
    output: OutputFormat,
) -> Result<Vec<CopyEntry>, NodeError> {
    let copies = read_copies(client, group).await?;
    if output == OutputFormat::Json {
        println!("{}", json(&copies));
        return Ok(copies);
    }
    if copies.is_empty() {
        match group {
            Some(g) => println!("no copies of group {g} are recorded"),
            None => println!("no copies are recorded"),
        }
        return Ok(copies);
    }
    let mut rows = Vec::new();
    for c in &copies {
        let label = match &c.label {
            CopyLabel::Consistent => "consistent".to_string(),
            CopyLabel::CrashConsistent { why } => {
                format!("crash-consistent: {why}")
            }
        };
        if c.pairs.is_empty() {
            let none = "(not recorded)".to_string();
            rows.push(vec![
                c.job_id.to_string(),
                c.group.clone(),
                utc_datetime(c.ended_at_ms),
                none.clone(),
                none.clone(),
                none.clone(),
                none,
                label.clone(),
            ]);
        }
        for (i, p) in c.pairs.iter().enumerate() {
            let first = |s: String| if i == 0 { s } else { String::new() };
            rows.push(vec![
                first(c.job_id.to_string()),
                first(c.group.clone()),
                first(utc_datetime(c.ended_at_ms)),
                p.pair.clone(),
                format!("{} ({})", p.mv, p.mv_ld),
                format!("{} ({})", p.rv, p.rv_ld),
                method(&p.quiesce),
                first(label.clone()),
            ]);
        }
    }
    print!(
        "{}",
        table(
            &[
                "JOB",
                "GROUP",
                "TAKEN (UTC)",
                "PAIR",
                "MV (LD)",
                "RV (LD)",
                "QUIESCE",
                "LABEL"
            ],
            &rows
        )
    );
    Ok(copies)
}
