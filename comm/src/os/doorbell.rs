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
    /// Lazy bells only (see [`Doorbell::lazy`]): how many sleepers are between announcing their
    /// sleep and waking (the engine thread parked and a caller running its rounds may both be).
    sleeping: std::sync::atomic::AtomicUsize,
    /// A ring wrote the pipe since the last clear (so a clear has bytes to drain).
    written: std::sync::atomic::AtomicBool,
    lazy: bool,
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
        Ok(Doorbell { read, write, rung: false.into(), sleeping: 0.into(), written: false.into(), lazy: false })
    }

    /// A doorbell whose rings write the pipe only while a sleeper sleeps: every sleeper must
    /// sleep through [`Doorbell::sleep_unless_rung`] (one byte wakes them all). A ring that finds it looking (or
    /// busy) costs no system call, and neither does the clear after it.
    pub fn lazy() -> io::Result<Doorbell> {
        Ok(Doorbell { lazy: true, ..Doorbell::new()? })
    }

    /// Wakes the sleeper. A full pipe already wakes it, so a write that would block is fine.
    pub fn ring(&self) {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::SeqCst;
        // SeqCst pairs with `sleep_unless_rung`: either that sees the flag, or this sees the
        // sleeper and writes.
        self.rung.store(true, SeqCst);
        if self.lazy && self.sleeping.load(SeqCst) == 0 {
            return;
        }
        // SAFETY: writes one byte from a valid local to an open descriptor.
        let _ = unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        // After the write: every byte in the pipe has the flag set after it, so the clear
        // that follows the flag drains it (a byte alone at most wakes the sleeper once).
        self.written.store(true, SeqCst);
    }

    /// Runs `sleep` (which polls [`Doorbell::fd`]) unless the bell rang since the last clear;
    /// `None` when it rang. A lazy bell's sleeper sleeps only through this.
    pub fn sleep_unless_rung<T>(&self, sleep: impl FnOnce() -> T) -> Option<T> {
        use std::sync::atomic::Ordering::SeqCst;
        self.sleeping.fetch_add(1, SeqCst);
        let slept = (!self.rung.load(SeqCst)).then(sleep);
        self.sleeping.fetch_sub(1, SeqCst);
        slept
    }

    /// Drains every ring so far.
    pub fn clear(&self) {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::SeqCst;
        // Reset before draining: a ring in between leaves the flag set, if not the byte.
        self.rung.store(false, SeqCst);
        if !self.written.swap(false, SeqCst) {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{PollFd, poll};
    use std::time::{Duration, Instant};

    fn readable(bell: &Doorbell) -> bool {
        let mut fds = [PollFd { fd: bell.fd(), read: true, write: false, ready: false }];
        poll(&mut fds, Duration::ZERO).expect("poll") > 0
    }

    #[test]
    fn a_lazy_bell_writes_only_for_a_sleeper_and_never_loses_a_ring() {
        let bell = std::sync::Arc::new(Doorbell::lazy().expect("pipe"));
        // Nobody sleeps: the ring is a flag, the pipe stays empty, and a sleep does not start.
        bell.ring();
        assert!(bell.is_rung() && !readable(&bell));
        assert_eq!(bell.sleep_unless_rung(|| "slept"), None);
        bell.clear();
        assert!(!bell.is_rung());
        // A sleeper in poll is woken by a ring from another thread, through the pipe.
        let ringer = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                bell.ring();
            })
        };
        let start = Instant::now();
        let woke = bell.sleep_unless_rung(|| {
            let mut fds = [PollFd { fd: bell.fd(), read: true, write: false, ready: false }];
            poll(&mut fds, Duration::from_secs(10)).expect("poll")
        });
        ringer.join().expect("ringer");
        assert_eq!(woke, Some(1));
        assert!(start.elapsed() < Duration::from_secs(5), "woken by the ring, not the timeout");
        // The clear drains the byte, so the next sleep sleeps.
        bell.clear();
        assert!(!readable(&bell));
    }

    #[test]
    fn a_lazy_bell_wakes_a_sleeper_after_another_one_left() {
        // The engine thread parked and a caller running the rounds may sleep on one bell: when
        // one of them wakes (its own timeout), a ring must still reach the other.
        let bell = std::sync::Arc::new(Doorbell::lazy().expect("pipe"));
        let sleep = |bell: &Doorbell, timeout: Duration| {
            bell.sleep_unless_rung(|| {
                let mut fds = [PollFd { fd: bell.fd(), read: true, write: false, ready: false }];
                poll(&mut fds, timeout).expect("poll")
            })
        };
        let long = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let woke = sleep(&bell, Duration::from_secs(10));
                (woke, start.elapsed())
            })
        };
        while bell.sleeping.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sleep(&bell, Duration::from_millis(50)), Some(0), "the short sleep times out");
        bell.ring();
        let (woke, took) = long.join().expect("long sleeper");
        assert_eq!(woke, Some(1));
        assert!(took < Duration::from_secs(5), "woken by the ring, not its timeout: {took:?}");
    }

    #[test]
    fn an_eager_bell_always_writes_and_its_clear_drains() {
        let bell = Doorbell::new().expect("pipe");
        bell.ring();
        bell.ring();
        assert!(bell.is_rung() && readable(&bell));
        bell.clear();
        assert!(!bell.is_rung() && !readable(&bell));
    }
}
