//! Starting the site's processes on ports of their own, and what a site that failed to form
//! shows.
//!
//! Every process of an unplaced site listens on a loopback port the OS picked free a moment
//! before (bound and let go, then written into its config). Between the two, another process on
//! the machine (another site of a parallel test, an outgoing connection) may take that port; the
//! process then cannot listen and exits. Each process is therefore watched until it answers
//! **as itself** (an agent its own name, so a stranger on the port is never taken for it) or
//! exits; one whose log says its address was in use gets another port, up to
//! [`PORT_ATTEMPTS_MAX`] times. A placed site's addresses are fixed: there it fails, saying why.
//!
//! A site that does not form names the agents that never registered, whether their processes
//! still run, and the end of their logs.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use tokio::process::Child;

use super::{
    FORM_TIMEOUT, LocalSite, SiteLayout, array_placement, free_loopback_address, spawn_array, write,
};
use crate::error::NodeError;

/// Ports a process of an unplaced site is given before its start fails.
const PORT_ATTEMPTS_MAX: usize = 4;
/// Longest a look at whether a starting process answers may take.
const ANSWER_MS: u64 = 2_000;

/// How a started process turned out.
enum Started {
    Answering,
    /// It exited because another process holds its address.
    PortTaken,
}

/// Whether a process's log says it could not listen because its address is in use.
fn lost_its_port(log: &str) -> bool {
    log.contains("Address already in use")
}

/// The last `lines` lines of the log at `path`.
fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Waits (bounded by [`FORM_TIMEOUT`]) until `answers` finds the process `child` answering, or
/// it exits: an exit because its address was taken is [`Started::PortTaken`], any other is an
/// error with the end of its log.
async fn until_answering<F, Fut>(
    what: &str,
    child: &mut Child,
    log: &Path,
    answers: F,
) -> Result<Started, NodeError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let answers = &answers;
    crate::wait::until(&format!("{what} to answer"), FORM_TIMEOUT, || {
        let exited = child.try_wait();
        async move {
            match exited {
                Ok(Some(status)) => {
                    let tail = log_tail(log, FORMATION_LOG_LINES);
                    Some(if lost_its_port(&tail) {
                        Ok(Started::PortTaken)
                    } else {
                        Err(NodeError::Invalid(format!(
                            "{what} exited ({status}) before answering; last lines of {}:\n{tail}",
                            log.display()
                        )))
                    })
                }
                Err(e) => Some(Err(NodeError::Invalid(format!(
                    "cannot tell whether {what} is running: {e}"
                )))),
                Ok(None) => {
                    let bound = Duration::from_millis(ANSWER_MS);
                    let answered = tokio::time::timeout(bound, answers()).await;
                    answered.unwrap_or(false).then_some(Ok(Started::Answering))
                }
            }
        }
    })
    .await?
}

/// Writes array `array`'s config, starts it and waits until it answers; on a port another
/// process took, on another port. Returns the process and its address.
pub(super) async fn start_array(
    bin: &Path,
    dir: &Path,
    layout: &SiteLayout,
    array: &str,
    peer: Option<&str>,
) -> Result<(Child, String), NodeError> {
    let placed = match &layout.placement {
        None => None,
        Some(p) => {
            let at = array_placement(layout, array).ok_or_else(|| {
                NodeError::Invalid(format!("the layout is placed but its array {array} is not"))
            })?;
            Some(format!("{}:{}", at.ip, p.port))
        }
    };
    let stem = SiteLayout::array_file_stem(array);
    let log = dir.join(format!("{stem}.log"));
    for _ in 0..PORT_ATTEMPTS_MAX {
        let address = match &placed {
            Some(a) => a.clone(),
            None => free_loopback_address().await?,
        };
        write(
            &dir.join(format!("{stem}.toml")),
            &layout.array_toml(array, dir, &address, peer),
        )?;
        let mut child = spawn_array(bin, dir, array, array_placement(layout, array))?;
        let started = until_answering(&format!("array {array}"), &mut child, &log, || {
            let address = address.clone();
            async move {
                match stillpoint_array::RemoteArray::connect(&address).await {
                    Ok(a) => stillpoint_array::Array::info(&a)
                        .await
                        .is_ok_and(|info| info.name == array),
                    Err(_) => false,
                }
            }
        })
        .await?;
        match started {
            Started::Answering => return Ok((child, address)),
            Started::PortTaken if placed.is_none() => {
                tracing::warn!(array, %address, "another process took the array's port; another one");
            }
            Started::PortTaken => break,
        }
    }
    Err(NodeError::Invalid(format!(
        "array {array} could not listen (address in use); last lines of {}:\n{}",
        log.display(),
        log_tail(&log, FORMATION_LOG_LINES)
    )))
}

/// Lines of each agent's log a failure to form the site shows.
const FORMATION_LOG_LINES: usize = 30;

/// The agents among `names` the registry (as the agent behind `probe` has applied it) does
/// not hold; `None` when it did not answer.
pub(super) async fn unregistered(
    probe: &crate::Client,
    names: &BTreeSet<String>,
) -> Option<BTreeSet<String>> {
    let reply = probe
        .on_endpoint("query", |mut c| async move {
            c.query(stillpoint_proto::cluster::QueryRequest {
                what: "registry".into(),
                consistent: false,
            })
            .await
        })
        .await
        .ok()?;
    let nodes: serde_json::Value = serde_json::from_slice(&reply.json).ok()?;
    let registered: BTreeSet<&str> = nodes
        .as_object()?
        .values()
        .filter_map(|n| n.get("name")?.as_str())
        .collect();
    Some(
        names
            .iter()
            .filter(|n| !registered.contains(n.as_str()))
            .cloned()
            .collect(),
    )
}

impl LocalSite {
    /// Starts every agent and waits until each answers as itself; one whose port another
    /// process took gets another (its config rewritten) before the cluster is formed.
    pub(super) async fn start_agents(&mut self) -> Result<(), NodeError> {
        for slot in 0..self.agents.len() {
            self.spawn(slot)?;
        }
        for slot in 0..self.agents.len() {
            let name = self.name(slot);
            let mut attempts = 1;
            loop {
                let address = self.endpoints[slot].clone();
                let log = self.log_path(slot);
                let child = self.agents[slot]
                    .as_mut()
                    .ok_or_else(|| NodeError::Invalid(format!("agent {name} was not started")))?;
                let started = until_answering(&format!("agent {name}"), child, &log, || {
                    let (address, name) = (address.clone(), name.clone());
                    async move {
                        let mut client = crate::Client::new(address);
                        client.request_timeout = Duration::from_millis(ANSWER_MS);
                        client.identity().await.is_ok_and(|id| id.name == name)
                    }
                })
                .await?;
                match started {
                    Started::Answering => break,
                    Started::PortTaken
                        if self.layout.placement.is_none() && attempts < PORT_ATTEMPTS_MAX =>
                    {
                        let moved = free_loopback_address().await?;
                        tracing::warn!(agent = %name, %address, %moved, "another process took the agent's port; another one");
                        let path = &self.configs[slot];
                        let text = std::fs::read_to_string(path).map_err(|e| {
                            NodeError::Invalid(format!("cannot read {}: {e}", path.display()))
                        })?;
                        let from = format!("listen = \"{address}\"");
                        write(path, &text.replace(&from, &format!("listen = \"{moved}\"")))?;
                        self.endpoints[slot] = moved;
                        self.started[slot] = false;
                        self.spawn(slot)?;
                        attempts += 1;
                    }
                    Started::PortTaken => {
                        return Err(NodeError::Invalid(format!(
                            "agent {name} could not listen on {address} (in use); last lines of {}:\n{}",
                            log.display(),
                            log_tail(&log, FORMATION_LOG_LINES)
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// `timed_out` with, for each agent in `missing`, whether its process is still running and
    /// the tail of its log: what an operator (or a test's failure message) needs to see why.
    pub(super) fn formation_failed(
        &mut self,
        timed_out: NodeError,
        missing: &BTreeSet<String>,
    ) -> NodeError {
        let mut why = Vec::new();
        for slot in 0..self.agents.len() {
            let name = self.name(slot);
            if !missing.contains(&name) {
                continue;
            }
            let process = match self.agents[slot].as_mut().map(Child::try_wait) {
                Some(Ok(None)) => "running".to_string(),
                Some(Ok(Some(status))) => format!("exited ({status})"),
                Some(Err(e)) => format!("unknown ({e})"),
                None => "not started".to_string(),
            };
            let log = self.log_path(slot);
            why.push(format!(
                "{name}: process {process}; last lines of {}:\n{}",
                log.display(),
                log_tail(&log, FORMATION_LOG_LINES)
            ));
        }
        match timed_out {
            NodeError::Timeout { what, ms } => NodeError::Timeout {
                what: format!(
                    "{what}: not registered: {}\n{}",
                    missing.iter().cloned().collect::<Vec<_>>().join(", "),
                    why.join("\n")
                ),
                ms,
            },
            other => other,
        }
    }
}
