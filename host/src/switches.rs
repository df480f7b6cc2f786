//! Fault switches of test builds: faults a chaos harness strikes inside an agent that no
//! outside tool can strike without touching the whole machine.
//!
//! Built only with the `fault-injection` cargo feature (`stillpoint --version` then says so);
//! a production build has none of it and every function here is a constant.
//!
//! In such a build an agent started with `STILLPOINT_FAULT_SWITCHES=<file>` reads that TOML
//! file now and then every [`POLL_MS`] ms, so the harness strikes or lifts a fault by
//! rewriting it (write a temporary file, then rename it over, so a reader never sees half):
//!
//! ```toml
//! # Added to this agent's wall clock (CLOCK_REALTIME), as an NTP step or an operator's
//! # `date -s` would move it: negative is a step back. Monotonic clocks are not moved, as a
//! # real step does not move them either.
//! clock_offset_ms = -60000
//! # What the sim backend's in-process applications do when their stop hook asks them to
//! # stop: "fails" (they refuse, the hook fails), "hangs" (the hook never returns: it is
//! # killed at its timeout) or "holds" (they stop writing but keep a handle open on the
//! # volume, so an unmount is refused as busy, until the switch is lifted). Absent: they stop.
//! app_stop = "holds"
//! # Every durable write of the agent's journal (quiesce, guard and step records) first
//! # stalls this long, as a stalling disk would: a test kills the agent while a record is
//! # being written (e.g. between forking a freeze guard and journaling it).
//! journal_write_delay_ms = 4000
//! ```
//!
//! A missing file is no fault. A file that does not parse is logged (once per change) and
//! the switches keep their last values, so a harness's mistake never becomes a fault of its
//! own.

/// How often the file is read again.
pub const POLL_MS: u64 = 50;

/// The environment variable naming the switches file.
pub const ENV_VAR: &str = "STILLPOINT_FAULT_SWITCHES";

/// Whether this build has the switches.
pub const BUILT: bool = cfg!(feature = "fault-injection");

/// What the sim backend's applications do when their stop hook runs (see the module's
/// example file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppStop {
    /// They stop, as asked.
    Stops,
    /// They refuse: the hook fails.
    Fails,
    /// The hook never returns (killed at its timeout); they keep running.
    Hangs,
    /// They stop writing but keep a handle open on the volume until the switch is lifted.
    Holds,
}

/// What the switches make the sim applications' stop do ([`AppStop::Stops`] in a
/// production build).
pub fn app_stop() -> AppStop {
    #[cfg(feature = "fault-injection")]
    {
        match imp::switches()
            .app_stop
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            1 => AppStop::Fails,
            2 => AppStop::Hangs,
            3 => AppStop::Holds,
            _ => AppStop::Stops,
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        AppStop::Stops
    }
}

/// The offset the switches add to this agent's wall clock, in ms (0 in a production build).
pub fn clock_offset_ms() -> i64 {
    #[cfg(feature = "fault-injection")]
    {
        imp::switches()
            .clock_offset_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        0
    }
}

/// Milliseconds since the Unix epoch as this agent's wall clock reads them: the system's,
/// plus the switches' offset in a test build. Journal records, job stamps and the times
/// shown to operators come from here; deadlines within one agent's life never do (they run
/// on [`monotonic_ms`]).
pub fn wall_unix_ms() -> u64 {
    let system_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    system_ms.saturating_add_signed(clock_offset_ms())
}

/// Milliseconds on the machine's boot clock (`CLOCK_BOOTTIME`): never stepped, shared by
/// every process of the machine, counting time suspended, reset only by a reboot. Deadlines
/// kept in the journal are measured on it, so a wall-clock step neither shortens nor
/// stretches a quiesce, and a freeze guard (another process) reads the same clock.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_BOOTTIME exists on every
    // Linux this crate builds for.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::Once;
    use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

    pub(super) struct Switches {
        pub(super) clock_offset_ms: AtomicI64,
        /// 0 stops, 1 fails, 2 hangs, 3 holds (see [`super::AppStop`]).
        pub(super) app_stop: AtomicU8,
    }

    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct SwitchesFile {
        #[serde(default)]
        clock_offset_ms: i64,
        #[serde(default)]
        app_stop: Option<AppStopFile>,
        #[serde(default)]
        journal_write_delay_ms: u64,
    }

    #[derive(serde::Deserialize, Clone, Copy)]
    #[serde(rename_all = "lowercase")]
    enum AppStopFile {
        Fails,
        Hangs,
        Holds,
    }

    static SWITCHES: Switches = Switches {
        clock_offset_ms: AtomicI64::new(0),
        app_stop: AtomicU8::new(0),
    };
    static READER_STARTED: Once = Once::new();

    /// The switches, read from the file at the first call and kept up to date by a thread.
    pub(super) fn switches() -> &'static Switches {
        READER_STARTED.call_once(|| {
            if let Some(path) = std::env::var_os(super::ENV_VAR) {
                let path = std::path::PathBuf::from(path);
                let mut last = None;
                read(&path, &SWITCHES, &mut last);
                let _ = std::thread::Builder::new()
                    .name("fault-switches".into())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(std::time::Duration::from_millis(super::POLL_MS));
                            read(&path, &SWITCHES, &mut last);
                        }
                    });
            }
        });
        &SWITCHES
    }

    /// Reads the file into `s`; `last` is the text last seen, so a change is logged once.
    fn read(path: &std::path::Path, s: &Switches, last: &mut Option<String>) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the fault switches");
                return;
            }
        };
        if last.as_deref() == Some(text.as_str()) {
            return;
        }
        match toml::from_str::<SwitchesFile>(&text) {
            Ok(f) => {
                s.clock_offset_ms
                    .store(f.clock_offset_ms, Ordering::Relaxed);
                let app_stop = match f.app_stop {
                    None => 0,
                    Some(AppStopFile::Fails) => 1,
                    Some(AppStopFile::Hangs) => 2,
                    Some(AppStopFile::Holds) => 3,
                };
                s.app_stop.store(app_stop, Ordering::Relaxed);
                stillpoint_storage::journal::set_switched_write_delay_ms(f.journal_write_delay_ms);
                tracing::warn!(path = %path.display(), clock_offset_ms = f.clock_offset_ms, app_stop,
                    journal_write_delay_ms = f.journal_write_delay_ms, "fault switches set");
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "the fault switches file does not parse; the switches keep their values");
            }
        }
        *last = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_moves_forward_with_real_time() {
        let a = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = monotonic_ms();
        assert!(
            a > 0 && b >= a + 15,
            "boot clock went from {a} to {b} ms over 20 ms"
        );
    }
}
