//! The handshake every ferrovod connection opens with: magic, protocol version, purpose, and a
//! mutual HMAC-SHA256 proof of the job secret over fresh nonces (so a recorded handshake cannot
//! be replayed).
//!
//! ```text
//! server -> client  MAGIC(8) VERSION(2) PURPOSE(1) nonce_s(32)
//! client -> server  MAGIC(8) VERSION(2) PURPOSE(1) nonce_c(32) HMAC(k, "client"|v|p|nonce_s|nonce_c)(32)
//! server -> client  STATUS(1) HMAC(k, "server"|v|p|nonce_c|nonce_s)(32)
//! ```
//!
//! Fixed-size frames: nothing is parsed before the magic has been checked.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Error, Secret};

const MAGIC: [u8; 8] = *b"FERROVOD";
const VERSION: u16 = 1;
const NONCE: usize = 32;
const MAC: usize = 32;
pub(crate) const SERVER_HELLO: usize = 8 + 2 + 1 + NONCE;
pub(crate) const CLIENT_HELLO: usize = SERVER_HELLO + MAC;
/// The server's answer: a status, then its proof of the secret.
pub(crate) const VERDICT: usize = 1 + MAC;

/// What a connection is for; a store connection cannot be mistaken for a transport link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// A client of the key-value store.
    Store = 1,
    /// A transport link between two ranks.
    Transport = 2,
}

#[repr(u8)]
#[derive(Clone, Copy)]
pub(crate) enum Status {
    Ok = 0,
    BadVersion = 1,
    BadPurpose = 2,
    BadProof = 3,
}

fn mac(secret: &Secret, role: &[u8], purpose: u8, first: &[u8], second: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(role);
    m.update(&VERSION.to_le_bytes());
    m.update(&[purpose]);
    m.update(first);
    m.update(second);
    m
}

fn nonce(addr: &str) -> Result<[u8; NONCE], Error> {
    let mut n = [0u8; NONCE];
    getrandom::fill(&mut n).map_err(|e| Error::Io {
        what: format!("handshake with {addr}: randomness"),
        source: std::io::Error::other(e).into(),
    })?;
    Ok(n)
}

fn peer(stream: &TcpStream) -> String {
    stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into())
}

fn io(addr: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { what: format!("handshake with {addr}"), source: source.into() }
}

/// Reads exactly `buf.len()` bytes before `deadline`, whatever the pace of the peer: a peer that
/// trickles one byte at a time cannot hold the connection past it.
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant, addr: &str) -> Result<(), Error> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Protocol {
                addr: addr.to_string(),
                detail: "did not finish the handshake in time".into(),
            });
        }
        stream.set_read_timeout(Some(left)).map_err(io(addr))?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Error::Protocol { addr: addr.to_string(), detail: "closed during the handshake".into() });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(io(addr)(e)),
        }
    }
    Ok(())
}

/// Server side: the whole handshake must be done by `deadline` (one deadline, not one per
/// read). The caller sets a write timeout first.
pub fn accept_handshake(
    stream: &mut TcpStream,
    secret: &Secret,
    purpose: Purpose,
    deadline: Instant,
) -> Result<(), Error> {
    let addr = peer(stream);
    let nonce_s = nonce(&addr)?;
    let mut hello = [0u8; SERVER_HELLO];
    hello[..8].copy_from_slice(&MAGIC);
    hello[8..10].copy_from_slice(&VERSION.to_le_bytes());
    hello[10] = purpose as u8;
    hello[11..].copy_from_slice(&nonce_s);
    stream.write_all(&hello).map_err(io(&addr))?;

    let mut msg = [0u8; CLIENT_HELLO];
    read_by(stream, &mut msg, deadline, &addr)?;
    let verdict = judge_client(&msg, secret, purpose, &nonce_s, &addr)?;
    let mut reply = [0u8; VERDICT];
    reply[0] = verdict as u8;
    if let Status::Ok = verdict {
        let nonce_c = &msg[11..11 + NONCE];
        reply[1..].copy_from_slice(&mac(secret, b"server", purpose as u8, nonce_c, &nonce_s).finalize().into_bytes());
    }
    // Best effort for refusals: the peer may already be gone.
    let sent = stream.write_all(&reply);
    match verdict {
        Status::Ok => sent.map_err(io(&addr)),
        refused => outcome(refused, &msg, purpose, addr),
    }
}

/// Server side: what the client's hello earns. Bad magic is an error without an answer (it is
/// not a ferrovod peer); anything else gets a verdict.
pub(crate) fn judge_client(
    msg: &[u8; CLIENT_HELLO],
    secret: &Secret,
    purpose: Purpose,
    nonce_s: &[u8; NONCE],
    addr: &str,
) -> Result<Status, Error> {
    if msg[..8] != MAGIC {
        return Err(Error::Protocol { addr: addr.to_string(), detail: "not a ferrovod peer (bad magic)".into() });
    }
    let version = u16::from_le_bytes([msg[8], msg[9]]);
    let (nonce_c, proof) = msg[11..].split_at(NONCE);
    Ok(if version != VERSION {
        Status::BadVersion
    } else if msg[10] != purpose as u8 {
        Status::BadPurpose
    } else if mac(secret, b"client", msg[10], nonce_s, nonce_c).verify_slice(proof).is_err() {
        Status::BadProof
    } else {
        Status::Ok
    })
}

/// What the server's side of the handshake ends with for `verdict`: `Ok`, or the refusal.
pub(crate) fn outcome(verdict: Status, msg: &[u8; CLIENT_HELLO], purpose: Purpose, addr: String) -> Result<(), Error> {
    Err(match verdict {
        Status::Ok => return Ok(()),
        Status::BadVersion => Error::Refused {
            addr,
            reason: format!("protocol version {}, expected {VERSION}", u16::from_le_bytes([msg[8], msg[9]])),
        },
        Status::BadPurpose => {
            Error::Refused { addr, reason: format!("connection purpose {} where {purpose:?} was expected", msg[10]) }
        }
        Status::BadProof => Error::Refused { addr, reason: "wrong job secret".into() },
    })
}

const CLOSED_BEFORE_GREETING: &str = "closed the connection before greeting: it is not a ferrovod server, or it \
     is shutting down, or it dropped this connection to make room (too many unauthenticated connections)";
const CLOSED_DURING_HANDSHAKE: &str = "closed during the handshake";

/// Whether `e` is a server closing the connection during the handshake (a store making room
/// closes it; a wrong secret is answered instead), which is worth another try.
pub fn was_dropped(e: &Error) -> bool {
    matches!(e, Error::Refused { reason, .. } if reason == CLOSED_BEFORE_GREETING || reason == CLOSED_DURING_HANDSHAKE)
}

/// Client side. The caller sets socket timeouts first.
pub fn connect_handshake(stream: &mut TcpStream, secret: &Secret, purpose: Purpose) -> Result<(), Error> {
    let addr = peer(stream);
    let mut hello = [0u8; SERVER_HELLO];
    stream.read_exact(&mut hello).map_err(|source| match source.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            Error::Refused { addr: addr.clone(), reason: CLOSED_BEFORE_GREETING.into() }
        }
        _ => Error::Io { what: format!("waiting for the greeting of {addr}"), source: source.into() },
    })?;
    let nonce_s = read_greeting(&hello, &addr)?;
    let nonce_c = nonce(&addr)?;
    let mut msg = [0u8; CLIENT_HELLO];
    msg[..8].copy_from_slice(&MAGIC);
    msg[8..10].copy_from_slice(&VERSION.to_le_bytes());
    msg[10] = purpose as u8;
    msg[11..11 + NONCE].copy_from_slice(&nonce_c);
    msg[11 + NONCE..]
        .copy_from_slice(&mac(secret, b"client", purpose as u8, nonce_s, &nonce_c).finalize().into_bytes());
    stream.write_all(&msg).map_err(io(&addr))?;

    let mut reply = [0u8; VERDICT];
    stream.read_exact(&mut reply).map_err(|source| match source.kind() {
        // A server that refuses may close before we read the whole verdict.
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            Error::Refused { addr: addr.clone(), reason: CLOSED_DURING_HANDSHAKE.into() }
        }
        _ => Error::Io { what: format!("handshake with {addr}"), source: source.into() },
    })?;
    check_verdict(&reply, secret, purpose, &nonce_c, nonce_s, addr)
}

/// Client side: checks the server's greeting and returns its nonce.
pub(crate) fn read_greeting<'h>(hello: &'h [u8; SERVER_HELLO], addr: &str) -> Result<&'h [u8], Error> {
    if hello[..8] != MAGIC {
        return Err(Error::Protocol { addr: addr.to_string(), detail: "not a ferrovod server (bad magic)".into() });
    }
    let version = u16::from_le_bytes([hello[8], hello[9]]);
    if version != VERSION {
        return Err(Error::Refused {
            addr: addr.to_string(),
            reason: format!("server speaks protocol version {version}, this is {VERSION}"),
        });
    }
    Ok(&hello[11..])
}

/// Client side: the server's verdict, and its proof of the secret when it accepted.
pub(crate) fn check_verdict(
    reply: &[u8; VERDICT],
    secret: &Secret,
    purpose: Purpose,
    nonce_c: &[u8],
    nonce_s: &[u8],
    addr: String,
) -> Result<(), Error> {
    let reason = match reply[0] {
        0 => None,
        1 => Some("protocol version mismatch".to_string()),
        2 => Some(format!("wrong connection purpose {purpose:?}")),
        3 => Some("wrong job secret".to_string()),
        other => Some(format!("unknown status {other}")),
    };
    if let Some(reason) = reason {
        return Err(Error::Refused { addr, reason });
    }
    mac(secret, b"server", purpose as u8, nonce_c, nonce_s)
        .verify_slice(&reply[1..])
        .map_err(|_| Error::Refused { addr, reason: "server could not prove the job secret".into() })
}
