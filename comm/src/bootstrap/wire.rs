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
    // Grown as the bytes arrive, not allocated at the length a peer claims.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    r.take(len as u64).read_to_end(&mut body).map_err(io)?;
    if body.len() < len {
        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    postcard::from_bytes(&body)
        .map_err(|e| Error::Protocol { addr: peer.to_string(), detail: format!("malformed message: {e}") })
}

#[cfg(test)]
mod tests {
    use super::{Error, read_msg, write_msg};

    #[test]
    fn a_frame_round_trips_and_a_short_body_is_an_error() {
        let mut frame = Vec::new();
        write_msg(&mut frame, &(7u32, "key".to_string()), "peer").unwrap();
        let got: (u32, String) = read_msg(&mut &frame[..], 1 << 10, "peer").unwrap();
        assert_eq!(got, (7, "key".to_string()));

        // A length claimed but not sent: an error when the bytes end, whatever the claim.
        let mut short = (32u32 << 20).to_le_bytes().to_vec();
        short.extend_from_slice(&frame[4..]);
        match read_msg::<(u32, String)>(&mut &short[..], 64 << 20, "peer") {
            Err(Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("expected an end-of-file error, got {other:?}"),
        }
        // Over the cap: refused before any body is read.
        match read_msg::<(u32, String)>(&mut &short[..], 1 << 20, "peer") {
            Err(Error::Protocol { detail, .. }) => assert!(detail.contains("exceeds"), "{detail}"),
            other => panic!("expected the cap, got {other:?}"),
        }
    }
}
