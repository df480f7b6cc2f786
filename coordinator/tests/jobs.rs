//! The inventory and the job table as the state machine applies them: declarative inventory
//! with validation and S5, jobs planned in `apply`, locks, the queue, `--no-queue`, cancel,
//! bounded history, and determinism across replicas.

use stillpoint_coordinator::inventory::{
    ArraySpec, CopyControl, GroupSpec, Inventory, LdRef, MemberSpec, PairSpec, QuiesceMethod,
    ReplicationKind, VolumeRef, VolumeSpec,
};
use stillpoint_coordinator::job::{JobEnd, JobEvent, JobKind, JobState};
use stillpoint_coordinator::{ClusterState, Command, NodeRecord, Response, Role};

/// The raft membership the state machine applies under (id → admitted address): every
/// registering node is a member at the address it registers.
fn members() -> std::collections::BTreeMap<u64, String> {
    (1..=4)
        .map(|id| (id, format!("127.0.0.1:{}", 7400 + id)))
        .collect()
}

fn registered() -> ClusterState {
    let mut s = ClusterState::default();
    for (id, name, role) in [
        (1, "mgmt1", Role::Management),
        (2, "db1", Role::Business),
        (3, "db2", Role::Business),
        (4, "backup1", Role::Backup),
    ] {
        s.apply(
            &members(),
            &Command::RegisterNode(NodeRecord {
                node_id: id,
                name: name.into(),
                address: format!("127.0.0.1:{}", 7400 + id),
                roles: [role].into(),
                version: "0.1.0".into(),
                registered_at_ms: 0,
                deregistered_at_ms: None,
            }),
        );
    }
    s
}

fn ld(ld: u32) -> LdRef {
    LdRef {
        array: "A1".into(),
        ld,
    }
}

fn vol(node: &str, volume: &str) -> VolumeRef {
    VolumeRef {
        node: node.into(),
        volume: volume.into(),
    }
}

/// Two pairs (db1:mv0 → backup1:rv0, db2:mv1 → backup1:rv1) and groups `both` and `first`.
fn site() -> Inventory {
    let mut inv = Inventory::default();
    inv.arrays.insert(
        "A1".into(),
        ArraySpec {
            name: "A1".into(),
            control_nodes: ["mgmt1".to_string()].into(),
        },
    );
    for i in 0..2u32 {
        inv.pairs.insert(
            format!("p{i}"),
            PairSpec {
                name: format!("p{i}"),
                mv: ld(2 * i),
                rv: ld(2 * i + 1),
                kind: ReplicationKind::Ddr,
                copy_control: CopyControl::Sync,
            },
        );
        for (node, name, l) in [
            (format!("db{}", i + 1), format!("mv{i}"), 2 * i),
            ("backup1".to_string(), format!("rv{i}"), 2 * i + 1),
        ] {
            inv.volumes.insert(
                format!("{node}:{name}"),
                VolumeSpec {
                    node,
                    volume: name,
                    ld: ld(l),
                },
            );
        }
    }
    let member = |i: u32| MemberSpec {
        pair: format!("p{i}"),
        mv: vol(&format!("db{}", i + 1), &format!("mv{i}")),
        rv: vol("backup1", &format!("rv{i}")),
        quiesce: QuiesceMethod::Freeze,
        quiesce_ms_max: 10_000,
    };
    for (name, members) in [
        ("both", vec![member(0), member(1)]),
        ("first", vec![member(0)]),
    ] {
        inv.groups.insert(
            name.into(),
            GroupSpec {
                name: name.into(),
                members,
                backup_command: None,
            },
        );
    }
    inv
}

fn apply_inventory(s: &mut ClusterState, inventory: Inventory, prune: bool) -> Response {
    s.apply(
        &members(),
        &Command::ApplyInventory {
            inventory,
            prune,
            by: "ops".into(),
            at_ms: 1,
        },
    )
}

fn submit(s: &mut ClusterState, group: &str, no_queue: bool) -> Response {
    s.apply(
        &members(),
        &Command::SubmitJob {
            kind: JobKind::Backup {
                group: group.into(),
            },
            submitted_by: "ops".into(),
            at_ms: 2,
            no_queue,
        },
    )
}

fn cancel(s: &mut ClusterState, job_id: u64) -> Response {
    s.apply(
        &members(),
        &Command::Job {
            job_id,
            event: JobEvent::CancelRequested { by: "ops".into() },
            at_ms: 3,
        },
    )
}

/// Ends a running job by cancelling it and recording what a driver would: pending steps
/// skipped, then the end.
fn finish(s: &mut ClusterState, job_id: u64) {
    cancel(s, job_id);
    let pending: Vec<u32> = s.jobs.jobs[&job_id].steps.iter().map(|st| st.id).collect();
    for event in [
        JobEvent::Skipped {
            steps: pending,
            why: "cancelled".into(),
        },
        JobEvent::Ended {
            end: JobEnd::Cancelled { by: "ops".into() },
        },
    ] {
        let r = s.apply(
            &members(),
            &Command::Job {
                job_id,
                event,
                at_ms: 4,
            },
        );
        assert_eq!(r, Response::Applied { changed: true });
    }
}

#[test]
fn an_inventory_applies_declaratively_and_idempotently() {
    let mut s = registered();
    let Response::InventoryApplied { changes } = apply_inventory(&mut s, site(), false) else {
        panic!("refused")
    };
    assert_eq!(changes.len(), 1 + 2 + 4 + 2, "{changes:?}");
    assert_eq!(
        apply_inventory(&mut s, site(), false),
        Response::InventoryApplied { changes: vec![] },
        "applying the same file again changes nothing"
    );
    // A file that no longer mentions group `first` keeps it, unless pruned.
    let mut smaller = site();
    smaller.groups.remove("first");
    apply_inventory(&mut s, smaller.clone(), false);
    assert!(s.inventory.groups.contains_key("first"));
    let Response::InventoryApplied { changes } = apply_inventory(&mut s, smaller, true) else {
        panic!("refused")
    };
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].what, "group first");
    assert!(!s.inventory.groups.contains_key("first"));
}

#[test]
fn an_invalid_inventory_is_refused_whole_naming_each_rule_and_where() {
    let mut s = registered();
    let mut bad = site();
    // The RV volume of p1 is on the MV's LD, and p0's RV sits on a business-only node.
    bad.volumes.get_mut("backup1:rv1").unwrap().ld = ld(2);
    bad.groups.get_mut("first").unwrap().members[0].rv = vol("db2", "mv1");
    bad.arrays.get_mut("A1").unwrap().control_nodes = ["mgmt9".to_string()].into();
    let Response::InventoryInvalid { errors } = apply_inventory(&mut s, bad, false) else {
        panic!("accepted")
    };
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let expect = [
        "arrays.A1.control_nodes: no node named \"mgmt9\" is registered",
        "groups.both.members[1].rv: volume backup1:rv1 is on LD A1:2, but pair p1's rv is LD A1:3",
        "groups.first.members[0].rv: volume db2:mv1 is on LD A1:2, but pair p0's rv is LD A1:1",
        "groups.first.members[0].rv: node \"db2\" does not have the backup role (it has: business)",
    ];
    assert_eq!(text, expect);
    assert_eq!(s.inventory, Inventory::default(), "nothing applied");
}

#[test]
fn conflicting_jobs_queue_or_are_refused_and_the_queue_moves_when_the_owner_ends() {
    let mut s = registered();
    apply_inventory(&mut s, site(), false);
    assert_eq!(
        submit(&mut s, "both", false),
        Response::JobAccepted {
            job_id: 1,
            waiting_for: None
        }
    );
    let refused = submit(&mut s, "first", true);
    let Response::Refused { rule } = &refused else {
        panic!("{refused:?}")
    };
    assert!(
        rule.starts_with("S5: pair p0 is owned by job 1 (running)"),
        "{rule}"
    );
    assert_eq!(
        submit(&mut s, "first", false),
        Response::JobAccepted {
            job_id: 2,
            waiting_for: Some(1)
        }
    );
    assert!(matches!(
        s.jobs.jobs[&2].state,
        JobState::Queued { waiting_for: 1 }
    ));
    // Nothing is recorded for a queued job but its cancel.
    let r = s.apply(
        &members(),
        &Command::Job {
            job_id: 2,
            event: JobEvent::TakenOver { term: 2 },
            at_ms: 3,
        },
    );
    assert!(matches!(r, Response::Refused { .. }), "{r:?}");
    // The inventory a running job uses cannot change under it.
    let mut changed = site();
    changed.pairs.get_mut("p0").unwrap().copy_control = CopyControl::Background;
    let r = apply_inventory(&mut s, changed, false);
    assert!(
        matches!(&r, Response::Refused { rule } if rule.contains("pair p0 is used by job 1")),
        "{r:?}"
    );
    finish(&mut s, 1);
    assert_eq!(s.jobs.jobs[&2].state, JobState::Running);
    assert!(s.jobs.locks.values().all(|j| *j == 2), "{:?}", s.jobs.locks);
}

#[test]
fn a_queued_job_cancelled_ends_at_once_and_history_is_bounded() {
    let mut s = registered();
    let mut inv = site();
    inv.settings.jobs_retained_max = 3;
    apply_inventory(&mut s, inv, false);
    submit(&mut s, "both", false);
    submit(&mut s, "first", false);
    assert_eq!(cancel(&mut s, 2), Response::Applied { changed: true });
    assert!(matches!(
        s.jobs.jobs[&2].state,
        JobState::Ended {
            end: JobEnd::Cancelled { .. },
            ..
        }
    ));
    assert!(s.jobs.queue.is_empty());
    finish(&mut s, 1);
    for _ in 0..4 {
        let Response::JobAccepted { job_id, .. } = submit(&mut s, "first", false) else {
            panic!()
        };
        finish(&mut s, job_id);
    }
    let kept: Vec<u64> = s.jobs.jobs.keys().copied().collect();
    assert_eq!(kept, vec![4, 5, 6], "the oldest ended jobs are forgotten");
}

#[test]
fn replicas_applying_the_same_commands_reach_the_same_state() {
    let run = || {
        let mut s = registered();
        let mut out = vec![apply_inventory(&mut s, site(), false)];
        out.push(submit(&mut s, "both", false));
        out.push(submit(&mut s, "first", false));
        out.push(submit(&mut s, "nope", false));
        finish(&mut s, 1);
        (serde_json::to_string(&s).unwrap(), out)
    };
    assert_eq!(run(), run());
}

#[test]
fn an_accepted_job_keeps_the_pairs_it_was_planned_from_after_the_inventory_changes() {
    let mut s = registered();
    assert!(matches!(
        apply_inventory(&mut s, site(), false),
        Response::InventoryApplied { .. }
    ));
    let Response::JobAccepted { job_id, .. } = submit(&mut s, "both", false) else {
        panic!("not accepted")
    };
    let cancel = Command::Job {
        job_id,
        event: JobEvent::CancelRequested { by: "ops".into() },
        at_ms: 3,
    };
    s.apply(&members(), &cancel);
    // The job ends (as the driver records it once nothing is outstanding), then the inventory
    // moves p1's RV to another LD.
    s.apply(
        &members(),
        &Command::Job {
            job_id,
            event: JobEvent::Ended {
                end: JobEnd::Cancelled { by: "ops".into() },
            },
            at_ms: 4,
        },
    );
    let mut moved = site();
    moved.pairs.get_mut("p1").unwrap().rv = ld(9);
    moved.volumes.get_mut("backup1:rv1").unwrap().ld = ld(9);
    assert!(matches!(
        apply_inventory(&mut s, moved, false),
        Response::InventoryApplied { .. }
    ));
    let pairs = &s.jobs.jobs[&job_id].pairs;
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[1].pair, "p1");
    assert_eq!(pairs[1].mv_ld, ld(2));
    assert_eq!(
        pairs[1].rv_ld,
        ld(3),
        "as planned, not as the inventory says now"
    );
    assert_eq!(pairs[1].rv, vol("backup1", "rv1"));
}
