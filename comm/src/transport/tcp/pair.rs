//! One peer's link: several TCP streams, and the nonblocking vectored calls that move a
//! message's header and payload in one system call.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use crate::transport::{Error, Tag};

/// Bytes of the header in front of every stripe of a message.
pub(crate) const HEADER: usize = 32;
const MARK: u32 = 0xFE77_0D01;

/// The streams to one peer. In an exchange, stream 0 carries every message and the others
/// carry stripes of large ones; in a stream, messages take the streams in turn.
pub(super) struct Pair {
    pub(super) streams: Vec<TcpStream>,
}

impl Pair {
    pub(super) fn fd(&self, stream: usize) -> RawFd {
        self.streams[stream].as_raw_fd()
    }

    pub(super) fn shutdown(&self) {
        for s in &self.streams {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The header of stripe `stripe` of `stripes` of a message of `total` bytes (in a stream:
/// message `stripe` mod 2^16, over `stripes` streams).
pub(crate) fn header(tag: Tag, total: u64, stripe: u16, stripes: u16) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..16].copy_from_slice(&tag.to_le_bytes());
    h[16..24].copy_from_slice(&total.to_le_bytes());
    h[24..26].copy_from_slice(&stripe.to_le_bytes());
    h[26..28].copy_from_slice(&stripes.to_le_bytes());
    h[28..32].copy_from_slice(&MARK.to_le_bytes());
    h
}

/// Checks a received header against what this rank expects.
pub(crate) fn check_header(peer: usize, got: &[u8; HEADER], expected: &[u8; HEADER]) -> Result<(), Error> {
    if got[28..32] != expected[28..32] {
        return Err(Error::Protocol { peer, detail: "stream out of step (bad frame marker)".into() });
    }
    let field =
        |h: &[u8; HEADER], r: std::ops::Range<usize>| h[r].iter().rev().fold(0u128, |a, &b| (a << 8) | u128::from(b));
    let (tag, want_tag) = (field(got, 0..16), field(expected, 0..16));
    if tag != want_tag {
        return Err(Error::TagMismatch { peer, expected: want_tag, got: tag });
    }
    let (len, want_len) = (field(got, 16..24) as u64, field(expected, 16..24) as u64);
    if len != want_len {
        return Err(Error::LengthMismatch { peer, expected: want_len, got: len });
    }
    if got[26..28] != expected[26..28] {
        let (theirs, ours) = (u16::from_le_bytes([got[26], got[27]]), u16::from_le_bytes([expected[26], expected[27]]));
        return Err(Error::Protocol {
            peer,
            detail: format!(
                "message split into {theirs} stripes there and {ours} here (FERROVOD_TCP_STREAMS or FERROVOD_STRIPE_MIN differ)"
            ),
        });
    }
    if got[24..26] != expected[24..26] {
        let (theirs, ours) = (u16::from_le_bytes([got[24], got[25]]), u16::from_le_bytes([expected[24], expected[25]]));
        return Err(Error::Protocol {
            peer,
            detail: format!("out of step: stripe or message {theirs} arrived where this rank expects {ours}"),
        });
    }
    Ok(())
}

fn iovecs(a: &[u8], b: &[u8]) -> [libc::iovec; 2] {
    [
        libc::iovec { iov_base: a.as_ptr() as *mut libc::c_void, iov_len: a.len() },
        libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() },
    ]
}

fn msghdr(iov: &mut [libc::iovec; 2]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov.as_mut_ptr();
    m.msg_iovlen = 2;
    m
}

/// Sends from `a` then `b` without blocking and without SIGPIPE; returns the bytes sent.
pub(super) fn send2(fd: RawFd, a: &[u8], b: &[u8]) -> io::Result<usize> {
    let mut iov = iovecs(a, b);
    let m = msghdr(&mut iov);
    loop {
        // SAFETY: the iovecs point into `a` and `b`, which outlive the call; the kernel only reads them.
        let n = unsafe { libc::sendmsg(fd, &m, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives into `a` then `b` without blocking; returns the bytes received (0: peer closed).
pub(super) fn recv2(fd: RawFd, a: &mut [u8], b: &mut [u8]) -> io::Result<usize> {
    let mut iov = iovecs(a, b);
    let mut m = msghdr(&mut iov);
    loop {
        // SAFETY: the iovecs point into `a` and `b`, exclusively borrowed for the call.
        let n = unsafe { libc::recvmsg(fd, &mut m, libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Maps an I/O error on the link to `peer`.
pub(super) fn io_error(peer: usize, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            Error::Closed { peer }
        }
        _ => Error::Io { peer, source: e.into() },
    }
}

/// Sets the options every data stream gets.
pub(super) fn configure(stream: &TcpStream, buffer: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if buffer > 0 {
        let v = buffer.min(i32::MAX as usize) as libc::c_int;
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            // SAFETY: `v` is a valid c_int for the duration of the call.
            let rc = unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}
