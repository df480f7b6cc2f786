//! Malformed, mis-addressed and oversized requests get an error status naming the problem; the
//! agent keeps serving and its cluster keeps committing.

use stillpoint_node::NodeError;
use stillpoint_proto::cluster::ProposeRequest;
use stillpoint_proto::raft::RaftRequest;
use stillpoint_proto::raft::raft_peer_client::RaftPeerClient;
use stillpoint_tests::{TestCluster, fast_raft};
use tonic::Code;

async fn peer(address: &str) -> RaftPeerClient<tonic::transport::Channel> {
    RaftPeerClient::connect(format!("http://{address}"))
        .await
        .expect("connect")
        .max_encoding_message_size(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_misaddressed_and_oversized_raft_messages_are_refused_without_harm() {
    let cluster = TestCluster::start(3, fast_raft()).await;
    let cluster_id = cluster.init(3).await;
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let target_id = cluster.configs[target].node_id;
    let mut client = peer(&cluster.address(target)).await;

    let incarnation = cluster.agent(target).context.identity.incarnation;
    let request = |cluster_id: &str, node: u64, payload: &[u8]| RaftRequest {
        cluster_id: cluster_id.to_string(),
        target_node_id: node,
        payload: payload.to_vec(),
        chunk: Vec::new(),
        sender_node_id: 99,
        sender_incarnation: 1,
        target_incarnation: incarnation,
    };

    let garbage = client
        .append_entries(request(&cluster_id, target_id, b"{not json"))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    assert!(
        garbage.message().contains("malformed raft payload"),
        "{garbage:?}"
    );

    let wrong_node = client
        .vote(request(&cluster_id, 77, b"{}"))
        .await
        .unwrap_err();
    assert_eq!(wrong_node.code(), Code::FailedPrecondition);
    assert!(
        wrong_node.message().contains("not node 77"),
        "{wrong_node:?}"
    );

    let foreign = client
        .vote(request("another-cluster", target_id, b"{}"))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::PermissionDenied);
    assert!(foreign.message().contains("another-cluster"), "{foreign:?}");

    // Meant for another incarnation of the target (its data dir was replaced): refused.
    let mut stale = request(&cluster_id, target_id, b"{}");
    stale.target_incarnation = incarnation.wrapping_add(1);
    let stale = client.vote(stale).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("incarnation"), "{stale:?}");

    let anonymous = client
        .vote(request("", target_id, b"{}"))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::InvalidArgument);

    // Larger than any agent accepts (64 MiB): refused by the transport, not a crash.
    let huge = vec![b' '; stillpoint_proto::MAX_MESSAGE_BYTES + 1024];
    let oversized = client
        .append_entries(request(&cluster_id, target_id, &huge))
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), Code::OutOfRange, "{oversized:?}");

    // A proposal that is not a command is refused by name.
    let err = cluster
        .client()
        .on_leader("propose", |mut c| async move {
            c.propose(ProposeRequest {
                command: b"[1,2".to_vec(),
            })
            .await
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, NodeError::Invalid(ref m) if m.contains("not a stillpoint command")),
        "{err}"
    );

    // The cluster is unharmed: it still commits and the target still follows.
    let index = cluster.write(&cluster.client(), 5).await.expect("write");
    cluster.wait_applied(target, index).await;
    cluster.shutdown().await;
}
