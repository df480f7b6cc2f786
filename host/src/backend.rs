//! What a backend does: the raw operations on one volume. The agent ([`crate::Agent`]) adds
//! everything backends share on top: quiesce records, deadlines, hooks, undo on error.

use async_trait::async_trait;

use crate::api::{CheckReport, HookKind, HookOutput, MountRequest};
use crate::config::VolumeConfig;
use crate::error::{Holder, HostError};
use crate::guard::{Guard, Pending};

/// A volume's live state as the backend sees it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub device: String,
    pub fs: String,
    pub fs_id: Option<String>,
    pub mounted_at: Option<String>,
    pub holders: Vec<Holder>,
}

/// Raw operations. Mount, unmount and thaw are idempotent (mounting where it is mounted,
/// unmounting what is not mounted, thawing what is not frozen all succeed), because the agent
/// repeats them when it resumes after a crash.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    async fn inspect(&self, v: &VolumeConfig) -> Result<Seen, HostError>;
    async fn flush(&self, v: &VolumeConfig) -> Result<(), HostError>;
    async fn unmount(&self, v: &VolumeConfig, force: bool) -> Result<Vec<Holder>, HostError>;
    async fn mount(
        &self,
        v: &VolumeConfig,
        mount_point: &str,
        req: &MountRequest,
    ) -> Result<(), HostError>;
    /// Readies a freeze of `v` until `deadline_boot_ms` (the machine's boot clock, which no
    /// wall-clock step moves) without freezing anything: the linux backend forks the
    /// [`Guard`] process that will freeze and thaw, and returns it so the agent journals it
    /// before it freezes (a guard dropped unfrozen exits); the sim needs none (`None`).
    async fn prepare_freeze(
        &self,
        v: &VolumeConfig,
        deadline_boot_ms: u64,
    ) -> Result<Option<Pending>, HostError>;
    /// Freezes until `deadline_boot_ms`: the linux backend through `pending`'s guard (which
    /// thaws at the deadline even if the agent dies), and returns it; the sim (whose freeze
    /// lives in the agent's process) returns `None`. On error nothing was frozen by this call
    /// (a freeze still in flight is undone by its guard when it completes).
    async fn freeze(
        &self,
        v: &VolumeConfig,
        deadline_boot_ms: u64,
        pending: Option<Pending>,
    ) -> Result<Option<Guard>, HostError>;
    async fn thaw(&self, v: &VolumeConfig) -> Result<(), HostError>;
    async fn rescan(&self) -> Result<(), HostError>;
    async fn check(&self, v: &VolumeConfig, repair: bool) -> Result<CheckReport, HostError>;
    /// Runs an in-process application hook (sim only).
    async fn run_app(
        &self,
        v: &VolumeConfig,
        app: &str,
        kind: HookKind,
        timeout_ms: u64,
    ) -> Result<HookOutput, HostError>;
}
