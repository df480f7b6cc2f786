use stillpoint_array::{CopyRole, LdInfo, LdRole, RvAccess};
use stillpoint_coordinator::inventory::{
    ArraySpec, CopyControl, Inventory, LdRef, PairSpec, ReplicationKind, VolumeSpec,
};

use super::*;

fn ld(number: u32, capacity_bytes: u64, format: &str, hosts: &[&str], role: LdRole) -> LdInfo {
    LdInfo {
        number,
        name: format!("LD{number}"),
        capacity_bytes,
        format: format.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        role,
        failed: false,
        copy_role: CopyRole::default(),
    }
}

fn r(ld: u32) -> LdRef {
    LdRef {
        array: "A1".into(),
        ld,
    }
}

fn site() -> Inventory {
    let mut inv = Inventory::default();
    inv.arrays.insert(
        "A1".into(),
        ArraySpec {
            name: "A1".into(),
            control_nodes: ["mgmt1".to_string()].into(),
        },
    );
    inv.pairs.insert(
        "p0".into(),
        PairSpec {
            name: "p0".into(),
            mv: r(0),
            rv: r(1),
            kind: ReplicationKind::Ddr,
            copy_control: CopyControl::Sync,
        },
    );
    for (node, volume, ld) in [("db1", "data", 0), ("backup1", "rv", 1)] {
        inv.volumes.insert(
            format!("{node}:{volume}"),
            VolumeSpec {
                node: node.into(),
                volume: volume.into(),
                ld: r(ld),
            },
        );
    }
    inv
}

fn live(lds: Vec<LdInfo>) -> LiveArrays {
    [("A1".to_string(), lds)].into()
}

fn paths(errors: &[InventoryError]) -> Vec<String> {
    errors.iter().map(|e| e.path.clone()).collect()
}

#[test]
fn a_site_the_live_array_can_serve_passes() {
    let lds = vec![
        ld(0, 1 << 20, "NX", &["db1"], LdRole::None),
        ld(1, 1 << 20, "NX", &["backup1"], LdRole::None),
    ];
    assert_eq!(pairing_errors(&site(), &live(lds)), vec![]);
    // The pair already set on the array as this pair is fine too.
    let lds = vec![
        ld(0, 1 << 20, "NX", &["db1"], LdRole::Mv { rvs: 1 }),
        rv_of_ld0(1),
    ];
    assert_eq!(pairing_errors(&site(), &live(lds)), vec![]);
    // An array nobody answered for is not checked.
    assert_eq!(pairing_errors(&site(), &LiveArrays::new()), vec![]);
}

#[test]
fn missing_lds_different_capacity_or_format_and_foreign_roles_are_named() {
    let e = pairing_errors(
        &site(),
        &live(vec![ld(0, 1 << 20, "NX", &["db1"], LdRole::None)]),
    );
    assert_eq!(paths(&e), ["pairs.p0.rv", "volumes.backup1:rv.ld"], "{e:?}");
    assert!(e[0].rule.contains("no LD 1"), "{e:?}");

    let e = pairing_errors(
        &site(),
        &live(vec![
            ld(0, 1 << 20, "NX", &["db1"], LdRole::None),
            ld(1, 2 << 20, "WN", &["backup1"], LdRole::Mv { rvs: 2 }),
        ]),
    );
    assert_eq!(paths(&e), ["pairs.p0.rv"; 3], "{e:?}");
    assert!(e[0].rule.contains("same capacity"), "{}", e[0].rule);
    assert!(e[1].rule.contains("same format"), "{}", e[1].rule);
    assert!(e[2].rule.contains("never an MV"), "{}", e[2].rule);

    let other_mv = stillpoint_array::LdRef {
        array: "A1".into(),
        ld: 7,
    };
    let e = pairing_errors(
        &site(),
        &live(vec![
            ld(
                0,
                1 << 20,
                "NX",
                &["db1"],
                LdRole::Rv {
                    mv: other_mv.clone(),
                    access: RvAccess::Rw,
                },
            ),
            ld(
                1,
                1 << 20,
                "NX",
                &["backup1"],
                LdRole::Rv {
                    mv: other_mv,
                    access: RvAccess::Nr,
                },
            ),
        ]),
    );
    assert_eq!(paths(&e), ["pairs.p0.rv", "pairs.p0.mv"], "{e:?}");
    assert!(
        e[0].rule.contains("already the RV of another pair"),
        "{e:?}"
    );
}

#[test]
fn a_volume_on_an_ld_its_node_cannot_see_is_named() {
    let e = pairing_errors(
        &site(),
        &live(vec![
            ld(0, 1 << 20, "NX", &["db2"], LdRole::None),
            ld(1, 1 << 20, "NX", &[], LdRole::None),
        ]),
    );
    assert_eq!(
        paths(&e),
        ["volumes.backup1:rv.ld", "volumes.db1:data.ld"],
        "{e:?}"
    );
    assert!(e[1].rule.contains("not on the access list"), "{e:?}");
    assert!(e[1].rule.contains("(db2)"), "{e:?}");
    assert!(e[0].rule.contains("(empty)"), "{e:?}");
}

/// `site()` plus pairs `p1..=extra` from MV A1:0 to RVs A1:10, A1:11, ... (DDR).
fn site_with_ddr_rvs(extra: u32) -> Inventory {
    let mut inv = site();
    for i in 1..=extra {
        inv.pairs.insert(
            format!("p{i}"),
            PairSpec {
                name: format!("p{i}"),
                mv: r(0),
                rv: r(9 + i),
                kind: ReplicationKind::Ddr,
                copy_control: CopyControl::Sync,
            },
        );
    }
    inv
}

fn rv_of_ld0(number: u32) -> LdInfo {
    ld(
        number,
        1 << 20,
        "NX",
        &["*"],
        LdRole::Rv {
            mv: stillpoint_array::LdRef {
                array: "A1".into(),
                ld: 0,
            },
            access: RvAccess::Nr,
        },
    )
}

#[test]
fn an_mv_with_more_rvs_than_the_array_allows_is_named_counting_pairs_only_the_array_knows() {
    let rules = |e: &[InventoryError]| e.iter().map(|e| e.rule.clone()).collect::<Vec<_>>();
    // Three DDR RVs in the file: within every limit, with or without a live array.
    assert_eq!(
        pairing_errors(&site_with_ddr_rvs(2), &LiveArrays::new()),
        vec![]
    );
    // Four DDR RVs in the file alone break the DDR limit (3), not the total (4).
    let e = pairing_errors(&site_with_ddr_rvs(3), &LiveArrays::new());
    assert_eq!(paths(&e), ["pairs.p0.mv"]);
    assert!(rules(&e)[0].contains("4 RVs on its own array"), "{e:?}");
    // Two RVs in the file, and the live array already has two more pairs of that MV that the
    // file does not name (LDs 20 and 21): four DDR RVs in all.
    let mut lds = vec![
        ld(0, 1 << 20, "NX", &["db1"], LdRole::Mv { rvs: 2 }),
        ld(1, 1 << 20, "NX", &["backup1"], LdRole::None),
        ld(10, 1 << 20, "NX", &["backup1"], LdRole::None),
        rv_of_ld0(20),
        rv_of_ld0(21),
    ];
    let e = pairing_errors(&site_with_ddr_rvs(1), &live(lds.clone()));
    assert_eq!(paths(&e), ["pairs.p0.mv"], "{e:?}");
    assert!(rules(&e)[0].contains("A1:20"), "{e:?}");
    // The MV counts five RVs while the answered array shows only two of them: the other
    // three are on arrays nobody answered for, and the total breaks the limit of four.
    lds[0] = ld(0, 1 << 20, "NX", &["db1"], LdRole::Mv { rvs: 5 });
    let e = pairing_errors(&site(), &live(lds));
    assert!(
        rules(&e)
            .iter()
            .any(|r| r.contains("6 RVs") && r.contains("3 on arrays that did not answer")),
        "{e:?}"
    );
}

#[test]
fn the_rvs_of_one_mv_span_at_most_two_arrays() {
    let mut inv = site();
    for (i, array) in ["B1", "C1"].into_iter().enumerate() {
        inv.pairs.insert(
            format!("r{i}"),
            PairSpec {
                name: format!("r{i}"),
                mv: r(0),
                rv: LdRef {
                    array: array.into(),
                    ld: 0,
                },
                kind: ReplicationKind::Rdr,
                copy_control: CopyControl::Background,
            },
        );
    }
    let e = pairing_errors(&inv, &LiveArrays::new());
    assert_eq!(paths(&e), ["pairs.p0.mv"], "{e:?}");
    assert!(e[0].rule.contains("span 3 arrays"), "{e:?}");
}
