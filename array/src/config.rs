//! Configuration of a software array, read from TOML.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::error::{ArrayError, Result};

/// A software array: its name, where its data lives, its LDs and its links to peer arrays.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArrayConfig {
    /// Unique array name; pairs refer to LDs as `NAME:NUMBER`.
    pub name: String,
    /// Directory holding one sparse file per LD and the `meta` sled database.
    pub data_dir: PathBuf,
    /// Address `serve` listens on when started from the CLI.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Unit of difference tracking and copying; LD capacities must be multiples of it.
    #[serde(default = "default_block_bytes")]
    pub block_bytes: u64,
    /// Background copy pace of the whole array (the seed's per-array copy level): all pairs and
    /// business copies of the array together copy at most this many bytes per second; 0 copies
    /// as fast as the disk goes.
    #[serde(default)]
    pub copy_pace_bytes_per_s: u64,
    /// Semi-sync backlog bound: beyond this many un-reflected blocks a write turns synchronous.
    #[serde(default = "default_backlog")]
    pub semi_sync_backlog_blocks_max: u64,
    /// The LDs of the array.
    #[serde(default, rename = "ld")]
    pub lds: Vec<LdConfig>,
    /// Peer arrays reachable for RDR.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// Append the audit log `data_dir/audit.log`: every pair state change and refused pair
    /// operation, every host I/O attempt on an RV, sampled host writes on other LDs (see
    /// [`crate::AuditLine`]). For referees such as the chaos harness; off by default.
    #[serde(default)]
    pub audit_log: bool,
    /// With `audit_log`: host writes on a plain or master LD are recorded at most once per this
    /// many ms per LD (default [`crate::AUDIT_MV_WRITE_SAMPLE_MS`]); 0 records every one, so a
    /// referee can tell, between two lines, whether an MV was written (the chaos harness's
    /// "one instant" check of a consistent copy).
    #[serde(default = "default_mv_write_sample_ms")]
    pub audit_mv_write_sample_ms: u64,
    /// With `audit_log`: when an RV is opened to hosts (its access goes from `nr`/`na` to
    /// `rw`/`ro`, as a separate ends), the first this many bytes of it are recorded, read
    /// before any host can touch it: the copy's head as the array cut it (an ext4 superblock
    /// lies in its first 2 KiB). 0 (the default) records none; at most
    /// [`crate::AUDIT_RV_HEAD_BYTES_MAX`].
    #[serde(default)]
    pub audit_rv_head_bytes: u64,
}

fn default_mv_write_sample_ms() -> u64 {
    crate::AUDIT_MV_WRITE_SAMPLE_MS
}

/// One logical disk.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LdConfig {
    /// LD number, unique in the array.
    pub number: u32,
    /// LD name.
    pub name: String,
    /// Capacity, a multiple of `block_bytes`.
    pub capacity_bytes: u64,
    /// OS/format type; pairs need equal formats.
    #[serde(default = "default_format")]
    pub format: String,
    /// Hosts allowed to do I/O; `"*"` allows any host.
    #[serde(default = "default_hosts")]
    pub hosts: Vec<String>,
}

/// A linked peer array.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's array name.
    pub name: String,
    /// Its gRPC endpoint, `http://HOST:PORT`.
    pub endpoint: String,
    /// One-way delay the link adds to every copy operation.
    #[serde(default)]
    pub latency_ms: u64,
    /// Link bandwidth cap; 0 is unlimited.
    #[serde(default)]
    pub bandwidth_bytes_per_s: u64,
}

fn default_listen() -> String {
    "127.0.0.1:7600".into()
}
fn default_block_bytes() -> u64 {
    crate::DEFAULT_BLOCK_BYTES
}
fn default_backlog() -> u64 {
    crate::DEFAULT_SEMI_SYNC_BACKLOG_BLOCKS_MAX
}
fn default_format() -> String {
    "NX".into()
}
fn default_hosts() -> Vec<String> {
    vec!["*".into()]
}

impl ArrayConfig {
    /// Reads and validates a config file; errors name the file and the offending field.
    pub fn load(path: &Path) -> Result<ArrayConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| ArrayError::Config {
            path: path.display().to_string(),
            detail: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ArrayConfig> {
        let cfg: ArrayConfig = toml::from_str(text).map_err(|e| ArrayError::Config {
            path: origin.into(),
            detail: e.to_string(),
        })?;
        cfg.validate().map_err(|detail| ArrayError::Config {
            path: origin.into(),
            detail,
        })?;
        Ok(cfg)
    }

    /// Checks what TOML types cannot: block size, capacities, unique numbers and names.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.name.is_empty() || self.name.contains(':') {
            return Err(format!(
                "name {:?}: must be non-empty and contain no ':'",
                self.name
            ));
        }
        if self.block_bytes < 4096 || !self.block_bytes.is_power_of_two() {
            return Err(format!(
                "block_bytes = {}: must be a power of two >= 4096",
                self.block_bytes
            ));
        }
        if self.audit_rv_head_bytes > crate::AUDIT_RV_HEAD_BYTES_MAX {
            return Err(format!(
                "audit_rv_head_bytes = {}: at most {}",
                self.audit_rv_head_bytes,
                crate::AUDIT_RV_HEAD_BYTES_MAX
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, ld) in self.lds.iter().enumerate() {
            if !seen.insert(ld.number) {
                return Err(format!(
                    "ld[{i}].number = {}: duplicate LD number",
                    ld.number
                ));
            }
            if ld.capacity_bytes == 0 || ld.capacity_bytes % self.block_bytes != 0 {
                return Err(format!(
                    "ld[{i}].capacity_bytes = {}: must be a non-zero multiple of block_bytes ({})",
                    ld.capacity_bytes, self.block_bytes
                ));
            }
        }
        let mut peers = std::collections::BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.name == self.name || !peers.insert(&p.name) {
                return Err(format!(
                    "peer[{i}].name = {:?}: duplicate or names this array",
                    p.name
                ));
            }
            crate::remote::check_endpoint(&p.endpoint)
                .map_err(|e| format!("peer[{i}].endpoint = {:?}: {e}", p.endpoint))?;
        }
        Ok(())
    }
}

/// A commented example config the demo can write out.
pub fn example_config() -> &'static str {
    r#"# stillpoint software array
name = "array0"
data_dir = "/var/lib/stillpoint/array0"
listen = "127.0.0.1:7600"
# unit of difference tracking and copying
block_bytes = 65536
# background copy pace of the whole array (all pairs and business copies together);
# 0 = as fast as the disk allows
copy_pace_bytes_per_s = 0
# semi-sync (RDR) turns synchronous beyond this many un-reflected blocks
semi_sync_backlog_blocks_max = 64

[[ld]]
number = 0
name = "DB_PRIMARY"
capacity_bytes = 67108864
format = "NX"
hosts = ["db1"]

[[ld]]
number = 1
name = "DB_SECONDARY"
capacity_bytes = 67108864
format = "NX"
hosts = ["backup1"]

# a remote array for RDR pairs
# [[peer]]
# name = "array1"
# endpoint = "http://127.0.0.1:7601"
# latency_ms = 2
# bandwidth_bytes_per_s = 100000000
"#
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_unknown_field_is_named() {
        let cfg = ArrayConfig::parse(example_config(), "example").expect("example config");
        assert_eq!(cfg.lds.len(), 2);
        let bad = example_config().replace("block_bytes", "blok_bytes");
        let err = ArrayConfig::parse(&bad, "array.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("array.toml") && err.contains("blok_bytes"),
            "{err}"
        );
        let bad = example_config().replace("67108864", "1000");
        let err = ArrayConfig::parse(&bad, "array.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ld[0].capacity_bytes"), "{err}");
    }
}
