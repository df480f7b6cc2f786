//! How values become bytes in sled: serde_json values, big-endian `u64` keys.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Log keys are big-endian so that sled's byte order is log order.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log index a log key stands for; anything but 8 bytes is damage, not a short key.
pub(crate) fn key_index(path: &Path, key: &[u8]) -> Result<u64, Error> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| Error::Corrupt {
        path: path.to_path_buf(),
        what: "a raft log key".to_string(),
        detail: format!(
            "expected 8 bytes (a big-endian index), found {} bytes",
            key.len()
        ),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) fn encode<T: Serialize + ?Sized>(
    path: &Path,
    what: &str,
    value: &T,
) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Encode {
        path: path.to_path_buf(),
        what: what.to_string(),
        detail: e.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(
    path: &Path,
    what: &str,
    bytes: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
        detail: format!(
            "undecodable ({e}); {} bytes starting {:?}",
            bytes.len(),
            preview(bytes)
        ),
    })
}

/// The first bytes of a damaged value, for the error message: enough to recognise it, not a dump.
fn preview(bytes: &[u8]) -> String {
    const PREVIEW_BYTES_MAX: usize = 32;
    String::from_utf8_lossy(&bytes[..bytes.len().min(PREVIEW_BYTES_MAX)]).into_owned()
}
