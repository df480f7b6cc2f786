//! `BlockDevice`: what a sim volume (and the verifier) reads and writes. The agent implements
//! it over the array's data API so sim volumes are real LDs of a (software) array; tests use
//! [`FileDevice`], a plain file.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::HostError;

/// A block device addressed by byte offset.
#[async_trait]
pub trait BlockDevice: Send + Sync {
    /// Name shown in errors (LD name or file path).
    fn name(&self) -> String;
    /// Size in bytes.
    async fn capacity_bytes(&self) -> Result<u64, HostError>;
    /// Reads exactly `len` bytes at `offset` (inside the capacity).
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, HostError>;
    /// Writes `data` at `offset` (inside the capacity). When it returns, every later read
    /// sees the data and it survives the writing process (for an array LD: the array has it).
    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), HostError>;
}

/// A [`BlockDevice`] over a regular file (or any file the process can open).
#[derive(Debug, Clone)]
pub struct FileDevice {
    path: PathBuf,
    file: Arc<std::fs::File>,
}

impl FileDevice {
    /// Opens an existing file read-write.
    pub fn open(path: &Path) -> Result<FileDevice, HostError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| dev_err(path, "open", e))?;
        Ok(FileDevice {
            path: path.to_path_buf(),
            file: Arc::new(file),
        })
    }

    /// Creates (or truncates) a zero-filled file of `capacity_bytes`.
    pub fn create(path: &Path, capacity_bytes: u64) -> Result<FileDevice, HostError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| dev_err(path, "create", e))?;
        file.set_len(capacity_bytes)
            .map_err(|e| dev_err(path, "set length", e))?;
        Ok(FileDevice {
            path: path.to_path_buf(),
            file: Arc::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn dev_err(path: &Path, op: &str, e: std::io::Error) -> HostError {
    HostError::Device {
        device: path.display().to_string(),
        operation: op.into(),
        detail: e.to_string(),
    }
}

#[async_trait]
impl BlockDevice for FileDevice {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    async fn capacity_bytes(&self) -> Result<u64, HostError> {
        let file = self.file.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || file.metadata().map(|m| m.len()))
            .await
            .map_err(|e| dev_err(&path, "stat", std::io::Error::other(e)))?
            .map_err(|e| dev_err(&self.path, "stat", e))
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, HostError> {
        let file = self.file.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map(|_| buf)
        })
        .await
        .map_err(|e| dev_err(&path, "read", std::io::Error::other(e)))?
        .map_err(|e| dev_err(&self.path, &format!("read {len} bytes at {offset}"), e))
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), HostError> {
        let file = self.file.clone();
        let path = self.path.clone();
        let data = data.to_vec();
        let len = data.len();
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(|e| dev_err(&path, "write", std::io::Error::other(e)))?
            .map_err(|e| dev_err(&self.path, &format!("write {len} bytes at {offset}"), e))
    }
}

/// Copies `src` onto `dst` whole, in 1 MiB pieces: how tests (and the demo) take the array's
/// copy of an MV when no array is at hand.
pub async fn copy_device(src: &dyn BlockDevice, dst: &dyn BlockDevice) -> Result<u64, HostError> {
    const PIECE_BYTES: u64 = 1024 * 1024;
    let cap = src.capacity_bytes().await?;
    let mut off = 0;
    while off < cap {
        let n = PIECE_BYTES.min(cap - off);
        let data = src.read_at(off, n as usize).await?;
        dst.write_at(off, &data).await?;
        off += n;
    }
    Ok(cap)
}
