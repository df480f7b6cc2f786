//! The job tests' site: [`stillpoint_node::demo::site::LocalSite`] (the software array and
//! agents mgmt1, db1, db2, backup1 as processes of the `stillpoint` binary), with the site file
//! applied through the CLI, the pairs prepared by a `group prepare` job, and every MV's
//! application writing — plus what the tests read back: jobs, logs, the verifier on the RVs.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

#[path = "../common/mod.rs"]
mod common;
pub use common::{BIN, WAIT, stderr, stillpoint};

pub use stillpoint_node::demo::site::{DB1, DB2, LocalSite, MGMT1, SiteLayout};

use stillpoint_coordinator::ClusterState;
use stillpoint_coordinator::job::{CopyLabel, Job, JobEnd, JobKind, JobState};
use stillpoint_coordinator::{Command, Response};
use stillpoint_host::Host;
use stillpoint_proto::cluster::QueryRequest;

pub struct JobSite {
    pub site: LocalSite,
    pub dir: tempfile::TempDir,
}

impl JobSite {
    /// Starts the site, applies the site file, prepares the pairs (a `group prepare` job) and
    /// starts the applications.
    pub async fn start(layout: SiteLayout) -> JobSite {
        let site = JobSite::start_applied(layout).await;
        let out = stillpoint(&[
            "group",
            "prepare",
            "payroll",
            "--wait",
            "--endpoint",
            &site.site.endpoints[1],
        ]);
        assert!(
            out.status.success(),
            "group prepare payroll --wait: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out),
            site.logs()
        );
        site.site
            .start_applications()
            .await
            .expect("start the applications");
        site
    }

    /// Starts the site and applies the site file; nothing more.
    pub async fn start_applied(layout: SiteLayout) -> JobSite {
        let dir = tempfile::tempdir().expect("temporary dir");
        let site = LocalSite::start(std::path::Path::new(BIN), dir.path(), layout)
            .await
            .expect("start the site");
        let site = JobSite { site, dir };
        site.apply("site.toml", &site.site.layout.site_toml());
        site
    }

    /// Writes `text` to `name` in the site's dir and applies it with `stillpoint apply -f`.
    pub fn apply(&self, name: &str, text: &str) {
        let file = self.dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = stillpoint(&[
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--endpoint",
            &self.site.endpoints[0],
        ]);
        assert!(out.status.success(), "apply {name}: {}", stderr(&out));
    }

    /// Submits a job through any agent that answers (agents may be restarting).
    pub async fn submit(&self, kind: JobKind) -> u64 {
        let command = Command::SubmitJob {
            kind,
            submitted_by: "test".into(),
            at_ms: stillpoint_node::agent::now_ms(),
            no_queue: false,
        };
        let command = &command;
        let response = wait_async("an agent to accept the job", || async move {
            for endpoint in &self.site.endpoints {
                let client = stillpoint_node::Client::new(endpoint.clone());
                if let Ok((r, _)) = client.propose(command).await {
                    return Some(r);
                }
            }
            None
        })
        .await;
        match response {
            Response::JobAccepted { job_id, .. } => job_id,
            other => panic!("the job was not accepted: {other:?}"),
        }
    }

    pub async fn submit_backup(&self) -> u64 {
        self.submit(JobKind::Backup {
            group: "payroll".into(),
        })
        .await
    }

    /// The replicated state as the leader applied it (confirmed by a quorum, so a job just
    /// accepted is in it), asked through any running agent that answers.
    pub async fn state(&self) -> Option<ClusterState> {
        for endpoint in &self.site.endpoints {
            let reply = stillpoint_node::Client::new(endpoint.clone())
                .on_leader("query", |mut c| async move {
                    c.query(QueryRequest {
                        what: "state".into(),
                        consistent: true,
                    })
                    .await
                })
                .await;
            if let Ok(reply) = reply {
                return serde_json::from_slice(&reply.json).ok();
            }
        }
        None
    }

    pub async fn job(&self, id: u64) -> Option<Job> {
        self.state()
            .await?
            .jobs
            .jobs
            .get(&id)
            .map(|j| (**j).clone())
    }

    /// Waits until job `id` ends; returns how. Fails with the job's steps and the agents'
    /// logs when it does not end in time.
    pub async fn wait_ended(&self, id: u64, within: Duration) -> JobEnd {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(Job {
                state: JobState::Ended { end, .. },
                ..
            }) = self.job(id).await
            {
                return end;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not end within {within:?}: {:#?}\n{}",
                self.job(id).await.map(|j| j
                    .steps
                    .iter()
                    .map(|s| format!("{} {:?} {:?}", s.id, s.call, s.state))
                    .collect::<Vec<_>>()),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tail of every agent's log and of the array's, for a failure message.
    pub fn logs(&self) -> String {
        let tail = |name: String, path: std::path::PathBuf| {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            format!(
                "--- {name} (last 40 lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        };
        (0..self.site.agents.len())
            .map(|s| tail(self.site.name(s), self.site.log_path(s)))
            .chain(
                self.site
                    .layout
                    .array_names()
                    .into_iter()
                    .map(|a| tail(format!("array {a}"), self.site.array_log_path(a))),
            )
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Reads every RV through the array with the workload's verifier: per pair, the intact
    /// record count, or what is wrong. Every RV must be a clean prefix of its MV's records,
    /// whatever was killed: a business node SIGKILLed is a crashed host whose application
    /// recovers its volume (clears the damaged tail) when it starts again, so no copy made
    /// after that carries the crash's damage.
    pub async fn verify_rvs(&self) -> Vec<Result<u64, String>> {
        let mut out = Vec::new();
        for (i, p) in self.site.layout.pairs.iter().enumerate() {
            out.push(match self.site.verify_rv(i).await {
                Ok(r) if r.torn.is_empty() && r.gaps.is_empty() && r.intact_count > 0 => {
                    Ok(r.intact_count)
                }
                Ok(r) => Err(format!(
                    "{} ({}): {} intact, torn {:?}, gaps {:?}",
                    p.pair, p.rv_volume, r.intact_count, r.torn, r.gaps
                )),
                Err(e) => Err(format!("{} ({}): {e}", p.pair, p.rv_volume)),
            });
        }
        out
    }

    /// MVs still quiesced on their (running) hosts.
    pub async fn quiesced_mvs(&self) -> Vec<String> {
        let mut held = Vec::new();
        for slot in DB1..self.site.layout.backup_slot() {
            if self.site.agents[slot].is_none() {
                continue;
            }
            if let Ok(q) = self.site.host(slot).expect("host").quiesces().await {
                held.extend(
                    q.into_iter()
                        .map(|q| format!("{}:{}", self.site.name(slot), q.volume)),
                );
            }
        }
        held
    }
}

/// Runs the binary off the runtime's threads (the agents run on them).
pub async fn sp(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stillpoint(&args)
    })
    .await
    .expect("run stillpoint")
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The exit code of a finished run.
pub fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("exited")
}

pub fn is_consistent(end: &JobEnd) -> bool {
    matches!(
        end,
        JobEnd::Done {
            label: CopyLabel::Consistent
        }
    )
}

/// Polls `f` until it yields, bounded by [`WAIT`] (the agents' own bounded wait).
pub async fn wait_async<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    stillpoint_node::wait::until(what, WAIT, f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
