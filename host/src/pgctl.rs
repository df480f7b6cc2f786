//! A local PostgreSQL server to back up, for `stillpoint demo --postgres` and the PostgreSQL
//! tests: Debian's binaries under `/usr/lib/postgresql/N/bin` (15 or later, for
//! `pg_backup_start`), run as the `postgres` user (PostgreSQL refuses root) through `runuser`,
//! its socket in a private directory and no TCP listener, so two servers (production and the
//! one on a copy) never clash; pgbench to load it and check its invariant; `pg_amcheck`. Every
//! command is bounded; a server still running when dropped is stopped immediately. Errors are
//! [`HostError::Database`] naming the data directory (or [`HostError::Unsupported`] when this
//! machine cannot run it, saying how to install what is missing).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::error::HostError;

/// Longest a start (with crash or archive recovery), stop, initdb or pgbench initialisation
/// may take on a loaded 2-core machine.
const PG_COMMAND_MAX: Duration = Duration::from_secs(180);

/// What the PostgreSQL demo needs on this machine, found; or why it cannot run, saying how to
/// get it.
#[derive(Clone, Debug)]
pub struct PgInstall {
    pub bin: PathBuf,
    uid: u32,
    gid: u32,
}

impl PgInstall {
    pub fn find() -> Result<PgInstall, HostError> {
        let missing = |reason: String| HostError::Unsupported {
            operation: "running a local PostgreSQL".into(),
            reason,
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(missing(
                "PostgreSQL runs as its own user, which takes root to arrange: run as root".into(),
            ));
        }
        let install_hint =
            "on Debian: apt-get install postgresql-15 postgresql-client-15 e2fsprogs";
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| {
                missing(format!(
                    "PostgreSQL is not installed (no /usr/lib/postgresql); {install_hint}"
                ))
            })?
            .flatten()
            .filter_map(|e| {
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                ["initdb", "pg_ctl", "postgres", "pgbench"]
                    .iter()
                    .all(|t| bin.join(t).is_file())
                    .then_some((version, bin))
            })
            .collect();
        found.sort();
        let bin = match found.pop() {
            Some((version, _)) if version < 15 => {
                return Err(missing(format!(
                    "PostgreSQL {version} is too old (pg_backup_start needs 15 or later); {install_hint}"
                )));
            }
            Some((_, bin)) => bin,
            None => {
                return Err(missing(format!(
                    "no PostgreSQL with initdb, pg_ctl, postgres and pgbench under /usr/lib/postgresql/*/bin; {install_hint}"
                )));
            }
        };
        let name = c"postgres";
        // SAFETY: getpwnam with a NUL-terminated name; the result is read at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(missing(format!(
                "there is no `postgres` user to run PostgreSQL as (it refuses root); {install_hint}"
            )));
        }
        // SAFETY: pw is a valid passwd entry (checked above).
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        for tool in ["runuser"] {
            if !tool_installed(tool) {
                return Err(missing(format!("{tool} is not installed; {install_hint}")));
            }
        }
        Ok(PgInstall { bin, uid, gid })
    }

    /// `pg_amcheck`, when the client package is installed.
    pub fn amcheck(&self) -> Option<PathBuf> {
        Some(self.bin.join("pg_amcheck")).filter(|p| p.is_file())
    }

    /// A directory owned by postgres, mode 0700 (created if missing).
    pub fn own_dir(&self, path: &Path) -> Result<(), HostError> {
        let fail = |what: &str, e: std::io::Error| HostError::OsError {
            volume: path.display().to_string(),
            operation: what.into(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(path).map_err(|e| fail("create the directory", e))?;
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| fail("give the directory to postgres", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail("set the directory's mode", e))
    }

    /// A command run as the postgres user.
    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(self.bin.join(tool))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs `c` (about the server in `data`) to its end within [`PG_COMMAND_MAX`]; its output
    /// in the error.
    async fn check(&self, mut c: Command, data: &Path, what: &str) -> Result<String, HostError> {
        let out = tokio::time::timeout(PG_COMMAND_MAX, c.output())
            .await
            .map_err(|_| HostError::TimedOut {
                volume: data.display().to_string(),
                what: what.into(),
                timeout_ms: PG_COMMAND_MAX.as_millis() as u64,
            })?
            .map_err(|e| db_err(data, what, format!("cannot run it: {e}")))?;
        if !out.status.success() {
            return Err(db_err(
                data,
                what,
                format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn db_err(data: &Path, operation: &str, detail: String) -> HostError {
    HostError::Database {
        volume: data.display().to_string(),
        operation: operation.into(),
        detail,
    }
}

/// Whether a system tool is installed in one of the usual system directories.
pub fn tool_installed(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file())
}

/// One server: its data directory, socket directory and log.
pub struct PgServer {
    pub install: PgInstall,
    pub data: PathBuf,
    pub sock: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    running: bool,
}

/// pgbench's invariant and row counts on a server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PgbenchTotals {
    pub sum_abalance: i64,
    pub sum_tbalance: i64,
    pub sum_bbalance: i64,
    pub sum_delta: i64,
    pub branches: i64,
    pub tellers: i64,
    pub accounts: i64,
    pub history: i64,
}

impl PgbenchTotals {
    /// Every balance sums to the history's deltas, and the tables have the rows `pgbench -i
    /// -s scale` made.
    pub fn problems(&self, scale: i64) -> Vec<String> {
        let mut out = Vec::new();
        for (what, sum) in [
            ("accounts' abalance", self.sum_abalance),
            ("tellers' tbalance", self.sum_tbalance),
            ("branches' bbalance", self.sum_bbalance),
        ] {
            if sum != self.sum_delta {
                out.push(format!(
                    "the sum of {what} is {sum}, the history's deltas sum to {}",
                    self.sum_delta
                ));
            }
        }
        for (what, rows, want) in [
            ("pgbench_branches", self.branches, scale),
            ("pgbench_tellers", self.tellers, 10 * scale),
            ("pgbench_accounts", self.accounts, 100_000 * scale),
        ] {
            if rows != want {
                out.push(format!("{what} has {rows} rows, not {want}"));
            }
        }
        out
    }
}

impl PgServer {
    pub fn new(install: &PgInstall, data: &Path, sock: &Path, port: u16, log: &Path) -> PgServer {
        PgServer {
            install: install.clone(),
            data: data.into(),
            sock: sock.into(),
            port,
            log: log.into(),
            running: false,
        }
    }

    /// initdb (trust authentication on the local socket only), archiving every WAL segment
    /// into `archive` when given, and with the WAL in `wal_dir` when given (`pg_wal` is then a
    /// symlink).
    pub async fn initdb(
        &self,
        archive: Option<&Path>,
        wal_dir: Option<&Path>,
    ) -> Result<(), HostError> {
        self.install.own_dir(&self.data)?;
        if let Some(a) = archive {
            self.install.own_dir(a)?;
        }
        self.install.own_dir(&self.sock)?;
        if let Some(parent) = self.log.parent() {
            self.install.own_dir(parent)?;
        }
        let mut c = self.install.command("initdb");
        c.args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&self.data);
        if let Some(w) = wal_dir {
            self.install.own_dir(w)?;
            // initdb wants the WAL directory empty or absent; a fresh file system has
            // lost+found at its root, so the WAL lives one level down.
            c.arg("-X").arg(w);
        }
        self.install.check(c, &self.data, "initdb").await?;
        let mut conf = format!(
            "listen_addresses = ''\nport = {}\nunix_socket_directories = '{}'\nfsync = on\n\
             max_wal_size = 96MB\nmin_wal_size = 32MB\n",
            self.port,
            self.sock.display(),
        );
        if let Some(a) = archive {
            conf.push_str(&format!(
                "archive_mode = on\narchive_command = 'test ! -f {0}/%f && cp %p {0}/%f'\n",
                a.display()
            ));
        }
        let path = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)
            .map_err(|e| db_err(&self.data, "read postgresql.conf", e.to_string()))?;
        text.push_str(&conf);
        std::fs::write(&path, text)
            .map_err(|e| db_err(&self.data, "write postgresql.conf", e.to_string()))
    }

    /// Starts it and waits until it accepts connections (recovery included). A copy's server
    /// runs with archiving off: its WAL must not reach the production archive.
    pub async fn start(&mut self, archive: bool) -> Result<(), HostError> {
        self.install.own_dir(&self.sock)?;
        let mut c = self.install.command("pg_ctl");
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=''",
            self.port,
            self.sock.display()
        );
        if !archive {
            options.push_str(" -c archive_mode=off");
        }
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", &PG_COMMAND_MAX.as_secs().to_string(), "-o"])
            .arg(options)
            .arg("start");
        self.running = true;
        let started = self.install.check(c, &self.data, "pg_ctl start").await;
        started.map(drop).map_err(|e| {
            db_err(
                &self.data,
                "start",
                format!("{e}; the server's log ends: {}", self.log_tail()),
            )
        })
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let t = self.log_text();
        let from = t.len().saturating_sub(2000);
        let from = (from..t.len())
            .find(|i| t.is_char_boundary(*i))
            .unwrap_or(0);
        t[from..].to_string()
    }

    /// Stops it (`fast` or `immediate`), bounded.
    pub async fn stop(&mut self, mode: &str) -> Result<(), HostError> {
        if !self.running {
            return Ok(());
        }
        let mut c = self.install.command("pg_ctl");
        c.arg("-D").arg(&self.data).args([
            "-m",
            mode,
            "-w",
            "-t",
            &PG_COMMAND_MAX.as_secs().to_string(),
            "stop",
        ]);
        self.install.check(c, &self.data, "pg_ctl stop").await?;
        self.running = false;
        Ok(())
    }

    /// A session on it, bounded.
    pub async fn client(&self) -> Result<tokio_postgres::Client, HostError> {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.sock)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(30))
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                db_err(
                    &self.data,
                    "connect",
                    format!("at {}: {e}", self.sock.display()),
                )
            })?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// `pgbench -i -s scale`.
    pub async fn pgbench_init(&self, scale: u32) -> Result<(), HostError> {
        let mut c = self.install.command("pgbench");
        c.arg("-h").arg(&self.sock).args([
            "-p",
            &self.port.to_string(),
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "postgres",
        ]);
        self.install
            .check(c, &self.data, "pgbench -i")
            .await
            .map(drop)
    }

    /// `pgbench -c 4 -T seconds -l` in the background, its per-transaction logs in `log_dir`.
    pub fn pgbench_run(&self, seconds: u32, log_dir: &Path) -> Result<Child, HostError> {
        self.install.own_dir(log_dir)?;
        let mut c = self.install.command("pgbench");
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
        c.spawn()
            .map_err(|e| db_err(&self.data, "start pgbench", e.to_string()))
    }

    /// Waits (bounded) until the server has ended recovery and accepts writes: a copy in
    /// archive recovery accepts read-only connections before it is promoted.
    pub async fn wait_promoted(&self) -> Result<(), HostError> {
        let client = self.client().await?;
        let deadline = tokio::time::Instant::now() + PG_COMMAND_MAX;
        loop {
            let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await;
            if let Ok(row) = row
                && !row.get::<_, bool>(0)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HostError::TimedOut {
                    volume: self.data.display().to_string(),
                    what: "the server to end recovery".into(),
                    timeout_ms: PG_COMMAND_MAX.as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// pgbench's invariant and the row counts, read in one statement.
    pub async fn totals(&self) -> Result<PgbenchTotals, HostError> {
        let client = self.client().await?;
        let row = tokio::time::timeout(
            PG_COMMAND_MAX,
            client.query_one(
                "SELECT (SELECT coalesce(sum(abalance), 0)::int8 FROM pgbench_accounts),
                        (SELECT coalesce(sum(tbalance), 0)::int8 FROM pgbench_tellers),
                        (SELECT coalesce(sum(bbalance), 0)::int8 FROM pgbench_branches),
                        (SELECT coalesce(sum(delta), 0)::int8 FROM pgbench_history),
                        (SELECT count(*) FROM pgbench_branches),
                        (SELECT count(*) FROM pgbench_tellers),
                        (SELECT count(*) FROM pgbench_accounts),
                        (SELECT count(*) FROM pgbench_history)",
                &[],
            ),
        )
        .await
        .map_err(|_| HostError::TimedOut {
            volume: self.data.display().to_string(),
            what: "reading pgbench's totals".into(),
            timeout_ms: PG_COMMAND_MAX.as_millis() as u64,
        })?
        .map_err(|e| db_err(&self.data, "read pgbench's totals", e.to_string()))?;
        Ok(PgbenchTotals {
            sum_abalance: row.get(0),
            sum_tbalance: row.get(1),
            sum_bbalance: row.get(2),
            sum_delta: row.get(3),
            branches: row.get(4),
            tellers: row.get(5),
            accounts: row.get(6),
            history: row.get(7),
        })
    }

    /// `pg_amcheck` over every table and index (heap and B-tree checks), if installed: `None`
    /// when it is not, else its verdict.
    pub async fn amcheck(&self) -> Option<Result<(), String>> {
        self.install.amcheck()?;
        let mut c = self.install.command("pg_amcheck");
        c.arg("-h").arg(&self.sock).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "--install-missing",
            "--heapallindexed",
            "-d",
            "postgres",
        ]);
        Some(
            self.install
                .check(c, &self.data, "pg_amcheck")
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.install.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "60", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The longest latency (ms) of the transactions in pgbench's per-transaction logs under `dir`
/// that overlapped `[from_ms, to_ms]` (Unix ms), and how many did.
pub fn max_latency_in(dir: &Path, from_ms: u64, to_ms: u64) -> (f64, usize) {
    let mut max_ms: f64 = 0.0;
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0.0, 0);
    };
    for f in entries.flatten() {
        if !f.file_name().to_string_lossy().starts_with("pgbench_log") {
            continue;
        }
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        for line in text.lines() {
            // client_id transaction_no latency_us script_no epoch_s epoch_us
            let v: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 6 {
                continue;
            }
            let end_ms = v[4] * 1000 + v[5] / 1000;
            let start_ms = end_ms.saturating_sub(v[2] / 1000);
            if end_ms >= from_ms && start_ms <= to_ms {
                n += 1;
                max_ms = max_ms.max(v[2] as f64 / 1000.0);
            }
        }
    }
    (max_ms, n)
}

/// Waits (bounded by `within`) for a background pgbench to end; whether it succeeded and what
/// it printed.
pub async fn pgbench_wait(bench: Child, within: Duration) -> Result<(bool, String), HostError> {
    let out = tokio::time::timeout(within, bench.wait_with_output())
        .await
        .map_err(|_| HostError::TimedOut {
            volume: "pgbench".into(),
            what: "pgbench to end".into(),
            timeout_ms: within.as_millis() as u64,
        })?
        .map_err(|e| HostError::Database {
            volume: "pgbench".into(),
            operation: "wait for pgbench".into(),
            detail: e.to_string(),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}
