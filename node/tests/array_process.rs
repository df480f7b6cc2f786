//! The software array as its own process, as an operator runs it: `stillpoint array serve`
//! killed (SIGKILL) in the middle of a copy restarts with the same pair state and finishes the
//! copy; the `ld`, `pair` and `copy` commands answer with JSON and the binary's documented exit
//! codes.

#[path = "../../array/tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};

use common::*;
use stillpoint_array::*;

const BIN: &str = env!("CARGO_BIN_EXE_stillpoint");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(path: &std::path::Path, data_dir: &std::path::Path, port: u16, pace: u64) {
    let text = format!(
        "name = \"A\"\ndata_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\ncopy_pace_bytes_per_s = {pace}\n\
         [[ld]]\nnumber = 0\nname = \"MV\"\ncapacity_bytes = {CAP}\n\
         [[ld]]\nnumber = 1\nname = \"RV\"\ncapacity_bytes = {CAP}\n",
        data_dir
    );
    std::fs::write(path, text).unwrap();
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_array(cfg: &std::path::Path) -> Child {
    Child(
        Command::new(BIN)
            .args(["array", "serve", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stillpoint"),
    )
}

async fn connect(addr: &str) -> RemoteArray {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match RemoteArray::connect(addr).await {
            Ok(r) => return r,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "array never came up: {e}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn killed_array_process_restarts_consistent_and_finishes_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("array.toml");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    write_config(&cfg, &dir.path().join("data"), port, 128 * 1024);
    let img = pattern(1234, CAP as usize);
    {
        let _child = spawn_array(&cfg);
        let a = connect(&addr).await;
        a.pair_set(&pair(0, 1)).await.unwrap();
        a.write("h", 0, 0, &img).await.unwrap();
        a.replicate(&pair(0, 1), &ReplicateOptions::default())
            .await
            .unwrap();
        eventually("copy underway", || async {
            let p = a.pair_query(&pair(0, 1)).await.unwrap();
            p.copied_blocks >= 2 && p.copy_diff_blocks > 0
        })
        .await;
        // _child is SIGKILLed here: no shutdown, no flush.
    }
    write_config(&cfg, &dir.path().join("data"), port, 0);
    let _child = spawn_array(&cfg);
    let a = connect(&addr).await;
    let p = a.pair_query(&pair(0, 1)).await.unwrap();
    assert_eq!(
        p.state.activity,
        Activity::Replicate,
        "pair state survived the kill"
    );
    a.wait(&pair(0, 1), WaitCondition::Sync, WAIT_MS)
        .await
        .expect("copy resumes and finishes");
    let so = SeparateOptions {
        wait_timeout_ms: Some(WAIT_MS),
        ..Default::default()
    };
    a.separate(&pair(0, 1), &so).await.unwrap();
    assert_eq!(
        crc(&read_all(&a, 1, CAP).await),
        crc(&img),
        "RV equals MV after the restart"
    );

    // CLI against the same process: JSON output and the documented exit codes.
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("STILLPOINT_ARRAY", &addr)
            .env_remove("STILLPOINT_ENDPOINT")
            .output()
            .expect("run CLI")
    };
    let out = cli(&["pair", "list", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let pairs: Vec<PairInfo> = serde_json::from_slice(&out.stdout).expect("json pair list");
    assert_eq!(pairs[0].state.sync, SyncState::Separated);
    let out = cli(&["pair", "unset", "--mv", "1", "--rv", "0"]);
    assert_eq!(
        out.status.code(),
        Some(8),
        "not found: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["pair", "set", "--mv", "0", "--rv", "0"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["pair", "separate", "--mv", "0", "--rv", "1"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "wrong state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "pair",
        "replicate",
        "--mv",
        "0",
        "--rv",
        "1",
        "--wait",
        "--timeout",
        "30",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rpl/sync"));
    let out = cli(&["ld", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("RV of A:0 (nr)"));
    let out = Command::new(BIN)
        .args(["pair", "list", "--array", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "unreachable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn copy_commands_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("array.toml");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    write_config(&cfg, &dir.path().join("data"), port, 0);
    let _child = spawn_array(&cfg);
    let a = connect(&addr).await;
    let img = pattern(3, CAP as usize);
    a.write("h", 0, 0, &img).await.unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("STILLPOINT_ARRAY", &addr)
            .env_remove("STILLPOINT_ENDPOINT")
            .output()
            .expect("run CLI");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text, out.stdout)
    };
    let (code, text, json) = cli(&[
        "copy", "create", "--parent", "0", "--copy", "1", "--output", "json",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let c: Vec<CopyInfo> = serde_json::from_slice(&json).expect("json copy");
    assert_eq!(c[0].state, CopyState::Attached);
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&img));
    let (_, text, _) = cli(&["ld", "list"]);
    assert!(
        text.contains("parent (1 copies)") && text.contains("copy of A:0 (attached)"),
        "{text}"
    );
    let (code, text, _) = cli(&["copy", "create", "--parent", "0", "--copy", "0"]);
    assert_eq!(code, Some(3), "refused: {text}");
    assert!(text.contains("one-role-per-ld"), "{text}");
    let (code, text, _) = cli(&["copy", "detach", "--copy", "1"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("detached"), "{text}");
    let (code, text, _) = cli(&["copy", "to-parent", "--copy", "1"]);
    assert_eq!(code, Some(7), "wrong state: {text}");
    assert!(text.contains("is detached"), "{text}");
    let (code, text, _) = cli(&["copy", "attach", "--copy", "1"]);
    assert_eq!(code, Some(0), "{text}");
    a.write("h", 0, 0, &pattern(4, CAP as usize)).await.unwrap();
    let (code, text, _) = cli(&[
        "copy",
        "to-parent",
        "--copy",
        "1",
        "--wait",
        "--timeout",
        "30",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("attached"), "{text}");
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&img));
    let (code, text, json) = cli(&["copy", "list", "--output", "json"]);
    assert_eq!(code, Some(0), "{text}");
    let c: Vec<CopyInfo> = serde_json::from_slice(&json).expect("json copy list");
    assert_eq!(c[0].to_parent_blocks, 0);
    let (code, text, _) = cli(&["copy", "delete", "--copy", "1"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text, _) = cli(&["copy", "attach", "--copy", "1"]);
    assert_eq!(code, Some(8), "not found: {text}");
}

#[tokio::test]
async fn killed_array_process_keeps_business_copy_images() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("array.toml");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let copy_of = |list: Vec<CopyInfo>| list.into_iter().next().expect("one copy");
    let img = pattern(5, CAP as usize);
    let copy_img;
    {
        write_config(&cfg, &dir.path().join("data"), port, 128 * 1024);
        let _child = spawn_array(&cfg);
        let a = connect(&addr).await;
        a.write("h", 0, 0, &img).await.unwrap();
        a.copy_create(0, 1, true).await.unwrap();
        eventually("fill underway", || async {
            copy_of(a.copy_list().await.unwrap()).parent_ref_blocks < 30
        })
        .await;
        // Blocks the fill took lazily and blocks it has not reached, on both sides.
        for b in [0u64, 1, 20, 31] {
            a.write("h", 0, b * BLOCK + 7, b"parent").await.unwrap();
        }
        a.write("h", 1, 25 * BLOCK + 3, b"copy").await.unwrap();
        copy_img = read_all(&a, 1, CAP).await;
        let mut expect = img.clone();
        expect[(25 * BLOCK + 3) as usize..(25 * BLOCK + 7) as usize].copy_from_slice(b"copy");
        assert_eq!(crc(&copy_img), crc(&expect));
        // The child is SIGKILLed here.
    }
    {
        let _child = spawn_array(&cfg);
        let a = connect(&addr).await;
        assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&copy_img));
        a.copy_to_parent(1, None).await.unwrap();
        assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&copy_img));
        a.write("h", 0, 2 * BLOCK, b"after").await.unwrap();
    }
    write_config(&cfg, &dir.path().join("data"), port, 0);
    let _child = spawn_array(&cfg);
    let a = connect(&addr).await;
    let mut expect = copy_img.clone();
    expect[(2 * BLOCK) as usize..(2 * BLOCK + 5) as usize].copy_from_slice(b"after");
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&expect));
    eventually("copy back and fill finish after the kills", || async {
        let c = copy_of(a.copy_list().await.unwrap());
        c.state == CopyState::Attached && c.parent_ref_blocks == 0
    })
    .await;
    assert_eq!(crc(&read_all(&a, 0, CAP).await), crc(&expect));
    assert_eq!(crc(&read_all(&a, 1, CAP).await), crc(&copy_img));
}

fn cli_at(addr: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("STILLPOINT_ARRAY", addr)
        .env_remove("STILLPOINT_ENDPOINT")
        .output()
        .expect("run CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Issue 9, defect 5: a user-given duration beyond the bound is a clear input error (exit 2)
/// before anything is applied, never a panic (exit 101); the help states the bound.
#[tokio::test]
async fn huge_timeouts_are_refused_as_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("array.toml");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    write_config(&cfg, &dir.path().join("data"), port, 0);
    let _child = spawn_array(&cfg);
    let a = connect(&addr).await;
    a.pair_set(&pair(0, 1)).await.unwrap();
    let huge = "18446744073709551615";
    let pair_args = ["--mv", "0", "--rv", "1"];
    for cmd in [
        vec!["pair", "wait", "--cond", "sep", "--timeout", huge],
        vec!["pair", "replicate", "--wait", "--timeout", huge],
        vec!["pair", "separate", "--wait", "--timeout", huge],
        vec!["pair", "restore", "--wait", "--timeout", huge],
    ] {
        let mut args = cmd.clone();
        args.extend(pair_args);
        let (code, text) = cli_at(&addr, &args);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(
            text.contains("--timeout"),
            "{args:?} names the flag: {text}"
        );
    }
    // Nothing was applied: the pair is still separated.
    let p = a.pair_query(&pair(0, 1)).await.unwrap();
    assert_eq!(p.state.sync, SyncState::Separated, "{p:?}");
    a.pair_unset(&pair(0, 1)).await.unwrap();
    a.copy_create(0, 1, true).await.unwrap();
    let (code, text) = cli_at(
        &addr,
        &[
            "copy",
            "to-parent",
            "--copy",
            "1",
            "--wait",
            "--timeout",
            huge,
        ],
    );
    assert_eq!(code, Some(2), "copy to-parent: {text}");
    let (code, text) = cli_at(&addr, &["pair", "wait", "--help"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("604800"), "help states the bound: {text}");
    // The API bounds the wait too: a client asking for u64::MAX ms gets an input error.
    let e = a.copy_to_parent(1, Some(u64::MAX)).await.unwrap_err();
    assert!(matches!(e, ArrayError::InvalidInput { .. }), "{e}");
    let e = a
        .wait(&pair(0, 1), WaitCondition::Sep, u64::MAX)
        .await
        .unwrap_err();
    assert!(matches!(e, ArrayError::InvalidInput { .. }), "{e}");
}

/// Issue 9, defect 6: `array serve` with an unusable listen address or data dir exits 6 and
/// never claims to be serving; a malformed peer endpoint names the file and the field.
#[test]
fn serve_start_failures_exit_6_and_name_what() {
    let dir = tempfile::tempdir().unwrap();
    // Each start must fail on its own; one still running after 60 s is killed and fails.
    let serve = |cfg: &std::path::Path| {
        let mut child = Command::new(BIN)
            .args(["array", "serve", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run serve");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().expect("poll serve").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("serve output");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Listen address in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.path().join("busy.toml");
    write_config(&cfg, &dir.path().join("data1"), port, 0);
    let (code, err) = serve(&cfg);
    assert_eq!(code, Some(6), "listen address in use: {err}");
    assert!(err.contains("listen"), "{err}");
    assert!(!err.contains("serving on"), "{err}");
    // Data dir is a file.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let cfg = dir.path().join("file.toml");
    write_config(&cfg, &file, free_port(), 0);
    let (code, err) = serve(&cfg);
    assert_eq!(code, Some(6), "data dir unusable: {err}");
    assert!(!err.contains("serving on"), "{err}");
    // Malformed peer endpoint.
    let cfg = dir.path().join("peer.toml");
    write_config(&cfg, &dir.path().join("data3"), free_port(), 0);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text += "[[peer]]\nname = \"B\"\nendpoint = \"http://[::1\"\n";
    std::fs::write(&cfg, text).unwrap();
    let (code, err) = serve(&cfg);
    assert_eq!(code, Some(2), "bad peer endpoint: {err}");
    assert!(
        err.contains("peer.toml") && err.contains("peer[0].endpoint"),
        "names file and field: {err}"
    );
}
