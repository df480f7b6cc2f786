//! Waiting on a condition with a bound, instead of sleeping a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::NodeError;

/// Polls `probe` until it yields `Some`, backing off from 20 ms to 500 ms, for at most
/// `bound`. The error names `what` was awaited.
pub async fn until<T, F, Fut>(what: &str, bound: Duration, mut probe: F) -> Result<T, NodeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(NodeError::Timeout {
                what: format!("waiting for {what}"),
                ms: bound.as_millis() as u64,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
