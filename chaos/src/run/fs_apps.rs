//! The applications of a site whose MVs are real file systems (`run --fs ext4`): one
//! [`FileApp`] per MV, appending 4 KiB records to `records` on the MV's mount point and
//! `fdatasync`ing each, from the harness's process (the agents and their LD path processes
//! share this machine's mount namespace, [`crate::net`]). What each one saw — its longest
//! waits and the error that stopped it, with their times — is its own record, which S4
//! judges here beside the array's view ([`super::check::s4`]).

use std::path::Path;
use std::time::Duration;

use stillpoint_host::{FileApp, Stall};
use stillpoint_node::demo::site::SiteLayout;

use super::check::{SiteFacts, Violation};
use super::excuse::{damages_mv, excuses_on};
use super::fs_copy::RECORDS_FILE;
use super::records::Records;

/// Pause between an application's records (so 50 records, 200 KiB, a second per MV).
pub const FILE_APP_PACE_MS: u64 = 20;
/// How long a stopping application may take (a write waits out a freeze).
const STOP_WAIT: Duration = Duration::from_secs(30);
/// The LD path's bound on one array call (`stillpoint_host::limits::LD_IO_TIMEOUT_MS`): an
/// array fault can fail an MV write this long after it ends.
const LD_IO_BOUND_MS: u64 = stillpoint_host::limits::LD_IO_TIMEOUT_MS;

/// One MV's application.
pub struct MvApp {
    pub pair: String,
    pub host: String,
    app: FileApp,
}

/// What an application saw, once stopped.
#[derive(Clone, Debug)]
pub struct AppSeen {
    pub pair: String,
    pub host: String,
    pub acked: u64,
    pub long_stalls: Vec<Stall>,
    /// The error that stopped it and when (Unix ms).
    pub failed: Option<(u64, String)>,
    /// It did not stop within the bound (a write still blocked).
    pub stuck: bool,
}

/// Starts the application on every MV of `layout` (mounted under `dir`).
pub fn start(layout: &SiteLayout, dir: &Path) -> Vec<MvApp> {
    layout
        .pairs
        .iter()
        .map(|p| {
            let host = layout.name(p.mv_node);
            let mount = layout.mount_point(dir, &host, &p.mv_volume);
            MvApp {
                pair: p.pair.clone(),
                app: FileApp::start(
                    Path::new(&mount).join(RECORDS_FILE),
                    Duration::from_millis(FILE_APP_PACE_MS),
                ),
                host,
            }
        })
        .collect()
}

/// Stops every application (bounded) and returns what each saw.
pub fn stop(apps: Vec<MvApp>) -> Vec<AppSeen> {
    apps.into_iter()
        .map(|mut a| {
            let stopped = a.app.stop(STOP_WAIT);
            AppSeen {
                acked: a.app.acked(),
                long_stalls: a.app.long_stalls(),
                failed: a
                    .app
                    .failed_unix_ms()
                    .map(|t| (t, a.app.errors().join("; "))),
                stuck: !stopped,
                pair: a.pair,
                host: a.host,
            }
        })
        .collect()
}

/// What [`s4`] found besides violations.
#[derive(Clone, Debug, Default)]
pub struct AppCounts {
    /// The longest wait for one record that was judged.
    pub longest_judged_ms: u64,
    /// Waits and errors a fault explains, counted and not judged.
    pub excused: u64,
}

/// S4 from the applications' own records: no record waited longer than the quiesce limit
/// plus the slack, unless a fault on its write path ([`excuses_on`]) overlaps the wait; no
/// application stopped on an I/O error, unless a fault that can fail an MV's writes
/// ([`damages_mv`]) struck within the LD path's bound before it; none left blocked.
pub fn s4(seen: &[AppSeen], records: &Records, facts: &SiteFacts) -> (Vec<Violation>, AppCounts) {
    let bound = facts.quiesce_ms_max + facts.stall_slack_ms;
    let mut out = Vec::new();
    let mut counts = AppCounts::default();
    for a in seen {
        for s in &a.long_stalls {
            let (from, to) = (s.started_unix_ms, s.started_unix_ms + s.ms);
            if s.ms <= bound {
                counts.longest_judged_ms = counts.longest_judged_ms.max(s.ms);
                continue;
            }
            let excused = records
                .faults
                .iter()
                .any(|w| excuses_on(w, &a.host, true) && w.start_ms <= to && w.end_ms >= from);
            if excused {
                counts.excused += 1;
                continue;
            }
            counts.longest_judged_ms = counts.longest_judged_ms.max(s.ms);
            out.push(Violation {
                prop: "S4",
                at_ms: from,
                what: format!(
                    "the application on {} ({}) waited {} ms for one synced record; limit {} ms + slack {} ms",
                    a.host, a.pair, s.ms, facts.quiesce_ms_max, facts.stall_slack_ms
                ),
            });
        }
        if let Some((at, error)) = &a.failed {
            let excused = records.faults.iter().any(|w| {
                is_array_path_fault(w.kind)
                    && damages_mv(w, &a.host)
                    && w.start_ms <= *at
                    && w.end_ms + LD_IO_BOUND_MS >= *at
            });
            if excused {
                counts.excused += 1;
            } else {
                out.push(Violation {
                    prop: "S4",
                    at_ms: *at,
                    what: format!(
                        "the application on {} ({}) stopped on an I/O error: {error}",
                        a.host, a.pair
                    ),
                });
            }
        }
        if a.stuck {
            out.push(Violation {
                prop: "S4",
                at_ms: records.heal_phase_ms.1,
                what: format!(
                    "the application on {} ({}) was still blocked in a write {} s after the heal phase ended",
                    a.host,
                    a.pair,
                    STOP_WAIT.as_secs()
                ),
            });
        }
    }
    (out, counts)
}

/// Faults on the path an MV's writes take to the array (with real file systems the agent is
/// not on it).
fn is_array_path_fault(kind: super::schedule::FaultKind) -> bool {
    use super::schedule::FaultKind as K;
    matches!(
        kind,
        K::KillArray | K::PauseArray | K::CutArray | K::RdrLinkDown
    ) || kind.is_link_fault()
}

#[cfg(test)]
mod tests {
    use super::super::records::FaultWindow;
    use super::super::schedule::FaultKind;
    use super::*;

    fn facts() -> SiteFacts {
        SiteFacts {
            backup_host: "backup1".into(),
            rv_pairs: Default::default(),
            rv_arrays: Default::default(),
            rv_mv_hosts: Default::default(),
            mvs: Default::default(),
            quiesce_ms_max: 10_000,
            stall_slack_ms: 3_000,
            real_fs: true,
        }
    }

    fn seen(stall: Option<(u64, u64)>, failed: Option<u64>) -> AppSeen {
        AppSeen {
            pair: "p0".into(),
            host: "db1".into(),
            acked: 100,
            long_stalls: stall
                .map(|(at, ms)| Stall {
                    started_unix_ms: at,
                    ms,
                })
                .into_iter()
                .collect(),
            failed: failed.map(|t| (t, "record 7: Input/output error".into())),
            stuck: false,
        }
    }

    fn window(kind: FaultKind, target: &str, start_ms: u64, end_ms: u64) -> FaultWindow {
        FaultWindow {
            kind,
            targets: vec![target.into()],
            start_ms,
            end_ms,
        }
    }

    #[test]
    fn a_long_wait_is_judged_unless_the_array_path_was_struck_and_an_agent_kill_excuses_nothing() {
        let long = [seen(Some((1_000, 20_000)), None)];
        let mut records = Records::default();
        records
            .faults
            .push(window(FaultKind::KillQuiesced, "db1", 2_000, 3_000));
        let (v, _) = s4(&long, &records, &facts());
        assert_eq!(
            v.len(),
            1,
            "a killed agent is not on a real MV's write path"
        );
        records
            .faults
            .push(window(FaultKind::PauseArray, "A1", 5_000, 9_000));
        let (v, counts) = s4(&long, &records, &facts());
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(counts.excused, 1);
        let short = [seen(Some((1_000, 12_000)), None)];
        let (v, counts) = s4(&short, &Records::default(), &facts());
        assert!(v.is_empty());
        assert_eq!(counts.longest_judged_ms, 12_000);
    }

    #[test]
    fn an_io_error_is_a_violation_unless_an_array_fault_came_just_before_it() {
        let failed = [seen(None, Some(50_000))];
        let (v, _) = s4(&failed, &Records::default(), &facts());
        assert_eq!(v.len(), 1);
        assert!(v[0].what.contains("Input/output error"), "{:?}", v[0]);
        let mut records = Records::default();
        records
            .faults
            .push(window(FaultKind::KillArray, "A1", 40_000, 41_000));
        let (v, counts) = s4(&failed, &records, &facts());
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(counts.excused, 1);
        records.faults[0].kind = FaultKind::KillLeader;
        records.faults[0].targets = vec!["db1".into()];
        let (v, _) = s4(&failed, &records, &facts());
        assert_eq!(v.len(), 1, "an agent's death fails no write on a real MV");
    }
}
