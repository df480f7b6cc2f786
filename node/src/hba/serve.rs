//! `stillpoint hba serve`: the LD path process itself (see the module's essay).

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{LD_DIR_NAME, LOCK_NAME, Reply, Request, STOPPED_NAME, socket_path};
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::volumes::{ArrayLdSource, attached_arrays};
use stillpoint_host::LdAttachment;

/// How often the HBA checks that its data dir still exists.
const DATA_DIR_CHECK_MS: u64 = 2_000;
/// A request line longer than this is refused (requests are a few bytes).
const REQUEST_BYTES_MAX: u64 = 4_096;
/// How long a connection may take to send its request.
const REQUEST_READ_MS: u64 = 10_000;

/// Serves the LDs visible to `config`'s node until `shutdown` completes, a stop request
/// arrives or the data dir is gone; then detaches them all. Errors: nothing to serve, another
/// HBA serves the data dir, or the FUSE file system cannot be mounted.
pub async fn serve(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let arrays = attached_arrays(&config);
    if arrays.is_empty() {
        return Err(NodeError::Prerequisite(format!(
            "node {}: no [host] volume of the linux backend names an array LD (`ld = \"ARRAY/NUMBER\"` and no `device`): the LD path has nothing to serve",
            config.name
        )));
    }
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|e| {
        NodeError::Prerequisite(format!(
            "cannot create data dir {}: {e}",
            data_dir.display()
        ))
    })?;
    let _lock = take_lock(&data_dir)?;
    let source = Arc::new(ArrayLdSource::new(arrays, &config.name));
    let attachment = LdAttachment::start(&data_dir.join(LD_DIR_NAME), source).await?;
    let socket = socket_path(&data_dir);
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).map_err(|e| {
        NodeError::Prerequisite(format!("cannot listen on {}: {e}", socket.display()))
    })?;
    tracing::info!(
        node = %config.name,
        socket = %socket.display(),
        attached = attachment.attached().len(),
        "LD path serving"
    );
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut check = tokio::time::interval(Duration::from_millis(DATA_DIR_CHECK_MS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (attachment, stop, node) = (attachment.clone(), stop.clone(), config.name.clone());
                    tokio::spawn(async move { answer(stream, &attachment, &stop, &node).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the LD path socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = &mut shutdown => {
                tracing::info!("stop signal: detaching the LDs");
                break;
            }
            _ = stop.notified() => {
                tracing::info!("stopped on request");
                break;
            }
            _ = check.tick() => {
                if !data_dir.exists() {
                    tracing::warn!(data_dir = %data_dir.display(), "the data dir is gone: detaching the LDs and exiting");
                    break;
                }
            }
        }
    }
    attachment.detach().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The exclusive lock on `<data_dir>/hba.lock`, held for the process's life (the kernel drops
/// it when the process dies, however it dies).
fn take_lock(data_dir: &Path) -> Result<std::fs::File, NodeError> {
    let path = data_dir.join(LOCK_NAME);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NodeError::Prerequisite(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(NodeError::Prerequisite(format!(
            "another LD path process serves {} (it holds {}: {e}); `stillpoint hba status` names it",
            data_dir.display(),
            path.display()
        )));
    }
    Ok(file)
}

/// One connection: one request line, one reply line.
async fn answer(
    stream: UnixStream,
    attachment: &LdAttachment,
    stop: &tokio::sync::Notify,
    node: &str,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader =
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, REQUEST_BYTES_MAX));
    let read = tokio::time::timeout(
        Duration::from_millis(REQUEST_READ_MS),
        reader.read_line(&mut line),
    )
    .await;
    let mut reply = Reply {
        pid: std::process::id(),
        node: node.to_string(),
        ..Reply::default()
    };
    let request = match read {
        Ok(Ok(_)) => serde_json::from_str::<Request>(line.trim())
            .map_err(|e| format!("bad request {:?}: {e}", line.trim())),
        Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
        Err(_) => Err(format!("no request within {REQUEST_READ_MS} ms")),
    };
    let mut stopping = false;
    match request {
        Ok(Request::Ping) => {}
        Ok(Request::Rescan) => {
            if let Err(e) = attachment.rescan().await {
                reply.error = Some(e.to_string());
            }
        }
        Ok(Request::Stop) => {
            if let Some(dir) = attachment.dir().parent() {
                let _ = tokio::fs::write(dir.join(STOPPED_NAME), b"stopped on request\n").await;
            }
            attachment.detach().await;
            stopping = true;
        }
        Err(e) => reply.error = Some(e),
    }
    reply.attached = attachment
        .attached()
        .into_iter()
        .map(|a| (a.ld, a.device))
        .collect();
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
        let _ = write.shutdown().await;
    }
    if stopping {
        stop.notify_one();
    }
}
