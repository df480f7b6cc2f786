//! Tuning constants of the store, in one place.

/// Longest a flush to disk may take before the store reports its outcome as unknown.
pub(crate) const FLUSH_TIMEOUT_MS: u64 = 30_000;

/// Period of sled's background flush: bounds how much applied state-machine work (never log
/// entries or votes, which are flushed before acknowledgement) a crash can lose and force openraft
/// to re-apply.
pub(crate) const BACKGROUND_FLUSH_MS: u64 = 500;

/// sled page-cache size. The replicated state is small (inventory and jobs), so a modest cache
/// keeps the agent's memory footprint low on business servers.
pub(crate) const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Upper bound on log entries returned by one `limited_get_log_entries` call, so replication to a
/// far-behind follower is sent in slices rather than one huge message.
pub(crate) const LOG_READ_ENTRIES_MAX: u64 = 4096;

/// How long `Store::open` keeps retrying a held lock before reporting the dir in use: sled's
/// background threads can keep the lock for a moment after the last handle in this process is
/// dropped (an in-process restart), while another agent holding the dir holds it for good.
pub(crate) const OPEN_IN_USE_RETRY_MS: u64 = 2_000;

/// Pause between two attempts to take a held lock.
pub(crate) const OPEN_IN_USE_PAUSE_MS: u64 = 20;
