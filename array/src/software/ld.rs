//! One logical disk: a sparse file with positioned reads, writes and in-kernel copies.

use super::*;

pub(super) struct Ld {
    pub(super) number: u32,
    pub(super) name: String,
    pub(super) capacity_bytes: u64,
    pub(super) format: String,
    pub(super) hosts: Vec<String>,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Serialises I/O and copies touching this LD (MV lock is always taken before RV lock).
    pub(super) io: tokio::sync::Mutex<()>,
    pub(super) failed: AtomicBool,
    /// When a host write on this LD was last recorded in the audit log (unix ms).
    pub(super) audit_sampled_ms: AtomicU64,
}

impl Ld {
    pub(super) fn fail_err(&self, array: &str) -> ArrayError {
        ArrayError::DeviceFailed {
            array: array.into(),
            ld: self.number,
            detail: "LD failed (fault injected or disk error)".into(),
        }
    }
    pub(super) fn read_at(&self, array: &str, off: u64, len: u64) -> Result<Vec<u8>> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.fail_err(array));
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, off)
            .map_err(|e| ArrayError::io(&self.path, e))?;
        Ok(buf)
    }
    pub(super) fn write_at(&self, array: &str, off: u64, data: &[u8]) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.fail_err(array));
        }
        self.file
            .write_all_at(data, off)
            .map_err(|e| ArrayError::io(&self.path, e))
    }
    /// Copies `[off, off + len)` of this LD to the same range of `dst`. Blocking: run it on a
    /// blocking thread. The bytes move inside the kernel (`copy_file_range`, as `cp` does: no
    /// user-space buffer, no zero-filling); where the kernel cannot, through one buffer. Like
    /// `write_at`, nothing is fsynced.
    pub(super) fn copy_to(&self, dst: &Ld, array: &str, off: u64, len: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        for ld in [self, dst] {
            if ld.failed.load(Ordering::SeqCst) {
                return Err(ld.fail_err(array));
            }
        }
        let mut done = 0u64;
        while done < len {
            let mut off_in = (off + done) as libc::loff_t;
            let mut off_out = off_in;
            // SAFETY: both descriptors are open files owned by `self` and `dst`; the offsets
            // are valid pointers for the duration of the call.
            let n = unsafe {
                libc::copy_file_range(
                    self.file.as_raw_fd(),
                    &mut off_in,
                    dst.file.as_raw_fd(),
                    &mut off_out,
                    (len - done) as usize,
                    0,
                )
            };
            if n > 0 {
                done += n as u64;
                continue;
            }
            let e = std::io::Error::last_os_error();
            match (n, e.raw_os_error()) {
                (0, _) => {
                    return Err(ArrayError::io(
                        &self.path,
                        format!("unexpected end of file at {}", off + done),
                    ));
                }
                (_, Some(libc::EINTR)) => continue,
                (
                    _,
                    Some(
                        libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL | libc::EPERM,
                    ),
                ) => return self.copy_by_buffer(dst, array, off + done, len - done),
                _ => return Err(ArrayError::io(&dst.path, e)),
            }
        }
        Ok(())
    }
    /// `copy_to` through user space, for filesystems without in-kernel copies.
    pub(super) fn copy_by_buffer(&self, dst: &Ld, array: &str, off: u64, len: u64) -> Result<()> {
        let mut buf = vec![0u8; len.min(crate::COPY_RUN_BYTES_MAX) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], off + done)
                .map_err(|e| ArrayError::io(&self.path, e))?;
            dst.write_at(array, off + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}
