#![allow(dead_code)] // each test file uses its own part of the site
//! The executor tests' site: three in-process agents (mgmt1, db1 with MV `data`, backup1
//! with RV `rv`) on the demo's software array, driven step by step through
//! `stillpoint_node::executor::client` as the leader's driver does.

use std::time::{Duration, Instant};

use stillpoint_coordinator::inventory::{CopyControl, LdRef, PairSpec, ReplicationKind, VolumeRef};
use stillpoint_coordinator::job::wire::{ProbeOrder, StepOrder};
use stillpoint_coordinator::job::{
    Dispatch, FencingToken, Finding, StepCall, StepResult, StepTarget,
};
use stillpoint_host::{HookKind, Host, MountIdentity, MountRequest};
use stillpoint_node::demo::{DemoArray, start_local_cluster};
use stillpoint_node::executor::client::execute;
use stillpoint_node::{NodeError, RunningAgent};

/// Bound on any wait in these tests (a loaded 2-core machine).
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Site {
    _dir: tempfile::TempDir,
    pub array: Option<DemoArray>,
    pub agents: Vec<RunningAgent>,
}

impl Site {
    pub async fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let array = DemoArray::start(dir.path()).await.unwrap();
        let agents = start_local_cluster(dir.path(), &array.address)
            .await
            .unwrap();
        let site = Site {
            _dir: dir,
            array: Some(array),
            agents,
        };
        for (i, volume) in [(1, "data"), (2, "rv")] {
            let host = site.host(i);
            poll(&format!("volume {volume} to attach"), || async {
                host.volume(volume)
                    .await
                    .ok()
                    .filter(|v| v.problem.is_none())
            })
            .await;
        }
        site
    }

    pub fn host(&self, i: usize) -> std::sync::Arc<stillpoint_host::Agent> {
        self.agents[i].host.clone().expect("agent has a host half")
    }

    pub fn array_address(&self) -> String {
        self.array.as_ref().expect("the array runs").address.clone()
    }

    pub fn addr(&self, i: usize) -> String {
        self.agents[i].local_addr.to_string()
    }

    /// The highest raft term any agent is in: tokens from it are current everywhere.
    pub fn term(&self) -> u64 {
        self.agents
            .iter()
            .map(|a| a.context.raft.metrics().borrow().current_term)
            .max()
            .unwrap()
    }

    /// Mounts db1's MV and starts its writer, as the business server runs all day.
    pub async fn run_business(&self) {
        self.mount_mv().await;
        self.host(1)
            .run_hook("data", HookKind::Start)
            .await
            .unwrap();
    }

    /// Mounts db1's MV `data` without starting its application.
    pub async fn mount_mv(&self) {
        self.host(1)
            .mount(
                "data",
                &MountRequest {
                    mount_point: None,
                    identity: MountIdentity::Keep,
                    read_only: false,
                },
            )
            .await
            .unwrap();
    }

    /// Stops agent `i` gracefully and starts it again on its data dir and address.
    pub async fn restart(&mut self, i: usize) {
        let agent = self.agents.remove(i);
        let config = agent.context.config.clone();
        agent.shutdown().await.unwrap();
        let listener = stillpoint_node::agent::bind(&config).await.unwrap();
        let agent = stillpoint_node::start(config, listener).await.unwrap();
        self.agents.insert(i, agent);
    }

    pub async fn stop(self) {
        for a in self.agents {
            a.shutdown().await.unwrap();
        }
        if let Some(array) = self.array {
            array.stop().await.unwrap();
        }
    }
}

pub async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn tok(term: u64, job_id: u64, step_index: u32, attempt: u32) -> FencingToken {
    FencingToken {
        term,
        job_id,
        step_index,
        attempt,
    }
}

pub fn vol(node: &str, volume: &str) -> VolumeRef {
    VolumeRef {
        node: node.into(),
        volume: volume.into(),
    }
}

pub fn pair() -> PairSpec {
    PairSpec {
        name: "p0".into(),
        mv: LdRef {
            array: "A1".into(),
            ld: 0,
        },
        rv: LdRef {
            array: "A1".into(),
            ld: 1,
        },
        kind: ReplicationKind::Ddr,
        copy_control: CopyControl::Sync,
    }
}

pub fn target_of(call: &StepCall) -> StepTarget {
    match call {
        StepCall::SetPair { .. }
        | StepCall::Replicate { .. }
        | StepCall::Separate { .. }
        | StepCall::AwaitSeparated { .. } => StepTarget::Array("A1".into()),
        StepCall::FreeRv { volume }
        | StepCall::Quiesce { volume, .. }
        | StepCall::Release { volume, .. }
        | StepCall::MountRv { volume } => StepTarget::Node(volume.node.clone()),
        StepCall::RunBackup { .. } => StepTarget::Node("backup1".into()),
    }
}

pub fn order(token: FencingToken, call: StepCall) -> StepOrder {
    let pair = matches!(
        call,
        StepCall::SetPair { .. }
            | StepCall::Replicate { .. }
            | StepCall::Separate { .. }
            | StepCall::AwaitSeparated { .. }
    )
    .then(pair);
    StepOrder {
        dispatch: Dispatch {
            step: token.step_index,
            token,
            round: 1,
            target: target_of(&call),
            call,
            quiesce_id: None,
            check_first: false,
            postgres_copy: None,
        },
        pair,
        reply_within_ms: 30_000,
    }
}

pub fn probe_order(o: &StepOrder, token: FencingToken) -> ProbeOrder {
    ProbeOrder {
        step: token.step_index,
        token,
        round: o.dispatch.round,
        target: o.dispatch.target.clone(),
        call: o.dispatch.call.clone(),
        pair: o.pair.clone(),
    }
}

/// Sends `o` to `addr` and expects it done with a result.
pub async fn done(addr: &str, o: &StepOrder) -> StepResult {
    match execute(addr, o).await {
        Ok(Finding::Finished {
            token,
            outcome: Ok(r),
        }) => {
            assert_eq!(token, o.dispatch.token);
            r
        }
        other => panic!("{:?} was not done: {other:?}", o.dispatch.call),
    }
}

pub fn assert_refused(r: Result<Finding, NodeError>, needle: &str) {
    match r {
        Err(NodeError::Refused(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
    }
}
