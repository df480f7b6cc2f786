//! Running external commands (hooks and system tools) with a timeout and captured output.
//! A command that outlives its timeout is killed with its whole process group, so a hook that
//! forks (systemctl, shell scripts) leaves nothing behind.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::api::HookOutput;
use crate::error::HostError;
use crate::limits::{OUTPUT_BYTES_MAX, OUTPUT_DRAIN_MS};

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut r: R, kept: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 8192];
    // Keep reading past the cap so the child never blocks on a full pipe.
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        let room = OUTPUT_BYTES_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// A pipe being read into a shared buffer, so what arrived is available even if the pipe
/// never closes.
struct Capture {
    task: tokio::task::JoinHandle<()>,
    kept: Arc<Mutex<Vec<u8>>>,
}

fn capture<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: Option<R>) -> Option<Capture> {
    let r = r?;
    let kept = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn(read_capped(r, kept.clone()));
    Some(Capture { task, kept })
}

/// Pipe output of an exited command. A background process it started may hold the pipe
/// open forever, so the wait is bounded (`deadline`) and the output marked as cut short.
async fn collect(c: Option<Capture>, deadline: tokio::time::Instant) -> String {
    let Some(mut c) = c else {
        return String::new();
    };
    let complete = tokio::time::timeout_at(deadline, &mut c.task).await.is_ok();
    c.task.abort();
    let kept = c.kept.lock().unwrap_or_else(|e| e.into_inner());
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if !complete {
        text.push_str("\n(output cut short: a process the command started keeps it open)");
    }
    text
}

/// Runs `argv` (no shell), returning its output whatever its exit status; only a failure to
/// start and a timeout are errors. `volume` and `what` label errors.
pub(crate) async fn run(
    volume: &str,
    what: &str,
    argv: &[String],
    timeout_ms: u64,
) -> Result<HookOutput, HostError> {
    start(volume, what, argv)?.finish(timeout_ms, false).await
}

/// A command started in its own process group (pgid = its pid), being read.
pub(crate) struct Running {
    volume: String,
    what: String,
    argv: Vec<String>,
    child: tokio::process::Child,
    /// Process id, which is also the process group id.
    pub pid: u32,
    started: Instant,
    out: Option<Capture>,
    err: Option<Capture>,
}

/// Starts `argv` (no shell) in a process group of its own, its output captured.
pub(crate) fn start(volume: &str, what: &str, argv: &[String]) -> Result<Running, HostError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(HostError::OsError {
            volume: volume.into(),
            operation: what.into(),
            detail: "empty command".into(),
        });
    };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HostError::OsError {
            volume: volume.into(),
            operation: what.into(),
            detail: format!("cannot start {program:?}: {e}"),
        })?;
    let pid = child.id().unwrap_or(0);
    let out = capture(child.stdout.take());
    let err = capture(child.stderr.take());
    Ok(Running {
        volume: volume.into(),
        what: what.into(),
        argv: argv.to_vec(),
        child,
        pid,
        started,
        out,
        err,
    })
}

impl Running {
    /// Kills the command's whole process group.
    pub(crate) fn kill_group(&self) {
        if self.pid > 0 {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe { libc::kill(-(self.pid as i32), libc::SIGKILL) };
        }
    }

    /// Waits for the command to exit, at most `timeout_ms` (then its whole process group is
    /// killed). With `end_group`, whatever the command left running in its process group when
    /// it exited is killed too (nothing may outlive a stop hook); otherwise it is left (a
    /// start hook may start the application that way) but not waited for.
    pub(crate) async fn finish(
        mut self,
        timeout_ms: u64,
        end_group: bool,
    ) -> Result<HookOutput, HostError> {
        let status = match tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            self.child.wait(),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.kill_group();
                return Err(HostError::OsError {
                    volume: self.volume.clone(),
                    operation: self.what.clone(),
                    detail: format!("waiting for {:?}: {e}", self.argv[0]),
                });
            }
            Err(_) => {
                self.kill_group();
                let _ = self.child.wait().await;
                return Err(HostError::TimedOut {
                    volume: self.volume.clone(),
                    what: format!("{} {:?}", self.what, self.argv),
                    timeout_ms,
                });
            }
        };
        if end_group {
            self.kill_group();
        }
        let drain_until = tokio::time::Instant::now() + Duration::from_millis(OUTPUT_DRAIN_MS);
        let (stdout, stderr) = tokio::join!(
            collect(self.out.take(), drain_until),
            collect(self.err.take(), drain_until)
        );
        Ok(HookOutput {
            command: self.argv.join(" "),
            exit_code: status.code(),
            stdout,
            stderr,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        })
    }
}

/// Like [`run`], but a non-zero exit is an [`HostError::OsError`] carrying stderr.
pub(crate) async fn run_ok(
    volume: &str,
    what: &str,
    argv: &[String],
    timeout_ms: u64,
) -> Result<HookOutput, HostError> {
    let out = run(volume, what, argv, timeout_ms).await?;
    if out.exit_code == Some(0) {
        Ok(out)
    } else {
        Err(HostError::OsError {
            volume: volume.into(),
            operation: what.into(),
            detail: format!(
                "{} exited with {:?}: {}{}",
                out.command,
                out.exit_code,
                out.stderr.trim(),
                out.stdout.trim()
            ),
        })
    }
}

/// The last `n` characters of `s`, for error messages.
pub(crate) fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    let start = s.char_indices().rev().nth(n).map(|(i, _)| i).unwrap_or(0);
    s[start..].to_string()
}

/// Milliseconds since the Unix epoch (wall clock, for journal records; see
/// [`crate::switches::wall_unix_ms`]).
pub(crate) fn now_unix_ms() -> u64 {
    crate::switches::wall_unix_ms()
}

/// Milliseconds on the machine's boot clock, which no wall-clock step moves; every deadline
/// is measured on it (see [`crate::switches::monotonic_ms`]).
pub(crate) fn now_boot_ms() -> u64 {
    crate::switches::monotonic_ms()
}

/// How long until `rec`'s deadline, in ms (0: passed), measured on the boot clock.
pub(crate) fn left_ms(rec: &crate::api::QuiesceRecord) -> u64 {
    rec.left_ms(now_boot_ms(), now_unix_ms())
}

/// `rec`'s deadline on the boot clock.
pub(crate) fn deadline_boot_ms(rec: &crate::api::QuiesceRecord) -> u64 {
    rec.deadline_boot_ms(now_boot_ms(), now_unix_ms())
}

/// Waits (bounded by [`crate::limits::ORPHAN_END_MS`]) until the process `pid` that started at
/// `start_ticks` is gone; returns whether it is.
pub(crate) async fn wait_gone(pid: u32, start_ticks: u64) -> bool {
    let until = Instant::now() + Duration::from_millis(crate::limits::ORPHAN_END_MS);
    loop {
        if !crate::guard::same_process(pid, start_ticks) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
