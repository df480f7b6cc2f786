//! PostgreSQL's online backup through the job engine: the settings' checks, and the label
//! `pg_backup_stop` returned travelling from the release's result (recorded as the log would:
//! through serde) to the RV mount's order — only when the quiesce held.

use super::*;
use crate::inventory::{Group, GroupMember, LdRef, QuiesceMethod, VolumeRef};
use crate::postgres::{BackupLabel, PostgresQuiesce};

fn vol(node: &str, volume: &str) -> VolumeRef {
    VolumeRef {
        node: node.into(),
        volume: volume.into(),
    }
}

fn settings() -> PostgresQuiesce {
    PostgresQuiesce {
        host: "/var/run/postgresql".into(),
        port: 5432,
        user: "postgres".into(),
        database: "postgres".into(),
        password: Some("s3cret".into()),
        data_dir: "pgdata".into(),
        wal_archive_dir: "/backup/wal".into(),
    }
}

/// Two pairs: p0 holds a PostgreSQL data directory (online backup), p1 plain files (freeze).
fn group() -> Group {
    let member = |i: u32, quiesce: QuiesceMethod| GroupMember {
        pair: format!("p{i}"),
        mv_ld: LdRef {
            array: "A1".into(),
            ld: 2 * i,
        },
        rv_ld: LdRef {
            array: "A1".into(),
            ld: 2 * i + 1,
        },
        mv: vol("db1", &format!("mv{i}")),
        rv: vol("backup1", &format!("rv{i}")),
        quiesce,
        quiesce_ms_max: 30_000,
    };
    Group {
        name: "pg".into(),
        members: vec![
            member(0, QuiesceMethod::Postgresql(Box::new(settings()))),
            member(1, QuiesceMethod::Freeze),
        ],
        backup_command: None,
    }
}

fn label() -> BackupLabel {
    BackupLabel {
        label_file: "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n".into(),
        tablespace_map: String::new(),
        stop_lsn: "0/3000100".into(),
    }
}

/// Records `event` as every replica would: after a trip through the log's encoding.
fn record(job: &mut Job, event: &JobEvent, at_ms: u64) {
    let logged: JobEvent = serde_json::from_str(&serde_json::to_string(event).unwrap()).unwrap();
    assert_eq!(&logged, event, "the event survives the log's encoding");
    job.record(&logged, at_ms).unwrap();
}

/// Drives a backup of `group()` with every step succeeding; the PostgreSQL member's release
/// reports `release`. Returns the job and every dispatch sent.
fn run(release: impl Fn(&VolumeRef) -> StepResult) -> (Job, Vec<Dispatch>) {
    let g = group();
    let mut job = Job::new(
        11,
        JobKind::Backup {
            group: g.name.clone(),
        },
        "test".into(),
        0,
        plan_backup(&g, &StepLimits::default()),
    );
    job.pairs = g.members.clone();
    let mut sent = Vec::new();
    for now in 1..500u64 {
        if job.is_ended() {
            return (job, sent);
        }
        for action in decide(&job, 1, now) {
            match action {
                Action::Record(e) => record(&mut job, &e, now),
                Action::Probe { .. } => panic!("nothing is lost in this run"),
                Action::Dispatch(d) => {
                    record(
                        &mut job,
                        &JobEvent::Dispatched {
                            step: d.step,
                            token: d.token,
                        },
                        now,
                    );
                    let result = match &d.call {
                        StepCall::FreeRv { .. } => StepResult::RvFreed,
                        StepCall::SetPair { .. } => StepResult::PairSet,
                        StepCall::Replicate { .. } => StepResult::InSync,
                        StepCall::Quiesce { .. } => StepResult::Quiesced {
                            quiesce_id: u64::from(d.step) + 100,
                        },
                        StepCall::Separate { .. } => StepResult::SeparateAccepted,
                        StepCall::Release { volume, .. } => release(volume),
                        StepCall::AwaitSeparated { .. } => StepResult::Separated,
                        StepCall::MountRv { .. } => StepResult::RvMounted {
                            repaired: d.check_first,
                        },
                        StepCall::RunBackup { .. } => StepResult::BackupRan { exit_code: 0 },
                    };
                    record(
                        &mut job,
                        &JobEvent::Completed {
                            step: d.step,
                            token: d.token,
                            result,
                        },
                        now,
                    );
                    sent.push(d);
                }
            }
        }
    }
    panic!("the job did not end: {:?}", job.state);
}

fn mounts(sent: &[Dispatch]) -> Vec<&Dispatch> {
    sent.iter()
        .filter(|d| matches!(d.call, StepCall::MountRv { .. }))
        .collect()
}

#[test]
fn the_label_pg_backup_stop_returned_reaches_the_rv_mount_of_its_member_only() {
    let (job, sent) = run(|volume| StepResult::Released {
        held_throughout: true,
        backup_label: (volume.volume == "mv0").then(label),
    });
    assert_eq!(
        job.state,
        JobState::Ended {
            end: JobEnd::Done {
                label: CopyLabel::Consistent
            },
            at_ms: match job.state {
                JobState::Ended { at_ms, .. } => at_ms,
                _ => unreachable!(),
            }
        }
    );
    // The quiesce order carries the connection settings to the business node.
    let quiesce = sent
        .iter()
        .find(|d| matches!(&d.call, StepCall::Quiesce { volume, .. } if volume.volume == "mv0"))
        .unwrap();
    assert!(matches!(
        &quiesce.call,
        StepCall::Quiesce { method: QuiesceMethod::Postgresql(s), .. } if **s == settings()
    ));
    let mounts = mounts(&sent);
    assert_eq!(mounts.len(), 2);
    for d in mounts {
        let StepCall::MountRv { volume } = &d.call else {
            unreachable!()
        };
        match volume.volume.as_str() {
            "rv0" => {
                let copy = d.postgres_copy.as_ref().expect("rv0 gets the label");
                assert_eq!(copy.label, label());
                assert_eq!(copy.data_dir, "pgdata");
                assert_eq!(copy.wal_archive_dir, "/backup/wal");
                assert_eq!(copy.job_id, 11);
                assert!(!d.check_first);
            }
            "rv1" => assert_eq!(d.postgres_copy, None, "a freeze member gets no label"),
            other => panic!("mount of {other}"),
        }
    }
    // The catalogue says which method made each pair's copy.
    let entry = crate::views::copy_entry(&job).unwrap();
    let methods: Vec<&str> = entry.pairs.iter().map(|p| p.quiesce.as_str()).collect();
    assert_eq!(methods, ["postgresql", "freeze"]);
}

#[test]
fn a_lost_online_backup_writes_no_label_and_the_copy_is_crash_consistent() {
    // The release reports the session lost (no label) in every round: the job settles for a
    // crash-consistent copy, checked before mounting, and no label reaches the RV.
    let (job, sent) = run(|volume| StepResult::Released {
        held_throughout: volume.volume != "mv0",
        backup_label: None,
    });
    match &job.state {
        JobState::Ended {
            end:
                JobEnd::Done {
                    label: CopyLabel::CrashConsistent { why },
                },
            ..
        } => assert!(why.contains("db1:mv0"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(job.round, ROUNDS_MAX);
    for d in mounts(&sent) {
        assert_eq!(d.postgres_copy, None);
        assert!(d.check_first, "a crash-consistent copy is checked first");
    }
}

#[test]
fn a_label_from_a_release_that_did_not_hold_is_never_written() {
    // Defence in depth: even if a release reported a label with held_throughout false, the
    // mount is not told to write it.
    let (_, sent) = run(|volume| StepResult::Released {
        held_throughout: volume.volume != "mv0",
        backup_label: (volume.volume == "mv0").then(label),
    });
    assert!(mounts(&sent).iter().all(|d| d.postgres_copy.is_none()));
}

#[test]
fn postgres_settings_are_checked_naming_the_member_and_field() {
    let mut g = group();
    let mut bad = settings();
    bad.port = 0;
    bad.user = " ".into();
    bad.data_dir = "/srv/pgdata".into();
    bad.wal_archive_dir = "wal".into();
    g.members[0].quiesce = QuiesceMethod::Postgresql(Box::new(bad));
    let errors = g.validate(&crate::ClusterState::default());
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for field in ["port", "user", "data_dir", "wal_archive_dir"] {
        let path = format!("groups.pg.members[0].postgresql.{field}");
        assert!(paths.contains(&path.as_str()), "{path} not in {paths:?}");
    }
    let mut bad = settings();
    bad.data_dir = "../etc".into();
    bad.wal_archive_dir = "/wal/it's".into();
    let problems: Vec<&str> = bad.problems().into_iter().map(|(f, _)| f).collect();
    assert_eq!(problems, ["data_dir", "wal_archive_dir"]);
    assert!(settings().problems().is_empty());
}

#[test]
fn the_password_is_never_printed() {
    let shown = format!("{:?}", QuiesceMethod::Postgresql(Box::new(settings())));
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("<hidden>"), "{shown}");
}

#[test]
fn the_method_reads_back_from_the_inventory_encoding() {
    // As the state machine stores it; the older unit methods keep their encoding.
    let m = QuiesceMethod::Postgresql(Box::new(settings()));
    let text = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<QuiesceMethod>(&text).unwrap(), m);
    assert_eq!(
        serde_json::to_string(&QuiesceMethod::Freeze).unwrap(),
        "\"freeze\""
    );
    // A release recorded before labels existed still reads.
    let old: StepResult =
        serde_json::from_str(r#"{"result":"released","held_throughout":true}"#).unwrap();
    assert_eq!(
        old,
        StepResult::Released {
            held_throughout: true,
            backup_label: None
        }
    );
}
