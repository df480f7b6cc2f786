//! The host service over gRPC: a remote agent behaves like a local one, errors keep their
//! variant, and the volume commands run against it.

mod common;

use std::sync::Arc;
use stillpoint_storage::journal::Journal;

use common::{open_db, wait_until};
use stillpoint_host::cli::{OutputFormat, Target, VolumeCommand};
use stillpoint_host::{
    Agent, Engine, FileDevice, HookKind, Host, HostClient, HostConfig, HostError, HostService,
    MountRequest, SimBackend, Workload,
};
use tonic::transport::server::TcpIncoming;

#[tokio::test]
async fn a_remote_agent_answers_like_a_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimBackend::new(7);
    let mv = Arc::new(FileDevice::create(&dir.path().join("mv.img"), 2 * 1024 * 1024).unwrap());
    SimBackend::format(mv.as_ref()).await.unwrap();
    sim.attach("LD-MV", mv).await.unwrap();
    let cfg = HostConfig::from_toml_str(
        r#"
backend = "sim"
[[volumes]]
name = "mv1"
ld = "LD-MV"
mount_point = "/sim/mv1"
stop = { app = "workload" }
start = { app = "workload" }
"#,
        "test.toml",
    )
    .unwrap();
    let apps = Workload::register_for(&sim, &cfg);
    assert_eq!(apps.len(), 1);
    let workload = apps[0].1.clone();
    let db = open_db(&dir.path().join("db")).await;
    let agent: Arc<dyn Host> =
        Agent::start(cfg, Journal::open(&db).unwrap(), Engine::Sim(sim.clone()))
            .await
            .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HostService::new(agent.clone()).into_server())
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let remote = HostClient::new(channel.clone());

    let v = remote.mount("mv1", &MountRequest::default()).await.unwrap();
    assert_eq!(v.mounted_at.as_deref(), Some("/sim/mv1"));
    remote.run_hook("mv1", HookKind::Start).await.unwrap();
    wait_until("the workload writes", || async {
        workload.records_written().unwrap_or(0) > 5
    })
    .await;

    // Errors cross the wire with their variant and holders intact.
    match remote.unmount("mv1", false).await {
        Err(HostError::Busy { holders, .. }) => assert_eq!(holders[0].name, "workload"),
        other => panic!("expected Busy, got {other:?}"),
    }
    match remote.flush("nope").await {
        Err(HostError::UnknownVolume { volume, .. }) => assert_eq!(volume, "nope"),
        other => panic!("expected UnknownVolume, got {other:?}"),
    }

    let q = remote.freeze("mv1", Some(9_000), "remote").await.unwrap();
    assert_eq!(remote.quiesces().await.unwrap(), vec![q.clone()]);
    let listed = remote.volume("mv1").await.unwrap();
    assert_eq!(listed.quiesce.as_ref(), Some(&q));
    let r = remote.release("mv1", Some(q.quiesce_id)).await.unwrap();
    assert_eq!(r.quiesce_id, q.quiesce_id);

    // The CLI over the same channel.
    let target = Target {
        node: "node-a".into(),
        output: OutputFormat::Json,
    };
    let list = VolumeCommand::List {
        target: target.clone(),
    };
    assert_eq!(list.node(), "node-a");
    let code = list.run(channel.clone()).await.unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let err = VolumeCommand::Unmount {
        target: target.clone(),
        volume: "mv1".into(),
        force: false,
    }
    .run(channel.clone())
    .await
    .unwrap_err();
    assert!(matches!(err, HostError::Busy { .. }), "{err:?}");
    VolumeCommand::Unmount {
        target,
        volume: "mv1".into(),
        force: true,
    }
    .run(channel)
    .await
    .unwrap();
    assert_eq!(agent.volume("mv1").await.unwrap().mounted_at, None);
    server.abort();
}
