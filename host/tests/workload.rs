//! The workload and verifier outside an agent: what `stillpoint workload` / `verify` do.

use std::sync::Arc;

use stillpoint_host::{BlockDevice, FileDevice, record_offset, run_on_device, verify};

#[tokio::test]
async fn flushed_runs_verify_clean_and_unflushed_runs_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(FileDevice::create(&dir.path().join("v.img"), 2 * 1024 * 1024).unwrap());

    let run = run_on_device(dev.clone(), 500, true, true, 1)
        .await
        .unwrap();
    assert_eq!(run.records_total, 500);
    assert!(run.device_report.is_consistent(), "{}", run.device_report);
    assert_eq!(run.device_report.last_intact_seq, Some(499));

    // Continues after what is there; without flush the device is left torn.
    let run = run_on_device(dev.clone(), 500, false, false, 1)
        .await
        .unwrap();
    assert_eq!(run.records_total, 1000);
    let rep = &run.device_report;
    assert!(!rep.is_consistent(), "{rep}");
    assert!(rep.last_intact_seq.unwrap() >= 499, "{rep}");
    assert!(rep.intact_count < 1000);
}

#[tokio::test]
async fn a_flipped_byte_is_reported_as_a_corrupt_record() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(FileDevice::create(&dir.path().join("v.img"), 1024 * 1024).unwrap());
    run_on_device(dev.clone(), 100, true, true, 1)
        .await
        .unwrap();
    let at = record_offset(40) + 700;
    let mut b = dev.read_at(at, 1).await.unwrap();
    b[0] ^= 0xff;
    dev.write_at(at, &b).await.unwrap();
    let rep = verify(dev.as_ref()).await.unwrap();
    assert_eq!(rep.intact_count, 99);
    assert_eq!(rep.last_intact_seq, Some(39));
    assert_eq!(rep.highest_intact_seq, Some(99));
    assert_eq!(rep.torn.len(), 1);
    assert_eq!(rep.torn[0].slot, 40);
    assert!(rep.torn[0].reason.contains("checksum"), "{:?}", rep.torn[0]);
    assert!(rep.gaps.is_empty());
}
