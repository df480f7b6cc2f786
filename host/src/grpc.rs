//! The host gRPC service and its client. [`HostService`] serves any `Arc<dyn Host>`;
//! [`HostClient`] implements [`Host`] over a channel, so callers use a remote agent exactly
//! like a local one. Errors travel as a status (code chosen in [`to_status`], the one place)
//! whose details carry the [`HostError`] as JSON; the client rebuilds the same variant.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stillpoint_proto::host as pb;
use stillpoint_proto::host::host_agent_client::HostAgentClient;
use stillpoint_proto::host::host_agent_server::{HostAgent, HostAgentServer};
use tonic::codegen::Bytes;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::api::{
    CheckReport, HookKind, HookOutput, Host, MountIdentity, MountRequest, QuiesceKind, QuiesceMode,
    QuiesceRecord, QuiesceRequest, ReleaseReport, ResumeRecord, VolumeInfo,
};
use crate::error::{Holder, HostError};
use crate::limits::RPC_TIMEOUT_MS;

/// Maps a host error to the gRPC status that carries it.
pub(crate) fn to_status(e: &HostError) -> Status {
    let code = match e {
        HostError::Config { .. } => Code::InvalidArgument,
        HostError::UnknownVolume { .. } => Code::NotFound,
        HostError::MountPointMissing { .. }
        | HostError::MountedElsewhere { .. }
        | HostError::MountPointBusy { .. }
        | HostError::DuplicateIdentity { .. }
        | HostError::Busy { .. }
        | HostError::WrongState { .. }
        | HostError::NotMounted { .. }
        | HostError::QuiesceLost { .. } => Code::FailedPrecondition,
        HostError::Refused { .. } => Code::PermissionDenied,
        HostError::HookFailed { .. } | HostError::Database { .. } => Code::Aborted,
        HostError::TimedOut { .. } => Code::DeadlineExceeded,
        HostError::OsError { .. } | HostError::Journal(_) => Code::Internal,
        HostError::Device { .. } | HostError::Unreachable(_) => Code::Unavailable,
        HostError::Unsupported { .. } => Code::Unimplemented,
        HostError::NoHook { .. } => Code::NotFound,
    };
    let details = serde_json::to_vec(e).unwrap_or_default();
    Status::with_details(code, e.to_string(), Bytes::from(details))
}

/// Rebuilds the host error a status carries; a status from elsewhere (transport, timeout)
/// becomes [`HostError::Unreachable`].
pub(crate) fn from_status(s: Status) -> HostError {
    match serde_json::from_slice::<HostError>(s.details()) {
        Ok(e) => e,
        Err(_) => HostError::Unreachable(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn holder_to(h: Holder) -> pb::Holder {
    pb::Holder {
        pid: h.pid,
        name: h.name,
        what: h.what,
    }
}

fn holder_from(h: pb::Holder) -> Holder {
    Holder {
        pid: h.pid,
        name: h.name,
        what: h.what,
    }
}

fn quiesce_to(q: QuiesceRecord) -> pb::QuiesceInfo {
    let (kind, mount_point, apps_stopped) = match q.kind {
        QuiesceKind::Freeze => (pb::QuiesceKind::Freeze, String::new(), false),
        QuiesceKind::Unmount {
            mount_point,
            apps_stopped,
        } => (pb::QuiesceKind::Unmount, mount_point, apps_stopped),
        QuiesceKind::Postgresql { server } => (pb::QuiesceKind::Postgresql, server, false),
        QuiesceKind::HooksOnly => (pb::QuiesceKind::HooksOnly, String::new(), true),
    };
    pb::QuiesceInfo {
        volume: q.volume,
        quiesce_id: q.quiesce_id,
        kind: kind as i32,
        mount_point,
        apps_stopped,
        owner: q.owner,
        taken_at_unix_ms: q.taken_at_unix_ms,
        deadline_unix_ms: q.deadline_unix_ms,
        extended_ms_total: q.extended_ms_total,
    }
}

fn quiesce_from(q: pb::QuiesceInfo) -> Result<QuiesceRecord, HostError> {
    let kind = match pb::QuiesceKind::try_from(q.kind) {
        Ok(pb::QuiesceKind::Freeze) => QuiesceKind::Freeze,
        Ok(pb::QuiesceKind::Unmount) => QuiesceKind::Unmount {
            mount_point: q.mount_point,
            apps_stopped: q.apps_stopped,
        },
        Ok(pb::QuiesceKind::Postgresql) => QuiesceKind::Postgresql {
            server: q.mount_point,
        },
        Ok(pb::QuiesceKind::HooksOnly) => QuiesceKind::HooksOnly,
        _ => {
            return Err(HostError::Unreachable(format!(
                "agent sent an unknown quiesce kind {}",
                q.kind
            )));
        }
    };
    Ok(QuiesceRecord {
        volume: q.volume,
        quiesce_id: q.quiesce_id,
        kind,
        owner: q.owner,
        taken_at_unix_ms: q.taken_at_unix_ms,
        deadline_unix_ms: q.deadline_unix_ms,
        extended_ms_total: q.extended_ms_total,
        // The agent measures its deadline on its own boot clock; a remote reader has the
        // wall-clock times only.
        taken_at_boot_ms: 0,
    })
}

fn volume_to(v: VolumeInfo) -> pb::Volume {
    pb::Volume {
        name: v.name,
        ld: v.ld,
        device: v.device,
        mount_point: v.mount_point,
        fs: v.fs,
        fs_id: v.fs_id,
        mounted_at: v.mounted_at,
        holders: v.holders.into_iter().map(holder_to).collect(),
        quiesce: v.quiesce.map(quiesce_to),
        problem: v.problem,
    }
}

fn volumes_from(list: pb::VolumeList) -> Result<Vec<VolumeInfo>, HostError> {
    list.volumes.into_iter().map(volume_from).collect()
}

fn volume_from(v: pb::Volume) -> Result<VolumeInfo, HostError> {
    Ok(VolumeInfo {
        name: v.name,
        ld: v.ld,
        device: v.device,
        mount_point: v.mount_point,
        fs: v.fs,
        fs_id: v.fs_id,
        mounted_at: v.mounted_at,
        holders: v.holders.into_iter().map(holder_from).collect(),
        quiesce: v.quiesce.map(quiesce_from).transpose()?,
        problem: v.problem,
    })
}

fn hook_to(h: HookOutput) -> pb::HookOutput {
    pb::HookOutput {
        command: h.command,
        exit_code: h.exit_code,
        stdout: h.stdout,
        stderr: h.stderr,
        elapsed_ms: h.elapsed_ms,
    }
}

fn hook_from(h: pb::HookOutput) -> HookOutput {
    HookOutput {
        command: h.command,
        exit_code: h.exit_code,
        stdout: h.stdout,
        stderr: h.stderr,
        elapsed_ms: h.elapsed_ms,
    }
}

fn bad_request(field: &str, reason: &str) -> Status {
    to_status(&HostError::Config {
        source_name: "request".into(),
        field: field.into(),
        reason: reason.into(),
    })
}

/// Serves a [`Host`] over gRPC.
#[derive(Clone)]
pub struct HostService {
    host: Arc<dyn Host>,
}

impl HostService {
    pub fn new(host: Arc<dyn Host>) -> HostService {
        HostService { host }
    }

    /// The tonic server to add to a `tonic::transport::Server`.
    pub fn into_server(self) -> HostAgentServer<HostService> {
        HostAgentServer::new(self)
            .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
    }
}

type Rpc<T> = Result<Response<T>, Status>;

fn reply<T, U>(r: Result<T, HostError>, f: impl FnOnce(T) -> U) -> Rpc<U> {
    r.map(|v| Response::new(f(v))).map_err(|e| to_status(&e))
}

#[tonic::async_trait]
impl HostAgent for HostService {
    async fn list_volumes(&self, _: Request<pb::Empty>) -> Rpc<pb::VolumeList> {
        reply(self.host.list_volumes().await, |v| pb::VolumeList {
            volumes: v.into_iter().map(volume_to).collect(),
        })
    }

    async fn rescan(&self, _: Request<pb::Empty>) -> Rpc<pb::VolumeList> {
        reply(self.host.rescan().await, |v| pb::VolumeList {
            volumes: v.into_iter().map(volume_to).collect(),
        })
    }

    async fn flush(&self, r: Request<pb::VolumeRef>) -> Rpc<pb::Empty> {
        reply(self.host.flush(&r.into_inner().volume).await, |_| {
            pb::Empty {}
        })
    }

    async fn unmount(&self, r: Request<pb::UnmountRequest>) -> Rpc<pb::UnmountReply> {
        let r = r.into_inner();
        reply(self.host.unmount(&r.volume, r.force).await, |h| {
            pb::UnmountReply {
                terminated: h.into_iter().map(holder_to).collect(),
            }
        })
    }

    async fn mount(&self, r: Request<pb::MountRequest>) -> Rpc<pb::Volume> {
        let r = r.into_inner();
        let identity = match pb::MountIdentity::try_from(r.identity) {
            Ok(pb::MountIdentity::Keep) => MountIdentity::Keep,
            Ok(pb::MountIdentity::New) => MountIdentity::New,
            Ok(pb::MountIdentity::IgnoreDuplicate) => MountIdentity::IgnoreDuplicate,
            Err(_) => return Err(bad_request("identity", "unknown value")),
        };
        let req = MountRequest {
            mount_point: r.mount_point,
            identity,
            read_only: r.read_only,
        };
        reply(self.host.mount(&r.volume, &req).await, volume_to)
    }

    async fn quiesce(&self, r: Request<pb::QuiesceRequest>) -> Rpc<pb::QuiesceInfo> {
        let r = r.into_inner();
        let mode = match pb::QuiesceMode::try_from(r.mode) {
            Ok(pb::QuiesceMode::Freeze) => QuiesceMode::Freeze,
            Ok(pb::QuiesceMode::Unmount) => QuiesceMode::Unmount,
            Ok(pb::QuiesceMode::HooksOnly) => QuiesceMode::HooksOnly,
            _ => return Err(bad_request("mode", "give FREEZE, UNMOUNT or HOOKS_ONLY")),
        };
        let req = QuiesceRequest {
            volume: r.volume,
            mode,
            limit_ms: r.limit_ms,
            owner: r.owner,
        };
        reply(self.host.quiesce(&req).await, quiesce_to)
    }

    async fn extend(&self, r: Request<pb::ExtendRequest>) -> Rpc<pb::QuiesceInfo> {
        let r = r.into_inner();
        reply(
            self.host.extend(&r.volume, r.quiesce_id, r.extra_ms).await,
            quiesce_to,
        )
    }

    async fn release(&self, r: Request<pb::ReleaseRequest>) -> Rpc<pb::ReleaseReply> {
        let r = r.into_inner();
        reply(self.host.release(&r.volume, r.quiesce_id).await, |x| {
            pb::ReleaseReply {
                volume: x.volume,
                quiesce_id: x.quiesce_id,
                held_ms: x.held_ms,
                start_hook: x.start_hook.map(hook_to),
            }
        })
    }

    async fn check(&self, r: Request<pb::CheckRequest>) -> Rpc<pb::CheckReply> {
        let r = r.into_inner();
        reply(self.host.check(&r.volume, r.repair).await, |c| {
            pb::CheckReply {
                volume: c.volume,
                clean: c.clean,
                repaired: c.repaired,
                output: c.output,
            }
        })
    }

    async fn run_hook(&self, r: Request<pb::HookRequest>) -> Rpc<pb::HookOutput> {
        let r = r.into_inner();
        let kind = match pb::HookKind::try_from(r.kind) {
            Ok(pb::HookKind::Stop) => HookKind::Stop,
            Ok(pb::HookKind::Start) => HookKind::Start,
            _ => return Err(bad_request("kind", "give STOP or START")),
        };
        reply(self.host.run_hook(&r.volume, kind).await, hook_to)
    }

    async fn list_quiesces(&self, _: Request<pb::Empty>) -> Rpc<pb::QuiesceList> {
        reply(self.host.quiesces().await, |q| pb::QuiesceList {
            quiesces: q.into_iter().map(quiesce_to).collect(),
        })
    }

    async fn list_resumes(&self, _: Request<pb::Empty>) -> Rpc<pb::ResumeList> {
        reply(self.host.resumes().await, |rs| pb::ResumeList {
            resumes: rs
                .into_iter()
                .map(|r| pb::Resume {
                    quiesce: Some(quiesce_to(QuiesceRecord {
                        volume: r.volume,
                        quiesce_id: r.quiesce_id,
                        kind: r.kind,
                        owner: r.owner,
                        taken_at_unix_ms: r.taken_at_unix_ms,
                        deadline_unix_ms: 0,
                        extended_ms_total: 0,
                        taken_at_boot_ms: 0,
                    })),
                    resumed_at_unix_ms: r.resumed_at_unix_ms,
                    reason: r.reason,
                    error: r.error,
                })
                .collect(),
        })
    }

    async fn acknowledge(&self, r: Request<pb::VolumeRef>) -> Rpc<pb::AckReply> {
        let volume = r.into_inner().volume;
        reply(self.host.acknowledge(&volume).await, |acknowledged| {
            pb::AckReply {
                volume: volume.clone(),
                acknowledged,
            }
        })
    }
}

/// A remote agent's host operations, as a [`Host`].
#[derive(Clone)]
pub struct HostClient {
    inner: HostAgentClient<Channel>,
}

impl HostClient {
    /// Uses `channel` (the caller resolved the node's address and set connect timeouts).
    pub fn new(channel: Channel) -> HostClient {
        HostClient {
            inner: HostAgentClient::new(channel)
                .max_decoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(stillpoint_proto::MAX_MESSAGE_BYTES),
        }
    }

    fn client(&self) -> HostAgentClient<Channel> {
        self.inner.clone()
    }
}

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_millis(RPC_TIMEOUT_MS));
    r
}

#[async_trait]
impl Host for HostClient {
    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, HostError> {
        let r = self
            .client()
            .list_volumes(req(pb::Empty {}))
            .await
            .map_err(from_status)?;
        volumes_from(r.into_inner())
    }

    async fn volume(&self, volume: &str) -> Result<VolumeInfo, HostError> {
        let all = self.list_volumes().await?;
        let known = all
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        all.iter()
            .find(|v| v.name == volume)
            .cloned()
            .ok_or(HostError::UnknownVolume {
                volume: volume.into(),
                known,
            })
    }

    async fn flush(&self, volume: &str) -> Result<(), HostError> {
        self.client()
            .flush(req(pb::VolumeRef {
                volume: volume.into(),
            }))
            .await
            .map_err(from_status)?;
        Ok(())
    }

    async fn unmount(&self, volume: &str, force: bool) -> Result<Vec<Holder>, HostError> {
        let r = self
            .client()
            .unmount(req(pb::UnmountRequest {
                volume: volume.into(),
                force,
            }))
            .await
            .map_err(from_status)?;
        Ok(r.into_inner()
            .terminated
            .into_iter()
            .map(holder_from)
            .collect())
    }

    async fn mount(&self, volume: &str, request: &MountRequest) -> Result<VolumeInfo, HostError> {
        let identity = match request.identity {
            MountIdentity::Keep => pb::MountIdentity::Keep,
            MountIdentity::New => pb::MountIdentity::New,
            MountIdentity::IgnoreDuplicate => pb::MountIdentity::IgnoreDuplicate,
        };
        let r = self
            .client()
            .mount(req(pb::MountRequest {
                volume: volume.into(),
                mount_point: request.mount_point.clone(),
                identity: identity as i32,
                read_only: request.read_only,
            }))
            .await
            .map_err(from_status)?;
        volume_from(r.into_inner())
    }

    async fn quiesce(&self, request: &QuiesceRequest) -> Result<QuiesceRecord, HostError> {
        let mode = match request.mode {
            QuiesceMode::Freeze => pb::QuiesceMode::Freeze,
            QuiesceMode::Unmount => pb::QuiesceMode::Unmount,
            QuiesceMode::HooksOnly => pb::QuiesceMode::HooksOnly,
            QuiesceMode::Postgresql(_) => {
                return Err(HostError::Unsupported {
                    operation: format!("a PostgreSQL quiesce of {} over the host API", request.volume),
                    reason: "its session must live in the agent that holds it: the agent's step executor takes it (quiesce = \"postgresql\" in the site file)".into(),
                });
            }
        };
        let r = self
            .client()
            .quiesce(req(pb::QuiesceRequest {
                volume: request.volume.clone(),
                mode: mode as i32,
                limit_ms: request.limit_ms,
                owner: request.owner.clone(),
            }))
            .await
            .map_err(from_status)?;
        quiesce_from(r.into_inner())
    }

    async fn extend(
        &self,
        volume: &str,
        quiesce_id: u64,
        extra_ms: u64,
    ) -> Result<QuiesceRecord, HostError> {
        let r = self
            .client()
            .extend(req(pb::ExtendRequest {
                volume: volume.into(),
                quiesce_id,
                extra_ms,
            }))
            .await
            .map_err(from_status)?;
        quiesce_from(r.into_inner())
    }

    async fn release(
        &self,
        volume: &str,
        quiesce_id: Option<u64>,
    ) -> Result<ReleaseReport, HostError> {
        let r = self
            .client()
            .release(req(pb::ReleaseRequest {
                volume: volume.into(),
                quiesce_id,
            }))
            .await
            .map_err(from_status)?
            .into_inner();
        Ok(ReleaseReport {
            volume: r.volume,
            quiesce_id: r.quiesce_id,
            held_ms: r.held_ms,
            start_hook: r.start_hook.map(hook_from),
            // The label stays with the agent's own caller (the step executor).
            backup_label: None,
        })
    }

    async fn rescan(&self) -> Result<Vec<VolumeInfo>, HostError> {
        let r = self
            .client()
            .rescan(req(pb::Empty {}))
            .await
            .map_err(from_status)?;
        volumes_from(r.into_inner())
    }

    async fn check(&self, volume: &str, repair: bool) -> Result<CheckReport, HostError> {
        let r = self
            .client()
            .check(req(pb::CheckRequest {
                volume: volume.into(),
                repair,
            }))
            .await
            .map_err(from_status)?
            .into_inner();
        Ok(CheckReport {
            volume: r.volume,
            clean: r.clean,
            repaired: r.repaired,
            output: r.output,
        })
    }

    async fn run_hook(&self, volume: &str, hook: HookKind) -> Result<HookOutput, HostError> {
        let kind = match hook {
            HookKind::Stop => pb::HookKind::Stop,
            HookKind::Start => pb::HookKind::Start,
        };
        let r = self
            .client()
            .run_hook(req(pb::HookRequest {
                volume: volume.into(),
                kind: kind as i32,
            }))
            .await
            .map_err(from_status)?;
        Ok(hook_from(r.into_inner()))
    }

    async fn quiesces(&self) -> Result<Vec<QuiesceRecord>, HostError> {
        let r = self
            .client()
            .list_quiesces(req(pb::Empty {}))
            .await
            .map_err(from_status)?;
        r.into_inner()
            .quiesces
            .into_iter()
            .map(quiesce_from)
            .collect()
    }

    async fn resumes(&self) -> Result<Vec<ResumeRecord>, HostError> {
        let r = self
            .client()
            .list_resumes(req(pb::Empty {}))
            .await
            .map_err(from_status)?;
        r.into_inner()
            .resumes
            .into_iter()
            .map(|x| {
                let q = quiesce_from(x.quiesce.unwrap_or_default())?;
                Ok(ResumeRecord {
                    volume: q.volume,
                    quiesce_id: q.quiesce_id,
                    kind: q.kind,
                    owner: q.owner,
                    taken_at_unix_ms: q.taken_at_unix_ms,
                    resumed_at_unix_ms: x.resumed_at_unix_ms,
                    reason: x.reason,
                    error: x.error,
                })
            })
            .collect()
    }

    async fn acknowledge(&self, volume: &str) -> Result<Option<String>, HostError> {
        let r = self
            .client()
            .acknowledge(req(pb::VolumeRef {
                volume: volume.into(),
            }))
            .await
            .map_err(from_status)?;
        Ok(r.into_inner().acknowledged)
    }
}
