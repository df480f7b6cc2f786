//! Helpers shared by the array tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use stillpoint_array::*;

pub const BLOCK: u64 = 64 * 1024;
/// 32 blocks.
pub const CAP: u64 = 2 * 1024 * 1024;

pub fn ld(number: u32, capacity_bytes: u64, format: &str) -> LdConfig {
    LdConfig {
        number,
        name: format!("LD{number}"),
        capacity_bytes,
        format: format.into(),
        hosts: vec!["*".into()],
    }
}

pub fn config(dir: &Path, name: &str, lds: Vec<LdConfig>, pace: u64) -> ArrayConfig {
    ArrayConfig {
        name: name.into(),
        data_dir: dir.join(name),
        listen: "127.0.0.1:0".into(),
        block_bytes: BLOCK,
        copy_pace_bytes_per_s: pace,
        semi_sync_backlog_blocks_max: 4,
        lds,
        peers: vec![],
        audit_log: false,
        audit_mv_write_sample_ms: stillpoint_array::AUDIT_MV_WRITE_SAMPLE_MS,
        audit_rv_head_bytes: 0,
    }
}

pub fn pair(mv: u32, rv: u32) -> PairId {
    PairId {
        mv: LdRef {
            array: "A".into(),
            ld: mv,
        },
        rv: LdRef {
            array: "A".into(),
            ld: rv,
        },
    }
}

pub fn rdr(mv: u32, rv: u32) -> PairId {
    PairId {
        mv: LdRef {
            array: "A".into(),
            ld: mv,
        },
        rv: LdRef {
            array: "B".into(),
            ld: rv,
        },
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub async fn read_all(a: &dyn Array, ld: u32, cap: u64) -> Vec<u8> {
    a.read("test", ld, 0, cap).await.expect("read whole LD")
}

pub fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// Polls `f` until it returns true, for at most 30 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub const WAIT_MS: u64 = 30_000;

pub fn rule_of(e: &ArrayError) -> Option<Rule> {
    match e {
        ArrayError::Refused { rule, .. } => Some(*rule),
        _ => None,
    }
}

/// Replicate (sync copy control) and wait for `rpl/sync`.
pub fn sync_opts() -> ReplicateOptions {
    ReplicateOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    }
}

/// Separate and wait for `separated`.
pub fn sep_opts() -> SeparateOptions {
    SeparateOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    }
}
