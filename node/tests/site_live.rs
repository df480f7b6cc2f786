//! `stillpoint apply` checks pairs and volumes against the live software array through an
//! agent with a control path to it: what the array could not serve is refused naming the file,
//! line and rule, and nothing is applied; an array no control node answers for is applied with
//! a warning saying it was not checked.

mod job_site;

use job_site::{JobSite, SiteLayout, stderr, stillpoint};

const BAD_INPUT: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_what_the_live_array_cannot_serve_and_names_the_line() {
    let site = JobSite::start(SiteLayout::spread(1)).await;
    let ep = site.site.endpoints[0].clone();
    let good = site.site.layout.site_toml();
    // A pair whose RV LD does not exist, and a volume of db2 on db1's LD.
    let bad = good.clone()
        + "[[pairs]]\nname = \"p9\"\nmv = \"A1:0\"\nrv = \"A1:99\"\nkind = \"ddr\"\n\
           [[volumes]]\nnode = \"db2\"\nname = \"stolen\"\nld = \"A1:0\"\n";
    let file = site.dir.path().join("bad.toml");
    std::fs::write(&file, &bad).unwrap();
    let path = file.to_str().unwrap().to_string();
    let ep2 = ep.clone();
    let out = tokio::task::spawn_blocking(move || {
        stillpoint(&["apply", "-f", &path, "--dry-run", "--endpoint", &ep2])
    })
    .await
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{err}");
    let pair_line = bad.lines().position(|l| l == "rv = \"A1:99\"").unwrap() + 1;
    assert!(
        err.contains(&format!("bad.toml:{pair_line}")) && err.contains("no LD 99"),
        "the error does not point at the RV line {pair_line}: {err}"
    );
    assert!(
        err.contains("node db2 is not on the access list of LD A1:0"),
        "{err}"
    );
    // Applied for real: refused the same way, and nothing changed.
    let path = file.to_str().unwrap().to_string();
    let ep2 = ep.clone();
    let out = tokio::task::spawn_blocking(move || {
        stillpoint(&["apply", "-f", &path, "--endpoint", &ep2])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(BAD_INPUT), "{}", stderr(&out));
    let ep2 = ep.clone();
    let shown = tokio::task::spawn_blocking(move || {
        stillpoint(&["inventory", "show", "--output", "json", "--endpoint", &ep2])
    })
    .await
    .unwrap();
    let inv: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(inv["pairs"].get("p9").is_none(), "{inv}");

    // The array's process stopped: the same good site applies, saying it was not checked.
    let mut site = site;
    if let Some(mut array) = site.site.array.take() {
        array.kill().await.unwrap();
        array.wait().await.unwrap();
    }
    let file = site.dir.path().join("good.toml");
    std::fs::write(&file, &good).unwrap();
    let path = file.to_str().unwrap().to_string();
    let out =
        tokio::task::spawn_blocking(move || stillpoint(&["apply", "-f", &path, "--endpoint", &ep]))
            .await
            .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("array A1 was not checked against the live array"),
        "{err}"
    );
}
