//! [`RemoteArray`]: the [`Array`] trait over gRPC, talking to `stillpoint array serve`.

use futures::StreamExt;
use futures::stream::BoxStream;
use std::time::Duration;
use stillpoint_proto::array as pb;
use stillpoint_proto::array::array_service_client::ArrayServiceClient;
use tonic::transport::Channel;

use crate::api::{Array, PeerReply, PeerRequest};
use crate::error::{ArrayError, Result};
use crate::types::*;
use crate::wire::{Answer, Call, decode, encode};

/// A client of a served array. Behaves like the array itself: the same errors, the same states.
#[derive(Clone)]
pub struct RemoteArray {
    endpoint: String,
    client: ArrayServiceClient<Channel>,
    /// Host reads and writes, on the array's data path (same port, see `crate::data`).
    data: std::sync::Arc<crate::data::DataClient>,
}

fn normalise(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Checks that `endpoint` (`HOST:PORT` or `http://HOST:PORT`) is a usable gRPC endpoint.
pub(crate) fn check_endpoint(endpoint: &str) -> std::result::Result<(), String> {
    let url = normalise(endpoint);
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| format!("not a URI: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host (expected HOST:PORT or http://HOST:PORT)".into());
    }
    tonic::transport::Endpoint::from_shared(url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl RemoteArray {
    /// Connects now, failing with `Unreachable` if the array does not answer.
    pub async fn connect(endpoint: &str) -> Result<RemoteArray> {
        let r = Self::lazy(endpoint)?;
        r.info().await?;
        Ok(r)
    }

    /// A client that connects on first use (peers of a served array may start later).
    pub fn lazy(endpoint: &str) -> Result<RemoteArray> {
        let url = normalise(endpoint);
        let ep = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| ArrayError::invalid(format!("array endpoint {endpoint:?}: {e}")))?
            .connect_timeout(crate::CONNECT_TIMEOUT)
            .initial_stream_window_size(crate::H2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(crate::H2_CONNECTION_WINDOW_BYTES)
            .max_frame_size(crate::H2_MAX_FRAME_BYTES)
            .tcp_nodelay(true);
        let client = ArrayServiceClient::new(ep.connect_lazy())
            .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES);
        let address = url
            .parse::<tonic::codegen::http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.to_string()))
            .ok_or_else(|| {
                ArrayError::invalid(format!("array endpoint {endpoint:?}: no HOST:PORT"))
            })?;
        Ok(RemoteArray {
            endpoint: url,
            client,
            data: std::sync::Arc::new(crate::data::DataClient::new(&address)),
        })
    }

    fn transport(&self, op: &str, mutates: bool, s: tonic::Status) -> ArrayError {
        let detail = format!("{}: {}", s.code(), s.message());
        if s.code() == tonic::Code::Unavailable || !mutates {
            ArrayError::Unreachable {
                target: self.endpoint.clone(),
                detail,
            }
        } else {
            ArrayError::OutcomeUnknown {
                op: op.into(),
                detail,
            }
        }
    }

    async fn call(&self, c: Call) -> Result<Answer> {
        let op = format!("{c:?}").chars().take(80).collect::<String>();
        let mutates = c.mutates();
        crate::check_wait_ms(Some(c.wait_ms()))?;
        let mut req = tonic::Request::new(pb::CallRequest { body: encode(&c) });
        req.set_timeout(crate::CALL_TIMEOUT + Duration::from_millis(c.wait_ms()));
        let reply = self
            .client
            .clone()
            .call(req)
            .await
            .map_err(|s| self.transport(&op, mutates, s))?
            .into_inner();
        decode::<Result<Answer, ArrayError>>(&reply.body, "call reply")?
    }

    fn unexpected(a: Answer) -> ArrayError {
        ArrayError::OutcomeUnknown {
            op: "array call".into(),
            detail: format!("unexpected answer {a:?}"),
        }
    }

    async fn pair(&self, c: Call) -> Result<PairInfo> {
        match self.call(c).await? {
            Answer::Pair(p) => Ok(p),
            a => Err(Self::unexpected(a)),
        }
    }

    async fn copy(&self, c: Call) -> Result<CopyInfo> {
        match self.call(c).await? {
            Answer::Copy(i) => Ok(i),
            a => Err(Self::unexpected(a)),
        }
    }

    fn app_error(json: &str) -> Result<()> {
        if json.is_empty() {
            return Ok(());
        }
        Err(decode::<ArrayError>(json.as_bytes(), "error")?)
    }
}

#[async_trait::async_trait]
impl Array for RemoteArray {
    async fn info(&self) -> Result<ArrayInfo> {
        match self.call(Call::Info).await? {
            Answer::Info(i) => Ok(i),
            a => Err(Self::unexpected(a)),
        }
    }
    async fn ld_list(&self) -> Result<Vec<LdInfo>> {
        match self.call(Call::LdList).await? {
            Answer::Lds(l) => Ok(l),
            a => Err(Self::unexpected(a)),
        }
    }
    async fn pair_set(&self, id: &PairId) -> Result<PairInfo> {
        self.pair(Call::PairSet(id.clone())).await
    }
    async fn pair_unset(&self, id: &PairId) -> Result<()> {
        match self.call(Call::PairUnset(id.clone())).await? {
            Answer::Done => Ok(()),
            a => Err(Self::unexpected(a)),
        }
    }
    async fn pair_list(&self) -> Result<Vec<PairInfo>> {
        match self.call(Call::PairList).await? {
            Answer::Pairs(p) => Ok(p),
            a => Err(Self::unexpected(a)),
        }
    }
    async fn pair_query(&self, id: &PairId) -> Result<PairInfo> {
        self.pair(Call::PairQuery(id.clone())).await
    }
    async fn replicate(&self, id: &PairId, o: &ReplicateOptions) -> Result<PairInfo> {
        self.pair(Call::Replicate(id.clone(), o.clone())).await
    }
    async fn separate(&self, id: &PairId, o: &SeparateOptions) -> Result<PairInfo> {
        self.pair(Call::Separate(id.clone(), o.clone())).await
    }
    async fn fenced(&self, id: &PairId, fence: &FenceToken, op: &FencedOp) -> Result<PairInfo> {
        self.pair(Call::Fenced(id.clone(), *fence, op.clone()))
            .await
    }
    async fn restore(&self, id: &PairId, o: &RestoreOptions) -> Result<PairInfo> {
        self.pair(Call::Restore(id.clone(), o.clone())).await
    }
    async fn forced_separate(&self, id: &PairId) -> Result<PairInfo> {
        self.pair(Call::ForcedSeparate(id.clone())).await
    }
    async fn wait(&self, id: &PairId, cond: WaitCondition, timeout_ms: u64) -> Result<PairInfo> {
        self.pair(Call::Wait(id.clone(), cond, timeout_ms)).await
    }
    async fn read(&self, host: &str, ld: u32, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.data.read(host, ld, offset, len).await
    }
    async fn write(&self, host: &str, ld: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.data.write(host, ld, offset, data).await
    }
    async fn inject_fault(&self, fault: &Fault) -> Result<()> {
        match self.call(Call::Fault(fault.clone())).await? {
            Answer::Done => Ok(()),
            a => Err(Self::unexpected(a)),
        }
    }
    async fn events(&self) -> Result<BoxStream<'static, ArrayEvent>> {
        let s = self
            .client
            .clone()
            .events(pb::EventsRequest {})
            .await
            .map_err(|s| self.transport("events", false, s))?
            .into_inner();
        Ok(Box::pin(s.filter_map(|m| async move {
            m.ok()
                .and_then(|m| serde_json::from_slice::<ArrayEvent>(&m.body).ok())
        })))
    }
    async fn peer(&self, req: PeerRequest) -> Result<PeerReply> {
        match req {
            PeerRequest::Write { rv, offset, data } => {
                let mut r = tonic::Request::new(pb::PeerWriteRequest { rv, offset, data });
                r.set_timeout(crate::CALL_TIMEOUT);
                let a = self
                    .client
                    .clone()
                    .peer_write(r)
                    .await
                    .map_err(|s| self.transport("replication write", false, s))?
                    .into_inner();
                Self::app_error(&a.error_json).map(|_| PeerReply::Ok)
            }
            PeerRequest::Read { rv, offset, len } => {
                let mut r = tonic::Request::new(pb::PeerReadRequest { rv, offset, len });
                r.set_timeout(crate::CALL_TIMEOUT);
                let a = self
                    .client
                    .clone()
                    .peer_read(r)
                    .await
                    .map_err(|s| self.transport("replication read", false, s))?
                    .into_inner();
                Self::app_error(&a.error_json).map(|_| PeerReply::Data(a.data.into()))
            }
            other => match self.call(Call::Peer(other)).await? {
                Answer::Peer(p) => Ok(p),
                a => Err(Self::unexpected(a)),
            },
        }
    }
    async fn copy_create(&self, parent: u32, copy: u32, attached: bool) -> Result<CopyInfo> {
        self.copy(Call::CopyCreate {
            parent,
            copy,
            attached,
        })
        .await
    }
    async fn copy_attach(&self, copy: u32) -> Result<CopyInfo> {
        self.copy(Call::CopyAttach(copy)).await
    }
    async fn copy_detach(&self, copy: u32) -> Result<CopyInfo> {
        self.copy(Call::CopyDetach(copy)).await
    }
    async fn copy_delete(&self, copy: u32) -> Result<()> {
        match self.call(Call::CopyDelete(copy)).await? {
            Answer::Done => Ok(()),
            a => Err(Self::unexpected(a)),
        }
    }
    async fn copy_to_parent(&self, copy: u32, wait_timeout_ms: Option<u64>) -> Result<CopyInfo> {
        self.copy(Call::CopyToParent(copy, wait_timeout_ms)).await
    }
    async fn copy_list(&self) -> Result<Vec<CopyInfo>> {
        match self.call(Call::CopyList).await? {
            Answer::Copies(c) => Ok(c),
            a => Err(Self::unexpected(a)),
        }
    }
}
