//! Host I/O on the array's data path (length-prefixed frames on the array's one port, beside
//! gRPC): the bytes, the array's refusals, a malformed frame, and an array restarted under a
//! client that keeps connections.

mod common;

use std::sync::Arc;

use common::*;
use stillpoint_array::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves an array on `listener` until the returned sender fires.
fn serve_on(
    cfg: ArrayConfig,
    listener: tokio::net::TcpListener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = tokio::spawn(serve(cfg, listener, async {
        let _ = rx.await;
    }));
    (tx, h)
}

/// A served array "A" (see [`lds`]) on a free port: its data dir, address, stop and task.
async fn start() -> (
    tempfile::TempDir,
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, task) = serve_on(config(dir.path(), "A", lds(), 0), listener);
    (dir, addr, stop, task)
}

fn lds() -> Vec<LdConfig> {
    let mut only_h1 = ld(1, CAP, "NX");
    only_h1.hosts = vec!["h1".into()];
    vec![ld(0, CAP, "NX"), only_h1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_io_shares_the_port_with_grpc_and_keeps_the_arrays_rules() {
    let (_dir, addr, stop, task) = start().await;
    let a = Arc::new(RemoteArray::connect(&addr).await.expect("connect"));
    // gRPC on the same port.
    assert_eq!(a.info().await.unwrap().name, "A");
    // Eight writers at once, each its own quarter-block stripe: more than one connection.
    let img = pattern(5, CAP as usize);
    let chunk = (BLOCK / 4) as usize;
    let mut writers = Vec::new();
    for w in 0..8usize {
        let (a, img) = (a.clone(), img.clone());
        writers.push(tokio::spawn(async move {
            for off in (w * chunk..img.len()).step_by(8 * chunk) {
                a.write("h", 0, off as u64, &img[off..off + chunk])
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        read_all(&*a, 0, CAP).await == img,
        "LD 0 reads back what was written"
    );
    // The array's refusals come back whole, with their rule.
    let e = a.write("h2", 1, 0, &[1u8; 512]).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::AccessList), "{e}");
    let e = a.read("h2", 1, 0, 512).await.unwrap_err();
    assert_eq!(rule_of(&e), Some(Rule::AccessList), "{e}");
    let e = a.write("h1", 1, CAP - 256, &[1u8; 512]).await.unwrap_err();
    assert!(matches!(e, ArrayError::InvalidInput { .. }), "{e}");
    a.write("h1", 1, 0, &[7u8; 512]).await.unwrap();
    assert_eq!(a.read("h1", 1, 0, 512).await.unwrap(), vec![7u8; 512]);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_gets_an_error_naming_it_and_the_array_serves_on() {
    let (_dir, addr, stop, task) = start().await;
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The data magic, then op 9.
    let mut frame = b"SPD1".to_vec();
    frame.extend_from_slice(&[9, 1, 0, 0]);
    frame.extend_from_slice(&[0u8; 16]);
    frame.push(b'h');
    raw.write_all(&frame).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        raw.read_to_end(&mut reply),
    )
    .await
    .expect("the array answers and closes the connection")
    .unwrap();
    assert_eq!(&reply[..4], b"SPR1", "{reply:?}");
    assert_eq!(reply[4], 1, "an error status");
    let detail = String::from_utf8_lossy(&reply[12..]).to_string();
    assert!(
        detail.contains("op 9"),
        "the error names the bad field: {detail}"
    );
    // Others are served as before.
    let a = RemoteArray::connect(&addr).await.unwrap();
    a.write("h", 0, 0, &[3u8; 4096]).await.unwrap();
    assert_eq!(a.read("h", 0, 0, 4096).await.unwrap(), vec![3u8; 4096]);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reaches_a_restarted_array_at_its_first_call() {
    let (dir, addr, stop, task) = start().await;
    let a = RemoteArray::connect(&addr).await.unwrap();
    a.write("h", 0, 0, &[9u8; 4096]).await.unwrap();
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    // The client still holds the connection the stopped array closed.
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let (stop, task) = serve_on(config(dir.path(), "A", lds(), 0), listener);
    assert_eq!(
        a.read("h", 0, 0, 4096)
            .await
            .expect("read after the restart"),
        vec![9u8; 4096]
    );
    a.write("h", 0, 4096, &[8u8; 4096])
        .await
        .expect("write after the restart");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
