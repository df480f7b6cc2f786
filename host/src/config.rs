//! `HostConfig`: the `[host]` section of an agent's `node.toml`. It names the backend and every
//! volume this host works on, with its quiesce limits and application hooks.
//!
//! ```toml
//! [host]
//! backend = "linux"                  # or "sim"
//!
//! [[host.volumes]]
//! name = "mv1"
//! ld = "array0/LD0001"               # the array LD behind it (for listing and the sim)
//! device = "/dev/disk/by-id/wwn-0x6000..."
//! mount_point = "/srv/db"
//! fs = "ext4"                        # ext4 | xfs | auto | sim
//! mount_options = ["noatime"]
//! freeze_ms_max = 10000              # VSS practice: writes held at most 10 s
//! unmount_ms_max = 120000
//! stop = { command = ["systemctl", "stop", "postgresql"], timeout_ms = 60000 }
//! start = { command = ["systemctl", "start", "postgresql"] }
//!
//! [[host.volumes]]                   # an LD of a (software) array, attached by the agent
//! name = "mv2"
//! ld = "A/0"                         # ARRAY/LD_NUMBER; ARRAY is in the node's [[arrays]]
//! mount_point = "/srv/app"
//! fs = "xfs"
//! ```
//!
//! With `backend = "linux"`, a volume names either a `device` or only an `ld`. When any
//! volume names only an `ld`, the agent attaches every LD of those arrays that is visible to
//! it (the array's access list admits the node's name) as a block device: a FUSE file per LD
//! under `<data_dir>/lds`, served through the array's data API, with a loop device over it.
//! The volume's device is its LD's loop device; `volume rescan` attaches LDs that became
//! visible since; a graceful stop detaches them (see the crate's CAVEATS).

use serde::{Deserialize, Serialize};

use crate::error::HostError;
use crate::limits;

/// Which implementation performs the operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// In-process volumes over [`crate::BlockDevice`]s (array LDs); no root needed.
    Sim,
    /// Real block devices and file systems on a Linux server (root needed).
    Linux,
}

/// File system on a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
    /// Detected with blkid when needed.
    Auto,
    /// The sim backend's record volume.
    Sim,
}

impl FsType {
    pub fn as_str(&self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Auto => "auto",
            FsType::Sim => "sim",
        }
    }
}

/// An application hook: an external command, or (sim backend only) an in-process application
/// registered with the agent under `app`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// argv of the command (no shell); e.g. `["systemctl", "stop", "postgresql"]`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Name of an in-process application (sim backend), e.g. the workload.
    #[serde(default)]
    pub app: Option<String>,
    /// How long the hook may run before it is killed and the operation fails.
    #[serde(default = "default_hook_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_hook_timeout_ms() -> u64 {
    limits::HOOK_TIMEOUT_MS_DEFAULT
}
fn default_freeze_ms_max() -> u64 {
    limits::FREEZE_MS_MAX_DEFAULT
}
fn default_unmount_ms_max() -> u64 {
    limits::UNMOUNT_MS_MAX_DEFAULT
}
fn default_extend_ms_max_total() -> u64 {
    limits::EXTEND_MS_MAX_TOTAL_DEFAULT
}
fn default_delayed_write_wait_ms() -> u64 {
    limits::DELAYED_WRITE_WAIT_MS_DEFAULT
}
fn default_fs() -> FsType {
    FsType::Auto
}

/// One volume this host works on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Name used in commands and jobs; unique on the host.
    pub name: String,
    /// The array LD behind the volume (`array/LD`), shown in listings. The sim backend finds
    /// the volume's block device by this name.
    #[serde(default)]
    pub ld: Option<String>,
    /// Block device path (linux backend; required there).
    #[serde(default)]
    pub device: Option<String>,
    /// Where the volume is mounted.
    pub mount_point: String,
    #[serde(default = "default_fs")]
    pub fs: FsType,
    /// Extra mount options (linux), e.g. `noatime`.
    #[serde(default)]
    pub mount_options: Vec<String>,
    /// Longest a freeze may hold writes before the agent thaws by itself.
    #[serde(default = "default_freeze_ms_max")]
    pub freeze_ms_max: u64,
    /// Longest an unmount for a static point may last before the agent remounts by itself.
    #[serde(default = "default_unmount_ms_max")]
    pub unmount_ms_max: u64,
    /// Total extension a quiesce may be granted on top of its limit.
    #[serde(default = "default_extend_ms_max_total")]
    pub extend_ms_max_total: u64,
    /// How long to wait out delayed writes when unmount is refused and the job separates
    /// anyway (NEC seed: 60 s); reported to the job driver, which does the waiting.
    #[serde(default = "default_delayed_write_wait_ms")]
    pub delayed_write_wait_ms: u64,
    /// Stops the applications using the volume (before a static-point unmount).
    #[serde(default)]
    pub stop: Option<HookConfig>,
    /// Starts them again (after remount).
    #[serde(default)]
    pub start: Option<HookConfig>,
}

/// `[host.sim]`: how the sim backend behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimOptions {
    /// Dirty blocks a sim volume's write-back cache holds before writing random ones back.
    #[serde(default = "default_cache_blocks_max")]
    pub cache_blocks_max: usize,
    /// Seed of the cache's random write-back order (same seed, same torn records).
    #[serde(default)]
    pub seed: u64,
    /// Pause between records of the workload applications [`crate::Workload::register_for`]
    /// creates; `None` writes as fast as the volume takes them.
    #[serde(default)]
    pub workload_pace_ms: Option<u64>,
    /// How long those workload applications take to stop once asked (they keep writing
    /// meanwhile, as a database finishes its work): a slow stop hook. 0 by default.
    #[serde(default)]
    pub workload_stop_ms: u64,
}

fn default_cache_blocks_max() -> usize {
    limits::SIM_CACHE_BLOCKS_MAX_DEFAULT
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            cache_blocks_max: default_cache_blocks_max(),
            seed: 0,
            workload_pace_ms: None,
            workload_stop_ms: 0,
        }
    }
}

/// The `[host]` section of `node.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub backend: BackendKind,
    /// Only meaningful with `backend = "sim"`.
    #[serde(default)]
    pub sim: SimOptions,
    #[serde(default)]
    pub volumes: Vec<VolumeConfig>,
}

fn bad(source: &str, field: String, reason: impl Into<String>) -> HostError {
    HostError::Config {
        source_name: source.to_string(),
        field,
        reason: reason.into(),
    }
}

impl HostConfig {
    /// Parses a standalone `[host]` section (the text of the section's body, or a document
    /// whose top level is the section) and validates it. `source_name` (a file name) appears
    /// in every error.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<HostConfig, HostError> {
        let cfg: HostConfig = toml::from_str(text).map_err(|e| HostError::Config {
            source_name: source_name.to_string(),
            field: e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "[host]".into()),
            reason: e.message().to_string(),
        })?;
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    /// Reads and validates a standalone `[host]` section from a file.
    pub fn from_file(path: &std::path::Path) -> Result<HostConfig, HostError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| HostError::Config {
            source_name: name.clone(),
            field: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_toml_str(&text, &name)
    }

    /// Checks the rules serde cannot: unique names, absolute paths, a device for the linux
    /// backend, limits inside their bounds, hooks with exactly one of `command` / `app`.
    pub fn validate(&self, source_name: &str) -> Result<(), HostError> {
        if self.sim.cache_blocks_max == 0 {
            return Err(bad(
                source_name,
                "host.sim.cache_blocks_max".into(),
                "must be at least 1",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let at = |f: &str| format!("host.volumes[{i}].{f}");
            let name_ok = !v.name.is_empty()
                && v.name.len() <= 64
                && v.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !name_ok {
                return Err(bad(
                    source_name,
                    at("name"),
                    format!("{:?}: use 1-64 letters, digits, '-', '_' or '.'", v.name),
                ));
            }
            if !seen.insert(v.name.as_str()) {
                return Err(bad(
                    source_name,
                    at("name"),
                    format!("volume {:?} is configured twice", v.name),
                ));
            }
            if !v.mount_point.starts_with('/') {
                return Err(bad(
                    source_name,
                    at("mount_point"),
                    format!("{:?} must be an absolute path", v.mount_point),
                ));
            }
            match self.backend {
                BackendKind::Linux => {
                    match &v.device {
                        Some(d) if d.starts_with('/') => {}
                        // An array LD the agent attaches (as a loop device over a FUSE file).
                        None if v.ld.is_some() => {}
                        Some(d) => {
                            return Err(bad(
                                source_name,
                                at("device"),
                                format!("{d:?} must be an absolute device path"),
                            ));
                        }
                        None => {
                            return Err(bad(
                                source_name,
                                at("device"),
                                "required with backend = \"linux\" (or ld = \"ARRAY/LD_NUMBER\" of an array in [[arrays]])",
                            ));
                        }
                    }
                    if v.fs == FsType::Sim {
                        return Err(bad(
                            source_name,
                            at("fs"),
                            "\"sim\" is only for backend = \"sim\"",
                        ));
                    }
                }
                BackendKind::Sim => {
                    if v.ld.is_none() {
                        return Err(bad(
                            source_name,
                            at("ld"),
                            "required with backend = \"sim\" (the LD whose device backs the volume)",
                        ));
                    }
                }
            }
            for (field, value, max) in [
                (
                    "freeze_ms_max",
                    v.freeze_ms_max,
                    limits::FREEZE_MS_MAX_CEILING,
                ),
                (
                    "unmount_ms_max",
                    v.unmount_ms_max,
                    limits::UNMOUNT_MS_MAX_CEILING,
                ),
                (
                    "extend_ms_max_total",
                    v.extend_ms_max_total,
                    limits::UNMOUNT_MS_MAX_CEILING,
                ),
                (
                    "delayed_write_wait_ms",
                    v.delayed_write_wait_ms,
                    limits::UNMOUNT_MS_MAX_CEILING,
                ),
            ] {
                if (value == 0 && field != "extend_ms_max_total") || value > max {
                    return Err(bad(
                        source_name,
                        at(field),
                        format!("{value} is outside 1..={max}"),
                    ));
                }
            }
            for (field, hook) in [("stop", &v.stop), ("start", &v.start)] {
                let Some(h) = hook else { continue };
                match (&h.command, &h.app) {
                    (Some(c), None) if !c.is_empty() && !c[0].is_empty() => {}
                    (Some(_), None) => {
                        return Err(bad(
                            source_name,
                            at(&format!("{field}.command")),
                            "must name a program",
                        ));
                    }
                    (None, Some(_)) if self.backend == BackendKind::Sim => {}
                    (None, Some(_)) => {
                        return Err(bad(
                            source_name,
                            at(&format!("{field}.app")),
                            "in-process applications exist only with backend = \"sim\"; use command",
                        ));
                    }
                    _ => {
                        return Err(bad(
                            source_name,
                            at(field),
                            "give exactly one of command = [..] or app = \"..\"",
                        ));
                    }
                }
                if h.timeout_ms == 0 || h.timeout_ms > limits::HOOK_TIMEOUT_MS_CEILING {
                    return Err(bad(
                        source_name,
                        at(&format!("{field}.timeout_ms")),
                        format!(
                            "{} is outside 1..={}",
                            h.timeout_ms,
                            limits::HOOK_TIMEOUT_MS_CEILING
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The volume named `name`, or an error listing the known names.
    pub fn volume(&self, name: &str) -> Result<&VolumeConfig, HostError> {
        self.volumes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| HostError::UnknownVolume {
                volume: name.to_string(),
                known: self
                    .volumes
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_section_parses_with_defaults() {
        let cfg = HostConfig::from_toml_str(
            r#"
backend = "linux"
[[volumes]]
name = "mv1"
device = "/dev/loop3"
mount_point = "/mnt/mv1"
fs = "ext4"
stop = { command = ["systemctl", "stop", "pg"] }
"#,
            "node.toml",
        )
        .unwrap();
        let v = cfg.volume("mv1").unwrap();
        assert_eq!(v.freeze_ms_max, 10_000);
        assert_eq!(v.delayed_write_wait_ms, 60_000);
        assert_eq!(
            v.stop.as_ref().unwrap().timeout_ms,
            limits::HOOK_TIMEOUT_MS_DEFAULT
        );
    }

    #[test]
    fn errors_name_the_field() {
        let unknown = HostConfig::from_toml_str(
            "backend = \"sim\"\n[[volumes]]\nname = \"a\"\nld = \"x\"\nmount_point = \"/a\"\nfreez_ms_max = 3\n",
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            unknown.contains("freez_ms_max") && unknown.contains("node.toml"),
            "{unknown}"
        );

        let no_device = HostConfig::from_toml_str(
            "backend = \"linux\"\n[[volumes]]\nname = \"a\"\nmount_point = \"/a\"\n",
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(no_device.contains("host.volumes[0].device"), "{no_device}");

        let hook = HostConfig::from_toml_str(
            "backend = \"linux\"\n[[volumes]]\nname = \"a\"\ndevice = \"/dev/x\"\nmount_point = \"/a\"\nstop = { app = \"w\" }\n",
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(hook.contains("host.volumes[0].stop.app"), "{hook}");

        let dup = HostConfig::from_toml_str(
            "backend = \"sim\"\n[[volumes]]\nname = \"a\"\nld = \"x\"\nmount_point = \"/a\"\n[[volumes]]\nname = \"a\"\nld = \"y\"\nmount_point = \"/b\"\n",
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            dup.contains("host.volumes[1].name") && dup.contains("twice"),
            "{dup}"
        );

        let limit = HostConfig::from_toml_str(
            "backend = \"sim\"\n[[volumes]]\nname = \"a\"\nld = \"x\"\nmount_point = \"/a\"\nfreeze_ms_max = 0\n",
            "node.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(limit.contains("freeze_ms_max"), "{limit}");
    }
}
