//! Shared helpers for the host crate's integration tests.
#![allow(dead_code)]

pub mod loopdev;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

/// Generous bound for anything a test waits for (CI is a loaded 2-core box).
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// Polls `cond` every 20 ms until it holds or `WAIT_MAX` passes; panics naming `what`.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < WAIT_MAX {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {WAIT_MAX:?} waiting for: {what}");
}

/// Opens the sled database at `dir`, retrying while a dropped agent's tasks still hold it.
pub async fn open_db(dir: &Path) -> sled::Db {
    let start = Instant::now();
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if start.elapsed() < WAIT_MAX => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen sled at {}: {e}", dir.display()),
        }
    }
}
