//! The agent's local journal: what this agent has done on its own host, kept in the agent's one
//! sled database so it survives a crash of the agent process.
//!
//! Two kinds of record live here, each in its own named tree (all prefixed `journal/` so they
//! never collide with the raft log or state-machine trees of the same database):
//!
//! - **Quiesce records** (`journal/quiesce`, keyed by volume name): a volume this agent froze or
//!   unmounted for a static point, with its deadline. The record is written *before* the volume is
//!   quiesced and removed only after it is resumed, so an agent that dies in between finds it on
//!   start and resumes the volume (safety property S4). Automatic resumes are logged in
//!   `journal/resume` so the agent can say that it resumed a volume by itself, when, and why.
//! - **Step records** (`journal/steps`, keyed by job, step index, attempt): which step of which
//!   job this agent executed under which fencing token, on which resource, and with what
//!   outcome ([`Journal::all_step_records`] lists them all, for tools that judge). The step executor
//!   uses them for idempotency (S6): a step already done under a token is answered from the
//!   journal instead of being done twice, and a token older than one already seen is refused.
//! - **Fences and term floors** (`journal/step-fences`, `journal/job-terms`,
//!   `journal/resource-terms`): the newest token a probe asked about per step, and the newest
//!   leader term seen per job and per resource (`pair:NAME`, `volume:NODE:VOLUME`). A deposed
//!   leader's late send is refused because a newer term was already accepted for its job or
//!   for what it acts on, or because the new leader asked about that step ([`Journal::fence_step`]);
//!   the step code lives in `steps.rs`.
//!
//! Every write is made durable before the call returns: a quiesce taken without a record that
//! outlives the agent would be a quiesce nobody resumes after a crash. A journal opened with
//! [`crate::Store::journal`] (what the agent uses) flushes sled and then `fdatasync`s its files,
//! the same discipline as the raft log, so a record survives a power loss too. A journal opened
//! on a bare database with [`Journal::open`] (tests, tools) only has sled's flush, which ends
//! in `sync_file_range`: it survives a crash of the process but not a power loss. Calls block
//! the calling thread for the flush (sub-millisecond to a few ms on local disks, unbounded on
//! a failing one): async callers run writes on the blocking pool under a timeout (the host
//! agent does). [`Journal::begin_step`] checks and records in one sled transaction (over the
//! step records, `journal/steps-latest` — the newest token begun per step —, the fences and the
//! term floors), so two requests for the same step never both start it and a refusal writes
//! nothing; [`Journal::begin_steps`] does the same for several steps in one transaction and
//! one flush, each step answered as if begun alone. A record that cannot be encoded is an error
//! ([`JournalError::Encode`]), never an empty value.
//!
//! Step records of a job the cluster no longer keeps (ended, and dropped from the history by
//! its retention) are removed by their owner with [`Journal::forget_job`]; the resource floors
//! are kept for good (one per pair and volume).
//!
//! Caveats: records are JSON (readable with any sled tool, a little larger than a binary
//! encoding); the resume log is never trimmed here (its owner may call
//! [`Journal::trim_resumes`]); a flush is database-wide, so a journal write also pays for any
//! raft writes pending in the same database.

use serde::{Deserialize, Serialize};

mod begin;
mod forget;
mod steps;

pub use begin::StepToBegin;
pub use steps::{FencingToken, StepBegin, StepOutcome, StepRecord};

/// Test-only (feature `fault-injection`): the stall every journal of this process adds before
/// its durable writes, as a stalling disk would; the longer of it and a journal's own
/// [`Journal::with_write_delay`] applies.
#[cfg(feature = "fault-injection")]
static SWITCHED_WRITE_DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Test-only (feature `fault-injection`): sets the stall every journal of this process adds
/// before its durable writes from now on (0: none). An agent's fault switches set it
/// (`journal_write_delay_ms`), so a test can kill the agent while one of its records is being
/// written.
#[cfg(feature = "fault-injection")]
pub fn set_switched_write_delay_ms(ms: u64) {
    SWITCHED_WRITE_DELAY_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// Tree holding one [`QuiesceRecord`] per quiesced volume.
const QUIESCE_TREE: &str = "journal/quiesce";
/// Tree holding [`ResumeRecord`]s in the order they happened.
const RESUME_TREE: &str = "journal/resume";
/// Tree holding [`StepRecord`]s keyed by job, step index and attempt.
const STEP_TREE: &str = "journal/steps";
/// Tree holding the newest [`FencingToken`] begun per (job, step): the compare point that
/// makes [`Journal::begin_step`] atomic.
const STEP_LATEST_TREE: &str = "journal/steps-latest";
/// Tree holding, per (job, step), the newest token a probe asked about: it and anything older
/// of that step are refused from then on.
const STEP_FENCE_TREE: &str = "journal/step-fences";
/// Tree holding, per job, the newest leader term that sent or asked about any of its steps.
const JOB_TERM_TREE: &str = "journal/job-terms";
/// Tree holding, per resource (`pair:NAME`, `volume:NODE:VOLUME`), the newest term a step on it
/// was begun in, whatever the job.
const RESOURCE_TERM_TREE: &str = "journal/resource-terms";
/// Tree holding [`ProcessRecord`]s (freeze guards, running hooks) keyed by pid.
const PROCESS_TREE: &str = "journal/processes";
/// Tree holding [`AttentionRecord`]s keyed by volume: outcomes an operator must acknowledge.
const ATTENTION_TREE: &str = "journal/attention";

/// What went wrong with the journal, sorted by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The database could not be read or written. The agent must not quiesce anything while
    /// this persists; retry, and check the disk holding the agent's data directory.
    #[error("journal storage error (check the agent data directory's disk, then retry): {0}")]
    Storage(#[from] sled::Error),
    /// The record was written but could not be made durable (fdatasync failed or timed out);
    /// treat it as not written, check the disk holding the agent's data directory, then retry.
    #[error(
        "journal write could not be made durable (check the agent data directory's disk, then retry): {0}"
    )]
    NotDurable(String),
    /// A record could not be encoded; nothing was written. A bug in the agent: report it.
    #[error("journal record could not be encoded, nothing was written (a bug; report it): {0}")]
    Encode(String),
    /// A record on disk does not decode. Written by another version, or damaged; the record is
    /// named so an operator can inspect or remove it.
    #[error("journal record {key} in tree {tree} is unreadable ({reason}); inspect or remove it")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    /// The fencing token is older than one this agent already executed for the same step: a
    /// newer leader (or a later attempt) owns the step. Refuse the request (S6).
    #[error(
        "stale fencing token for job {job_id} step {step_index}: got term {term} attempt {attempt}, \
         already executed term {seen_term} attempt {seen_attempt}; refused by S6"
    )]
    StaleToken {
        job_id: u64,
        step_index: u32,
        term: u64,
        attempt: u32,
        seen_term: u64,
        seen_attempt: u32,
    },
    /// The token's term is older than one this agent already accepted for the same job or the
    /// same resource (`scope` says which): the sender was deposed by a newer leader, which now
    /// drives the job (S6). Refuse; the sender stops sending and the current leader goes on.
    #[error(
        "stale term for job {job_id} step {step_index}: the token is from term {term}, but {scope} \
         was already driven in term {floor_term}; the sender is a deposed leader: stop sending, \
         the leader of term {floor_term} or newer drives the job (refused by S6)"
    )]
    StaleTerm {
        job_id: u64,
        step_index: u32,
        term: u64,
        scope: String,
        floor_term: u64,
    },
    /// A probe asked about this token (or a later one of the step) and fenced it: the asker
    /// settles the step from the probe's answer, so the token is never begun any more. Send the
    /// step again under a new attempt if it still has to run.
    #[error(
        "fenced token for job {job_id} step {step_index}: term {term} attempt {attempt} is at or \
         below term {fence_term} attempt {fence_attempt}, which a probe asked about; it is never \
         begun now: send a new attempt if the step still has to run (refused by S6)"
    )]
    Fenced {
        job_id: u64,
        step_index: u32,
        term: u64,
        attempt: u32,
        fence_term: u64,
        fence_attempt: u32,
    },
}

/// How a volume was quiesced; decides how it is resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuiesceKind {
    /// File system frozen (FIFREEZE or the sim's write gate); resumed by thaw.
    Freeze,
    /// Applications stopped, file system flushed and unmounted; resumed by mounting it again at
    /// `mount_point` and running the start hook if `apps_stopped`.
    Unmount {
        mount_point: String,
        apps_stopped: bool,
    },
    /// PostgreSQL in online backup mode (`pg_backup_start`) in a session the agent holds open;
    /// the volume stays mounted and writable. Ended by `pg_backup_stop` in that session; a
    /// session that ended (agent restart, connection lost) ended the backup with it.
    Postgresql {
        /// The server as `host:port/database`, for messages.
        server: String,
    },
    /// Only the application's hooks: its stop hook put it at a static point of its own (a
    /// database's backup mode, say) and the file system was flushed; the volume stays mounted
    /// and writable. Resumed by running the start hook.
    HooksOnly,
}

/// A quiesce this agent holds (or held when it died).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuiesceRecord {
    /// Volume name as configured on this host.
    pub volume: String,
    /// Identifies this quiesce among all quiesces of the volume, so a late release of an
    /// earlier quiesce is not mistaken for a release of the current one.
    pub quiesce_id: u64,
    pub kind: QuiesceKind,
    /// Who asked for it (job and step, or "cli"), for the resume log and error messages.
    pub owner: String,
    /// Wall-clock time (ms since the Unix epoch) the quiesce began. Wall clock, not monotonic,
    /// because the record must mean the same after a restart.
    pub taken_at_unix_ms: u64,
    /// Wall-clock time after which the agent resumes the volume by itself.
    pub deadline_unix_ms: u64,
    /// Total extension granted so far, checked against the volume's ceiling.
    pub extended_ms_total: u64,
    /// The machine's boot clock (`CLOCK_BOOTTIME`, ms) when the quiesce began. The deadline
    /// is measured on it, `limit_ms` after this, so a step of the wall clock neither
    /// shortens nor stretches a quiesce. 0 in records written before it existed (the wall
    /// clock is used for those).
    #[serde(default)]
    pub taken_at_boot_ms: u64,
}

impl QuiesceRecord {
    /// The quiesce's whole window so far: its limit plus every extension, in ms.
    pub fn limit_ms(&self) -> u64 {
        self.deadline_unix_ms.saturating_sub(self.taken_at_unix_ms)
    }

    /// How long the quiesce has been held, in ms: on the boot clock (`now_boot_ms`) when the
    /// record has its start there, else on the wall clock (`now_unix_ms`).
    pub fn held_ms(&self, now_boot_ms: u64, now_unix_ms: u64) -> u64 {
        if self.taken_at_boot_ms != 0 {
            now_boot_ms.saturating_sub(self.taken_at_boot_ms)
        } else {
            now_unix_ms.saturating_sub(self.taken_at_unix_ms)
        }
    }

    /// How long until the deadline, in ms (0: it has passed). See [`QuiesceRecord::held_ms`].
    pub fn left_ms(&self, now_boot_ms: u64, now_unix_ms: u64) -> u64 {
        self.limit_ms()
            .saturating_sub(self.held_ms(now_boot_ms, now_unix_ms))
    }

    /// The deadline on the boot clock, for a process (the freeze guard) that keeps it alone.
    pub fn deadline_boot_ms(&self, now_boot_ms: u64, now_unix_ms: u64) -> u64 {
        now_boot_ms.saturating_add(self.left_ms(now_boot_ms, now_unix_ms))
    }
}

/// A volume the agent resumed without being asked: the deadline passed, or the agent restarted
/// and found a quiesce it could no longer vouch for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRecord {
    pub volume: String,
    pub quiesce_id: u64,
    pub kind: QuiesceKind,
    pub owner: String,
    pub taken_at_unix_ms: u64,
    pub resumed_at_unix_ms: u64,
    /// Why the agent resumed it, in words an operator reads.
    pub reason: String,
    /// `None` if the resume succeeded; otherwise what failed (the volume may still be quiesced).
    pub error: Option<String>,
}

/// Something that went wrong with a volume that no command shows any more (the quiesce it
/// concerns has ended): kept until an operator acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionRecord {
    pub volume: String,
    pub quiesce_id: u64,
    pub at_unix_ms: u64,
    /// What happened and what to do, in words an operator reads.
    pub message: String,
}

/// What a process the agent started on the host's behalf is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessRole {
    /// The freeze guard of quiesce `quiesce_id`: it froze the volume and thaws it at the
    /// deadline. A restarted agent asks it to thaw (SIGTERM) and ends it.
    FreezeGuard,
    /// A stop or start hook (`kind`), leader of its own process group (pgid = pid). A hook
    /// whose record outlives its agent is killed with its whole group at the next start.
    Hook { kind: String },
}

/// A process the agent started and must not lose track of if it dies: recorded while the
/// process runs, removed when it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): with `pid`, tells the
    /// process from a later one that reused its pid.
    pub start_ticks: u64,
    pub volume: String,
    pub quiesce_id: Option<u64>,
    pub role: ProcessRole,
    pub started_at_unix_ms: u64,
}

/// The agent's journal, over named trees of the agent's one sled database.
#[derive(Clone)]
pub struct Journal {
    db: sled::Db,
    /// The store's disk when opened through [`crate::Store::journal`]: flushes fdatasync.
    disk: Option<crate::store::Disk>,
    quiesce: sled::Tree,
    resume: sled::Tree,
    steps: sled::Tree,
    steps_latest: sled::Tree,
    step_fences: sled::Tree,
    job_terms: sled::Tree,
    resource_terms: sled::Tree,
    processes: sled::Tree,
    attention: sled::Tree,
    /// Test-only stall before every durable write ([`Journal::with_write_delay`]).
    #[cfg(feature = "fault-injection")]
    write_delay: std::time::Duration,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("fdatasync", &self.disk.is_some())
            .finish_non_exhaustive()
    }
}

fn decode<T: for<'de> Deserialize<'de>>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, JournalError> {
    serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Decodes every record a scan of `tree` yields, in the scan's order.
fn decode_all<T: for<'de> Deserialize<'de>>(
    tree: &'static str,
    scan: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<Vec<T>, JournalError> {
    scan.map(|kv| {
        let (k, v) = kv?;
        decode(tree, &k, &v)
    })
    .collect()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(value).map_err(|e| JournalError::Encode(e.to_string()))
}

impl Journal {
    /// Opens the journal's trees in the agent's database, creating them on first use.
    ///
    /// Writes are flushed by sled only (no fdatasync); the agent uses [`crate::Store::journal`].
    pub fn open(db: &sled::Db) -> Result<Journal, JournalError> {
        Self::open_with(db, None)
    }

    pub(crate) fn open_with(
        db: &sled::Db,
        disk: Option<crate::store::Disk>,
    ) -> Result<Journal, JournalError> {
        Ok(Journal {
            db: db.clone(),
            disk,
            quiesce: db.open_tree(QUIESCE_TREE)?,
            resume: db.open_tree(RESUME_TREE)?,
            steps: db.open_tree(STEP_TREE)?,
            steps_latest: db.open_tree(STEP_LATEST_TREE)?,
            step_fences: db.open_tree(STEP_FENCE_TREE)?,
            job_terms: db.open_tree(JOB_TERM_TREE)?,
            resource_terms: db.open_tree(RESOURCE_TERM_TREE)?,
            processes: db.open_tree(PROCESS_TREE)?,
            attention: db.open_tree(ATTENTION_TREE)?,
            #[cfg(feature = "fault-injection")]
            write_delay: std::time::Duration::ZERO,
        })
    }

    /// Test-only (feature `fault-injection`): every durable write of this journal blocks its
    /// thread this long first, as a stalling disk would (see also
    /// [`set_switched_write_delay_ms`]).
    #[cfg(feature = "fault-injection")]
    pub fn with_write_delay(mut self, delay: std::time::Duration) -> Journal {
        self.write_delay = delay;
        self
    }

    fn flush(&self) -> Result<(), JournalError> {
        #[cfg(feature = "fault-injection")]
        std::thread::sleep(self.write_delay.max(std::time::Duration::from_millis(
            SWITCHED_WRITE_DELAY_MS.load(std::sync::atomic::Ordering::Relaxed),
        )));
        match &self.disk {
            Some(disk) => disk
                .flush_blocking()
                .map_err(|e| JournalError::NotDurable(e.to_string())),
            None => {
                self.db.flush()?;
                Ok(())
            }
        }
    }

    /// A fresh id for a quiesce record, unique in this database across restarts.
    pub fn next_id(&self) -> Result<u64, JournalError> {
        Ok(self.db.generate_id()?)
    }

    /// Records (or replaces) the quiesce of `record.volume`, durably.
    pub fn put_quiesce(&self, record: &QuiesceRecord) -> Result<(), JournalError> {
        self.quiesce
            .insert(record.volume.as_bytes(), encode(record)?)?;
        self.flush()
    }

    /// The quiesce recorded for `volume`, if any.
    pub fn quiesce(&self, volume: &str) -> Result<Option<QuiesceRecord>, JournalError> {
        match self.quiesce.get(volume.as_bytes())? {
            Some(v) => Ok(Some(decode(QUIESCE_TREE, volume.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Every recorded quiesce, by volume name.
    pub fn quiesces(&self) -> Result<Vec<QuiesceRecord>, JournalError> {
        decode_all(QUIESCE_TREE, self.quiesce.iter())
    }

    /// Removes the quiesce of `volume` once it has been resumed, durably. Returns the record.
    pub fn remove_quiesce(&self, volume: &str) -> Result<Option<QuiesceRecord>, JournalError> {
        let old = self.quiesce.remove(volume.as_bytes())?;
        self.flush()?;
        match old {
            Some(v) => Ok(Some(decode(QUIESCE_TREE, volume.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Appends to the log of automatic resumes, durably.
    pub fn push_resume(&self, record: &ResumeRecord) -> Result<(), JournalError> {
        let seq = self.db.generate_id()?;
        self.resume.insert(seq.to_be_bytes(), encode(record)?)?;
        self.flush()
    }

    /// Automatic resumes, oldest first.
    pub fn resumes(&self) -> Result<Vec<ResumeRecord>, JournalError> {
        decode_all(RESUME_TREE, self.resume.iter())
    }

    /// Keeps only the newest `keep` resume records.
    pub fn trim_resumes(&self, keep: usize) -> Result<(), JournalError> {
        let len = self.resume.len();
        if len > keep {
            for kv in self.resume.iter().take(len - keep) {
                let (k, _) = kv?;
                self.resume.remove(k)?;
            }
            self.flush()?;
        }
        Ok(())
    }

    /// Records (or replaces) what an operator must acknowledge about a volume, durably.
    pub fn put_attention(&self, record: &AttentionRecord) -> Result<(), JournalError> {
        self.attention
            .insert(record.volume.as_bytes(), encode(record)?)?;
        self.flush()
    }

    /// What is waiting for an operator's acknowledgement on `volume`, if anything.
    pub fn attention(&self, volume: &str) -> Result<Option<AttentionRecord>, JournalError> {
        match self.attention.get(volume.as_bytes())? {
            Some(v) => Ok(Some(decode(ATTENTION_TREE, volume.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Removes (acknowledges) what was waiting on `volume`, durably; returns it.
    pub fn remove_attention(&self, volume: &str) -> Result<Option<AttentionRecord>, JournalError> {
        let old = self.attention.remove(volume.as_bytes())?;
        self.flush()?;
        match old {
            Some(v) => Ok(Some(decode(ATTENTION_TREE, volume.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Records the quiesce of `record.volume` and, with it, the process that will act on it
    /// (a freeze guard forked but not yet told to freeze), durably, in one flush: the guard
    /// then never freezes unrecorded.
    pub fn put_quiesce_with_process(
        &self,
        record: &QuiesceRecord,
        process: Option<&ProcessRecord>,
    ) -> Result<(), JournalError> {
        if let Some(p) = process {
            self.processes.insert(p.pid.to_be_bytes(), encode(p)?)?;
        }
        self.quiesce
            .insert(record.volume.as_bytes(), encode(record)?)?;
        self.flush()
    }

    /// Records a process the agent started (a freeze guard, a hook), durably.
    pub fn put_process(&self, record: &ProcessRecord) -> Result<(), JournalError> {
        self.processes
            .insert(record.pid.to_be_bytes(), encode(record)?)?;
        self.flush()
    }

    /// Forgets the process `pid` once it ended, durably.
    pub fn remove_process(&self, pid: u32) -> Result<(), JournalError> {
        self.processes.remove(pid.to_be_bytes())?;
        self.flush()
    }

    /// Every process recorded as running.
    pub fn processes(&self) -> Result<Vec<ProcessRecord>, JournalError> {
        decode_all(PROCESS_TREE, self.processes.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiesce(volume: &str) -> QuiesceRecord {
        QuiesceRecord {
            volume: volume.into(),
            quiesce_id: 1,
            kind: QuiesceKind::Unmount {
                mount_point: "/data".into(),
                apps_stopped: true,
            },
            owner: "job 7 step 3".into(),
            taken_at_unix_ms: 1000,
            deadline_unix_ms: 11_000,
            extended_ms_total: 0,
            taken_at_boot_ms: 0,
        }
    }

    #[test]
    fn the_stores_journal_syncs_and_shares_the_agents_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::Store::open(dir.path()).unwrap();
            let j = store.journal().unwrap();
            assert!(format!("{j:?}").contains("fdatasync: true"));
            j.put_quiesce(&quiesce("mv1")).unwrap();
            assert_ne!(j.next_id().unwrap(), j.next_id().unwrap());
        }
        let store = crate::Store::open(dir.path()).unwrap();
        assert_eq!(
            store.journal().unwrap().quiesces().unwrap(),
            vec![quiesce("mv1")]
        );
    }

    #[test]
    fn quiesce_records_survive_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let j = Journal::open(&db).unwrap();
            j.put_quiesce(&quiesce("mv1")).unwrap();
            j.put_quiesce(&quiesce("mv2")).unwrap();
            assert!(j.remove_quiesce("mv2").unwrap().is_some());
        }
        // `Store::open` waits for sled's flusher to let the dropped database's lock go.
        let store = crate::Store::open(dir.path()).unwrap();
        let j = Journal::open(store.db()).unwrap();
        assert_eq!(j.quiesces().unwrap(), vec![quiesce("mv1")]);
        assert_eq!(j.quiesce("mv2").unwrap(), None);
        // The journal's trees are named apart from anything else in the database.
        assert!(
            store
                .db()
                .tree_names()
                .iter()
                .filter(|n| n.as_ref() != b"__sled__default")
                .all(|n| n.starts_with(b"journal/"))
        );
    }

    #[test]
    fn resume_log_keeps_order_and_trims_oldest() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let j = Journal::open(&db).unwrap();
        for i in 0..5 {
            j.push_resume(&ResumeRecord {
                volume: format!("v{i}"),
                quiesce_id: i,
                kind: QuiesceKind::Freeze,
                owner: "cli".into(),
                taken_at_unix_ms: 0,
                resumed_at_unix_ms: i,
                reason: "deadline".into(),
                error: None,
            })
            .unwrap();
        }
        j.trim_resumes(2).unwrap();
        let names: Vec<_> = j.resumes().unwrap().into_iter().map(|r| r.volume).collect();
        assert_eq!(names, vec!["v3", "v4"]);
    }

    /// A value whose serialization fails, as a record with a map keyed by non-strings would.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("this value cannot be encoded"))
        }
    }

    #[test]
    fn a_record_that_cannot_be_encoded_is_an_error_not_an_empty_value() {
        match encode(&Unencodable) {
            Err(e @ JournalError::Encode(_)) => {
                assert!(e.to_string().contains("cannot be encoded"), "{e}")
            }
            other => panic!("an unencodable record became {other:?}"),
        }
    }

    #[test]
    fn a_damaged_record_is_named_not_panicked_on() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let j = Journal::open(&db).unwrap();
        db.open_tree(QUIESCE_TREE)
            .unwrap()
            .insert("mv9", &b"not json"[..])
            .unwrap();
        let err = j.quiesce("mv9").unwrap_err();
        assert!(err.to_string().contains("mv9"), "{err}");
    }
}
