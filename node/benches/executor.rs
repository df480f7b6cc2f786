//! What the step executor adds to the freeze window: quiesce → separate → release of one MV and
//! one pair, run (a) directly (the host agent's gRPC API and the array's, as the demo does by
//! hand) and (b) as three steps through `stillpoint_node::executor::client` to the agent, which
//! fences and journals each (durable begin and outcome) before answering. In-process agents
//! (the demo's mgmt1, db1, backup1) on loopback with the software array; freeze quiesce.
//!
//! Run: `cargo bench -p stillpoint-node --bench executor`. `STILLPOINT_BENCH_ROUNDS` sets the
//! number of rounds of each (default 50). Prints p50/p99/max of one durable journal write
//! (begin, outcome: the executor makes two per step, fsync'ed), of both windows and of the
//! difference per round. Bounded: every call has its own timeout, the run stops after 10 min.

use std::time::{Duration, Instant};

use stillpoint_array::{Array, RemoteArray, ReplicateOptions, SeparateOptions, WaitCondition};
use stillpoint_coordinator::inventory::{
    CopyControl, LdRef, PairSpec, QuiesceMethod, ReplicationKind, VolumeRef,
};
use stillpoint_coordinator::job::wire::StepOrder;
use stillpoint_coordinator::job::{
    Dispatch, FencingToken, Finding, StepCall, StepResult, StepTarget,
};
use stillpoint_host::{
    HookKind, Host, HostClient, MountIdentity, MountRequest, QuiesceMode, QuiesceRequest,
};
use stillpoint_node::demo::{DemoArray, start_local_cluster};
use stillpoint_node::executor::array_steps::pair_id;
use stillpoint_node::executor::client::execute;

const ROUNDS_DEFAULT: usize = 50;
const RUN_CAP: Duration = Duration::from_secs(600);
const SYNC_WAIT_MS: u64 = 60_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<28} n={:<4} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.99)),
        ms(*v.last().unwrap_or(&Duration::ZERO))
    );
}

fn pair() -> PairSpec {
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

fn order(token: FencingToken, target: StepTarget, call: StepCall, q: Option<u64>) -> StepOrder {
    let pair = matches!(call, StepCall::Separate { .. }).then(pair);
    StepOrder {
        dispatch: Dispatch {
            step: token.step_index,
            token,
            round: 1,
            target,
            call,
            quiesce_id: q,
            check_first: false,
            postgres_copy: None,
        },
        pair,
        reply_within_ms: 30_000,
    }
}

async fn done(addr: &str, o: &StepOrder) -> StepResult {
    match execute(addr, o).await {
        Ok(Finding::Finished { outcome: Ok(r), .. }) => r,
        other => panic!("{:?}: {other:?}", o.dispatch.call),
    }
}

async fn resync(array: &RemoteArray, id: &stillpoint_array::PairId) {
    array
        .wait(id, WaitCondition::Sep, SYNC_WAIT_MS)
        .await
        .expect("separated");
    array
        .replicate(
            id,
            &ReplicateOptions {
                wait_timeout_ms: Some(SYNC_WAIT_MS),
                ..ReplicateOptions::default()
            },
        )
        .await
        .expect("replicate to sync");
}

fn main() {
    let rounds = std::env::var("STILLPOINT_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS_DEFAULT);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let array_server = DemoArray::start(dir.path()).await.expect("array");
        let agents = start_local_cluster(dir.path(), &array_server.address)
            .await
            .expect("agents");
        let db1_addr = agents[1].local_addr.to_string();
        let db1 = HostClient::new(stillpoint_node::peer::channel_to(&db1_addr).expect("channel"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while db1
            .volume("data")
            .await
            .ok()
            .and_then(|v| v.problem)
            .is_some()
            || db1.volume("data").await.is_err()
        {
            assert!(Instant::now() < deadline, "db1:data did not attach");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        db1.mount(
            "data",
            &MountRequest {
                mount_point: None,
                identity: MountIdentity::Keep,
                read_only: false,
            },
        )
        .await
        .expect("mount");
        db1.run_hook("data", HookKind::Start).await.expect("start");
        let array = RemoteArray::connect(&array_server.address)
            .await
            .expect("array client");
        let id = pair_id(&pair());
        array.pair_set(&id).await.expect("pair set");
        resync_first(&array, &id).await;
        let term = agents
            .iter()
            .map(|a| a.context.raft.metrics().borrow().current_term)
            .max()
            .unwrap_or(0);
        let mv = VolumeRef {
            node: "db1".into(),
            volume: "data".into(),
        };
        let (mut direct, mut through, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            if started.elapsed() > RUN_CAP {
                println!("stopped after {r} rounds: the run cap was reached");
                break;
            }
            // (a) directly.
            let t0 = Instant::now();
            let q = db1
                .quiesce(&QuiesceRequest {
                    volume: "data".into(),
                    mode: QuiesceMode::Freeze,
                    limit_ms: Some(10_000),
                    owner: "bench".into(),
                })
                .await
                .expect("quiesce");
            array
                .separate(&id, &SeparateOptions::default())
                .await
                .expect("separate");
            db1.release("data", Some(q.quiesce_id))
                .await
                .expect("release");
            let a = t0.elapsed();
            resync(&array, &id).await;

            // (b) as steps through the executor.
            let tok = |step| FencingToken {
                term,
                job_id: 1_000 + r as u64,
                step_index: step,
                attempt: 1,
            };
            let node = StepTarget::Node("db1".into());
            let t0 = Instant::now();
            let StepResult::Quiesced { quiesce_id } = done(
                &db1_addr,
                &order(
                    tok(0),
                    node.clone(),
                    StepCall::Quiesce {
                        volume: mv.clone(),
                        method: QuiesceMethod::Freeze,
                        limit_ms: 10_000,
                    },
                    None,
                ),
            )
            .await
            else {
                panic!("no quiesce id")
            };
            done(
                &db1_addr,
                &order(
                    tok(1),
                    StepTarget::Array("A1".into()),
                    StepCall::Separate { pair: "p0".into() },
                    None,
                ),
            )
            .await;
            let released = done(
                &db1_addr,
                &order(
                    tok(2),
                    node,
                    StepCall::Release {
                        volume: mv.clone(),
                        quiesce_step: 0,
                    },
                    Some(quiesce_id),
                ),
            )
            .await;
            let b = t0.elapsed();
            assert_eq!(
                released,
                StepResult::Released {
                    held_throughout: true,
                    backup_label: None,
                }
            );
            resync(&array, &id).await;
            direct.push(a);
            through.push(b);
            overhead.push(b.saturating_sub(a));
        }
        // What one durable journal write costs on this data dir's disk: the executor pays two
        // per step (begin, outcome).
        let journal = agents[1].executor.journal().clone();
        let (begins, finishes) = tokio::task::spawn_blocking(move || {
            let (mut begins, mut finishes) = (Vec::new(), Vec::new());
            for i in 0..rounds as u32 {
                let token = FencingToken {
                    term,
                    job_id: 999_999,
                    step_index: i,
                    attempt: 1,
                };
                let t0 = Instant::now();
                journal.begin_step(token, None, 0).expect("begin");
                begins.push(t0.elapsed());
                let t0 = Instant::now();
                journal
                    .finish_step(
                        token,
                        stillpoint_storage::journal::StepOutcome::Failed {
                            reason: "bench".into(),
                        },
                        0,
                    )
                    .expect("finish");
                finishes.push(t0.elapsed());
            }
            (begins, finishes)
        })
        .await
        .expect("journal timing");
        println!("freeze window, 1 MV (freeze) + 1 pair, in-process agents on loopback:");
        report("journal begin_step", begins);
        report("journal finish_step", finishes);
        report("direct (host + array gRPC)", direct);
        report("through the executor", through);
        report("overhead per round", overhead);
        for a in agents {
            a.shutdown().await.expect("shutdown");
        }
        array_server.stop().await.expect("array stop");
    });
}

async fn resync_first(array: &RemoteArray, id: &stillpoint_array::PairId) {
    array
        .replicate(
            id,
            &ReplicateOptions {
                wait_timeout_ms: Some(SYNC_WAIT_MS),
                ..ReplicateOptions::default()
            },
        )
        .await
        .expect("first replicate");
}
