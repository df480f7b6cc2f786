//! What the harness writes down while a schedule runs, and the array's audit log read back.
//! These are the only inputs of the checkers ([`super::check`]): nothing here is a job's
//! opinion of itself except how each job ended, which is what a user sees.

use std::collections::BTreeMap;
use std::path::Path;

use stillpoint_array::AuditLine;
use stillpoint_coordinator::job::{CopyLabel, JobEnd};

use super::schedule::FaultKind;

/// Wall-clock milliseconds since the Unix epoch (the array stamps its audit lines with the
/// same clock: every process runs on this machine).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fault as struck: on what, from when to when it was removed.
#[derive(Clone, Debug)]
pub struct FaultWindow {
    pub kind: FaultKind,
    /// Agent names, or `A1` for the array.
    pub targets: Vec<String>,
    pub start_ms: u64,
    /// When the processes were running again (or the heal phase started).
    pub end_ms: u64,
}

/// One look at the backup node's volumes: between `sent_ms` and `recv_ms` the host said these
/// RVs (by LD number) were mounted.
#[derive(Clone, Debug)]
pub struct MountPoll {
    pub sent_ms: u64,
    pub recv_ms: u64,
    pub mounted_rv_lds: Vec<u32>,
}

/// A job the client saw accepted, and how it ended as far as the harness saw.
#[derive(Clone, Debug)]
pub struct JobSeen {
    pub accepted_ms: u64,
    /// How it ended and when the job record says it did.
    pub end: Option<(JobEnd, u64)>,
}

/// The workload's verifier run on one RV right after a job ended with a consistent copy.
#[derive(Clone, Debug)]
pub struct Verification {
    pub job_id: u64,
    pub rv_ld: u32,
    pub pair: String,
    /// When the job record says the job ended.
    pub job_ended_ms: u64,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Intact records, or what the verifier found wrong, or why it could not read.
    pub outcome: VerifyOutcome,
}

#[derive(Clone, Debug)]
pub enum VerifyOutcome {
    Intact { records: u64 },
    Damaged { what: String },
    Unreadable { why: String },
}

/// Everything a schedule recorded.
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub faults: Vec<FaultWindow>,
    /// Faults planned but not struck, with why (e.g. no quiesce was held).
    pub skipped: Vec<(FaultKind, String)>,
    pub polls: Vec<MountPoll>,
    pub jobs: BTreeMap<u64, JobSeen>,
    pub submissions_refused: u64,
    pub submissions_unknown: u64,
    pub verifications: Vec<Verification>,
    /// Free-form lines for the timeline (harness actions and observations).
    pub notes: Vec<(u64, String)>,
    pub fault_phase_ms: (u64, u64),
    /// Start of the heal phase and when it ended (everything settled, or the bound).
    pub heal_phase_ms: (u64, u64),
}

impl Records {
    /// The jobs seen ended done with a copy labelled consistent: (id, end instant).
    pub fn consistent_copies(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.jobs.iter().filter_map(|(id, seen)| match &seen.end {
            Some((
                JobEnd::Done {
                    label: CopyLabel::Consistent,
                },
                ended_ms,
            )) => Some((*id, *ended_ms)),
            _ => None,
        })
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push((now_ms(), line.into()));
    }
}

/// Reads the array's audit log. A last line cut short (the array killed mid-write) and
/// blank lines are skipped; any other line that does not parse is an error naming it.
pub fn read_audit(path: &Path) -> Result<Vec<AuditLine>, String> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => return Err(format!("cannot read the audit log {}: {e}", path.display())),
    };
    let mut out = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<AuditLine>(line) {
            Ok(l) => out.push(l),
            // A line cut by a kill (a prefix of a line) is followed by the newline the
            // restarted array writes, or is the last.
            Err(_)
                if line.starts_with("{\"seq\":")
                    && (i + 1 == lines.len() || lines[i + 1].starts_with('{')) => {}
            Err(e) => {
                return Err(format!(
                    "{}: line {} does not parse: {e}",
                    path.display(),
                    i + 1
                ));
            }
        }
    }
    Ok(out)
}

/// The audit logs of the site's arrays (A1's first) as one record in time order (every array
/// stamps its lines with this machine's clock); lines of one log keep their order. Pairs live
/// on their MV's array, so only A1 logs pair events; A2 logs the host I/O on the RVs of RDR
/// pairs.
pub fn merge_audits(logs: Vec<Vec<AuditLine>>) -> Vec<AuditLine> {
    let mut all: Vec<AuditLine> = logs.into_iter().flatten().collect();
    all.sort_by_key(|l| l.at_unix_ms);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_logs_merge_in_time_order_keeping_each_logs_order() {
        let line = |seq: u64, at: u64, ld: u32| AuditLine {
            seq,
            at_unix_ms: at,
            event: stillpoint_array::AuditEvent::MvWrite {
                host: "db1".into(),
                ld,
            },
        };
        let a1 = vec![line(0, 10, 0), line(1, 30, 0), line(2, 30, 2)];
        let a2 = vec![line(0, 20, 3), line(1, 30, 3)];
        let got: Vec<(u64, u32)> = merge_audits(vec![a1, a2])
            .iter()
            .map(|l| match &l.event {
                stillpoint_array::AuditEvent::MvWrite { ld, .. } => (l.at_unix_ms, *ld),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(got, vec![(10, 0), (20, 3), (30, 0), (30, 2), (30, 3)]);
    }

    #[test]
    fn the_audit_log_reads_past_a_line_cut_by_a_kill_and_refuses_other_garbage() {
        let dir = std::env::temp_dir().join(format!("chaos-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let line = |seq: u64| {
            format!(
                "{{\"seq\":{seq},\"at_unix_ms\":5,\"kind\":\"mv_write\",\"host\":\"db1\",\"ld\":0}}"
            )
        };
        // A line cut short by a kill, then the restarted array's newline and next line.
        let text = format!("{}\n{{\"seq\":1,\"at_un\n{}\n", line(0), line(1));
        std::fs::write(&path, text).unwrap();
        let got = read_audit(&path).expect("reads");
        assert_eq!(got.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![0, 1]);
        std::fs::write(&path, format!("{}\nnot json\n{}\n", line(0), line(1))).unwrap();
        let e = read_audit(&path).expect_err("garbage in the middle");
        assert!(e.contains("line 2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
