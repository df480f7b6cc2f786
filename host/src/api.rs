//! The host interface: the [`Host`] trait the agent's step executor and gRPC service call, and
//! the types it speaks.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use stillpoint_storage::journal::{QuiesceKind, QuiesceRecord, ResumeRecord};

use crate::error::{Holder, HostError};
use crate::postgres::{BackupLabel, PostgresConnect};

/// A volume as this host sees it right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// The array LD behind it, as configured.
    pub ld: Option<String>,
    /// Block device (linux) or LD name (sim).
    pub device: String,
    /// Configured mount point.
    pub mount_point: String,
    /// File system type as configured or detected.
    pub fs: String,
    /// File-system identity (ext4/XFS UUID, sim id); an RV copy carries its MV's.
    pub fs_id: Option<String>,
    /// Where it is mounted now, if anywhere.
    pub mounted_at: Option<String>,
    /// Processes or applications holding it.
    pub holders: Vec<Holder>,
    /// The quiesce this agent holds on it, if any.
    pub quiesce: Option<QuiesceRecord>,
    /// Why the live state could not be read (e.g. the LD is not visible), if so.
    pub problem: Option<String>,
}

/// How to treat the file-system identity when mounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MountIdentity {
    /// Mount as is; refused if another mounted file system has the same identity.
    #[default]
    Keep,
    /// Give the file system a new identity first (ext4: `tune2fs -U random`; XFS:
    /// `xfs_admin -U generate`): for an RV copy used on the MV's host for good.
    New,
    /// Mount despite the duplicate (XFS `nouuid`; ext4 needs nothing).
    IgnoreDuplicate,
}

/// Options of a mount.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MountRequest {
    /// Mount somewhere other than the configured mount point.
    pub mount_point: Option<String>,
    pub identity: MountIdentity,
    pub read_only: bool,
}

/// Which quiesce to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuiesceMode {
    /// Freeze the file system (writers block; the volume stays mounted).
    Freeze,
    /// Stop applications (stop hook), flush, unmount: the full static point of the seeds.
    Unmount,
    /// PostgreSQL's online backup mode in a session held for the window (the volume stays
    /// mounted and writable); the release returns the backup's label. Limited like an
    /// unmount (`unmount_ms_max`): writers are not blocked.
    Postgresql(PostgresConnect),
    /// Only the application's hooks: the stop hook (which must bring the application to a
    /// static point of its own), then a flush; the volume stays mounted and writable, so the
    /// copy is as consistent as the application makes it. Ended by the start hook. Both hooks
    /// must be configured. Limited like an unmount (`unmount_ms_max`).
    HooksOnly,
}

/// A request to quiesce a volume with a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuiesceRequest {
    pub volume: String,
    pub mode: QuiesceMode,
    /// Deadline from now; `None` takes the volume's configured limit, more than it is refused.
    pub limit_ms: Option<u64>,
    /// Who asks (job/step or "cli"); kept in the record and the resume log.
    pub owner: String,
}

/// A quiesce ended by its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReport {
    pub volume: String,
    pub quiesce_id: u64,
    /// How long the volume was quiesced.
    pub held_ms: u64,
    /// Output of the start hook, if one ran.
    pub start_hook: Option<HookOutput>,
    /// A PostgreSQL quiesce: what `pg_backup_stop` returned.
    #[serde(default)]
    pub backup_label: Option<BackupLabel>,
}

/// Stop or start hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookKind {
    Stop,
    Start,
}

impl HookKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            HookKind::Stop => "stop",
            HookKind::Start => "start",
        }
    }
}

/// What a hook did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutput {
    /// The command line (or `app:<name>`).
    pub command: String,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed_ms: u64,
}

/// Result of a file-system check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub volume: String,
    /// No inconsistency left (after repair, if repair was asked).
    pub clean: bool,
    /// Something was changed.
    pub repaired: bool,
    /// The checker's output.
    pub output: String,
}

/// Host operations of an agent. Object safe: the agent holds an `Arc<dyn Host>`.
///
/// Quiesces (freeze, or unmount for a static point) are always taken with a deadline; if
/// neither [`Host::release`] nor [`Host::extend`] arrives in time the host resumes the volume
/// by itself and records why ([`Host::resumes`]).
#[async_trait]
pub trait Host: Send + Sync {
    /// Every configured volume with its live state.
    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, HostError>;
    /// One volume's live state.
    async fn volume(&self, volume: &str) -> Result<VolumeInfo, HostError>;
    /// Writes the file system's dirty buffers to the device.
    async fn flush(&self, volume: &str) -> Result<(), HostError>;
    /// Plain unmount (e.g. an RV before replicate). Refused with the holders named while busy,
    /// unless `force`, which terminates the holders first; returns the holders terminated.
    async fn unmount(&self, volume: &str, force: bool) -> Result<Vec<Holder>, HostError>;
    /// Mounts the volume (an RV copy may need `identity` other than `Keep`).
    async fn mount(&self, volume: &str, request: &MountRequest) -> Result<VolumeInfo, HostError>;
    /// Takes a quiesce with a deadline. On error nothing stays quiesced.
    async fn quiesce(&self, request: &QuiesceRequest) -> Result<QuiesceRecord, HostError>;
    /// Moves the deadline of quiesce `quiesce_id` later by `extra_ms`, within the volume's
    /// extension ceiling.
    async fn extend(
        &self,
        volume: &str,
        quiesce_id: u64,
        extra_ms: u64,
    ) -> Result<QuiesceRecord, HostError>;
    /// Ends the quiesce (thaw, or remount and start applications). With `quiesce_id`, fails
    /// with [`HostError::QuiesceLost`] if that quiesce already ended without its owner.
    async fn release(
        &self,
        volume: &str,
        quiesce_id: Option<u64>,
    ) -> Result<ReleaseReport, HostError>;
    /// Makes the host rediscover devices (e.g. an RV LD that just became visible).
    async fn rescan(&self) -> Result<Vec<VolumeInfo>, HostError>;
    /// Checks (and with `repair`, repairs) the file system; the volume must be unmounted.
    async fn check(&self, volume: &str, repair: bool) -> Result<CheckReport, HostError>;
    /// Runs the volume's configured stop or start hook.
    async fn run_hook(&self, volume: &str, hook: HookKind) -> Result<HookOutput, HostError>;
    /// Quiesces currently held.
    async fn quiesces(&self) -> Result<Vec<QuiesceRecord>, HostError>;
    /// Volumes the host resumed by itself, oldest first.
    async fn resumes(&self) -> Result<Vec<ResumeRecord>, HostError>;
    /// Acknowledges what was waiting for an operator on `volume` (e.g. a start hook that
    /// failed when the agent resumed it), so the volume no longer shows it. Returns what was
    /// acknowledged, if anything.
    async fn acknowledge(&self, volume: &str) -> Result<Option<String>, HostError>;

    /// Freeze with a deadline: [`Host::quiesce`] in [`QuiesceMode::Freeze`].
    async fn freeze(
        &self,
        volume: &str,
        limit_ms: Option<u64>,
        owner: &str,
    ) -> Result<QuiesceRecord, HostError> {
        self.quiesce(&QuiesceRequest {
            volume: volume.to_string(),
            mode: QuiesceMode::Freeze,
            limit_ms,
            owner: owner.to_string(),
        })
        .await
    }

    /// Thaw: [`Host::release`] of whatever quiesce the volume is in.
    async fn thaw(&self, volume: &str) -> Result<ReleaseReport, HostError> {
        self.release(volume, None).await
    }
}
