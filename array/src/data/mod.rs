//! The host data path: LD reads and writes on a plain TCP connection with length-prefixed
//! frames, beside gRPC on the array's one port.
//!
//! An LD attached to a linux host moves every byte its file system writes. Over gRPC each
//! 1 MiB write was copied into a request, encoded into an HTTP/2 frame and assembled again
//! from the connection's buffer on the array, and every connection was driven by one task on
//! each side: on this 2-CPU machine the copies, not the disk, set the pace. Here a write's
//! bytes go from the caller's buffer straight to the socket, and the array reads them into the
//! one buffer it writes to the LD from.
//!
//! **One port.** The server looks at a new connection's first four bytes: [`REQUEST_MAGIC`]
//! makes it a data connection, anything else (HTTP/2's preface) goes to gRPC. Nothing new to
//! configure, open in a firewall or cut separately in a partition.
//!
//! **Frames** (little-endian). A request: [`REQUEST_MAGIC`], op (1 read, 2 write), host name
//! length, two reserved zero bytes, LD number (u32), offset (u64), length (u32: bytes wanted
//! by a read, bytes that follow the host name for a write); then the host name (UTF-8); then
//! a write's data. A reply: [`REPLY_MAGIC`], status (0 ok, 1 error), three reserved zero
//! bytes, length (u32); then the data of a read, or an [`ArrayError`] as JSON. One request is
//! in flight per connection; a client opens more connections for more at once.
//!
//! **Caveats.** A frame that breaks these rules gets an error reply naming the field, and the
//! connection is closed (the stream can no longer be trusted to be in step). The data path
//! carries host I/O only: every other operation, and peers' copies, stay on gRPC.

mod client;
mod server;

pub use client::DataClient;
pub(crate) use server::route_connections;

use crate::error::ArrayError;

/// The first bytes of every data request; a connection that starts with them is a data one.
pub(crate) const REQUEST_MAGIC: [u8; 4] = *b"SPD1";
/// The first bytes of every reply.
pub(crate) const REPLY_MAGIC: [u8; 4] = *b"SPR1";
/// Bytes of a request's fixed header.
pub(crate) const REQUEST_HEADER_BYTES: usize = 24;
/// Bytes of a reply's fixed header.
pub(crate) const REPLY_HEADER_BYTES: usize = 12;

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
}

/// A request's fixed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestHeader {
    pub op: Op,
    pub host_len: u8,
    pub ld: u32,
    pub offset: u64,
    pub len: u32,
}

impl RequestHeader {
    pub fn encode(&self) -> [u8; REQUEST_HEADER_BYTES] {
        let mut b = [0u8; REQUEST_HEADER_BYTES];
        b[0..4].copy_from_slice(&REQUEST_MAGIC);
        b[4] = match self.op {
            Op::Read => 1,
            Op::Write => 2,
        };
        b[5] = self.host_len;
        b[8..12].copy_from_slice(&self.ld.to_le_bytes());
        b[12..20].copy_from_slice(&self.offset.to_le_bytes());
        b[20..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses and checks a header: the magic, a known op, reserved bytes zero, a host name,
    /// and a length within [`crate::IO_BYTES_MAX`].
    pub fn decode(b: &[u8; REQUEST_HEADER_BYTES]) -> Result<RequestHeader, ArrayError> {
        if b[0..4] != REQUEST_MAGIC {
            return Err(ArrayError::invalid(format!(
                "data request: magic {:?} is not {:?}",
                &b[0..4],
                REQUEST_MAGIC
            )));
        }
        let op = match b[4] {
            1 => Op::Read,
            2 => Op::Write,
            other => {
                return Err(ArrayError::invalid(format!(
                    "data request: op {other} is neither 1 (read) nor 2 (write)"
                )));
            }
        };
        if b[6] != 0 || b[7] != 0 {
            return Err(ArrayError::invalid(
                "data request: reserved bytes 6-7 are not zero",
            ));
        }
        let host_len = b[5];
        if host_len == 0 {
            return Err(ArrayError::invalid("data request: empty host name"));
        }
        let len = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        if u64::from(len) > crate::IO_BYTES_MAX {
            return Err(ArrayError::invalid(format!(
                "data request: length {len} exceeds the largest host I/O of {} bytes",
                crate::IO_BYTES_MAX
            )));
        }
        Ok(RequestHeader {
            op,
            host_len,
            ld: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            offset: u64::from_le_bytes([b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19]]),
            len,
        })
    }
}

/// A reply's fixed header: `Ok(length of data)` or `Err(length of the error's JSON)`.
pub(crate) fn encode_reply_header(status: Result<u32, u32>) -> [u8; REPLY_HEADER_BYTES] {
    let mut b = [0u8; REPLY_HEADER_BYTES];
    b[0..4].copy_from_slice(&REPLY_MAGIC);
    let (code, len) = match status {
        Ok(n) => (0, n),
        Err(n) => (1, n),
    };
    b[4] = code;
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b
}

/// Longest error a reply may carry (an [`ArrayError`] as JSON is a few hundred bytes).
const ERROR_BYTES_MAX: u64 = 1024 * 1024;

/// Parses a reply header into `Ok(data length)` or `Err(error JSON length)`; a header that
/// breaks the format, or announces more data than `data_len_max` bytes (more than
/// [`ERROR_BYTES_MAX`] for an error), is an error naming what.
pub(crate) fn decode_reply_header(
    b: &[u8; REPLY_HEADER_BYTES],
    data_len_max: u64,
) -> Result<Result<u32, u32>, String> {
    if b[0..4] != REPLY_MAGIC {
        return Err(format!(
            "data reply: magic {:?} is not {REPLY_MAGIC:?}",
            &b[0..4]
        ));
    }
    if b[5..8] != [0, 0, 0] {
        return Err("data reply: reserved bytes 5-7 are not zero".into());
    }
    let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    let (status, len_max) = match b[4] {
        0 => (Ok(len), data_len_max),
        1 => (Err(len), ERROR_BYTES_MAX),
        other => return Err(format!("data reply: status {other} is neither 0 nor 1")),
    };
    if u64::from(len) > len_max {
        return Err(format!(
            "data reply: length {len} exceeds the {len_max} bytes expected"
        ));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RequestHeader {
        RequestHeader {
            op: Op::Write,
            host_len: 3,
            ld: 7,
            offset: 0x1_0000_0000,
            len: 1 << 20,
        }
    }

    #[test]
    fn a_request_header_survives_its_encoding() {
        let h = header();
        assert_eq!(RequestHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn a_bad_request_header_is_refused_naming_the_field() {
        // (byte index, value, what the error must name)
        let cases: [(std::ops::Range<usize>, &[u8], &str); 5] = [
            (0..1, b"X", "magic"),
            (4..5, &[9], "op 9"),
            (6..7, &[1], "reserved"),
            (5..6, &[0], "empty host"),
            (20..24, &[0xff; 4], "exceeds"),
        ];
        for (at, value, expect) in cases {
            let mut b = header().encode();
            b[at].copy_from_slice(value);
            let e = RequestHeader::decode(&b).unwrap_err().to_string();
            assert!(e.contains(expect), "{e:?} should name {expect:?}");
        }
    }

    #[test]
    fn reply_headers_round_trip_and_bad_ones_are_named() {
        assert_eq!(
            decode_reply_header(&encode_reply_header(Ok(4096)), 4096),
            Ok(Ok(4096))
        );
        assert_eq!(
            decode_reply_header(&encode_reply_header(Err(20)), 4096),
            Ok(Err(20))
        );
        let e = decode_reply_header(&encode_reply_header(Ok(4097)), 4096).unwrap_err();
        assert!(e.contains("exceeds"), "{e}");
        let mut b = encode_reply_header(Ok(0));
        b[4] = 2;
        assert!(decode_reply_header(&b, 0).unwrap_err().contains("status 2"));
        b[0] = 0;
        assert!(decode_reply_header(&b, 0).unwrap_err().contains("magic"));
    }
}
