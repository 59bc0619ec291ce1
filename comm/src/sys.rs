//! The few OS facilities ferrovod needs beyond std: `poll(2)`, the host name, the boot id.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Readiness interest and result for one descriptor.
#[derive(Clone, Copy, Debug)]
pub struct PollFd {
    /// The descriptor.
    pub fd: RawFd,
    /// Wait for readability.
    pub read: bool,
    /// Wait for writability.
    pub write: bool,
    /// Set by [`poll`]: the descriptor is ready (or in error, which the next I/O call reports).
    pub ready: bool,
}

/// Blocks until one of `fds` is ready or `timeout` passes; returns how many are ready.
/// Never spins: a zero timeout is only used by callers that have other work to do.
pub fn poll(fds: &mut [PollFd], timeout: Duration) -> io::Result<usize> {
    let mut raw: Vec<libc::pollfd> = fds
        .iter()
        .map(|p| libc::pollfd {
            fd: p.fd,
            events: (if p.read { libc::POLLIN } else { 0 }) | (if p.write { libc::POLLOUT } else { 0 }),
            revents: 0,
        })
        .collect();
    // Round up so that a sub-millisecond remainder still sleeps instead of spinning.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: `raw` is a valid, exclusively borrowed array of `raw.len()` pollfd structs.
        let n = unsafe { libc::poll(raw.as_mut_ptr(), raw.len() as libc::nfds_t, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for (p, r) in fds.iter_mut().zip(&raw) {
            p.ready = r.revents != 0;
        }
        return Ok(n as usize);
    }
}

/// [`poll`], but for up to `spin` first only looking (non-blocking), yielding the core between
/// looks, before it sleeps: a thread that keeps its core hears a peer at once instead of a
/// wake-up later (on a VM, an idle core halts and its wake-up costs tens of microseconds), and
/// yielding lets ranks that outnumber the cores run in its place. `spin` zero never spins.
pub fn poll_after_spin(fds: &mut [PollFd], timeout: Duration, spin: Duration) -> io::Result<usize> {
    if !spin.is_zero() && !timeout.is_zero() {
        let start = std::time::Instant::now();
        while start.elapsed() < spin.min(timeout) {
            let n = poll(fds, Duration::ZERO)?;
            if n > 0 {
                return Ok(n);
            }
            // SAFETY: sched_yield has no arguments and no failure that matters here.
            unsafe { libc::sched_yield() };
        }
    }
    poll(fds, timeout)
}

/// This host's name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname NUL-terminates within it
    // or truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The kernel's boot id: two processes with the same host name and boot id share a kernel
/// (and so shared memory), whatever their containers call themselves.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A self-pipe that wakes a thread sleeping in [`poll`]: any thread may [`Doorbell::ring`] it;
/// the sleeper polls [`Doorbell::fd`] for reading and [`Doorbell::clear`]s it before it
/// looks for work, so that no ring between the look and the sleep is lost.
#[derive(Debug)]
pub struct Doorbell {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl Doorbell {
    /// A new, silent doorbell.
    pub fn new() -> io::Result<Doorbell> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) =
            unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
        Ok(Doorbell { read, write })
    }

    /// Wakes the sleeper. A full pipe already wakes it, so a write that would block is fine.
    pub fn ring(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: writes one byte from a valid local to an open descriptor.
        let _ = unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    /// Drains every ring so far.
    pub fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 64];
        // SAFETY: reads into a valid local buffer of `buf.len()` bytes; nonblocking, stops when empty.
        while unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }

    /// The descriptor to poll for reading.
    pub fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.read.as_raw_fd()
    }
}
