//! Benchmarks of the host crate: verifier throughput over a 1 GiB volume, workload write
//! rate through a sim volume, and the cost of a journaled freeze + thaw round trip.
//!
//! `cargo bench -p stillpoint-host`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stillpoint_host::{
    Agent, BlockDevice, Engine, FileDevice, Host, HostConfig, MountRequest, SimBackend,
    record_bytes, record_offset, run_on_device, slots, verify,
};

const GIB: u64 = 1024 * 1024 * 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn verify_1gib(c: &mut Criterion) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::create(&dir.path().join("big.img"), GIB).unwrap();
    // Fill every slot with its record, 1 MiB at a time.
    rt.block_on(async {
        SimBackend::format(&dev).await.unwrap();
        let n = slots(GIB);
        let per = (1024 * 1024) / stillpoint_host::RECORD_BYTES;
        let mut seq = 0;
        while seq < n {
            let end = (seq + per).min(n);
            let mut buf =
                Vec::with_capacity(((end - seq) * stillpoint_host::RECORD_BYTES) as usize);
            for s in seq..end {
                buf.extend_from_slice(&record_bytes(s));
            }
            dev.write_at(record_offset(seq), &buf).await.unwrap();
            seq = end;
        }
    });
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(GIB));
    g.bench_function("1GiB_full", |b| {
        b.to_async(&rt).iter(|| async {
            let rep = verify(&dev).await.unwrap();
            assert!(rep.is_consistent());
        })
    });
    g.finish();
}

fn workload_writes(c: &mut Criterion) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let records = 2000;
    let mut g = c.benchmark_group("workload");
    g.sample_size(10);
    g.throughput(Throughput::Elements(records));
    g.bench_function("2000_records_then_flush", |b| {
        b.to_async(&rt).iter(|| async {
            let dev: Arc<dyn BlockDevice> =
                Arc::new(FileDevice::create(&dir.path().join("w.img"), 4 * 1024 * 1024).unwrap());
            let run = run_on_device(dev, records, true, true, 1).await.unwrap();
            assert_eq!(run.records_total, records);
        })
    });
    g.finish();
}

fn freeze_thaw(c: &mut Criterion) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let host = rt.block_on(async {
        let sim = SimBackend::new(1);
        let dev = Arc::new(FileDevice::create(&dir.path().join("mv.img"), 1024 * 1024).unwrap());
        SimBackend::format(dev.as_ref()).await.unwrap();
        sim.attach("LD", dev).await.unwrap();
        let cfg = HostConfig::from_toml_str(
            "backend = \"sim\"\n[[volumes]]\nname = \"mv\"\nld = \"LD\"\nmount_point = \"/mv\"\n",
            "bench",
        )
        .unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let host = Agent::start(
            cfg,
            stillpoint_storage::journal::Journal::open(&db).unwrap(),
            Engine::Sim(sim),
        )
        .await
        .unwrap();
        host.mount("mv", &MountRequest::default()).await.unwrap();
        host
    });
    let mut g = c.benchmark_group("quiesce");
    g.sample_size(20);
    g.bench_function("sim_freeze_thaw_journaled", |b| {
        b.to_async(&rt).iter(|| async {
            host.freeze("mv", None, "bench").await.unwrap();
            host.thaw("mv").await.unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, verify_1gib, workload_writes, freeze_thaw);
criterion_main!(benches);
