//! Serving an array over gRPC (`stillpoint array serve`).

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use stillpoint_proto::array as pb;
use stillpoint_proto::array::array_service_server::{ArrayService, ArrayServiceServer};
use tonic::{Request, Response, Status};

use crate::api::{Array, PeerReply, PeerRequest};
use crate::config::ArrayConfig;
use crate::error::{ArrayError, Result};
use crate::software::SoftwareArray;
use crate::wire::{Answer, Call, decode, encode, error_json};

/// Runs the software array described by `config` on `listener` until `shutdown` resolves, then
/// stops its copy engines and flushes its metadata. Interrupted copies resume at the next start.
pub async fn serve(
    config: ArrayConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ArrayError> {
    serve_when_open(config, listener, shutdown, || {}).await
}

/// [`serve`], calling `ready` once the array has opened (data dir, LDs and metadata usable)
/// and right before it answers requests.
pub async fn serve_when_open(
    config: ArrayConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> Result<(), ArrayError> {
    let array = SoftwareArray::open(&config, vec![]).await?;
    ready();
    let arc: Arc<dyn Array> = Arc::new(array.clone());
    let res = serve_array(arc, listener, shutdown).await;
    array.close().await?;
    res
}

/// Serves any [`Array`] (the software array, or a gateway) on `listener` until `shutdown`.
pub async fn serve_array(
    array: Arc<dyn Array>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ArrayError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Event streams never end on their own, and tonic's graceful stop waits for every open
    // response: each stream is cut when the shutdown signal fires so the server can drain.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let stopping_tx = Arc::new(stopping_tx);
    let stop = stopping_tx.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    // One port: data connections (host I/O, see `data`) and gRPC.
    let (grpc_connections, accept_loop) =
        crate::data::route_connections(listener, array.clone(), stopping.clone());
    let svc = ArrayServiceServer::new(Service { array, stopping })
        .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES);
    let served = tonic::transport::Server::builder()
        .initial_stream_window_size(crate::H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::H2_CONNECTION_WINDOW_BYTES)
        .max_frame_size(crate::H2_MAX_FRAME_BYTES)
        .add_service(svc)
        .serve_with_incoming_shutdown(grpc_connections, shutdown)
        .await
        .map_err(|e| ArrayError::Unreachable {
            target: addr,
            detail: format!("gRPC server: {e}"),
        });
    // Stopped (or failed): the data connections finish the request they are in before the
    // caller closes the array.
    let _ = stopping_tx.send(true);
    let _ = accept_loop.await;
    served
}

struct Service {
    array: Arc<dyn Array>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Service {
    async fn dispatch(&self, c: Call) -> Result<Answer> {
        let a = &self.array;
        Ok(match c {
            Call::Info => Answer::Info(a.info().await?),
            Call::LdList => Answer::Lds(a.ld_list().await?),
            Call::PairSet(id) => Answer::Pair(a.pair_set(&id).await?),
            Call::PairUnset(id) => {
                a.pair_unset(&id).await?;
                Answer::Done
            }
            Call::PairList => Answer::Pairs(a.pair_list().await?),
            Call::PairQuery(id) => Answer::Pair(a.pair_query(&id).await?),
            Call::Replicate(id, o) => Answer::Pair(a.replicate(&id, &o).await?),
            Call::Separate(id, o) => Answer::Pair(a.separate(&id, &o).await?),
            Call::Fenced(id, t, op) => Answer::Pair(a.fenced(&id, &t, &op).await?),
            Call::Restore(id, o) => Answer::Pair(a.restore(&id, &o).await?),
            Call::ForcedSeparate(id) => Answer::Pair(a.forced_separate(&id).await?),
            Call::Wait(id, c, t) => Answer::Pair(a.wait(&id, c, t).await?),
            Call::Fault(f) => {
                a.inject_fault(&f).await?;
                Answer::Done
            }
            Call::Peer(r) => Answer::Peer(a.peer(r).await?),
            Call::CopyCreate {
                parent,
                copy,
                attached,
            } => Answer::Copy(a.copy_create(parent, copy, attached).await?),
            Call::CopyAttach(c) => Answer::Copy(a.copy_attach(c).await?),
            Call::CopyDetach(c) => Answer::Copy(a.copy_detach(c).await?),
            Call::CopyDelete(c) => {
                a.copy_delete(c).await?;
                Answer::Done
            }
            Call::CopyToParent(c, t) => Answer::Copy(a.copy_to_parent(c, t).await?),
            Call::CopyList => Answer::Copies(a.copy_list().await?),
        })
    }
}

#[tonic::async_trait]
impl ArrayService for Service {
    async fn call(&self, req: Request<pb::CallRequest>) -> Result<Response<pb::CallReply>, Status> {
        let res = match decode::<Call>(&req.into_inner().body, "call") {
            Ok(c) => self.dispatch(c).await,
            Err(e) => Err(e),
        };
        Ok(Response::new(pb::CallReply { body: encode(&res) }))
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Result<Response<pb::ReadReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            match self.array.read(&r.host, r.ld, r.offset, r.len).await {
                Ok(data) => pb::ReadReply {
                    data: data.into(),
                    error_json: String::new(),
                },
                Err(e) => pb::ReadReply {
                    data: Default::default(),
                    error_json: error_json(&e),
                },
            },
        ))
    }

    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let r = req.into_inner();
        let res = self.array.write(&r.host, r.ld, r.offset, &r.data).await;
        Ok(Response::new(pb::WriteReply {
            error_json: res.err().map(|e| error_json(&e)).unwrap_or_default(),
        }))
    }

    async fn peer_write(
        &self,
        req: Request<pb::PeerWriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let r = req.into_inner();
        let res = self
            .array
            .peer(PeerRequest::Write {
                rv: r.rv,
                offset: r.offset,
                data: r.data,
            })
            .await;
        Ok(Response::new(pb::WriteReply {
            error_json: res.err().map(|e| error_json(&e)).unwrap_or_default(),
        }))
    }

    async fn peer_read(
        &self,
        req: Request<pb::PeerReadRequest>,
    ) -> Result<Response<pb::ReadReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            match self
                .array
                .peer(PeerRequest::Read {
                    rv: r.rv,
                    offset: r.offset,
                    len: r.len,
                })
                .await
            {
                Ok(PeerReply::Data(data)) => pb::ReadReply {
                    data: data.into(),
                    error_json: String::new(),
                },
                Ok(other) => pb::ReadReply {
                    data: Default::default(),
                    error_json: error_json(&ArrayError::invalid(format!("unexpected {other:?}"))),
                },
                Err(e) => pb::ReadReply {
                    data: Default::default(),
                    error_json: error_json(&e),
                },
            },
        ))
    }

    type EventsStream = BoxStream<'static, Result<pb::EventMessage, Status>>;

    async fn events(
        &self,
        _req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let s = self
            .array
            .events()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        Ok(Response::new(Box::pin(
            s.map(|e| Ok(pb::EventMessage { body: encode(&e) }))
                .take_until(stopped),
        )))
    }
}
