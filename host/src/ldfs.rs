//! `LdFs`: a FUSE file system with one regular file per attached array LD, each read and
//! write served through the LD's [`BlockDevice`] (the array's data API). A loop device over
//! such a file is the LD as a block device of this host (see `lds`).
//!
//! fuser runs the session on threads of its own ([`limits::LD_FUSE_THREADS`] of them, so
//! that many requests are in flight to the array); each callback waits for its array call on
//! the agent's tokio runtime through a [`Handle`], never on a runtime thread. Every call is
//! bounded by [`limits::LD_IO_TIMEOUT_MS`]; the retries of an array that did not answer are
//! the device's (the agent's `ArrayLdDevice`). A refusal or a timeout is EIO (a write to a
//! read-only RV is EROFS), never a panic and never a hang.
//!
//! Every file is opened with `FOPEN_DIRECT_IO`: the kernel keeps no page cache of it, so a
//! write completes only once the array has it, and a flush has nothing left to write (see the
//! crate's CAVEATS for the choice).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use tokio::runtime::Handle;

use crate::device::BlockDevice;
use crate::error::HostError;
use crate::limits;

/// Attributes are fixed while an LD is attached: the kernel may keep them.
const ATTR_TTL: Duration = Duration::from_secs(1);
/// First inode number of an LD file (1 is the root directory).
const FIRST_LD_INO: u64 = 2;

/// One LD presented as a file.
pub(crate) struct LdFile {
    pub ino: u64,
    pub name: String,
    pub capacity_bytes: u64,
    pub device: Arc<dyn BlockDevice>,
}

/// The files, shared between the FUSE threads and the agent (which adds LDs at rescan).
#[derive(Default)]
pub(crate) struct LdTable {
    by_name: BTreeMap<String, Arc<LdFile>>,
    by_ino: BTreeMap<u64, Arc<LdFile>>,
}

impl LdTable {
    /// Adds an LD under `name` (a file name); returns false if it is already there.
    pub fn add(&mut self, name: &str, capacity_bytes: u64, device: Arc<dyn BlockDevice>) -> bool {
        if self.by_name.contains_key(name) {
            return false;
        }
        let ino = self
            .by_ino
            .keys()
            .next_back()
            .map_or(FIRST_LD_INO, |i| i + 1);
        let f = Arc::new(LdFile {
            ino,
            name: name.to_string(),
            capacity_bytes,
            device,
        });
        self.by_name.insert(name.to_string(), f.clone());
        self.by_ino.insert(ino, f);
        true
    }
}

pub(crate) type SharedTable = Arc<RwLock<LdTable>>;

pub(crate) fn read_table(t: &SharedTable) -> std::sync::RwLockReadGuard<'_, LdTable> {
    t.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write_table(t: &SharedTable) -> std::sync::RwLockWriteGuard<'_, LdTable> {
    t.write().unwrap_or_else(|e| e.into_inner())
}

/// The FUSE file system.
pub(crate) struct LdFs {
    table: SharedTable,
    rt: Handle,
    created: SystemTime,
}

/// How an I/O error reaches the file system above: EROFS for a write refused because the LD
/// is read-only to this host, EIO for everything else.
fn errno_of(e: &HostError, write: bool) -> (Errno, &'static str) {
    match e {
        HostError::Refused { rule, .. } if write && rule.contains("read-only") => {
            (Errno::EROFS, "EROFS")
        }
        _ => (Errno::EIO, "EIO"),
    }
}

impl LdFs {
    pub fn new(table: SharedTable, rt: Handle) -> LdFs {
        LdFs {
            table,
            rt,
            created: SystemTime::now(),
        }
    }

    fn file(&self, ino: INodeNo) -> Option<Arc<LdFile>> {
        read_table(&self.table).by_ino.get(&ino.0).cloned()
    }

    fn dir_attr(&self) -> FileAttr {
        self.attr(INodeNo::ROOT.0, 0, FileType::Directory, 0o700, 2)
    }

    fn file_attr(&self, f: &LdFile) -> FileAttr {
        self.attr(f.ino, f.capacity_bytes, FileType::RegularFile, 0o600, 1)
    }

    fn attr(&self, ino: u64, size: u64, kind: FileType, perm: u16, nlink: u32) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Runs one array call on the runtime, bounded by [`limits::LD_IO_TIMEOUT_MS`].
    fn call<T>(
        &self,
        f: &LdFile,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, HostError>>,
    ) -> Result<T, HostError> {
        let timeout = Duration::from_millis(limits::LD_IO_TIMEOUT_MS);
        self.rt
            .block_on(async { tokio::time::timeout(timeout, fut).await })
            .unwrap_or_else(|_| {
                Err(HostError::TimedOut {
                    volume: f.name.clone(),
                    what: what.to_string(),
                    timeout_ms: limits::LD_IO_TIMEOUT_MS,
                })
            })
    }
}

impl Filesystem for LdFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests (fewer round trips to the array) and concurrent direct I/O (the loop
        // device's direct-I/O requests are not serialised by the kernel).
        if let Err(nearest) = config.set_max_write(limits::LD_REQUEST_BYTES_MAX) {
            let _ = config.set_max_write(nearest);
        }
        if config.capabilities().contains(InitFlags::FUSE_ASYNC_DIO) {
            let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let f = name
            .to_str()
            .and_then(|n| read_table(&self.table).by_name.get(n).cloned());
        match f {
            Some(f) => reply.entry(&ATTR_TTL, &self.file_attr(&f), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            return reply.attr(&ATTR_TTL, &self.dir_attr());
        }
        match self.file(ino) {
            Some(f) => reply.attr(&ATTR_TTL, &self.file_attr(&f)),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// An LD's size is the array's: truncation and mode changes are refused; timestamps
    /// (touch) are accepted and ignored.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(f) = self.file(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if mode.is_some() || uid.is_some() || gid.is_some() {
            return reply.error(Errno::EPERM);
        }
        if size.is_some_and(|s| s != f.capacity_bytes) {
            return reply.error(Errno::EINVAL);
        }
        reply.attr(&ATTR_TTL, &self.file_attr(&f))
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.file(ino) {
            Some(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(f) = self.file(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if offset >= f.capacity_bytes {
            return reply.data(&[]);
        }
        let len = (size as u64).min(f.capacity_bytes - offset) as usize;
        match self.call(&f, "read", f.device.read_at(offset, len)) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                let (errno, name) = errno_of(&e, false);
                tracing::warn!(ld = %f.name, offset, len, error = %e, errno = name, "LD read failed");
                reply.error(errno)
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(f) = self.file(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > f.capacity_bytes) {
            return reply.error(Errno::ENOSPC);
        }
        match self.call(&f, "write", f.device.write_at(offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => {
                let (errno, name) = errno_of(&e, true);
                tracing::warn!(ld = %f.name, offset, len = data.len(), error = %e, errno = name, "LD write failed");
                reply.error(errno)
            }
        }
    }

    /// Every write was answered only once the array had it, and nothing is cached here: a
    /// flush or fsync has nothing left to do.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (INodeNo::ROOT.0, FileType::Directory, ".".into()),
            (INodeNo::ROOT.0, FileType::Directory, "..".into()),
        ];
        entries.extend(
            read_table(&self.table)
                .by_name
                .values()
                .map(|f| (f.ino, FileType::RegularFile, f.name.clone())),
        );
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok()
    }
}
