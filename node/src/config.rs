//! The agent's configuration file (`node.toml`).
//!
//! ```toml
//! node_id = 1                     # required, unique in the cluster, never reused
//! name = "mgmt1"                  # required, unique; what `--node NAME` refers to
//! listen = "0.0.0.0:7401"         # gRPC address to bind
//! advertise = "10.0.0.5:7401"     # address others use (default: listen)
//! data_dir = "/var/lib/stillpoint"
//! roles = ["management"]          # any of business, backup, management
//! # cluster_id = "…"              # optional: refuse a data dir of another cluster
//!
//! [cluster]
//! initial_members = ["10.0.0.5:7401", "10.0.0.6:7401", "10.0.0.7:7401"]
//!
//! [raft]                          # all optional; defaults below suit a LAN
//! heartbeat_interval_ms = 100
//! election_timeout_min_ms = 300
//! election_timeout_max_ms = 500
//! snapshot_after_logs = 5000
//! logs_kept_after_snapshot = 1000
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stillpoint_coordinator::Role;

use crate::error::NodeError;

/// Raft timing and compaction, in one place. Defaults are for agents on one LAN.
///
/// # How the timings decide failover (openraft 0.9)
/// The leader sends a heartbeat every 1.5 x `heartbeat_interval_ms` (openraft's tick). A
/// follower that heard the leader holds a *lease* of `election_timeout_max_ms` during which it
/// refuses to vote for anyone else, and campaigns itself only after the lease plus its own
/// election timeout (drawn once per process in [min, max)) have passed without a heartbeat.
/// So after a leader dies, the first follower campaigns within
/// `max + [min, max] - (time since the last heartbeat) + up to one tick`, and a new leader
/// commits one vote and one blank entry (a few fsyncs and round trips) later.
///
/// Defaults (100 / 300 / 500): the first campaign starts 650–1150 ms after the leader dies, and
/// a new leader commits 0.75–1.3 s after it (the `failover` bench measures it: the job engine
/// needs at most 1.5 s at p99). Against spurious elections, a follower campaigns only after
/// 800 ms without a heartbeat — more than five heartbeats (one every 150 ms) lost or late in a
/// row — and refuses to vote for 500 ms after hearing its leader, so one slow node cannot
/// depose a healthy leader. On a LAN a heartbeat takes well under a millisecond; the 800 ms
/// cover a leader stalled by CPU starvation or a slow fsync (openraft 0.9 writes the log
/// inline and sends no heartbeat meanwhile). That margin is the price of the 1.5 s target: on a
/// 2-core VM oversubscribed 4-5 times (load average 9), back-to-back writes saw stalls of up to
/// ~775 ms and two elections in 60 s that no failure caused (a spurious election costs about
/// one failover, ~1 s, and loses nothing); the old 150 / 600-1200 saw the same stalls and none,
/// at 2-3.4 s per failover. An agent that shares its cores with heavy work belongs on the old
/// timings. Sites with slower disks or WAN links raise all three together, keeping max at
/// least min + 2 heartbeats so that two followers rarely campaign at once (a split vote adds
/// a whole election timeout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in [min, max] starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log after a snapshot, so slightly lagging followers need no snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Bytes of snapshot sent per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 500,
            snapshot_after_logs: 5000,
            logs_kept_after_snapshot: 1000,
            snapshot_chunk_bytes: 1024 * 1024,
        }
    }
}

/// Who bootstraps the cluster (`stillpoint cluster init --config node.toml`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Addresses of the first voters, this agent included.
    #[serde(default)]
    pub initial_members: Vec<String>,
}

/// The whole `node.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: u64,
    pub name: String,
    pub listen: String,
    #[serde(default)]
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub roles: BTreeSet<Role>,
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub raft: RaftTuning,
    /// Arrays this agent reaches (control path, and the data path of sim volumes).
    #[serde(default)]
    pub arrays: Vec<ArrayEndpoint>,
    /// The host half: this server's volumes and how to operate on them.
    #[serde(default)]
    pub host: Option<stillpoint_host::HostConfig>,
    /// The file this config was read from (absolute), when it was read from one: the agent
    /// starts its LD path process ([`crate::hba`]) with it.
    #[serde(skip)]
    pub loaded_from: Option<PathBuf>,
}

/// `[[arrays]]`: a disk array by name and the address of its gRPC API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrayEndpoint {
    pub name: String,
    pub endpoint: String,
}

impl NodeConfig {
    /// Reads and validates `path`. Errors name the file, and the line and field where toml
    /// can tell.
    pub fn load(path: &Path) -> Result<NodeConfig, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::Config {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Self::parse(&text, path)?;
        config.loaded_from =
            Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(config)
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, NodeError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| NodeError::Config {
            path: path.to_path_buf(),
            message: describe_toml_error(text, &e),
        })?;
        config.validate().map_err(|message| NodeError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Rules serde cannot express. Returns the first broken rule, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id: must be a positive integer (0 is reserved)".into());
        }
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if self
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "name: {:?} must not contain spaces or control characters",
                self.name
            ));
        }
        self.listen.parse::<SocketAddr>().map_err(|e| {
            format!(
                "listen: {:?} is not HOST:PORT with a numeric IP ({e})",
                self.listen
            )
        })?;
        if let Some(adv) = &self.advertise {
            check_address(adv).map_err(|e| format!("advertise: {e}"))?;
        }
        for (i, m) in self.cluster.initial_members.iter().enumerate() {
            check_address(m).map_err(|e| format!("cluster.initial_members[{i}]: {e}"))?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir: must not be empty".into());
        }
        for (i, a) in self.arrays.iter().enumerate() {
            check_address(&a.endpoint).map_err(|e| format!("arrays[{i}].endpoint: {e}"))?;
            if self.arrays[..i].iter().any(|b| b.name == a.name) {
                return Err(format!("arrays[{i}].name: {:?} is listed twice", a.name));
            }
        }
        crate::volumes::validate(self)?;
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return Err("raft.heartbeat_interval_ms: must be > 0".into());
        }
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return Err(format!(
                "raft.election_timeout_min_ms ({}) must exceed raft.heartbeat_interval_ms ({}), or followers start elections while the leader is healthy",
                r.election_timeout_min_ms, r.heartbeat_interval_ms
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(
                "raft.election_timeout_max_ms: must exceed raft.election_timeout_min_ms".into(),
            );
        }
        if r.snapshot_after_logs == 0 {
            return Err("raft.snapshot_after_logs: must be > 0".into());
        }
        if r.snapshot_chunk_bytes == 0
            || r.snapshot_chunk_bytes > (stillpoint_proto::MAX_MESSAGE_BYTES as u64) / 2
        {
            return Err(format!(
                "raft.snapshot_chunk_bytes: must be between 1 and {}",
                stillpoint_proto::MAX_MESSAGE_BYTES / 2
            ));
        }
        Ok(())
    }

    /// The address other agents and clients use for this agent.
    pub fn advertised_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.clone())
    }

    /// openraft's config from our tuning.
    pub fn openraft_config(&self) -> Result<openraft::Config, NodeError> {
        let r = &self.raft;
        let config = openraft::Config {
            cluster_name: "stillpoint".into(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_logs),
            max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
            snapshot_max_chunk_size: r.snapshot_chunk_bytes,
            // A snapshot chunk must be written and flushed on the receiver within this time.
            install_snapshot_timeout: 10_000.max(r.election_timeout_max_ms * 4),
            ..Default::default()
        };
        config.validate().map_err(|e| NodeError::Config {
            path: PathBuf::from("[raft]"),
            message: e.to_string(),
        })
    }
}

/// `HOST:PORT` where HOST may be a name; the port must be present and numeric.
pub fn check_address(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{address:?} has no valid port"))?;
    Ok(())
}

/// toml's message, with the line number spelled out first so the operator finds it at once,
/// and the key named with its table (`cluster.initial_memebers`) when the error is on a key.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().to_string();
    let Some(span) = e.span() else {
        return msg;
    };
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    match key_at(text, line) {
        Some(key) => format!("line {line}: {key}: {msg}"),
        None => format!("line {line}: {msg}"),
    }
}

/// The dotted name (`table.key`) of the key defined on `line` (1-based), if that line defines
/// one: the key before `=`, prefixed by the last `[table]` header above it.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?;
    let (key, _) = here.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]"));
        let inner = inner.or_else(|| l.strip_prefix('[').and_then(|r| r.strip_suffix(']')));
        inner.map(|t| t.trim().to_string())
    });
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 3
name = "db1"
listen = "127.0.0.1:7403"
data_dir = "/tmp/x"
roles = ["business"]
"#;

    #[test]
    fn a_minimal_config_parses_with_defaults() {
        let c = NodeConfig::parse(GOOD, Path::new("node.toml")).unwrap();
        assert_eq!(c.advertised_address(), "127.0.0.1:7403");
        assert_eq!(c.raft, RaftTuning::default());
        c.openraft_config().unwrap();
    }

    #[test]
    fn an_unknown_field_is_named_with_its_line() {
        let text = format!("{GOOD}colour = \"blue\"\n");
        let e = NodeConfig::parse(&text, Path::new("/etc/stillpoint/node.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/stillpoint/node.toml: line 7"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn an_unknown_key_in_a_table_is_named_with_the_table() {
        let text = format!("{GOOD}[cluster]\ninitial_members = []\ncolour = 1\n");
        let e = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 9: cluster.colour:"), "{e}");
    }

    #[test]
    fn a_missing_node_id_is_named() {
        let text = GOOD.replace("node_id = 3\n", "");
        let e = NodeConfig::parse(&text, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("node_id"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (from, to, field) in [
            (
                "listen = \"127.0.0.1:7403\"",
                "listen = \"localhost\"",
                "listen",
            ),
            ("roles = [\"business\"]", "roles = [\"tape\"]", "tape"),
            ("node_id = 3", "node_id = 0", "node_id"),
            ("name = \"db1\"", "name = \"db 1\"", "name"),
        ] {
            let e = NodeConfig::parse(&GOOD.replace(from, to), Path::new("n.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let timing =
            format!("{GOOD}[raft]\nheartbeat_interval_ms = 500\nelection_timeout_min_ms = 400\n");
        let e = NodeConfig::parse(&timing, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("election_timeout_min_ms"), "{e}");
    }
}
