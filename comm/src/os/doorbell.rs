//! A self-pipe that wakes a thread sleeping in `poll(2)`.

use std::io;
use std::os::fd::RawFd;

/// A self-pipe that wakes a thread sleeping in [`poll`](super::poll): any thread may [`Doorbell::ring`] it;
/// the sleeper polls [`Doorbell::fd`] for reading and [`Doorbell::clear`]s it before it
/// looks for work, so that no ring between the look and the sleep is lost.
#[derive(Debug)]
pub struct Doorbell {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    /// Set by a ring, reset by a clear: a sleeper that is still looking (spinning) sees a ring
    /// without a system call.
    rung: std::sync::atomic::AtomicBool,
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
        Ok(Doorbell { read, write, rung: false.into() })
    }

    /// Wakes the sleeper. A full pipe already wakes it, so a write that would block is fine.
    pub fn ring(&self) {
        use std::os::fd::AsRawFd;
        self.rung.store(true, std::sync::atomic::Ordering::Release);
        // SAFETY: writes one byte from a valid local to an open descriptor.
        let _ = unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    /// Drains every ring so far.
    pub fn clear(&self) {
        use std::os::fd::AsRawFd;
        // Reset before draining: a ring in between leaves the flag set, if not the byte.
        self.rung.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut buf = [0u8; 64];
        // SAFETY: reads into a valid local buffer of `buf.len()` bytes; nonblocking, stops when empty.
        while unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }

    /// Whether it rang since the last clear.
    pub fn is_rung(&self) -> bool {
        self.rung.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The descriptor to poll for reading.
    pub fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.read.as_raw_fd()
    }
}
