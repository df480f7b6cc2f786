//! Tuning constants of the host crate, in one place. Per-volume limits in the config default
//! to the `*_DEFAULT` values here and may not exceed the `*_CEILING` values.

/// Default longest freeze: VSS holds writes for at most 10 s, and applications tolerate that.
pub const FREEZE_MS_MAX_DEFAULT: u64 = 10_000;
/// Default longest static-point unmount: room for a separate of a large group, not for hours.
pub const UNMOUNT_MS_MAX_DEFAULT: u64 = 120_000;
/// Default total extension a quiesce may be granted on top of its limit.
pub const EXTEND_MS_MAX_TOTAL_DEFAULT: u64 = 30_000;
/// Default wait for delayed writes when unmount is refused (NEC seed: 60 s).
pub const DELAYED_WRITE_WAIT_MS_DEFAULT: u64 = 60_000;
/// No freeze may be configured longer than this: a frozen file system stalls every writer.
pub const FREEZE_MS_MAX_CEILING: u64 = 600_000;
/// No unmount quiesce (nor extension, nor delayed-write wait) may be configured longer.
pub const UNMOUNT_MS_MAX_CEILING: u64 = 3_600_000;
/// Default time a stop/start hook may run.
pub const HOOK_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// No hook may be configured to run longer.
pub const HOOK_TIMEOUT_MS_CEILING: u64 = 3_600_000;
/// Captured hook/command output kept per stream (the tail beyond this is dropped).
pub const OUTPUT_BYTES_MAX: usize = 64 * 1024;
/// How long to wait for a command's output pipes to close after the command exited. A pipe
/// still open then is held by a process the command left behind (a start hook's daemon): its
/// output is cut short rather than waited for.
pub const OUTPUT_DRAIN_MS: u64 = 200;
/// Time allowed for quick system commands (blkid, mount, tune2fs, udevadm).
pub const OS_COMMAND_TIMEOUT_MS: u64 = 60_000;
/// Time allowed for a file-system check or repair.
pub const FSCK_TIMEOUT_MS: u64 = 3_600_000;
/// Time allowed for a sync, freeze or unmount system call (they write back dirty data).
pub const SYSCALL_TIMEOUT_MS: u64 = 120_000;
/// Grace between SIGTERM and SIGKILL for holders of a force-unmounted volume.
pub const HOLDER_TERM_GRACE_MS: u64 = 5_000;
/// After a quiesce's stop hook, how long the unmount waits (never past the quiesce's deadline)
/// for the application to let go of the volume: a stop hook usually signals the application
/// and returns before it has exited.
pub const HOLDER_EXIT_WAIT_MS: u64 = 30_000;
/// First and longest pause between two unmount attempts while the stopped application exits.
pub const HOLDER_EXIT_POLL_MS: u64 = 20;
pub const HOLDER_EXIT_POLL_MS_MAX: u64 = 500;
/// First pause between attempts to resume a volume whose automatic resume failed; doubled
/// after each failure up to [`RESUME_RETRY_MS_MAX`].
pub const RESUME_RETRY_MS: u64 = 1_000;
/// Longest pause between two attempts to resume a volume.
pub const RESUME_RETRY_MS_MAX: u64 = 30_000;
/// Attempts at the start hook when the agent resumes a volume by itself. After that the volume
/// stays mounted, the quiesce ends with the hook's failure, and the volume shows it until an
/// operator acknowledges it (`volume ack`).
pub const START_HOOK_ATTEMPTS_MAX: u32 = 3;
/// Attempts to resume before giving up until the agent's next start (record kept).
pub const RESUME_ATTEMPTS_MAX: u32 = 30;
/// Block size of sim volumes' write-back cache.
pub const SIM_BLOCK_BYTES: u64 = 4096;
/// Default number of dirty blocks a sim volume's cache holds before writing some back.
pub const SIM_CACHE_BLOCKS_MAX_DEFAULT: usize = 32;
/// Timeout of one host RPC from the client side (hooks and fsck may take long).
pub const RPC_TIMEOUT_MS: u64 = 3_700_000;
/// Timeout of connecting to a host agent.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long a starting agent waits for a process left by a dead agent (a freeze guard asked
/// to thaw, a hook group killed) to end before it goes on.
pub const ORPHAN_END_MS: u64 = 10_000;
/// Longest a journal write (sled flush + fdatasync, on the blocking pool) may take before the
/// operation fails as not written.
pub const JOURNAL_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Longest the agent waits to connect to PostgreSQL for a database quiesce.
pub const PG_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Longest one statement of a database quiesce may run (the server's `statement_timeout`
/// too): `pg_backup_start`'s checkpoint, or `pg_backup_stop` waiting for the WAL archive.
pub const PG_STATEMENT_TIMEOUT_MS: u64 = 60_000;
/// Longest a copy's PostgreSQL files (backup label, recovery settings) may take to write.
pub const PG_COPY_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Longest one read or write of an attached array LD may take (all attempts together) before
/// the FUSE file answers EIO: the loop device and the file system above see an I/O error
/// instead of a hang.
pub const LD_IO_TIMEOUT_MS: u64 = 60_000;
/// How long one LD read or write whose array does not answer (unreachable, outcome unknown,
/// its remote copy's link down) is tried again before it fails: an array process restarted,
/// or a controller failing over, within this long stalls the host's I/O instead of failing
/// it, as a multipath device queues I/O while no path answers (`no_path_retry`). Each
/// attempt is bounded by the array client's own call timeout; a refusal (access list, RV
/// access) is never retried.
pub const LD_IO_RETRY_WINDOW_MS: u64 = 30_000;
/// How long listing an array's LDs (to attach them, or a rescan) is tried again when the
/// array does not answer: an array not up yet is found by the next attach round, not waited
/// for here.
pub const LD_LOOKUP_RETRY_WINDOW_MS: u64 = 1_000;
/// First pause between two attempts of an LD read or write; doubled after each, up to
/// [`LD_IO_RETRY_PAUSE_MS_MAX`].
pub const LD_IO_RETRY_MS: u64 = 200;
/// Longest pause between two attempts of an LD read or write.
pub const LD_IO_RETRY_PAUSE_MS_MAX: u64 = 1_000;
/// Largest FUSE read or write request of an attached LD (the kernel's maximum: 256 pages).
pub const LD_REQUEST_BYTES_MAX: u32 = 1024 * 1024;
/// FUSE worker threads serving attached LDs: requests in flight to the array at once.
pub const LD_FUSE_THREADS: usize = 8;
