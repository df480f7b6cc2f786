//! Host operations of a stillpoint agent: the host half of every procedure.
//!
//! An agent on a business or backup server stops and starts the applications that use a
//! volume, flushes, unmounts, freezes, mounts, rescans and checks it. This crate does that
//! behind one object-safe trait, [`Host`], implemented by [`Agent`] over one of two backends:
//!
//! - **sim** ([`SimBackend`]): volumes are array LDs reached through a [`BlockDevice`] (the
//!   agent implements it over the array's data API; tests use [`FileDevice`]). A write-back
//!   cache that only flush empties, holders that make unmount fail, freeze that blocks writers,
//!   and a superblock identity that an RV copy shares with its MV. The [`Workload`] application
//!   writes checksummed, sequenced records through a volume and is stopped and started by
//!   hooks; [`verify`] reads any device and reports the last intact record and every torn one.
//!   Together they prove whether an RV copy is a consistent static point. Like a log-writing
//!   application, the workload recovers its volume (keeps the intact prefix, clears the
//!   damaged tail) when it first starts in the agent's life and when it starts again after a
//!   run that ended on a write error; a copy of an MV whose application is down after a crash
//!   or a write error faithfully carries that damage.
//! - **linux** (`LinuxBackend`, chosen with [`Engine::Linux`]): syncfs, FIFREEZE/FITHAW, umount2
//!   with holders found in `/proc`, mount with options, RV copies with duplicate identity (ext4:
//!   new UUID via tune2fs; XFS: `nouuid` or `xfs_admin -U generate`), e2fsck / xfs_repair, blkid,
//!   and hooks as commands (systemctl or anything). `identity new` always gives the copy a new
//!   identity and checks on the device that it took (or fails); an XFS copy taken while its
//!   MV was mounted or frozen has its log replayed first (mounted with nouuid on a private
//!   temporary directory, unmounted), for a new identity and for `check`; the production volume's
//!   remount after a static point always wins over a copy carrying its identity.
//!
//! ## Array LDs as block devices of a linux host
//!
//! With `backend = "linux"`, volumes that name an `ld` (and no `device`) live on array LDs
//! attached by an [`LdAttachment`], reached by the backend through the [`LdPath`] trait. It
//! serves a FUSE file system (crate `fuser`, no libfuse: as root it mounts `/dev/fuse` itself)
//! under `<data_dir>/lds` with one file per LD visible to the node (the array's access list
//! admits the node's name) and puts a loop device over each file; the volume's device is that
//! loop device, so mkfs, mount, fsfreeze, e2fsck/xfs_repair and applications run unmodified
//! while every read and write goes through the array's data API (`ldfs`; the node's
//! `ArrayLdDevice` retries an array that did not answer, bounded). Whoever holds the
//! attachment is in the I/O path of every file system on those LDs, so the agent binary does
//! not hold it itself: its LD path process (`stillpoint hba serve`, node crate) does, and
//! outlives the agent; the agent's backend finds the loop devices in sysfs and asks that
//! process to rescan. fuser's threads serve the requests ([`limits::LD_FUSE_THREADS`] in
//! flight), waiting on the runtime through a handle, each call bounded by
//! [`limits::LD_IO_TIMEOUT_MS`]. The array's rules hold: an LD not on the access list is never
//! attached; an RV that is `nr` (or `na`) answers every read and write with EIO, one that is
//! `ro` every write with EROFS (the file system above sees an I/O error, at once: refusals are
//! not retried). [`LdAttachment::detach`] unmounts the file systems on the LDs (after syncfs),
//! detaches the loop devices and unmounts the FUSE file system. A holder that died leaves them
//! (I/O on them fails); the next [`LdAttachment::start`] on the directory detaches those loop
//! devices, lazily unmounts the file systems still mounted on them and the dead FUSE mount,
//! and logs each (`stale` in the message).
//!
//! **Caching: none below the file system.** Each LD file is opened with `FOPEN_DIRECT_IO`
//! (FUSE keeps no page cache of it; a write is answered only once the array has it, so FUSE's
//! fsync has nothing to do) and each loop device is set up with `--direct-io=on` (the loop
//! driver reads and writes the file with O_DIRECT, asynchronously, instead of through a second
//! page cache of the file). The only cache is the file system's own on the loop device, which
//! is what syncfs, fsfreeze and unmount write out: when they return the bytes are in the
//! array, as the tests check byte for byte over the whole LD. The alternatives were worse:
//! a FUSE page cache (with or without the writeback-cache mode) would hold a second copy of
//! every block and, with writeback, acknowledge writes the array does not have until the
//! kernel flushes them; a buffered loop device would also double every cached block and
//! serialise its requests.
//!
//! Throughput (`cargo bench -p stillpoint-node --bench lds`: ext4, fio with O_DIRECT and
//! libaio, sequential 1 MiB at queue depth 4 with a final fsync, random 4 KiB at depth 16;
//! medians of 3 rounds on a 2-CPU VM shared with a build): on an LD 1,439 MB/s sequential
//! write, 1,981 MB/s sequential read, 17.8 k / 21.6 k IOPS random write / read, against
//! 1,760 / 1,871 MB/s and 52 k / 47 k IOPS on a plain loop device with direct I/O over a file
//! on the same disk (0.82x, 1.06x, 0.34x, 0.46x). Every LD request crosses FUSE, a TCP
//! connection on loopback and the array process, which is CPU on a 2-CPU machine; what
//! measuring found and fixed, in turn: the array's server sets TCP_NODELAY (a 4 KiB read had
//! waited ~40 ms for Nagle and the client's delayed ACK); larger HTTP/2 windows and frames;
//! and then host I/O left gRPC for the array's own data path (`stillpoint_array::DataClient`:
//! a write goes from the FUSE buffer to the socket, and the array reads it into the buffer it
//! writes from), which took sequential writes from 0.36x to 0.82x of the plain loop device.
//!
//! ## Quiesce that ends by itself (S4)
//!
//! Every quiesce (freeze, or stop-apps + flush + unmount for a static point) is taken with a
//! deadline, at most the volume's configured limit (defaults: freeze 10 s as VSS holds writes,
//! unmount 120 s; see [`limits`]). The quiesce record goes into the agent's journal
//! (`stillpoint_storage::journal`, sled) *before* the volume is touched. A watchdog task per
//! quiesce resumes the volume (thaw, or remount + start hook) when the deadline passes without
//! release or extension, and logs that it did and why ([`Host::resumes`]). On linux a freeze
//! is taken by a freeze guard (`guard`): a small process the agent forks per freeze, in its
//! own session, that performs FIFREEZE itself and thaws at the deadline unless the agent
//! releases or extends it, so the deadline holds even while the agent is dead (measured: a
//! blocked writer goes through 26-27 ms after the deadline with the agent SIGKILLed). The
//! deadline is measured on the machine's boot clock (`CLOCK_BOOTTIME`), by the watchdog and
//! the guard alike: a step of the wall clock (NTP, `date -s`) neither stretches a freeze past
//! its limit nor ends it early; the record's wall-clock times are for people. A test build
//! (`fault-injection`) can step the agent's wall clock and stall its journal's writes
//! ([`switches`]). Because
//! the guard is the process that froze, a freeze the kernel refuses (another tool froze the
//! file system) is never followed by a thaw of someone else's freeze. An agent that dies
//! with a volume quiesced resumes it when it starts again ([`Agent::start`]) — at once, since
//! it cannot vouch that the quiesce held while it was down; first it ends what the dead agent
//! left running (its freeze guards, found in the journal by pid and start time — and, left
//! by an agent of an older version, in `/proc` by name and the volume root they hold — are
//! told to thaw with SIGTERM; hooks that were running are killed with their whole process group, so
//! no start hook runs while a dead agent's stop hook is still alive). Every hook is recorded in
//! the journal while it runs; whatever a stop hook leaves in its process group when it exits
//! is killed (a start hook may leave the application running). Run the agent under its systemd unit (`node/systemd/`), which restarts it. Failed resumes are retried with a
//! doubling pause (bounded). A start hook that keeps failing is tried at most
//! [`limits::START_HOOK_ATTEMPTS_MAX`] times: the volume stays mounted, the quiesce ends with
//! that outcome (resume log), and the volume shows it as ATTENTION until an operator runs
//! [`Host::acknowledge`] (`volume ack`); a release whose start hook fails ends the same way.
//! A release that arrives after the
//! agent resumed by itself fails with [`HostError::QuiesceLost`], so the job driver never
//! records such a copy as consistent (S3). A quiesce that fails half-way is undone before the
//! error is returned; nothing stays quiesced because of an error. The stop hook, flush,
//! unmount and freeze all count against the window: the stop hook is killed at the deadline,
//! and a quiesce not complete before its deadline fails (S4) and is undone. A stop hook usually
//! signals the application and returns while it is still exiting, so after a stop hook a busy
//! unmount is tried again until the holders let go (at most
//! [`limits::HOLDER_EXIT_WAIT_MS`], never past the deadline); without a stop hook a busy volume
//! is refused at once, naming its holders. Quiesce and release run on
//! their own tasks, so a caller that goes away (a cancelled RPC) cannot leave a volume
//! quiesced without its watchdog.
//!
//! ## Hooks only
//!
//! [`QuiesceMode::HooksOnly`] leaves the volume mounted and writable: the stop hook (which must
//! bring the application to a static point of its own, e.g. a database's backup mode) runs,
//! then a flush; release, and the watchdog at the deadline, run the start hook. A volume
//! without both hooks is refused before anything runs. The copy is as consistent as the
//! application makes it.
//!
//! ## PostgreSQL's online backup mode as a quiesce
//!
//! [`QuiesceMode::Postgresql`] puts a PostgreSQL server in online backup mode instead of
//! touching the volume: the agent connects (`tokio-postgres`, connect and statement timeouts),
//! refuses a server without WAL archiving (its copy could never be opened), runs
//! `pg_backup_start(label, fast => true)` and keeps that session, by quiesce id, for the whole
//! window. The quiesce record (kind `Postgresql`) is journaled first as for any quiesce; the
//! deadline is the volume's `unmount_ms_max` (writers never wait). Release runs
//! `pg_backup_stop()` in the same session and returns its label in
//! [`ReleaseReport::backup_label`]. The backup lives only as long as the session: if the
//! connection dropped or was terminated, or the agent died (its successor holds no session),
//! PostgreSQL aborted the backup and the release fails with [`HostError::QuiesceLost`] — there
//! is no label to return, so none is. The watchdog ends an unreleased backup at its deadline
//! the same way. [`prepare_copy`] writes a label into a copy's data directory (with
//! `recovery.signal`, a restore from the archive up to the end of the backup, promotion, and
//! archiving off) for the step executor's RV mount. A PostgreSQL volume quiesced by freeze
//! needs none of this: its copy is crash-consistent and PostgreSQL recovers it from its WAL.
//!
//! ## Modules
//!
//! - `api`: the [`Host`] trait and its types; `agent`: [`Agent`] and quiesce records; `resume`: the watchdog, automatic resume,
//!   hooks, orphans, journal writes; `guard`: the freeze guard process; `backend`: the raw per-backend operations; `sim`, `linux`: the backends;
//!   `postgres`: the online backup session and the copy's label;
//!   `lds`: [`LdAttachment`] (array LDs as loop devices; stale clean-up); `ldfs`: the FUSE file
//!   system it serves;
//!   `workload`: the record writer and verifier; [`FileApp`]: an application appending synced records to a file on a real file system, and its check; `device`: [`BlockDevice`]; `config`: the
//!   `[host]` section of node.toml; `process`: commands with timeouts; [`limits`]: tuning
//!   constants; `grpc`: the host gRPC service and client; [`cli`]: `stillpoint volume ...`,
//!   plus local `workload` and `verify` commands for demos; [`pgctl`]: a local PostgreSQL
//!   server and pgbench, for the PostgreSQL demo and tests.
//!
//! ## CAVEATS / not handled yet
//!
//! - Forced unmount on linux terminates the holders (SIGTERM, then SIGKILL after
//!   [`limits::HOLDER_TERM_GRACE_MS`]) before unmounting; it does not lazily detach.
//! - Holders in other mount namespaces (containers) are not found; unmount then reports a
//!   "kernel" holder with that hint.
//! - The linux backend handles ext2/3/4 and XFS identities only; Windows-style disk signatures
//!   and partitioned LDs (one file system per LD is assumed) are not handled.
//! - PostgreSQL is the only database with a built-in online backup mode; others use hooks. Its
//!   session has no TLS (use a local socket), is tried once per quiesce (the job's rounds and
//!   attempts retry), and its label is returned to in-process callers only: over the host gRPC
//!   API a PostgreSQL quiesce is refused (its session must live in the agent's process).
//! - Throughput of a file system on an attached LD is 0.14-0.6x of a plain loop device on this
//!   2-CPU machine (see above); sequential writes (0.14-0.5x) miss the 0.5x aimed at.
//! - The sim file system is a record volume, not a general file system; sim rescan is
//!   [`SimBackend::attach`].
//! - Attached LDs: an LD that stops being visible (removed from the access list) stays
//!   attached until the agent restarts, its I/O refused by the array (EIO). A graceful stop
//!   cannot unmount a file system that is in use on an LD: it logs it, and that file system's
//!   I/O fails once the agent is gone (stop applications first, or let the unit's stop hook
//!   do it). The LD's size is read when it is attached. One FUSE request is at most
//!   [`limits::LD_REQUEST_BYTES_MAX`] (the kernel's limit); the array serialises I/O per LD.
//! - Journal writes run on the blocking pool, bounded by [`limits::JOURNAL_WRITE_TIMEOUT_MS`];
//!   journal reads (in memory in sled, no sync) still run on the caller's task.
//! - The resume log grows until trimmed (`Journal::trim_resumes`): an agent trims it to its
//!   newest 1,000 records soon after it starts and every minute after
//!   (`stillpoint_node::executor::retention`).
//! - The NEC seed's wait for delayed writes when unmount is refused (`delayed_write_wait_ms`,
//!   60 s) is configuration for the job driver; the host does not wait by itself.
//! - A freeze guard holds the frozen file system's root directory open (it thaws by that
//!   descriptor), so `volume list` shows it (`sp-freeze-guard`) as a holder while frozen.
//! - A freeze guard is forked before anything is recorded, journaled with the quiesce record
//!   (one flush), and only then told to freeze: an agent killed in between leaves a guard
//!   that exits unfrozen when its pipe closes. Guards of older agents froze as soon as they
//!   were forked; one left unrecorded by such an agent is found in `/proc` (by name and the
//!   volume root it holds) and ended by the next agent. A volume whose root the kernel names
//!   apart from its configured `mount_point` (a bind mount) hides such an old guard: it then
//!   thaws at its deadline, and a quiesce taken meanwhile is reported lost at its release (the
//!   release's thaw finds the volume not frozen), never held throughout.
//! - Quiesce deadlines are wall-clock (they must survive a restart); a large clock step moves
//!   them. Fencing tokens of steps are checked by the step executor through the journal, not
//!   by this crate.

mod agent;
mod api;
mod backend;
pub mod cli;
mod config;
mod device;
mod error;
mod file_app;
mod grpc;
mod guard;
mod ldfs;
mod lds;
pub mod limits;
mod linux;
pub mod pgctl;
mod postgres;
mod process;
mod resume;
mod sim;
pub mod switches;
mod workload;

pub use agent::{Agent, Engine};
pub use api::{
    CheckReport, HookKind, HookOutput, Host, MountIdentity, MountRequest, QuiesceKind, QuiesceMode,
    QuiesceRecord, QuiesceRequest, ReleaseReport, ResumeRecord, VolumeInfo,
};
pub use config::{BackendKind, FsType, HookConfig, HostConfig, SimOptions, VolumeConfig};
pub use device::{BlockDevice, FileDevice, copy_device};
pub use error::{Holder, HostError};
pub use file_app::{
    FILE_APP_LONG_STALL_MS, FILE_RECORD_BYTES, FileApp, Stall, check_file_records, file_record,
};
pub use grpc::{HostClient, HostService};
pub use guard::guards_holding as freeze_guards_holding;
pub use lds::{
    AttachedLd, LdAttachment, LdPath, LdSource, VisibleLd, ld_file_name, lds_unavailable,
    loops_under,
};
pub use linux::LinuxBackend;
pub use postgres::{BackupLabel, PostgresConnect, copy_marker, prepare_copy};
pub use sim::{SimApp, SimBackend, SimHandle};
pub use workload::{
    BadRecord, RECORD_BYTES, VerifyReport, Workload, WorkloadRun, record_bytes, record_offset,
    run_on_device, slots, verify,
};
