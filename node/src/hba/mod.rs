//! The LD path: the process that makes a linux host's array LDs its block devices, apart from
//! the agent.
//!
//! On a real server the path to an array's LDs is the HBA and the kernel: the backup agent may
//! die, restart or be upgraded and the business server's file systems on those LDs keep
//! working. The software array's LDs reach a host through a FUSE file per LD and a loop device
//! over it ([`stillpoint_host::LdAttachment`]); whoever serves that FUSE file system is in the
//! I/O path of every file system mounted on an LD. So it is not the agent: it is
//! `stillpoint hba serve --config node.toml`, one process per host, which attaches the LDs
//! visible to the node (under `<data_dir>/lds`) and then only serves their I/O and answers
//! the agent on a unix socket (`<data_dir>/hba.sock`: ping, rescan, stop; one JSON line each
//! way). A SIGKILLed or stopped agent leaves it running, and the volumes stay mounted and
//! writable; the restarted agent finds it by its socket.
//!
//! Who starts it: under systemd, its own unit (`node/systemd/stillpoint-hba.service`), which
//! the agent's unit wants, so an agent restart (which ends everything in the agent's control
//! group) does not take the LDs away. Without it the agent starts one itself when it finds
//! none (in its own process group, logging to `<data_dir>/hba.log`), and while it runs it
//! pings it every [`KEEPER_PERIOD_MS`] and starts a new one when it stopped answering (the
//! process died: the file systems on its LDs saw I/O errors, as after a path failure; the new
//! one detaches the dead one's loop devices, lazily unmounts what was mounted on them, and
//! attaches the LDs again, so the volumes can be mounted again). One process per data dir: it
//! holds an exclusive lock on `<data_dir>/hba.lock` for its life.
//!
//! How it ends: `stillpoint hba stop --config node.toml`, SIGTERM or SIGINT unmount the file
//! systems on the LDs (after syncfs), detach the loop devices and unmount the FUSE file system
//! — what taking an HBA out of a server needs — and the process exits. It also does so by
//! itself when its data dir is gone (a test's temporary site removed under it).
//!
//! Caveats: the agent starts the HBA from its own executable (`/proc/self/exe`), so the HBA
//! of a host is the version of the agent that started it until it is stopped; a running HBA
//! keeps the arrays and node name it started with (restart it after changing them).

mod serve;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::config::NodeConfig;
use crate::error::NodeError;
use stillpoint_host::{HostError, LdPath};

pub use serve::serve;

/// Directory under the data dir where a linux host's attached LDs appear as files (FUSE).
pub const LD_DIR_NAME: &str = "lds";
/// The HBA's socket, under the data dir.
pub const SOCKET_NAME: &str = "hba.sock";
/// The lock the serving HBA holds, under the data dir.
pub const LOCK_NAME: &str = "hba.lock";
/// Left by a stop request, under the data dir: the agent does not start a new HBA while it is
/// there (an agent start removes it).
pub const STOPPED_NAME: &str = "hba.stopped";
/// Where an HBA the agent started logs, under the data dir.
pub const LOG_NAME: &str = "hba.log";

/// A ping must be answered within this long.
pub const PING_MS: u64 = 2_000;
/// A rescan (a listing per array, then `losetup` per new LD, each bounded) within this long.
pub const RESCAN_MS: u64 = 120_000;
/// A stop (unmount, detach, FUSE unmount; each bounded) within this long.
pub const STOP_MS: u64 = 120_000;
/// A newly started HBA attaches what is visible before it answers: within this long.
pub const START_MS: u64 = 120_000;
/// How often the agent checks that its HBA answers.
pub const KEEPER_PERIOD_MS: u64 = 1_000;
/// Pings in a row that must fail before the agent starts a new HBA.
pub const KEEPER_MISSES_MAX: u32 = 2;

/// A request to the HBA: one JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Rescan,
    Stop,
}

/// The HBA's answer: one JSON line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The HBA's process id.
    pub pid: u32,
    /// The node name it serves.
    pub node: String,
    /// `(ARRAY/NUMBER, loop device)` of every LD attached.
    pub attached: Vec<(String, String)>,
    /// What went wrong, if the request failed.
    pub error: Option<String>,
}

/// The socket of the HBA serving `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Sends `request` to the HBA of `data_dir` and reads its reply, within `timeout_ms`.
pub async fn ask(data_dir: &Path, request: Request, timeout_ms: u64) -> Result<Reply, String> {
    let path = socket_path(data_dir);
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
        let mut line = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("cannot write to {}: {e}", path.display()))?;
        let mut reader = tokio::io::BufReader::new(stream);
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("cannot read from {}: {e}", path.display()))?;
        parse_reply(&path, &answer)
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{} did not answer {request:?} within {timeout_ms} ms",
            path.display()
        )),
    }
}

/// [`ask`] for callers without a runtime (a test's or demo site's clean-up on drop).
pub fn ask_blocking(data_dir: &Path, request: Request, timeout_ms: u64) -> Result<Reply, String> {
    let path = socket_path(data_dir);
    let timeout = Some(Duration::from_millis(timeout_ms.max(1)));
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    stream
        .set_read_timeout(timeout)
        .and_then(|_| stream.set_write_timeout(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(&request).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("cannot write to {}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from {}: {e}", path.display()))?;
    parse_reply(&path, &answer)
}

/// Stops the LD path process of the node configured in `config_file`, if one answers: its file
/// systems on LDs are unmounted and its LDs detached when this returns `Ok(Some(..))`. For
/// clean-up without a runtime (test and demo sites).
pub fn stop_blocking(config_file: &Path) -> Result<Option<Reply>, String> {
    let config = NodeConfig::load(config_file).map_err(|e| e.to_string())?;
    if !socket_path(&config.data_dir).exists() {
        return Ok(None);
    }
    match ask_blocking(&config.data_dir, Request::Ping, PING_MS) {
        Ok(_) => ask_blocking(&config.data_dir, Request::Stop, STOP_MS).map(Some),
        Err(_) => Ok(None),
    }
}

fn parse_reply(path: &Path, answer: &str) -> Result<Reply, String> {
    if answer.trim().is_empty() {
        return Err(format!("{} closed without answering", path.display()));
    }
    let reply: Reply = serde_json::from_str(answer.trim())
        .map_err(|e| format!("{} answered {answer:?}: {e}", path.display()))?;
    match &reply.error {
        Some(e) => Err(e.clone()),
        None => Ok(reply),
    }
}

/// The agent's side of its HBA: finds it (or starts one), asks it to rescan, and keeps it
/// running while the agent runs.
pub struct HbaLink {
    data_dir: PathBuf,
    lds_dir: PathBuf,
    keeper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HbaLink {
    /// Connects to the HBA serving the node's data dir, starting one when none answers (from
    /// the config file the agent was started with), and waits until it has attached what is
    /// visible. Then keeps it running (see the module's essay).
    pub async fn start(config: &NodeConfig) -> Result<Arc<HbaLink>, NodeError> {
        let data_dir = config.data_dir.clone();
        let lds_dir = std::fs::canonicalize(&data_dir)
            .map_err(|e| NodeError::Prerequisite(format!("data dir {}: {e}", data_dir.display())))?
            .join(LD_DIR_NAME);
        let config_file = config.loaded_from.clone();
        let _ = std::fs::remove_file(data_dir.join(STOPPED_NAME));
        match ask(&data_dir, Request::Ping, PING_MS).await {
            Ok(reply) => {
                if reply.node != config.name {
                    return Err(NodeError::Prerequisite(format!(
                        "the LD path process (pid {}) serving {} serves node {:?}, not {:?}: stop it (`stillpoint hba stop`) first",
                        reply.pid,
                        data_dir.display(),
                        reply.node,
                        config.name
                    )));
                }
                tracing::info!(
                    pid = reply.pid,
                    attached = reply.attached.len(),
                    "the LD path process is running; using it"
                );
            }
            Err(_) => {
                let file = config_file.as_deref().ok_or_else(|| {
                    NodeError::Prerequisite(format!(
                        "no LD path process serves {} and this agent has no config file to start one with: run `stillpoint hba serve --config node.toml`",
                        data_dir.display()
                    ))
                })?;
                start_hba(file, &data_dir)?;
                wait_answering(&data_dir, START_MS).await?;
            }
        }
        let link = Arc::new(HbaLink {
            data_dir: data_dir.clone(),
            lds_dir,
            keeper: std::sync::Mutex::new(None),
        });
        if let Some(file) = config_file {
            let handle = tokio::spawn(keep(data_dir, file));
            *link.keeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
        Ok(link)
    }

    /// Stops watching the HBA (the agent is stopping); the HBA keeps serving.
    pub fn stop_keeping(&self) {
        if let Some(h) = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
    }
}

impl Drop for HbaLink {
    fn drop(&mut self) {
        self.stop_keeping();
    }
}

#[async_trait]
impl LdPath for HbaLink {
    /// From the kernel, not the HBA: the loop device over the LD's file.
    fn device(&self, ld: &str) -> Option<String> {
        let file = self
            .lds_dir
            .join(stillpoint_host::ld_file_name(ld))
            .display()
            .to_string();
        stillpoint_host::loops_under(&self.lds_dir)
            .into_iter()
            .find(|(_, back)| *back == file)
            .map(|(device, _)| device)
    }

    async fn rescan(&self) -> Result<(), HostError> {
        ask(&self.data_dir, Request::Rescan, RESCAN_MS)
            .await
            .map(|_| ())
            .map_err(|detail| HostError::Device {
                device: self.lds_dir.display().to_string(),
                operation: "rescan the LDs (LD path process)".into(),
                detail,
            })
    }
}

/// Starts `stillpoint hba serve --config FILE` from this executable, in its own process group
/// (a terminal's Ctrl-C to the agent does not reach it), logging to `<data_dir>/hba.log`. A
/// task reaps it and logs how it ended.
fn start_hba(config_file: &Path, data_dir: &Path) -> Result<(), NodeError> {
    let exe = std::env::current_exe()
        .map_err(|e| NodeError::Prerequisite(format!("cannot find this executable: {e}")))?;
    let log_path = data_dir.join(LOG_NAME);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| NodeError::Prerequisite(format!("cannot open {}: {e}", log_path.display())))?;
    let mut child = tokio::process::Command::new(&exe)
        .arg("hba")
        .arg("serve")
        .arg("--config")
        .arg(config_file)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| NodeError::Prerequisite(format!("cannot start {}: {e}", exe.display())))?;
    let pid = child.id().unwrap_or(0);
    tracing::warn!(pid, log = %log_path.display(), "started the LD path process (`stillpoint hba serve`); under systemd run it as its own unit so an agent restart leaves it running");
    tokio::spawn(async move {
        match child.wait().await {
            Ok(s) if s.success() => tracing::info!(pid, "the LD path process exited"),
            Ok(s) => tracing::warn!(pid, status = %s, "the LD path process ended"),
            Err(e) => tracing::warn!(pid, error = %e, "cannot wait for the LD path process"),
        }
    });
    Ok(())
}

/// Waits until the HBA of `data_dir` answers, bounded.
async fn wait_answering(data_dir: &Path, within_ms: u64) -> Result<Reply, NodeError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(within_ms);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match ask(data_dir, Request::Ping, PING_MS).await {
            Ok(reply) => return Ok(reply),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(NodeError::Timeout {
        what: format!(
            "waiting for the LD path process of {} to answer (last: {last}; see {})",
            data_dir.display(),
            data_dir.join(LOG_NAME).display()
        ),
        ms: within_ms,
    })
}

/// While the agent runs: ping the HBA; after [`KEEPER_MISSES_MAX`] misses in a row, start a
/// new one (its lock makes a second one exit at once if the first is only slow).
async fn keep(data_dir: PathBuf, config_file: PathBuf) {
    let mut misses = 0u32;
    loop {
        tokio::time::sleep(Duration::from_millis(KEEPER_PERIOD_MS)).await;
        match ask(&data_dir, Request::Ping, PING_MS).await {
            Ok(_) => misses = 0,
            Err(_) if data_dir.join(STOPPED_NAME).exists() => {
                if misses == 0 {
                    tracing::warn!(
                        "the LD path process was stopped on request (`stillpoint hba stop`): not starting another until the agent restarts"
                    );
                }
                misses = 1;
            }
            Err(e) => {
                misses += 1;
                if misses < KEEPER_MISSES_MAX {
                    continue;
                }
                tracing::error!(error = %e, "the LD path process does not answer: file systems on its LDs see I/O errors; starting a new one");
                if let Err(e) = start_hba(&config_file, &data_dir) {
                    tracing::error!(error = %e, "cannot start the LD path process");
                } else if let Err(e) = wait_answering(&data_dir, START_MS).await {
                    tracing::error!(error = %e, "the new LD path process does not answer");
                }
                misses = 0;
            }
        }
    }
}

/// [`ask`] for the CLI: the HBA of the node configured in `config_file`.
async fn ask_cli(
    config_file: &Path,
    request: Request,
    timeout_ms: u64,
) -> Result<Reply, NodeError> {
    let config = NodeConfig::load(config_file)?;
    ask(&config.data_dir, request, timeout_ms)
        .await
        .map_err(|detail| NodeError::Unreachable {
            address: socket_path(&config.data_dir).display().to_string(),
            detail,
        })
}

/// `stillpoint hba serve|stop|status`.
pub async fn run_command(command: crate::cli::HbaCommand) -> Result<(), NodeError> {
    use crate::cli::HbaCommand;
    use crate::output::OutputFormat;
    match command {
        HbaCommand::Serve { config } => {
            let config = NodeConfig::load(&config)?;
            serve(config, crate::cli::shutdown_signal()).await
        }
        HbaCommand::Stop { config } => {
            let reply = ask_cli(&config, Request::Stop, STOP_MS).await?;
            println!(
                "LD path process {} of node {} detached its LDs and is exiting",
                reply.pid, reply.node
            );
            Ok(())
        }
        HbaCommand::Status { config, output } => {
            let reply = ask_cli(&config, Request::Ping, PING_MS).await?;
            match output {
                OutputFormat::Json => println!("{}", crate::output::json(&reply)),
                OutputFormat::Table => {
                    println!("LD path process {} serving node {}", reply.pid, reply.node);
                    let rows: Vec<Vec<String>> = reply
                        .attached
                        .iter()
                        .map(|(ld, device)| vec![ld.clone(), device.clone()])
                        .collect();
                    print!("{}", crate::output::table(&["LD", "DEVICE"], &rows));
                }
            }
            Ok(())
        }
    }
}
