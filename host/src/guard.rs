//! The freeze guard: a small process forked for every freeze on the linux backend. The guard
//! itself performs FIFREEZE, then thaws at the deadline unless the agent releases (thaw now)
//! or extends it (new deadline), so the deadline holds even when the agent dies: after a
//! SIGKILL of the agent the guard, in its own session and process group, still thaws on time.
//! A guard also thaws at once on SIGTERM, SIGINT, SIGHUP or SIGQUIT (a service manager
//! stopping the agent's control group), and says so before thawing.
//!
//! Because the guard is the process that froze, "never thaw what this agent did not freeze"
//! holds by construction: a freeze refused by the kernel (already frozen by another tool)
//! leaves a guard that exits without thawing anything.
//!
//! Why a fork and not a re-exec of the `stillpoint` binary: the guard must exist whatever
//! embeds the host crate (the agent binary, tests, tools), must not depend on the binary file
//! still being the same on disk (an upgrade replaces it under a running agent), and must not
//! need a parser, an allocator or a runtime to do its one job. A fork of a multi-threaded
//! process may only make async-signal-safe calls until it execs; the child here never execs
//! and only makes raw system calls (setsid, prctl, sigaction, sigprocmask, signalfd,
//! close_range/close, ioctl, clock_gettime, poll, read, write, _exit) on memory it owns on its
//! stack: no allocation, no locks, no Rust I/O, no panics. Everything it needs (the file
//! system's root directory fd, the pipes, the deadline) is prepared before the fork.
//!
//! A guard is forked first and freezes only when told to ([`Guard::spawn`], then
//! [`Pending::freeze`]): in between, the agent journals the guard (pid and start time) with
//! the quiesce record, in one flush. So every guard that ever froze is one the journal names,
//! and an agent killed between the fork and the record leaves a guard that never freezes: its
//! pipe closes, and a guard not yet told to freeze exits at once. (Before this, a guard froze
//! as soon as it was forked; a dead agent's unrecorded guard then held the volume frozen and,
//! at its deadline, thawed whatever quiesce came next.)
//!
//! The protocol, over two pipes (writes of at most 9 bytes are atomic):
//! agent → guard, 9 bytes `[cmd, u64 LE]`: `G` freeze now (value unused), `E` new deadline
//! (boot-clock ms), `U` thaw now and exit.
//! guard → agent, 5 bytes `[code, i32 LE errno]`: `F` freeze result (0 = frozen, else errno;
//! the guard then exits), `E` extended, `U` thawed on request (FITHAW errno, EINVAL = was not
//! frozen), `T` thawing by itself (deadline or signal). Before `G`, the guard exits without
//! freezing when its deadline passes, a stop signal comes, or the agent's pipe closes; after
//! it, a closed pipe (the agent died) leaves the guard keeping its deadline.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// `_IOWR('X', 119, int)` from linux/fs.h.
pub(crate) const FIFREEZE: u64 = 0xC004_5877;
/// `_IOWR('X', 120, int)` from linux/fs.h.
pub(crate) const FITHAW: u64 = 0xC004_5878;

const CMD_GO: u8 = b'G';
const CMD_EXTEND: u8 = b'E';
const CMD_THAW: u8 = b'U';
const REP_FROZE: u8 = b'F';
const REP_EXTENDED: u8 = b'E';
const REP_THAWED: u8 = b'U';
const REP_BY_ITSELF: u8 = b'T';

/// Longest wait between two looks at the clock.
const GUARD_POLL_MS_MAX: u64 = 500;
/// Attempts at FITHAW by the guard before it gives up (EINVAL ends them: not frozen).
const GUARD_THAW_ATTEMPTS: u32 = 5;
/// How long the agent waits for the guard to answer a request (extend, thaw). A thaw waits
/// for writeback in the kernel, so this is the system-call bound.
pub(crate) const GUARD_ANSWER_MS: u64 = crate::limits::SYSCALL_TIMEOUT_MS;

/// A running guard, held by the agent that forked it.
#[derive(Debug)]
pub(crate) struct Guard {
    pub pid: u32,
    /// The guard's start time in clock ticks since boot (`/proc/PID/stat` field 22): with the
    /// pid, identifies it across a restart of the agent (pids are reused).
    pub start_ticks: u64,
    to_guard: File,
    from_guard: File,
}

/// A guard forked and not yet told to freeze. Dropped, it exits without freezing.
#[derive(Debug)]
pub(crate) struct Pending(Guard);

impl Pending {
    pub(crate) fn pid(&self) -> u32 {
        self.0.pid
    }

    pub(crate) fn start_ticks(&self) -> u64 {
        self.0.start_ticks
    }

    /// Tells the guard to freeze and waits until it is done or `freeze_timeout_ms` passed.
    pub(crate) fn freeze(self, freeze_timeout_ms: u64) -> Result<Guard, FreezeFailed> {
        let guard = self.0;
        send(&guard.to_guard, CMD_GO, 0).map_err(FreezeFailed::Spawn)?;
        let until = Instant::now() + Duration::from_millis(freeze_timeout_ms);
        match read_answer(&guard.from_guard, until) {
            Ok(Some((REP_FROZE, 0))) => Ok(guard),
            Ok(Some((REP_FROZE, errno))) => {
                Err(FreezeFailed::Refused(io::Error::from_raw_os_error(errno)))
            }
            Ok(Some((code, _))) => Err(FreezeFailed::Spawn(io::Error::other(format!(
                "the freeze guard answered {:?} instead of a freeze result",
                code as char
            )))),
            Ok(None) => Err(FreezeFailed::Spawn(io::Error::other(
                "the freeze guard exited before freezing (its deadline passed, or it was signalled)",
            ))),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(FreezeFailed::TimedOut(guard)),
            Err(e) => Err(FreezeFailed::Spawn(e)),
        }
    }
}

/// How a freeze through a guard failed.
#[derive(Debug)]
pub(crate) enum FreezeFailed {
    /// The kernel refused the freeze with this errno; nothing is frozen, the guard exited.
    Refused(io::Error),
    /// The guard could not be started (or answered nonsense); nothing is frozen.
    Spawn(io::Error),
    /// The freeze did not finish in time. The guard lives on: if the freeze completes it
    /// thaws at the deadline (or when told to).
    TimedOut(Guard),
}

/// How a guard ended when the agent asked it to thaw.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It thawed on the agent's request.
    Thawed,
    /// Told to thaw, it found the file system not frozen: something else thawed it while the
    /// quiesce was meant to hold (an administrator's `fsfreeze -u`, another tool, the guard
    /// of an agent that died, reaching its deadline). The quiesce did not hold throughout.
    FoundThawed,
    /// It had already begun thawing by itself: its deadline passed, or it was signalled.
    ByItself,
    /// It is gone without a word (killed), or did not answer in time: the file system may
    /// still be frozen; the caller thaws it itself.
    Silent(String),
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The name every guard gives itself (`/proc/PID/comm`).
const GUARD_NAME: &std::ffi::CStr = c"sp-freeze-guard";

/// Freeze guards holding the root of a file system mounted at one of `mount_points`, found in
/// `/proc` by their name and the root they hold open: (pid, start ticks, mount point). An
/// agent killed between forking a guard and journaling it leaves one its journal does not
/// name; at its deadline it would thaw whatever freeze holds then, another quiesce's. Reads
/// `/proc` (blocking). Public for tests that look for a guard from outside the agent.
pub fn guards_holding(mount_points: &[&str]) -> Vec<(u32, u64, String)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end().as_bytes() != GUARD_NAME.to_bytes() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let held = fds.flatten().find_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            mount_points.iter().find(|mp| **mp == target).copied()
        });
        if let (Some(mp), Some(ticks)) = (held, start_ticks(pid)) {
            found.push((pid, ticks, mp.to_string()));
        }
    }
    found
}

/// `/proc/PID/stat` field 22 (start time in clock ticks since boot).
pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the live process that started at `ticks` (not a reused pid, not a
/// zombie waiting to be reaped).
pub(crate) fn same_process(pid: u32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next();
    state != Some("Z")
        && state != Some("X")
        && fields.nth(18).and_then(|t| t.parse().ok()) == Some(ticks)
}

/// Reads one 5-byte answer, waiting at most until `until`.
fn read_answer(f: &File, until: Instant) -> io::Result<Option<(u8, i32)>> {
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll on one descriptor we own.
        let n = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        // SAFETY: read into the rest of our buffer.
        let r = unsafe {
            libc::read(
                f.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        got += r as usize;
    }
    let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
    Ok(Some((buf[0], errno)))
}

fn send(f: &File, cmd: u8, value: u64) -> io::Result<()> {
    let mut buf = [0u8; 9];
    buf[0] = cmd;
    buf[1..].copy_from_slice(&value.to_le_bytes());
    // SAFETY: write from our buffer; 9 bytes is below PIPE_BUF, so the write is atomic.
    let r = unsafe { libc::write(f.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if r == buf.len() as isize {
        Ok(())
    } else if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Err(io::Error::other("short write to the guard"))
    }
}

impl Guard {
    /// Forks a guard for the file system whose root directory is `fs_root`, to thaw it at
    /// `deadline_boot_ms` (the boot clock). It freezes nothing until [`Pending::freeze`]:
    /// journal it first.
    pub(crate) fn spawn(fs_root: File, deadline_boot_ms: u64) -> io::Result<Pending> {
        let (ctl_r, ctl_w) = pipe()?;
        let (st_r, st_w) = pipe()?;
        // Ignore SIGPIPE in the agent for writes to a dead guard: Rust already ignores it in
        // binaries, and a write error is what we want either way.
        // SAFETY: fork; the child runs only `guard_main`, which makes async-signal-safe
        // system calls on descriptors and stack memory and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see guard_main.
            unsafe {
                guard_main(
                    fs_root.as_raw_fd(),
                    ctl_r.as_raw_fd(),
                    st_w.as_raw_fd(),
                    deadline_boot_ms,
                )
            }
        }
        drop((ctl_r, st_w, fs_root));
        let pid = pid as u32;
        // Reap the guard whenever it exits (it is our child until we die).
        let _ = std::thread::Builder::new()
            .name("guard-reaper".into())
            .spawn(move || {
                let mut status = 0;
                // SAFETY: waitpid on our own child.
                unsafe { libc::waitpid(pid as i32, &mut status, 0) };
            });
        let start_ticks = start_ticks(pid).unwrap_or(0);
        Ok(Pending(Guard {
            pid,
            start_ticks,
            to_guard: File::from(ctl_w),
            from_guard: File::from(st_r),
        }))
    }

    /// Moves the guard's deadline. Fails if the guard already thawed or is gone.
    pub(crate) fn extend(&self, deadline_boot_ms: u64) -> Result<(), Ended> {
        send(&self.to_guard, CMD_EXTEND, deadline_boot_ms)
            .map_err(|e| Ended::Silent(format!("cannot reach the freeze guard: {e}")))?;
        let until = Instant::now() + Duration::from_millis(GUARD_ANSWER_MS);
        match read_answer(&self.from_guard, until) {
            Ok(Some((REP_EXTENDED, _))) => Ok(()),
            Ok(Some((REP_BY_ITSELF, _))) => Err(Ended::ByItself),
            Ok(Some((code, _))) => Err(Ended::Silent(format!(
                "the freeze guard answered {:?} to an extension",
                code as char
            ))),
            Ok(None) => Err(Ended::Silent("the freeze guard is gone".into())),
            Err(e) => Err(Ended::Silent(format!(
                "the freeze guard did not answer: {e}"
            ))),
        }
    }

    /// Tells the guard to thaw as soon as its freeze (still in the kernel) completes, without
    /// waiting for it: the request waits in the pipe even if the agent dies.
    pub(crate) fn thaw_when_frozen(self) {
        if let Err(e) = send(&self.to_guard, CMD_THAW, 0) {
            tracing::error!(pid = self.pid, error = %e, "cannot tell the freeze guard to thaw; it thaws at its deadline");
        }
    }

    /// Tells the guard to thaw now and exit; reports how it ended.
    pub(crate) fn thaw(self) -> Ended {
        if let Err(e) = send(&self.to_guard, CMD_THAW, 0) {
            return Ended::Silent(format!("cannot reach the freeze guard: {e}"));
        }
        let until = Instant::now() + Duration::from_millis(GUARD_ANSWER_MS);
        match read_answer(&self.from_guard, until) {
            Ok(Some((REP_THAWED, 0))) => Ended::Thawed,
            Ok(Some((REP_THAWED, libc::EINVAL))) => Ended::FoundThawed,
            Ok(Some((REP_THAWED, errno))) => Ended::Silent(format!(
                "the freeze guard's FITHAW failed: {}",
                io::Error::from_raw_os_error(errno)
            )),
            Ok(Some((REP_BY_ITSELF, _))) => Ended::ByItself,
            Ok(Some((code, _))) => Ended::Silent(format!(
                "the freeze guard answered {:?} to a thaw",
                code as char
            )),
            Ok(None) => Ended::Silent("the freeze guard is gone".into()),
            Err(e) => Ended::Silent(format!("the freeze guard did not answer: {e}")),
        }
    }
}

/// Boot-clock milliseconds (`CLOCK_BOOTTIME`: no wall-clock step moves it; the agent measures
/// deadlines on the same clock), async-signal-safe.
unsafe fn now_boot_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1000) + (ts.tv_nsec as u64) / 1_000_000
}

unsafe fn errno() -> i32 {
    // SAFETY: the thread's errno location.
    unsafe { *libc::__errno_location() }
}

unsafe fn answer(fd: RawFd, code: u8, errno: i32) {
    let e = errno.to_le_bytes();
    let buf = [code, e[0], e[1], e[2], e[3]];
    // SAFETY: write from our stack buffer; a dead agent gives EPIPE (SIGPIPE is ignored).
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// Thaws the file system by its root descriptor, retrying briefly; returns the last errno
/// (0 thawed, EINVAL not frozen).
unsafe fn thaw_fd(fs: RawFd) -> i32 {
    let mut last = 0;
    for _ in 0..GUARD_THAW_ATTEMPTS {
        // SAFETY: FITHAW on the file system root we hold; the argument is ignored.
        if unsafe { libc::ioctl(fs, FITHAW as _, 0) } == 0 {
            return 0;
        }
        last = unsafe { errno() };
        if last == libc::EINVAL {
            return last;
        }
        // SAFETY: poll with no descriptors is a sleep.
        unsafe { libc::poll(std::ptr::null_mut(), 0, 100) };
    }
    last
}

/// Closes every descriptor except those in `keep` (sorted ascending).
unsafe fn close_all_except(keep: &[RawFd; 4]) {
    let mut lo: u32 = 0;
    for &k in keep.iter() {
        let k = k as u32;
        if k > lo {
            unsafe { close_range(lo, k - 1) };
        }
        lo = k + 1;
    }
    unsafe { close_range(lo, u32::MAX) };
}

unsafe fn close_range(lo: u32, hi: u32) {
    // SAFETY: close_range(2) on descriptors of this (forked, single-threaded) process.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
    if rc != 0 {
        // Kernels before 5.9: close one by one, up to a bound.
        let hi = hi.min(65_535);
        let mut fd = lo;
        while fd <= hi {
            unsafe { libc::close(fd as RawFd) };
            fd += 1;
        }
    }
}

/// Before the freeze: returns once the agent sends `G`; exits the process, having frozen
/// nothing, when the agent's pipe closes (it died before journaling this guard, or dropped
/// it), a stop signal comes, the deadline passes, or the agent asks for a thaw. Only
/// async-signal-safe system calls.
unsafe fn wait_for_go(sfd: RawFd, ctl: RawFd, st: RawFd, deadline: &mut u64) {
    loop {
        // SAFETY: async-signal-safe calls on the guard's own descriptors.
        unsafe {
            match next_event(sfd, ctl, *deadline) {
                Woke::Deadline | Woke::Signal | Woke::Closed => libc::_exit(0),
                Woke::Command(CMD_GO, _) => return,
                Woke::Command(CMD_EXTEND, value) => {
                    *deadline = value;
                    answer(st, REP_EXTENDED, 0);
                }
                Woke::Command(CMD_THAW, _) => {
                    answer(st, REP_THAWED, libc::EINVAL);
                    libc::_exit(0);
                }
                Woke::Command(..) | Woke::Nothing => {}
            }
        }
    }
}

/// What woke a guard.
enum Woke {
    /// Its deadline passed.
    Deadline,
    /// A stop signal came.
    Signal,
    /// The agent sent `[cmd, value]`.
    Command(u8, u64),
    /// The agent's pipe closed: the agent is gone.
    Closed,
    /// Nothing to act on (a timeout of the wait, an interrupted or partial read).
    Nothing,
}

/// Waits, at most [`GUARD_POLL_MS_MAX`], for the next thing a guard acts on; a `ctl` below 0
/// is not watched (the agent's pipe already closed). Only async-signal-safe system calls.
unsafe fn next_event(sfd: RawFd, ctl: RawFd, deadline: u64) -> Woke {
    unsafe {
        let now = now_boot_ms();
        if now >= deadline {
            return Woke::Deadline;
        }
        let wait_ms = (deadline - now).min(GUARD_POLL_MS_MAX) as libc::c_int;
        let mut fds = [
            libc::pollfd {
                fd: sfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ctl,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if libc::poll(fds.as_mut_ptr(), 2, wait_ms) <= 0 {
            return Woke::Nothing;
        }
        if sfd >= 0 && fds[0].revents != 0 {
            return Woke::Signal;
        }
        if fds[1].revents == 0 {
            return Woke::Nothing;
        }
        let mut buf = [0u8; 9];
        let r = libc::read(ctl, buf.as_mut_ptr().cast(), buf.len());
        if r < 0 && errno() == libc::EINTR {
            return Woke::Nothing;
        }
        if r <= 0 {
            return Woke::Closed;
        }
        if r != 9 {
            return Woke::Nothing;
        }
        let value = u64::from_le_bytes([
            buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8],
        ]);
        Woke::Command(buf[0], value)
    }
}

/// The guard process. Only async-signal-safe system calls from here on; never returns.
unsafe fn guard_main(fs: RawFd, ctl: RawFd, st: RawFd, mut deadline: u64) -> ! {
    unsafe {
        libc::setsid();
        libc::prctl(
            libc::PR_SET_NAME,
            GUARD_NAME.as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        // Default dispositions (the agent's runtime installed handlers), SIGPIPE ignored.
        for sig in 1..32 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = if sig == libc::SIGPIPE {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        // Stop signals are read from a signalfd: the guard thaws before it goes.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        let sfd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        let mut keep = [fs, ctl, st, sfd];
        // Sort four descriptors without allocating.
        for i in 1..keep.len() {
            let mut j = i;
            while j > 0 && keep[j - 1] > keep[j] {
                keep.swap(j - 1, j);
                j -= 1;
            }
        }
        close_all_except(&keep);

        // Nothing is frozen until the agent, having journaled this guard, says so.
        wait_for_go(sfd, ctl, st, &mut deadline);
        if libc::ioctl(fs, FIFREEZE as _, 0) != 0 {
            answer(st, REP_FROZE, errno());
            libc::_exit(1);
        }
        answer(st, REP_FROZE, 0);
        let mut ctl = ctl;
        loop {
            match next_event(sfd, ctl, deadline) {
                Woke::Deadline | Woke::Signal => {
                    answer(st, REP_BY_ITSELF, 0);
                    thaw_fd(fs);
                    libc::_exit(0);
                }
                Woke::Closed => {
                    // The agent is gone: keep the deadline.
                    libc::close(ctl);
                    ctl = -1;
                }
                Woke::Command(CMD_EXTEND, value) => {
                    deadline = value;
                    answer(st, REP_EXTENDED, 0);
                }
                Woke::Command(CMD_THAW, _) => {
                    let e = thaw_fd(fs);
                    answer(st, REP_THAWED, e);
                    libc::_exit(0);
                }
                Woke::Command(..) | Woke::Nothing => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard forked on a directory on tmpfs, its deadline `deadline_in_ms` from now. Nothing
    /// here tells it to freeze (and tmpfs could not be frozen), so the machine's own disks are
    /// never at risk. `None` (said) without a /dev/shm.
    fn spawn_on_shm(deadline_in_ms: u64) -> Option<Pending> {
        let Some(root) = File::open("/dev/shm").ok() else {
            eprintln!("skipped: no /dev/shm to give the guard a directory");
            return None;
        };
        Some(Guard::spawn(root, boot_ms() + deadline_in_ms).expect("fork the guard"))
    }

    fn gone_within(pid: u32, ticks: u64, bound: Duration) -> bool {
        let until = Instant::now() + bound;
        while Instant::now() < until {
            if !same_process(pid, ticks) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn boot_ms() -> u64 {
        // SAFETY: clock_gettime into a local.
        unsafe { now_boot_ms() }
    }

    #[test]
    fn a_guard_whose_agent_is_gone_before_it_is_told_to_freeze_exits_without_freezing() {
        let Some(pending) = spawn_on_shm(60_000) else {
            return;
        };
        let (pid, ticks) = (pending.pid(), pending.start_ticks());
        assert!(same_process(pid, ticks), "the guard runs");
        // What the agent's death does to the guard: its end of the pipes closes.
        drop(pending);
        assert!(
            gone_within(pid, ticks, Duration::from_secs(10)),
            "a guard never told to freeze outlived its agent"
        );
    }

    #[test]
    fn a_guard_never_told_to_freeze_exits_at_its_deadline() {
        let Some(pending) = spawn_on_shm(300) else {
            return;
        };
        let (pid, ticks) = (pending.pid(), pending.start_ticks());
        assert!(
            gone_within(pid, ticks, Duration::from_secs(10)),
            "a guard past its deadline waits on"
        );
        // Told to freeze after that, it says it is gone: nothing was frozen.
        assert!(matches!(pending.freeze(1_000), Err(FreezeFailed::Spawn(_))));
    }
}
