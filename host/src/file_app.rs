//! An application on a real file system: it appends fixed-size records to one file and
//! `fdatasync`s each before counting it written, as a database's log does. Tests and the
//! chaos harness run it on an MV's mount point and judge a copy by [`check_file_records`]:
//! a consistent copy of the file is a clean prefix of records, every one whole and in order.
//!
//! Record `n` is [`FILE_RECORD_BYTES`] long: `n` as 8 little-endian bytes, then bytes that
//! depend on `n`, so a torn, stale or misplaced record shows. The writer runs on a thread of
//! its own (its `write` blocks for as long as the file system is frozen); it counts what the
//! file system acknowledged, the longest wait for one record, and stops on its first error.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Length of one record of [`FileApp`].
pub const FILE_RECORD_BYTES: usize = 4096;
/// A record that waits at least this long for its write and sync is kept in
/// [`FileApp::long_stalls`].
pub const FILE_APP_LONG_STALL_MS: u64 = 1_000;

/// One record's long wait: when it started (Unix ms) and how long it took (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    pub started_unix_ms: u64,
    pub ms: u64,
}

/// Record `seq` of [`FileApp`]'s file.
pub fn file_record(seq: u64) -> Vec<u8> {
    let mut r = vec![0u8; FILE_RECORD_BYTES];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in r[8..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    r
}

/// How many records `bytes` (a copy of [`FileApp`]'s file) holds, in order from 0, each whole
/// and right. Err names the first that is not (or the torn tail).
pub fn check_file_records(bytes: &[u8]) -> Result<u64, String> {
    let whole = bytes.len() / FILE_RECORD_BYTES;
    for (i, r) in bytes.chunks(FILE_RECORD_BYTES).take(whole).enumerate() {
        if r != file_record(i as u64).as_slice() {
            let seq = u64::from_le_bytes(r[..8].try_into().unwrap_or([0; 8]));
            return Err(format!(
                "record {i} of {whole} is not record {i} (its first bytes say {seq})"
            ));
        }
    }
    if !bytes.len().is_multiple_of(FILE_RECORD_BYTES) {
        return Err(format!(
            "{} bytes: after {whole} whole records, a torn one of {} bytes",
            bytes.len(),
            bytes.len() % FILE_RECORD_BYTES
        ));
    }
    Ok(whole as u64)
}

/// What the running application has seen so far.
#[derive(Debug, Default)]
struct Progress {
    acked: AtomicU64,
    stall_ms_max: AtomicU64,
    long_stalls: Mutex<Vec<Stall>>,
    errors: Mutex<Vec<String>>,
    failed_unix_ms: AtomicU64,
}

/// The application: appends a record, `fdatasync`s it, sleeps `pace`, until stopped or its
/// first error.
pub struct FileApp {
    file: PathBuf,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileApp {
    /// Starts writing to `file` (created, or appended to after its whole records).
    pub fn start(file: PathBuf, pace: Duration) -> FileApp {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let (s, p, path) = (stop.clone(), progress.clone(), file.clone());
        let thread = std::thread::Builder::new()
            .name("file-app".into())
            .spawn(move || write_records(&path, pace, &s, &p));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                lock(&progress.errors).push(format!("cannot start the writer thread: {e}"));
                None
            }
        };
        FileApp {
            file,
            stop,
            progress,
            thread,
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Records the file system has acknowledged (written and synced).
    pub fn acked(&self) -> u64 {
        self.progress.acked.load(Ordering::SeqCst)
    }

    /// The longest any one record waited for its write and sync, so far.
    pub fn stall_ms_max(&self) -> u64 {
        self.progress.stall_ms_max.load(Ordering::SeqCst)
    }

    /// Every wait of at least [`FILE_APP_LONG_STALL_MS`] for one record, in order.
    pub fn long_stalls(&self) -> Vec<Stall> {
        lock(&self.progress.long_stalls).clone()
    }

    /// When the error that stopped it struck (Unix ms), if one did.
    pub fn failed_unix_ms(&self) -> Option<u64> {
        Some(self.progress.failed_unix_ms.load(Ordering::SeqCst)).filter(|t| *t > 0)
    }

    /// The error that stopped it, if one did.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.progress.errors).clone()
    }

    /// Asks it to stop and waits up to `wait` for it to (a write blocked on a frozen file
    /// system waits for the thaw). Returns whether it stopped.
    pub fn stop(&mut self, wait: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + wait;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        true
    }
}

impl Drop for FileApp {
    /// Stops the writer; one blocked on a frozen file system is left to end by itself.
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_records(path: &Path, pace: Duration, stop: &AtomicBool, progress: &Progress) {
    let fail = |what: String| {
        progress.failed_unix_ms.store(unix_ms(), Ordering::SeqCst);
        lock(&progress.errors).push(what)
    };
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path);
    let mut f = match opened {
        Ok(f) => f,
        Err(e) => return fail(format!("open {}: {e}", path.display())),
    };
    let mut seq = match f.metadata() {
        Ok(m) => m.len() / FILE_RECORD_BYTES as u64,
        Err(e) => return fail(format!("stat {}: {e}", path.display())),
    };
    if let Err(e) = f.set_len(seq * FILE_RECORD_BYTES as u64) {
        return fail(format!("cut the torn tail of {}: {e}", path.display()));
    }
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let started_unix_ms = unix_ms();
        let written = f.write_all(&file_record(seq)).and_then(|_| f.sync_data());
        let ms = started.elapsed().as_millis() as u64;
        progress.stall_ms_max.fetch_max(ms, Ordering::SeqCst);
        if ms >= FILE_APP_LONG_STALL_MS {
            lock(&progress.long_stalls).push(Stall {
                started_unix_ms,
                ms,
            });
        }
        if let Err(e) = written {
            return fail(format!("record {seq}: {e}"));
        }
        seq += 1;
        progress.acked.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(pace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_it_writes_check_as_a_clean_prefix_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("records");
        let mut app = FileApp::start(file.clone(), Duration::from_millis(1));
        let deadline = Instant::now() + Duration::from_secs(60);
        while app.acked() < 5 {
            assert!(Instant::now() < deadline, "the writer wrote nothing");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(app.stop(Duration::from_secs(10)));
        assert!(app.errors().is_empty(), "{:?}", app.errors());
        let mut bytes = std::fs::read(&file).unwrap();
        assert_eq!(check_file_records(&bytes), Ok(app.acked()));

        bytes[FILE_RECORD_BYTES + 100] ^= 1;
        let err = check_file_records(&bytes).unwrap_err();
        assert!(err.starts_with("record 1 of"), "{err}");
        bytes[FILE_RECORD_BYTES + 100] ^= 1;
        bytes.truncate(bytes.len() - 1);
        let err = check_file_records(&bytes).unwrap_err();
        assert!(err.contains("a torn one of 4095 bytes"), "{err}");
    }
}
