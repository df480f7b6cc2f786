//! The audit log: pair state changes, refused operations, RV I/O attempts (accepted and
//! refused) and sampled MV writes, one JSON line each, with a sequence that continues across a
//! reopen.

mod common;

use common::*;
use stillpoint_array::*;

fn lines(dir: &std::path::Path) -> Vec<AuditLine> {
    let text = std::fs::read_to_string(dir.join("A").join("audit.log")).expect("audit.log");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect()
}

async fn open(dir: &std::path::Path, audit_log: bool) -> SoftwareArray {
    let mut cfg = config(dir, "A", vec![ld(0, CAP, "NX"), ld(1, CAP, "NX")], 0);
    cfg.audit_log = audit_log;
    SoftwareArray::open(&cfg, vec![]).await.expect("open array")
}

#[tokio::test]
async fn the_audit_log_records_pair_changes_refusals_and_rv_io_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), true).await;
    let p = pair(0, 1);
    a.pair_set(&p).await.expect("set");
    a.write("db1", 0, 0, &pattern(1, 4096))
        .await
        .expect("MV write");
    a.replicate(&p, &sync_opts()).await.expect("replicate");
    // The RV is not separated: a backup host's read is refused, and recorded so.
    a.read("backup1", 1, 0, 4096)
        .await
        .expect_err("RV read while rpl/sync");
    // Replicating again from rpl/sync is refused, and recorded so.
    a.replicate(&p, &sync_opts())
        .await
        .expect_err("replicate twice");
    a.separate(
        &p,
        &SeparateOptions {
            wait_timeout_ms: Some(WAIT_MS),
            ..Default::default()
        },
    )
    .await
    .expect("separate");
    a.read("backup1", 1, 0, 4096)
        .await
        .expect("RV read once separated");
    a.close().await.unwrap();
    drop(a);

    let got = lines(dir.path());
    for (i, l) in got.iter().enumerate() {
        assert_eq!(l.seq, i as u64, "{got:#?}");
    }
    let rv_io: Vec<(bool, RvAccess)> = got
        .iter()
        .filter_map(|l| match &l.event {
            AuditEvent::RvIo {
                host,
                ld: 1,
                write: false,
                accepted,
                access,
                ..
            } if host == "backup1" => Some((*accepted, *access)),
            _ => None,
        })
        .collect();
    assert_eq!(rv_io.len(), 2, "{got:#?}");
    assert!(!rv_io[0].0 && rv_io[0].1 != RvAccess::Rw && rv_io[0].1 != RvAccess::Ro);
    assert!(rv_io[1].0, "{got:#?}");
    assert!(
        got.iter().any(|l| matches!(&l.event,
            AuditEvent::PairRefused { operation, .. } if operation == "replicate")),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|l| matches!(&l.event,
            AuditEvent::Pair { state: Some(s), .. } if s.sync == SyncState::Separated)),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|l| matches!(&l.event, AuditEvent::MvWrite { ld: 0, host } if host == "db1")),
        "{got:#?}"
    );

    // Reopened, the sequence continues after the last line.
    let a = open(dir.path(), true).await;
    a.pair_query(&p).await.unwrap();
    a.read("backup1", 1, 0, 4096).await.expect("RV read");
    a.close().await.unwrap();
    drop(a);
    let again = lines(dir.path());
    assert_eq!(again.len(), got.len() + 1);
    assert_eq!(again.last().unwrap().seq, got.len() as u64);
}

/// Unsampled (`audit_mv_write_sample_ms = 0`), every MV write has its line, in order with the
/// pair's operations: a referee can tell which writes came before the separate.
#[tokio::test]
async fn unsampled_every_mv_write_is_recorded_in_order_with_the_separate() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "A", vec![ld(0, CAP, "NX"), ld(1, CAP, "NX")], 0);
    cfg.audit_log = true;
    cfg.audit_mv_write_sample_ms = 0;
    let a = SoftwareArray::open(&cfg, vec![]).await.expect("open array");
    let p = pair(0, 1);
    a.pair_set(&p).await.expect("set");
    a.replicate(&p, &sync_opts()).await.expect("replicate");
    for i in 0..3u64 {
        a.write("db1", 0, i * 4096, &pattern(i, 4096))
            .await
            .expect("MV write");
    }
    a.separate(&p, &sep_opts()).await.expect("separate");
    for i in 0..2u64 {
        a.write("db1", 0, i * 4096, &pattern(10 + i, 4096))
            .await
            .expect("MV write");
    }
    drop(a);
    let got = lines(dir.path());
    let order: Vec<&str> = got
        .iter()
        .filter_map(|l| match &l.event {
            AuditEvent::MvWrite { ld: 0, .. } => Some("write"),
            AuditEvent::Pair { reason, .. } if reason == "separate" => Some("separate"),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        ["write", "write", "write", "separate", "write", "write"],
        "{got:#?}"
    );
}

#[tokio::test]
async fn no_audit_log_is_written_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), false).await;
    a.pair_set(&pair(0, 1)).await.expect("set");
    a.close().await.unwrap();
    assert!(!dir.path().join("A").join("audit.log").exists());
}

/// A pair operation whose caller goes away mid-way (a served array's client died or timed
/// out, so its RPC future is dropped) must still be persisted, pushed to the RV's access and
/// announced (event and audit line) — or not happen at all. Found by `stillpoint-chaos run`
/// seed 102: the leader (the array's control node) was SIGKILLed with a separate in flight;
/// the array's pair was separated in memory with no event, no audit line, and its RV still
/// `nr` until a later wait pushed `rw`, while its durable record still said `rpl/sync`.
#[tokio::test]
async fn a_pair_operation_whose_caller_goes_away_is_still_persisted_and_announced() {
    use futures::StreamExt;
    use std::future::Future;
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), true).await;
    let p = pair(0, 1);
    a.pair_set(&p).await.expect("set");
    a.replicate(&p, &sync_opts()).await.expect("replicate");
    let mut events = a.events().await.expect("events");
    let opts = SeparateOptions::default();
    {
        let mut op = Box::pin(a.separate(&p, &opts));
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        // Polled once, then dropped: the caller went away.
        let _ = op.as_mut().poll(&mut cx);
    }
    let state = a.pair_query(&p).await.expect("query").state;
    if state.sync == SyncState::RplSync {
        return; // The operation did not start: nothing to announce.
    }
    let announced = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(ev) = events.next().await {
            if matches!(&ev, ArrayEvent::Pair(e) if e.reason == "separate") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let rv_access = a
        .ld_list()
        .await
        .expect("LDs")
        .into_iter()
        .find_map(|l| match l.role {
            LdRole::Rv { access, .. } if l.number == 1 => Some(access),
            _ => None,
        });
    a.close().await.unwrap();
    drop(a);
    let audited = lines(dir.path())
        .iter()
        .any(|l| matches!(&l.event, AuditEvent::Pair { reason, .. } if reason == "separate"));
    assert!(
        announced && audited && rv_access == Some(state.rv_access),
        "pair {state:?} in memory, but event sent: {announced}, audit line: {audited}, RV access on the RV's role: {rv_access:?}"
    );
}

/// A caller that goes away, polled once and dropped, from `op`.
fn poll_once_and_drop<F: std::future::Future>(op: F) {
    let mut op = Box::pin(op);
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    let _ = op.as_mut().poll(&mut cx);
}

/// Waits (bounded) for a pair event with `reason` on `events`.
async fn announced(
    events: &mut futures::stream::BoxStream<'static, ArrayEvent>,
    reason: &str,
) -> bool {
    use futures::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(ev) = events.next().await {
            if matches!(&ev, ArrayEvent::Pair(e) if e.reason == reason) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// `pair_set` and `pair_unset` run to their end like the other pair operations: a caller that
/// goes away once the array started one (a served array's client dying or timing out) leaves
/// the pair either untouched (and settable again), or set/unset in memory, durably and
/// announced (event and audit line) alike. Before they ran detached, a pair set dropped at
/// its first wait left the RV claimed for a pair that never existed: every later set was
/// refused (`LD A:1 is already the RV of A:0`).
#[tokio::test]
async fn a_pair_set_or_unset_whose_caller_goes_away_is_still_persisted_and_announced() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), true).await;
    let p = pair(0, 1);
    let mut events = a.events().await.expect("events");
    poll_once_and_drop(a.pair_set(&p));
    let set_announced = announced(&mut events, "pair set").await;
    let set = a.pair_query(&p).await.is_ok();
    a.close().await.unwrap();
    drop(a);
    let a = open(dir.path(), true).await;
    let set_durable = a.pair_query(&p).await.is_ok();
    assert!(
        set == set_announced && set == set_durable,
        "pair set in memory: {set}, event sent: {set_announced}, set after a reopen: {set_durable}"
    );
    if !set {
        a.pair_set(&p).await.expect(
            "a pair set whose caller went away without setting the pair leaves nothing behind",
        );
    }
    let mut events = a.events().await.expect("events");
    poll_once_and_drop(a.pair_unset(&p));
    let unset_announced = announced(&mut events, "pair unset").await;
    let unset = a.pair_query(&p).await.is_err();
    a.close().await.unwrap();
    drop(a);
    let audited = lines(dir.path()).iter().any(
        |l| matches!(&l.event, AuditEvent::Pair { reason, state: None, .. } if reason == "pair unset"),
    );
    let a = open(dir.path(), true).await;
    let unset_durable = a.pair_query(&p).await.is_err();
    assert!(
        unset == unset_announced && unset == audited && unset == unset_durable,
        "pair unset in memory: {unset}, event sent: {unset_announced}, audit line: {audited}, unset after a reopen: {unset_durable}"
    );
}

/// With `audit_rv_head_bytes`, every RV opened to hosts (a separate ending) has its head
/// recorded as the array cut it: the MV's bytes at the separate, not a later MV write, not
/// what a host writes on the RV once it is open; a second cycle records the new copy's head.
#[tokio::test]
async fn an_rv_opened_to_hosts_has_its_head_recorded_as_the_separate_cut_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "A", vec![ld(0, CAP, "NX"), ld(1, CAP, "NX")], 0);
    cfg.audit_log = true;
    cfg.audit_rv_head_bytes = 2048;
    let a = SoftwareArray::open(&cfg, vec![]).await.expect("open array");
    let p = pair(0, 1);
    a.pair_set(&p).await.expect("set");
    let mut cuts = Vec::new();
    for round in 0..2u64 {
        a.write("db1", 0, 0, &pattern(round, 4096))
            .await
            .expect("MV write");
        a.replicate(&p, &sync_opts()).await.expect("replicate");
        a.separate(&p, &sep_opts()).await.expect("separate");
        cuts.push(pattern(round, 4096)[..2048].to_vec());
        // After the cut: the MV moves on and a host writes the RV; neither is the copy's head.
        a.write("db1", 0, 0, &pattern(50 + round, 4096))
            .await
            .expect("MV write after the separate");
        a.write("backup1", 1, 0, &pattern(70 + round, 4096))
            .await
            .expect("RV write once open");
        // The same access pushed again (any later operation) records nothing new.
        a.pair_query(&p).await.expect("query");
    }
    drop(a);
    let got = lines(dir.path());
    let heads: Vec<(u32, RvAccess, Option<Vec<u8>>)> = got
        .iter()
        .filter_map(|l| match &l.event {
            AuditEvent::RvOpened { ld, access, .. } => Some((*ld, *access, l.event.rv_head())),
            _ => None,
        })
        .collect();
    assert_eq!(heads.len(), 2, "one line per opening: {heads:?}");
    for (i, (ld, access, head)) in heads.into_iter().enumerate() {
        assert_eq!((ld, access), (1, RvAccess::Rw));
        assert!(head.as_ref() == Some(&cuts[i]), "copy {i}: head {head:?}");
    }
}

#[test]
fn an_rv_head_larger_than_the_bound_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "A", vec![ld(0, CAP, "NX")], 0);
    cfg.audit_rv_head_bytes = AUDIT_RV_HEAD_BYTES_MAX + 1;
    let e = cfg.validate().expect_err("too large");
    assert!(e.starts_with("audit_rv_head_bytes = 65537"), "{e}");
}
