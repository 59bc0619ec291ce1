//! Control messages on the wire: a little-endian `u32` length, then postcard bytes.

use std::io::{Read, Write};

use serde::{Serialize, de::DeserializeOwned};

use super::Error;

/// The largest control message accepted (a store value plus its key and framing).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Writes one framed message.
pub fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T, peer: &str) -> Result<(), Error> {
    let body = postcard::to_stdvec(msg)
        .map_err(|e| Error::Protocol { addr: peer.to_string(), detail: format!("cannot encode message: {e}") })?;
    if body.len() > MAX_MESSAGE {
        return Err(Error::Protocol {
            addr: peer.to_string(),
            detail: format!("message of {} bytes exceeds the {MAX_MESSAGE}-byte cap", body.len()),
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).map_err(|source| Error::Io { what: format!("sending to {peer}"), source: source.into() })
}

/// Reads one framed message of at most `cap` bytes.
pub fn read_msg<T: DeserializeOwned>(r: &mut impl Read, cap: usize, peer: &str) -> Result<T, Error> {
    let io = |source: std::io::Error| Error::Io { what: format!("receiving from {peer}"), source: source.into() };
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(io)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > cap {
        return Err(Error::Protocol {
            addr: peer.to_string(),
            detail: format!("message of {len} bytes exceeds the {cap}-byte cap"),
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(io)?;
    postcard::from_bytes(&body)
        .map_err(|e| Error::Protocol { addr: peer.to_string(), detail: format!("malformed message: {e}") })
}
