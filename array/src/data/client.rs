//! The host's side of the data path: [`DataClient`], a pool of data connections to one array.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Op, REPLY_HEADER_BYTES, RequestHeader, decode_reply_header};
use crate::error::{ArrayError, Result};
use crate::wire::decode;

/// A pooled connection unused for this long is closed rather than reused (the array closes
/// idle ones after five minutes; a reused one it closed would cost the call a retry).
const POOL_IDLE_MAX: Duration = Duration::from_secs(60);
/// Connections kept for reuse; more may be open at once, the rest are closed when done.
const POOL_CONNECTIONS_MAX: usize = 16;

/// LD reads and writes of hosts, on the array's data path (see the module essay). Every call
/// is bounded by [`crate::CONNECT_TIMEOUT`] to connect and [`crate::CALL_TIMEOUT`] in all,
/// and fails with the array's own errors: a transport failure is `Unreachable` for a read and
/// `OutcomeUnknown` for a write (the bytes may have landed; writing them again is safe).
pub struct DataClient {
    /// `HOST:PORT` of the array.
    address: String,
    pool: Mutex<Vec<(TcpStream, Instant)>>,
}

/// A failure of the connection itself (not the array's answer).
enum Transport {
    Io(std::io::Error),
    Frame(String),
    TimedOut,
}

impl DataClient {
    /// A client of the array at `address` (`HOST:PORT`); connects on first use.
    pub fn new(address: &str) -> DataClient {
        DataClient {
            address: address.to_string(),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Writes `data` at `offset` of LD `ld` as host `host`.
    pub async fn write(&self, host: &str, ld: u32, offset: u64, data: &[u8]) -> Result<()> {
        let len = io_len("write", data.len() as u64)?;
        self.exchange(Op::Write, host, ld, offset, len, data)
            .await
            .map(|_| ())
    }

    /// Reads `len` bytes at `offset` of LD `ld` as host `host`.
    pub async fn read(&self, host: &str, ld: u32, offset: u64, len: u64) -> Result<Vec<u8>> {
        let len = io_len("read", len)?;
        self.exchange(Op::Read, host, ld, offset, len, &[]).await
    }

    async fn exchange(
        &self,
        op: Op,
        host: &str,
        ld: u32,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let host_len = u8::try_from(host.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                ArrayError::invalid(format!(
                    "host name {host:?} must be 1 to 255 bytes for the data path"
                ))
            })?;
        let mut request = RequestHeader {
            op,
            host_len,
            ld,
            offset,
            len,
        }
        .encode()
        .to_vec();
        request.extend_from_slice(host.as_bytes());
        let reply_len_max = match op {
            Op::Read => u64::from(len),
            Op::Write => 0,
        };
        // A pooled connection the array has closed (restart, idle limit) fails at once: it is
        // replaced by a fresh one once, without counting against the caller's retries.
        let mut pooled = self.take();
        loop {
            let (mut stream, was_pooled) = match pooled.take() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            let outcome = tokio::time::timeout(
                crate::CALL_TIMEOUT,
                send_receive(&mut stream, &request, data, reply_len_max),
            )
            .await
            .unwrap_or(Err(Transport::TimedOut));
            match outcome {
                Ok(answer) => {
                    self.give_back(stream);
                    return match answer {
                        Ok(body) => Ok(body),
                        Err(json) => Err(decode::<ArrayError>(&json, "error")?),
                    };
                }
                Err(Transport::Io(_)) if was_pooled => {
                    self.clear();
                    continue;
                }
                Err(t) => {
                    self.clear();
                    return Err(self.transport_error(op, t));
                }
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream> {
        let unreachable = |detail: String| ArrayError::Unreachable {
            target: self.address.clone(),
            detail,
        };
        let stream =
            tokio::time::timeout(crate::CONNECT_TIMEOUT, TcpStream::connect(&self.address))
                .await
                .map_err(|_| {
                    unreachable(format!(
                        "data path: no connection within {} ms",
                        crate::CONNECT_TIMEOUT.as_millis()
                    ))
                })?
                .map_err(|e| unreachable(format!("data path: connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn transport_error(&self, op: Op, t: Transport) -> ArrayError {
        let detail = match t {
            Transport::Io(e) => format!("data path: {e}"),
            Transport::Frame(f) => f,
            Transport::TimedOut => format!(
                "data path: no reply within {} ms",
                crate::CALL_TIMEOUT.as_millis()
            ),
        };
        match op {
            Op::Read => ArrayError::Unreachable {
                target: self.address.clone(),
                detail,
            },
            Op::Write => ArrayError::OutcomeUnknown {
                op: format!("write to the array at {}", self.address),
                detail,
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(TcpStream, Instant)>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used pooled connection that has not idled past [`POOL_IDLE_MAX`].
    fn take(&self) -> Option<TcpStream> {
        let mut pool = self.lock();
        pool.retain(|(_, used)| used.elapsed() < POOL_IDLE_MAX);
        pool.pop().map(|(s, _)| s)
    }

    fn give_back(&self, stream: TcpStream) {
        let mut pool = self.lock();
        if pool.len() < POOL_CONNECTIONS_MAX {
            pool.push((stream, Instant::now()));
        }
    }

    /// Drops every pooled connection: when one failed, the others most likely did too.
    fn clear(&self) {
        self.lock().clear();
    }
}

/// A host I/O length as the frame carries it, refused past [`crate::IO_BYTES_MAX`].
fn io_len(what: &str, len: u64) -> Result<u32> {
    u32::try_from(len)
        .ok()
        .filter(|&n| u64::from(n) <= crate::IO_BYTES_MAX)
        .ok_or_else(|| {
            ArrayError::invalid(format!(
                "{what} of {len} bytes exceeds the largest host I/O of {} bytes",
                crate::IO_BYTES_MAX
            ))
        })
}

/// Sends one request and reads its reply: Ok(Ok(data)) or Ok(Err(error JSON)) is the array's
/// answer; Err is the connection's failure.
async fn send_receive(
    stream: &mut TcpStream,
    request: &[u8],
    data: &[u8],
    reply_len_max: u64,
) -> std::result::Result<std::result::Result<Vec<u8>, Vec<u8>>, Transport> {
    stream.write_all(request).await.map_err(Transport::Io)?;
    if !data.is_empty() {
        stream.write_all(data).await.map_err(Transport::Io)?;
    }
    let mut header = [0u8; REPLY_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .map_err(Transport::Io)?;
    let status = decode_reply_header(&header, reply_len_max).map_err(Transport::Frame)?;
    let len = match status {
        Ok(n) | Err(n) => n as usize,
    };
    let mut body = Vec::with_capacity(len);
    (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut body)
        .await
        .map_err(Transport::Io)?;
    if body.len() != len {
        return Err(Transport::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(match status {
        Ok(_) => Ok(body),
        Err(_) => Err(body),
    })
}
