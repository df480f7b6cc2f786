//! A real PostgreSQL for the host tests: found under /usr/lib/postgresql/*/bin (15 or later:
//! `pg_backup_start`), run as the `postgres` user (PostgreSQL refuses root) with its socket in
//! a private directory (no TCP), stopped on drop. Callers skip with the reason when it cannot
//! run here. Self-contained (std, tokio, tokio-postgres), so a test elsewhere (e.g. the same
//! checks on the software array's LDs) can include it with `#[path]`.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A background process (pgbench) killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Longest a PostgreSQL start (with recovery) or stop may take on a loaded 2-core machine.
pub const PG_START_MAX: Duration = Duration::from_secs(120);

/// The newest PostgreSQL's bin directory with everything the tests run, or why not.
pub fn find_bin() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| {
            "PostgreSQL is not installed (no /usr/lib/postgresql; apt-get install postgresql-15)"
                .to_string()
        })?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            ["initdb", "pg_ctl", "postgres", "pgbench"]
                .iter()
                .all(|t| bin.join(t).is_file())
                .then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((v, _)) if v < 15 => Err(format!(
            "PostgreSQL {v} is too old (pg_backup_start needs 15 or later)"
        )),
        Some((_, bin)) => Ok(bin),
        None => Err("no PostgreSQL with initdb, pg_ctl, postgres and pgbench under /usr/lib/postgresql/*/bin".into()),
    }
}

/// Why PostgreSQL cannot run in these tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    if let Err(why) = find_bin() {
        return Some(why);
    }
    let user = Command::new("id")
        .args(["-u", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !user.map(|s| s.success()).unwrap_or(false) {
        return Some("there is no `postgres` user to run PostgreSQL as (it refuses root)".into());
    }
    if !Path::new("/usr/sbin/runuser").exists() && !Path::new("/sbin/runuser").exists() {
        return Some("runuser is not installed".into());
    }
    None
}

/// `id -u postgres`, `id -g postgres`.
pub fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| run(&["id", flag, "postgres"]).parse().unwrap();
    (id("-u"), id("-g"))
}

/// A directory owned by postgres (mode 0700).
pub fn postgres_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// A command run as the postgres user.
pub fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

fn check(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One PostgreSQL server; stopped (immediately) on drop.
pub struct Pg {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub sock: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    running: bool,
}

impl Pg {
    /// A server over `data` (created by initdb unless it exists) with its socket in `sock`.
    pub fn new(data: &Path, sock: &Path, port: u16, log: &Path) -> Pg {
        postgres_dir(sock);
        postgres_dir(log.parent().unwrap());
        Pg {
            bin: find_bin().unwrap(),
            data: data.into(),
            sock: sock.into(),
            port,
            log: log.into(),
            running: false,
        }
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// initdb with trust authentication on the local socket, WAL archiving into `archive`
    /// when given.
    pub fn initdb(&self, archive: Option<&Path>) {
        postgres_dir(&self.data);
        let mut c = as_postgres(&self.tool("initdb"));
        c.args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&self.data);
        check(c, "initdb");
        let mut conf = format!(
            "listen_addresses = ''\nport = {}\nunix_socket_directories = '{}'\nfsync = on\n",
            self.port,
            self.sock.display()
        );
        if let Some(a) = archive {
            postgres_dir(a);
            conf.push_str(&format!(
                "archive_mode = on\narchive_command = 'test ! -f {0}/%f && cp %p {0}/%f'\n",
                a.display()
            ));
        }
        let path = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
    }

    /// Starts it (waiting until it accepts connections, recovery included).
    pub fn start(&mut self) -> Result<(), String> {
        let mut c = as_postgres(&self.tool("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", &PG_START_MAX.as_secs().to_string(), "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=''",
                self.port,
                self.sock.display()
            ))
            .arg("start");
        let out = c.output().unwrap();
        self.running = true;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed: {}; log ends: {}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            ))
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let t = self.log_text();
        t[t.len().saturating_sub(2000)..].to_string()
    }

    pub fn stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let mut c = as_postgres(&self.tool("pg_ctl"));
        c.arg("-D").arg(&self.data).args([
            "-m",
            mode,
            "-w",
            "-t",
            &PG_START_MAX.as_secs().to_string(),
            "stop",
        ]);
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        self.running = false;
    }

    /// A client session (trust authentication on the socket).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.sock)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(30))
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connect to {}: {e}; log: {}",
                    self.sock.display(),
                    self.log_tail()
                )
            });
        tokio::spawn(conn);
        client
    }

    /// `pgbench -i -s scale`.
    pub fn pgbench_init(&self, scale: u32) {
        let mut c = as_postgres(&self.tool("pgbench"));
        c.arg("-h").arg(&self.sock).args([
            "-p",
            &self.port.to_string(),
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "postgres",
        ]);
        check(c, "pgbench -i");
    }

    /// `pgbench -c 4 -T seconds` in the background, logging every transaction into `log_dir`
    /// (owned by postgres).
    pub fn pgbench_run(&self, seconds: u32, log_dir: &Path) -> Proc {
        postgres_dir(log_dir);
        let mut c = as_postgres(&self.tool("pgbench"));
        c.current_dir(log_dir)
            .arg("-h")
            .arg(&self.sock)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "4",
                "-T",
                &seconds.to_string(),
                "-l",
                "postgres",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Proc(c.spawn().unwrap())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

/// Waits (bounded) for the background pgbench to end; returns its exit status and output.
pub async fn pgbench_finish(p: &mut Proc, within: Duration) -> (bool, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            let mut out = String::new();
            for s in [
                p.0.stdout.take().map(|mut o| {
                    let mut t = String::new();
                    let _ = std::io::Read::read_to_string(&mut o, &mut t);
                    t
                }),
                p.0.stderr.take().map(|mut o| {
                    let mut t = String::new();
                    let _ = std::io::Read::read_to_string(&mut o, &mut t);
                    t
                }),
            ]
            .into_iter()
            .flatten()
            {
                out.push_str(&s);
            }
            return (status.success(), out);
        }
        assert!(
            start.elapsed() < within,
            "pgbench did not end within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The longest latency (ms) of a transaction in pgbench's per-transaction logs under `dir`
/// that overlapped `[from_ms, to_ms]` (Unix ms), and how many did.
pub fn max_latency_in(dir: &Path, from_ms: u64, to_ms: u64) -> (f64, usize) {
    let mut max_ms: f64 = 0.0;
    let mut n = 0;
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        if !f.file_name().to_string_lossy().starts_with("pgbench_log") {
            continue;
        }
        for line in std::fs::read_to_string(f.path()).unwrap().lines() {
            // client_id transaction_no latency_us script_no epoch_s epoch_us
            let v: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 6 {
                continue;
            }
            let latency_ms = v[2] as f64 / 1000.0;
            let end_ms = v[4] * 1000 + v[5] / 1000;
            let start_ms = end_ms.saturating_sub(v[2] / 1000);
            if end_ms >= from_ms && start_ms <= to_ms {
                n += 1;
                max_ms = max_ms.max(latency_ms);
            }
        }
    }
    (max_ms, n)
}

/// pgbench's invariant on a server: the balances of accounts, tellers and branches each sum to
/// the sum of the history's deltas. Returns (sums, row counts of branches, tellers, accounts,
/// history).
pub async fn pgbench_invariant(client: &tokio_postgres::Client) -> ([i64; 4], [i64; 4]) {
    let row = client
        .query_one(
            "SELECT (SELECT coalesce(sum(abalance), 0)::int8 FROM pgbench_accounts),
                    (SELECT coalesce(sum(tbalance), 0)::int8 FROM pgbench_tellers),
                    (SELECT coalesce(sum(bbalance), 0)::int8 FROM pgbench_branches),
                    (SELECT coalesce(sum(delta), 0)::int8 FROM pgbench_history),
                    (SELECT count(*) FROM pgbench_branches),
                    (SELECT count(*) FROM pgbench_tellers),
                    (SELECT count(*) FROM pgbench_accounts),
                    (SELECT count(*) FROM pgbench_history)",
            &[],
        )
        .await
        .unwrap();
    (
        [row.get(0), row.get(1), row.get(2), row.get(3)],
        [row.get(4), row.get(5), row.get(6), row.get(7)],
    )
}
