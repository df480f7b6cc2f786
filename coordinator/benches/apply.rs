//! Apply cost against job history: does applying a command stay flat as ended jobs pile up?
//!
//! `cargo bench -p stillpoint-coordinator --bench apply` builds one state-machine store on a
//! temp dir (the same sled store the agent uses), applies a site inventory, then grows the
//! history to each size in `STILLPOINT_BENCH_HISTORY` (default `0,10000,100000`) by running
//! one-pair backup jobs to their end through `decide` with an executor that succeeds at once,
//! each event applied as its own log entry. At each size it prints the latency of applying a
//! job submission and of a step event (p50/p99 over `STILLPOINT_BENCH_SAMPLES` samples, default
//! 2000), the heap the process holds live (counted by this bench's allocator, before the
//! snapshot: the state and what the store keeps, not memory freed and not yet returned), the
//! process's resident memory (after a full copy of the state and a snapshot were made, so it
//! also counts their pages), the snapshot's size and build time, how long the build holds the
//! state's lock (its copy), and the data dir's size after the snapshot.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder};
use stillpoint_coordinator::inventory::{
    ArraySpec, CopyControl, GroupSpec, Inventory, LdRef, MemberSpec, PairSpec, QuiesceMethod,
    ReplicationKind, VolumeRef, VolumeSpec,
};
use stillpoint_coordinator::job::{Action, Job, JobEvent, JobKind, StepCall, StepResult, decide};
use stillpoint_coordinator::{
    ClusterState, Command, Member, NodeRecord, Response, Role, TypeConfig,
};
use stillpoint_storage::{StateMachineStore, Store};

type Sm = StateMachineStore<TypeConfig, ClusterState>;

/// The system allocator, counting the bytes it holds live.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the counter is only
// arithmetic on the sizes it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_heap_mib() -> f64 {
    LIVE_BYTES.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
}

struct Log {
    sm: Sm,
    index: u64,
}

impl Log {
    async fn apply(&mut self, command: Command) -> (Response, Duration) {
        self.apply_payload(EntryPayload::Normal(command)).await
    }

    async fn apply_payload(&mut self, payload: EntryPayload<TypeConfig>) -> (Response, Duration) {
        self.index += 1;
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload,
        };
        let started = Instant::now();
        let mut out = self.sm.apply([entry]).await.expect("apply");
        (out.pop().expect("one response"), started.elapsed())
    }
}

fn site(retained: u32) -> Inventory {
    let ld = |ld| LdRef {
        array: "A1".into(),
        ld,
    };
    let vol = |node: &str, volume: &str| VolumeRef {
        node: node.into(),
        volume: volume.into(),
    };
    let mut inv = Inventory::default();
    inv.settings.jobs_retained_max = retained;
    inv.arrays.insert(
        "A1".into(),
        ArraySpec {
            name: "A1".into(),
            control_nodes: ["mgmt1".to_string()].into(),
        },
    );
    inv.pairs.insert(
        "p0".into(),
        PairSpec {
            name: "p0".into(),
            mv: ld(0),
            rv: ld(1),
            kind: ReplicationKind::Ddr,
            copy_control: CopyControl::Sync,
        },
    );
    for (node, volume, l) in [("db1", "data", 0), ("backup1", "rv", 1)] {
        inv.volumes.insert(
            format!("{node}:{volume}"),
            VolumeSpec {
                node: node.into(),
                volume: volume.into(),
                ld: ld(l),
            },
        );
    }
    inv.groups.insert(
        "payroll".into(),
        GroupSpec {
            name: "payroll".into(),
            members: vec![MemberSpec {
                pair: "p0".into(),
                mv: vol("db1", "data"),
                rv: vol("backup1", "rv"),
                quiesce: QuiesceMethod::Freeze,
                quiesce_ms_max: 10_000,
            }],
            backup_command: None,
        },
    );
    inv
}

fn result_of(call: &StepCall, quiesce_id: u64) -> StepResult {
    match call {
        StepCall::FreeRv { .. } => StepResult::RvFreed,
        StepCall::SetPair { .. } => StepResult::PairSet,
        StepCall::Replicate { .. } => StepResult::InSync,
        StepCall::Quiesce { .. } => StepResult::Quiesced { quiesce_id },
        StepCall::Separate { .. } => StepResult::SeparateAccepted,
        StepCall::Release { .. } => StepResult::Released {
            held_throughout: true,
            backup_label: None,
        },
        StepCall::AwaitSeparated { .. } => StepResult::Separated,
        StepCall::MountRv { .. } => StepResult::RvMounted { repaired: false },
        StepCall::RunBackup { .. } => StepResult::BackupRan { exit_code: 0 },
    }
}

/// Runs one backup job from submission to its end; returns the submit and event latencies.
async fn one_job(log: &mut Log, now_ms: u64) -> (Duration, Vec<Duration>) {
    let (response, submit) = log
        .apply(Command::SubmitJob {
            kind: JobKind::Backup {
                group: "payroll".into(),
            },
            submitted_by: "bench".into(),
            at_ms: now_ms,
            no_queue: true,
        })
        .await;
    let Response::JobAccepted { job_id, .. } = response else {
        panic!("submit refused: {response:?}")
    };
    let mut events = Vec::new();
    for _round in 0..100 {
        // A copy of the job, not a share of it: a share held across the applies below would
        // make each of them copy the job (`Arc::make_mut`), which the driver never does.
        let job = log.sm.read(|s| Job::clone(&s.jobs.jobs[&job_id]));
        if job.is_ended() {
            return (submit, events);
        }
        for action in decide(&job, 1, now_ms) {
            let recorded = match action {
                Action::Record(e) => vec![e],
                Action::Dispatch(d) => vec![
                    JobEvent::Dispatched {
                        step: d.step,
                        token: d.token,
                    },
                    JobEvent::Completed {
                        step: d.step,
                        token: d.token,
                        result: result_of(&d.call, job_id),
                    },
                ],
                Action::Probe { .. } => panic!("nothing is unknown in this bench"),
            };
            for event in recorded {
                let (r, took) = log
                    .apply(Command::Job {
                        job_id,
                        event,
                        at_ms: now_ms,
                    })
                    .await;
                assert_eq!(r, Response::Applied { changed: true });
                events.push(took);
            }
        }
    }
    panic!("job {job_id} did not end");
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let sizes: Vec<u64> = std::env::var("STILLPOINT_BENCH_HISTORY")
        .unwrap_or_else(|_| "0,10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let samples: usize = env_or("STILLPOINT_BENCH_SAMPLES", 2000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open store");
        let mut log = Log {
            sm: store.state_machine_store().expect("state machine store"),
            index: 0,
        };
        let members = (1..=3u64).map(|id| (id, Member::new(format!("127.0.0.1:{}", 7400 + id), id)));
        log.apply_payload(EntryPayload::Membership(Membership::new(
            vec![(1..=3).collect()],
            members.collect::<std::collections::BTreeMap<_, _>>(),
        )))
        .await;
        for (id, name, role) in [
            (1, "mgmt1", Role::Management),
            (2, "db1", Role::Business),
            (3, "backup1", Role::Backup),
        ] {
            log.apply(Command::RegisterNode(NodeRecord {
                node_id: id,
                name: name.into(),
                address: format!("127.0.0.1:{}", 7400 + id),
                roles: [role].into(),
                version: "0.1.0".into(),
                registered_at_ms: 0,
                deregistered_at_ms: None,
            }))
            .await;
        }
        let retained = sizes.iter().max().copied().unwrap_or(0) as u32 + samples as u32 + 1;
        let (r, _) = log
            .apply(Command::ApplyInventory {
                inventory: site(retained),
                prune: false,
                by: "bench".into(),
                at_ms: 0,
            })
            .await;
        assert!(matches!(r, Response::InventoryApplied { .. }), "{r:?}");
        println!(
            "apply cost against history: one-pair backup jobs, each event its own entry, {samples} samples per size"
        );
        println!(
            "{:>8} {:>12} {:>12} {:>12} {:>12} {:>10} {:>9} {:>13} {:>11} {:>9} {:>11}",
            "history",
            "submit p50",
            "submit p99",
            "event p50",
            "event p99",
            "heap MiB",
            "RSS MiB",
            "snapshot MiB",
            "build ms",
            "lock ms",
            "dir MiB"
        );
        let mut now_ms = 1_000;
        for &size in &sizes {
            let ended = log.sm.read(|s| s.jobs.ended.len() as u64);
            for _ in ended..size {
                now_ms += 1;
                one_job(&mut log, now_ms).await;
            }
            let (mut submits, mut events) = (Vec::new(), Vec::new());
            for _ in 0..samples {
                now_ms += 1;
                let (s, e) = one_job(&mut log, now_ms).await;
                submits.push(s);
                events.extend(e);
            }
            let heap = live_heap_mib();
            // What a snapshot holds the state's lock for: the copy it encodes afterwards.
            let locked = Instant::now();
            let copy = log.sm.read(|s| s.clone());
            let lock = locked.elapsed();
            drop(copy);
            let mut builder = log.sm.get_snapshot_builder().await;
            let started = Instant::now();
            let snapshot = builder.build_snapshot().await.expect("snapshot");
            let build = started.elapsed();
            let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
            println!(
                "{:>8} {:>12} {:>12} {:>12} {:>12} {:>10.1} {:>9.1} {:>13.1} {:>11.0} {:>9.1} {:>11.1}",
                size,
                us(percentile(&mut submits, 0.5)),
                us(percentile(&mut submits, 0.99)),
                us(percentile(&mut events, 0.5)),
                us(percentile(&mut events, 0.99)),
                heap,
                rss_mib(),
                snapshot.snapshot.get_ref().len() as f64 / (1 << 20) as f64,
                build.as_secs_f64() * 1e3,
                lock.as_secs_f64() * 1e3,
                dir_bytes(dir.path()) as f64 / (1 << 20) as f64,
            );
        }
    });
}
