//! The array's side of the data path: one accept loop for the array's port that hands each
//! connection to gRPC or to [`serve_data`], and the loop that answers data requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;

use super::{Op, REQUEST_HEADER_BYTES, REQUEST_MAGIC, RequestHeader, encode_reply_header};
use crate::api::Array;
use crate::error::ArrayError;
use crate::wire::error_json;

/// How long a new connection may take to send its first four bytes before it is handed to
/// gRPC (which has its own limits for a silent client).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// A data connection with no request for this long is closed (clients drop theirs sooner).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long, and how much, a connection closed after a bad frame is drained.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const DRAIN_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Connections handed to gRPC and not yet taken by it.
const GRPC_BACKLOG: usize = 64;

/// Accepts connections on `listener` until `stopping` turns true. Returns the stream of
/// gRPC connections for tonic, and the accept loop's task: once stopped it waits for the data
/// connections to finish their request in progress (at most [`crate::CALL_TIMEOUT`]).
pub(crate) fn route_connections(
    listener: TcpListener,
    array: Arc<dyn Array>,
    stopping: watch::Receiver<bool>,
) -> (ReceiverStream<std::io::Result<TcpStream>>, JoinHandle<()>) {
    let (grpc_tx, grpc_rx) = mpsc::channel(GRPC_BACKLOG);
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        let mut stop = stopping.clone();
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        // Without TCP_NODELAY, Nagle's algorithm with the client's delayed ACKs
                        // holds the last segment of a reply ~40 ms.
                        let _ = stream.set_nodelay(true);
                        let (array, grpc_tx, stopping) =
                            (array.clone(), grpc_tx.clone(), stopping.clone());
                        connections.spawn(async move {
                            if is_data_connection(&stream).await {
                                serve_data(array, stream, stopping).await;
                            } else {
                                let _ = grpc_tx.send(Ok(stream)).await;
                            }
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(grpc_tx);
        let drained = tokio::time::timeout(crate::CALL_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
    });
    (ReceiverStream::new(grpc_rx), task)
}

/// Resolves once `stopping` is true (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// Whether the connection's first bytes are [`REQUEST_MAGIC`] (looked at, not consumed).
async fn is_data_connection(stream: &TcpStream) -> bool {
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_TIMEOUT;
    let mut first = [0u8; 4];
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(n)) if n >= first.len() => return first == REQUEST_MAGIC,
            Ok(Ok(n)) if n > 0 && first[..n] == REQUEST_MAGIC[..n] => {
                // A prefix of the magic: wait for the rest (peek returns at once while data
                // is waiting, so pause between looks).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => return false,
        }
    }
}

/// Answers requests on one data connection until the client closes it, it idles past
/// [`IDLE_TIMEOUT`], a frame breaks the format, or the array stops.
async fn serve_data(
    array: Arc<dyn Array>,
    mut stream: TcpStream,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let mut header = [0u8; REQUEST_HEADER_BYTES];
        tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut header)) => {
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
            }
            _ = stopped(&mut stopping) => return,
        }
        let answered =
            tokio::time::timeout(crate::CALL_TIMEOUT, answer(&*array, &mut stream, &header)).await;
        match answered {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return close_after_error(stream).await,
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(
                    timeout_ms = crate::CALL_TIMEOUT.as_millis() as u64,
                    "a data request took too long; its connection is closed"
                );
                return;
            }
        }
    }
}

/// Closes a connection whose frame was bad once the error reply is on its way: the write side
/// first, then what the client still sends is read and dropped (at most [`DRAIN_BYTES_MAX`]
/// for [`DRAIN_TIMEOUT`]). Closing with unread bytes would reset the connection, and the
/// reset can destroy the reply before the client reads it.
async fn close_after_error(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while drained < DRAIN_BYTES_MAX {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Reads the rest of one request, runs it and writes the reply. Ok(false): the frame was bad,
/// an error reply was sent and the connection must close.
async fn answer(
    array: &dyn Array,
    stream: &mut TcpStream,
    header: &[u8; REQUEST_HEADER_BYTES],
) -> std::io::Result<bool> {
    let h = match RequestHeader::decode(header) {
        Ok(h) => h,
        Err(e) => {
            reply(stream, Err(e)).await?;
            return Ok(false);
        }
    };
    let mut host = vec![0u8; usize::from(h.host_len)];
    stream.read_exact(&mut host).await?;
    let Ok(host) = String::from_utf8(host) else {
        reply(
            stream,
            Err(ArrayError::invalid("data request: host name is not UTF-8")),
        )
        .await?;
        return Ok(false);
    };
    let outcome = match h.op {
        Op::Write => {
            // Read into spare capacity: no zeroing of a buffer the socket fills anyway.
            let mut data = Vec::with_capacity(h.len as usize);
            (&mut *stream)
                .take(u64::from(h.len))
                .read_to_end(&mut data)
                .await?;
            if data.len() != h.len as usize {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            array
                .write(&host, h.ld, h.offset, &data)
                .await
                .map(|()| Vec::new())
        }
        Op::Read => array.read(&host, h.ld, h.offset, u64::from(h.len)).await,
    };
    reply(stream, outcome).await?;
    Ok(true)
}

async fn reply(
    stream: &mut TcpStream,
    outcome: Result<Vec<u8>, ArrayError>,
) -> std::io::Result<()> {
    let (status, body) = match outcome {
        Ok(data) => (Ok(data.len() as u32), data),
        Err(e) => {
            let json = error_json(&e).into_bytes();
            (Err(json.len() as u32), json)
        }
    };
    stream.write_all(&encode_reply_header(status)).await?;
    stream.write_all(&body).await
}
