//! Handing segments to peers: an abstract Unix socket per rank (a name in the network
//! namespace, nothing on disk), and one message per peer carrying the sender's rank and its
//! segment and wake-up descriptors (`SCM_RIGHTS`). Who is on the other end is checked with
//! `SO_PEERCRED` against the pid each rank published at rendezvous.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::os::{PollFd, poll};

/// Bytes of the message a rank sends each peer: its rank and its segment's cookie.
pub(crate) const HELLO: usize = 16;

/// A listening abstract Unix socket.
pub(super) struct Listener {
    fd: OwnedFd,
    /// The abstract name, without its leading NUL.
    pub(super) name: Vec<u8>,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn unix_socket() -> io::Result<OwnedFd> {
    // SAFETY: creates a new descriptor or fails.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The socket address of abstract `name`, and its length.
pub(crate) fn address(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.len() + 1 > a.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "abstract socket name too long"));
    }
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path[1..].iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + name.len();
    Ok((a, len as libc::socklen_t))
}

impl Listener {
    /// Binds a fresh random abstract name.
    pub(super) fn bind() -> io::Result<Listener> {
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).map_err(io::Error::other)?;
        let name: Vec<u8> =
            format!("ferrovod-shm-{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>()).into_bytes();
        let fd = unix_socket()?;
        let (a, len) = address(&name)?;
        // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) })?;
        // SAFETY: listen on a bound socket.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
        Ok(Listener { fd, name })
    }

    /// Takes the next hello queued on the listener, waiting until `deadline`: the sender's pid
    /// (from the kernel), its rank and cookie, and the descriptors it passed.
    pub(super) fn accept(&self, deadline: Instant) -> io::Result<(u32, u64, u64, Vec<OwnedFd>)> {
        let conn = loop {
            // SAFETY: accept4 with no address out-parameters.
            let fd = unsafe {
                libc::accept4(self.fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
            };
            if fd >= 0 {
                // SAFETY: a fresh descriptor that nothing else owns.
                break unsafe { OwnedFd::from_raw_fd(fd) };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            wait_readable(self.fd.as_raw_fd(), deadline)?;
        };
        let pid = peer_pid(conn.as_raw_fd())?;
        let mut hello = [0u8; HELLO];
        let fds = recv_with_fds(conn.as_raw_fd(), &mut hello, deadline)?;
        let (rank, cookie) = read_hello(&hello);
        Ok((pid, rank, cookie, fds))
    }
}

/// A hello's rank and cookie.
pub(crate) fn read_hello(hello: &[u8; HELLO]) -> (u64, u64) {
    let word = |i: usize| u64::from_le_bytes(hello[i..i + 8].try_into().unwrap_or_default());
    (word(0), word(8))
}

fn wait_readable(fd: RawFd, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
    }
    poll(&mut [PollFd { fd, read: true, write: false, ready: false }], left).map(drop)
}

/// The pid of the process at the other end of a connected Unix socket.
fn peer_pid(fd: RawFd) -> io::Result<u32> {
    // SAFETY: ucred is plain data; getsockopt fills at most `len` bytes of it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: as above.
    cvt(unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    })?;
    Ok(cred.pid as u32)
}

/// Connects to the abstract socket `name`, checks that process `pid` listens there, and sends
/// it `rank`, `cookie` and `fds`. Never waits: the listener's backlog holds the connection and
/// the message until the peer accepts it.
pub(super) fn hello(name: &[u8], pid: u32, rank: u64, cookie: u64, fds: &[RawFd]) -> io::Result<()> {
    let sock = unix_socket()?;
    let (a, len) = address(name)?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::connect(sock.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) })?;
    let theirs = peer_pid(sock.as_raw_fd())?;
    if theirs != pid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the socket is held by pid {theirs}, not by the rank's pid {pid} (another pid namespace?)"),
        ));
    }
    let mut msg = [0u8; HELLO];
    msg[..8].copy_from_slice(&rank.to_le_bytes());
    msg[8..].copy_from_slice(&cookie.to_le_bytes());
    send_with_fds(sock.as_raw_fd(), &msg, fds)
}

/// Room for the control message of up to 4 descriptors.
const CMSG_ROOM: usize = 64;

fn send_with_fds(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let mut control = [0u64; CMSG_ROOM / 8];
    let data_len = size_of_val(fds) as libc::c_uint;
    // SAFETY: msghdr is plain data; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    assert!(msg.msg_controllen <= CMSG_ROOM, "room for the descriptors");
    // SAFETY: the control buffer is large enough for one header with `fds` (checked above).
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
    }
    // SAFETY: a fully initialised msghdr; the kernel only reads it.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short hello"));
    }
    Ok(())
}

fn recv_with_fds(fd: RawFd, bytes: &mut [u8], deadline: Instant) -> io::Result<Vec<OwnedFd>> {
    loop {
        let mut iov = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: bytes.len() };
        let mut control = [0u64; CMSG_ROOM / 8];
        // SAFETY: msghdr is plain data; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_ROOM;
        // SAFETY: as above; the kernel writes at most the given lengths.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                wait_readable(fd, deadline)?;
                continue;
            }
            return Err(e);
        }
        let mut fds = Vec::new();
        // SAFETY: walks the control messages the kernel wrote within msg_controllen; each
        // SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 fresh descriptors, now ours.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if n as usize != bytes.len() || msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed hello"));
        }
        return Ok(fds);
    }
}
