//! `stillpoint backup`, `job` and `copies` as an operator runs them: the binary against the
//! job tests' site (software array and agents mgmt1, db1, db2, backup1 as processes, jobs
//! driven by the leader), checking what it prints, its JSON, and the exit codes a job
//! scheduler branches on (the one table in node/src/error.rs).

mod job_site;

use std::process::Output;

use job_site::{JobSite, SiteLayout, code, sp, stderr, stdout, stillpoint};

const OK: i32 = 0;
const REFUSED: i32 = 3;
const TIMED_OUT: i32 = 5;
const WRONG_STATE: i32 = 7;
const NOT_FOUND: i32 = 8;
const DONE_CRASH_CONSISTENT: i32 = 11;
const JOB_FAILED: i32 = 12;
const JOB_CANCELLED: i32 = 13;

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_followed_catalogued_queued_refused_and_cancelled_with_scheduler_exit_codes() {
    // Job 1 is the group prepare the site runs first: it makes no copy.
    let mut site = JobSite::start(SiteLayout::spread(1)).await;
    let ep = site.site.endpoints[0].clone();
    let ep = ep.as_str();
    let out = sp(&["copies", "list", "--endpoint", ep]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("no copies are recorded"),
        "{}",
        stdout(&out)
    );
    let out = sp(&["copies", "list", "--endpoint", ep, "--output", "json"]).await;
    assert_eq!(json(&out), serde_json::json!([]));

    // A backup followed to its end: a consistent copy, exit 0, one JSON document. Submitted
    // through a follower, which may not have applied the job yet when the watch first asks.
    let leader = site.site.leader().await.expect("a leader");
    let follower = (0..site.site.agents.len()).find(|s| *s != leader).unwrap();
    let out = sp(&[
        "backup",
        "payroll",
        "--wait",
        "--timeout",
        "120",
        "--endpoint",
        &site.site.endpoints[follower],
        "--output",
        "json",
    ])
    .await;
    assert_eq!(code(&out), OK, "{}\n{}", stderr(&out), site.logs());
    let doc = json(&out);
    assert_eq!(doc["accepted"]["job_id"], 2, "{doc}");
    assert_eq!(doc["exit_code"], 0, "{doc}");
    assert_eq!(doc["job"]["end"]["label"]["label"], "consistent", "{doc}");
    let timeline = doc["timeline"].as_array().unwrap();
    assert!(
        timeline
            .iter()
            .any(|c| c["what"] == "quiesce db1:mv0" && c["to"] == "done"),
        "{doc}"
    );
    assert!(site.verify_rvs().await.iter().all(Result::is_ok));
    // Watching it again prints its whole timeline, one line per change, and its outcome.
    let out = sp(&["job", "watch", "2", "--endpoint", ep]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    let text = stdout(&out);
    println!("{text}");
    assert!(
        text.contains("step 2 quiesce db1:mv0  dispatched → done (quiesce "),
        "{text}"
    );
    assert!(text.contains("job 2 ended: done, consistent"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("  step ")).count(),
        timeline.len()
    );
    let out = sp(&["job", "show", "2", "--endpoint", ep]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));

    // The catalogue has it, with the pair's volumes and LDs.
    let out = sp(&[
        "copies",
        "list",
        "--group",
        "payroll",
        "--endpoint",
        ep,
        "--output",
        "json",
    ])
    .await;
    let copies = json(&out);
    assert_eq!(copies.as_array().map(Vec::len), Some(1), "{copies}");
    assert_eq!(copies[0]["job_id"], 2, "{copies}");
    assert_eq!(copies[0]["label"]["label"], "consistent", "{copies}");
    let pair = &copies[0]["pairs"][0];
    assert_eq!(pair["pair"], "p0", "{copies}");
    assert_eq!(pair["mv"]["node"], "db1", "{copies}");
    assert_eq!(pair["rv"]["volume"], "rv0", "{copies}");
    assert_eq!(pair["mv_ld"]["ld"], 0, "{copies}");
    assert_eq!(pair["rv_ld"]["ld"], 1, "{copies}");
    let out = sp(&["copies", "list", "--endpoint", ep]).await;
    let text = stdout(&out);
    println!("{text}");
    assert!(
        text.contains("db1:mv0 (A1:0)") && text.contains("backup1:rv0 (A1:1)"),
        "{text}"
    );

    // With the backup node paused, the next backup cannot get past its first step: it holds
    // the pair while the rest is tried.
    let backup = site.site.layout.backup_slot();
    site.site.signal(backup, "STOP").unwrap();
    let out = sp(&["backup", "payroll", "--endpoint", ep, "--output", "json"]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    assert_eq!(json(&out)["job_id"], 3);
    let out = sp(&["backup", "payroll", "--endpoint", ep]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("job 4 accepted: backup of payroll, queued behind job 3"),
        "{}",
        stdout(&out)
    );
    // --no-queue is refused, naming the job that holds the pair; so is an unknown group.
    let out = sp(&["backup", "payroll", "--no-queue", "--endpoint", ep]).await;
    assert_eq!(code(&out), REFUSED, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is owned by job 3"),
        "{}",
        stderr(&out)
    );
    let out = sp(&["backup", "nosuch", "--endpoint", ep]).await;
    assert_eq!(code(&out), REFUSED, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no group named \"nosuch\" (known: payroll)"),
        "{}",
        stderr(&out)
    );

    // The list has every job, summaries only; show has the plan.
    let out = sp(&["job", "list", "--endpoint", ep, "--output", "json"]).await;
    let jobs = json(&out);
    assert_eq!(jobs.as_array().map(Vec::len), Some(4), "{jobs}");
    assert_eq!(jobs[0]["end"]["end"], "finished", "{jobs}");
    assert_eq!(jobs[2]["state"], "running", "{jobs}");
    assert_eq!(jobs[3]["state"], "queued", "{jobs}");
    assert_eq!(jobs[3]["waiting_for"], 3, "{jobs}");
    assert!(
        jobs[3]["submitted_by"].as_str().unwrap().contains('@'),
        "{jobs}"
    );
    assert!(!stdout(&out).contains("history"), "summaries only");
    let out = sp(&["job", "list", "--endpoint", ep]).await;
    println!("{}", stdout(&out));
    assert!(
        stdout(&out).contains("queued behind job 3"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("prepare payroll  finished"),
        "{}",
        stdout(&out)
    );
    let out = sp(&["job", "show", "3", "--endpoint", ep, "--output", "json"]).await;
    assert_eq!(code(&out), OK, "a running job: {}", stderr(&out));
    let plan = json(&out);
    let calls: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["call"]["call"].as_str().unwrap())
        .collect();
    assert_eq!(
        calls,
        [
            "free_rv",
            "replicate",
            "quiesce",
            "separate",
            "release",
            "await_separated",
            "mount_rv"
        ]
    );

    // Cancelling the queued job ends it at once, as cancelled: exit 13 from show and watch.
    let out = sp(&["job", "cancel", "4", "--endpoint", ep]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    assert!(stdout(&out).contains("job 4 ended"), "{}", stdout(&out));
    let out = sp(&["job", "show", "4", "--endpoint", ep]).await;
    assert_eq!(code(&out), JOB_CANCELLED, "{}", stderr(&out));
    let out = sp(&["job", "watch", "4", "--endpoint", ep, "--output", "json"]).await;
    assert_eq!(code(&out), JOB_CANCELLED, "{}", stderr(&out));
    assert_eq!(json(&out)["job"]["end"]["end"], "cancelled");
    let out = sp(&["job", "cancel", "4", "--endpoint", ep]).await;
    assert_eq!(code(&out), WRONG_STATE, "{}", stderr(&out));
    assert!(stderr(&out).contains("already ended"), "{}", stderr(&out));
    for verb in ["show", "watch", "cancel"] {
        let out = sp(&["job", verb, "999", "--endpoint", ep]).await;
        assert_eq!(code(&out), NOT_FOUND, "job {verb} 999: {}", stderr(&out));
        assert!(stderr(&out).contains("no job 999"), "{}", stderr(&out));
    }

    // Following a job that does not end within --timeout exits 5; the job goes on.
    let out = sp(&[
        "backup",
        "payroll",
        "--wait",
        "--timeout",
        "1",
        "--endpoint",
        ep,
    ])
    .await;
    assert_eq!(code(&out), TIMED_OUT, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("job 5 accepted: backup of payroll, queued behind job 3"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("following job 5"), "{}", stderr(&out));
    let out = sp(&["job", "watch", "3", "--timeout", "1", "--endpoint", ep]).await;
    assert_eq!(code(&out), TIMED_OUT, "{}", stderr(&out));

    // Cancelled while running, job 3 ends cancelled once its outstanding step has settled
    // (the backup node answers again); the queued job 5 is cancelled at once.
    let out = sp(&["job", "cancel", "5", "--endpoint", ep]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    let out = sp(&["job", "cancel", "3", "--endpoint", ep]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("job 3 is cancelling"),
        "{}",
        stdout(&out)
    );
    site.site.signal(backup, "CONT").unwrap();
    let out = sp(&["job", "watch", "3", "--timeout", "120", "--endpoint", ep]).await;
    assert_eq!(
        code(&out),
        JOB_CANCELLED,
        "{}\n{}",
        stderr(&out),
        site.logs()
    );
    assert!(
        site.quiesced_mvs().await.is_empty(),
        "no MV is left quiesced"
    );
    let out = sp(&["copies", "list", "--endpoint", ep, "--output", "json"]).await;
    assert_eq!(
        json(&out).as_array().map(Vec::len),
        Some(1),
        "no copy from a cancelled job"
    );

    // A watch rides out the leader's death: job 6 is held at its first step (backup node
    // paused), the leader that sent it is SIGKILLed, then the backup node resumes and the
    // killed agent restarts; a new leader takes the job over and the watch, through a
    // follower, follows it to its end.
    site.site.signal(backup, "STOP").unwrap();
    let out = sp(&["backup", "payroll", "--endpoint", ep, "--output", "json"]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    assert_eq!(json(&out)["job_id"], 6);
    let via_ep = ep.to_string();
    // The first step is out to the paused backup node; the leader that sent it.
    let deadline = std::time::Instant::now() + job_site::WAIT;
    let leader = loop {
        let out = sp(&[
            "job",
            "show",
            "6",
            "--endpoint",
            &via_ep,
            "--output",
            "json",
        ])
        .await;
        let step = (code(&out) == OK).then(|| json(&out)["steps"][0]["state"].clone());
        if let Some(step) = step.filter(|s| s["state"] == "dispatched") {
            let term = step["token"]["term"].as_u64().unwrap();
            let status = sp(&[
                "cluster",
                "status",
                "--consistent",
                "--endpoint",
                &via_ep,
                "--output",
                "json",
            ])
            .await;
            let status = json(&status);
            if status["term"] == term && status["leader_id"].is_u64() {
                break status["leader_id"].as_u64().unwrap() as usize - 1;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job 6 never sent its first step"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_ne!(leader, backup, "a paused agent does not lead");
    let via = (0..site.site.agents.len())
        .find(|s| *s != leader && *s != backup)
        .unwrap();
    let via_ep = site.site.endpoints[via].clone();
    let watch = {
        let via_ep = via_ep.clone();
        tokio::task::spawn_blocking(move || {
            stillpoint(&[
                "job",
                "watch",
                "6",
                "--timeout",
                "120",
                "--endpoint",
                &via_ep,
            ])
        })
    };
    site.site.kill(leader).await;
    site.site.signal(backup, "CONT").unwrap();
    site.site.spawn(leader).unwrap();
    let out = watch.await.unwrap();
    let text = stdout(&out);
    println!("{text}");
    assert_eq!(code(&out), OK, "{text}\n{}\n{}", stderr(&out), site.logs());
    assert!(text.contains("job 6 ended: done, consistent"), "{text}");
    // A new leader (or the restarted one, which openraft may let lead on in its own term)
    // took the job over: the step that was out when the leader died became unknown and was
    // asked about before anything else was sent.
    assert!(
        text.contains("step 0 free-rv backup1:rv0  dispatched → unknown (leader changed"),
        "{text}"
    );
    site.site.stop().await;
}

/// A job scheduler tells a copy made without a static point (exit 11) and a failed job (exit
/// 12) from a good copy by the exit code alone. The group asks for a freeze longer than the
/// MV allows (S4 refuses the quiesce: the copy is crash-consistent, saying why); then the site
/// file gives the group a backup command that fails (the job fails, naming its stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_without_a_static_point_exits_11_and_a_failed_backup_exits_12() {
    let mut layout = SiteLayout::spread(1);
    layout.quiesce = "freeze".into();
    layout.quiesce_ms_max = 60_000; // the sim volume allows a freeze of at most 10 s
    let site = JobSite::start(layout).await;
    let ep = site.site.endpoints[0].clone();
    let backup = || async {
        sp(&[
            "backup",
            "payroll",
            "--wait",
            "--timeout",
            "120",
            "--endpoint",
            &ep,
            "--output",
            "json",
        ])
        .await
    };
    let out = backup().await;
    assert_eq!(
        code(&out),
        DONE_CRASH_CONSISTENT,
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let doc = json(&out);
    assert_eq!(doc["exit_code"], DONE_CRASH_CONSISTENT, "{doc}");
    let label = &doc["job"]["end"]["label"];
    assert_eq!(label["label"], "crash_consistent", "{doc}");
    assert!(
        label["why"]
            .as_str()
            .unwrap_or_default()
            .contains("quiesce"),
        "the label does not say why: {doc}"
    );

    let file = site.dir.path().join("site-with-command.toml");
    let text = site.site.layout.site_toml()
        + "[groups.backup_command]\nnode = \"backup1\"\n\
           command = [\"sh\", \"-c\", \"echo tape drive offline >&2; exit 3\"]\n\
           timeout_ms = 30000\n";
    std::fs::write(&file, text).unwrap();
    let out = sp(&["apply", "-f", file.to_str().unwrap(), "--endpoint", &ep]).await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    let out = backup().await;
    assert_eq!(code(&out), JOB_FAILED, "{}\n{}", stdout(&out), stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["exit_code"], JOB_FAILED, "{doc}");
    let reason = doc["job"]["end"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("tape drive offline"), "{doc}");
    site.site.stop().await;
}

/// `group prepare --wait` follows the whole-volume copy live: with the array pacing its copy,
/// the watch reads the pair's progress from the array (through a control node) and shows it
/// moving — in the table as lines, in JSON as `copy_progress`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_job_shows_the_copy_progress_of_its_pairs() {
    let mut layout = SiteLayout::spread(1);
    layout.copy_pace_bytes_per_s = 1024 * 1024; // 4 MiB LDs: about 4 s of copy
    let site = JobSite::start_applied(layout).await;
    let ep = site.site.endpoints[0].clone();
    let out = sp(&[
        "group",
        "prepare",
        "payroll",
        "--wait",
        "--timeout",
        "120",
        "--endpoint",
        &ep,
        "--output",
        "json",
    ])
    .await;
    assert_eq!(code(&out), OK, "{}", stderr(&out));
    let doc = json(&out);
    let seen: Vec<u64> = doc["copy_progress"]
        .as_array()
        .unwrap_or_else(|| panic!("no copy_progress: {doc}"))
        .iter()
        .filter(|p| p["pair"] == "p0" && p["state"] == "rpl/exec")
        .map(|p| p["percent"].as_u64().unwrap())
        .collect();
    assert!(
        seen.len() >= 2 && seen.windows(2).all(|w| w[0] < w[1]),
        "the copy was not seen moving: {seen:?}\n{doc}"
    );
    site.site.stop().await;
}
