//! `poll(2)`: sleep until a descriptor is ready, optionally after a bounded, yielding look.

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

/// Asks `found` until it says yes or `budget` has passed, yielding the core between asks: the
/// bounded look every wait takes before it sleeps. Returns whether it found; a zero budget
/// does not ask.
pub fn look<E>(budget: Duration, mut found: impl FnMut() -> Result<bool, E>) -> Result<bool, E> {
    let start = std::time::Instant::now();
    while start.elapsed() < budget {
        if found()? {
            return Ok(true);
        }
        // SAFETY: sched_yield has no arguments and no failure that matters here.
        unsafe { libc::sched_yield() };
    }
    Ok(false)
}

/// [`poll`], but for up to `spin` first only looking (non-blocking), yielding the core between
/// looks, before it sleeps: a thread that keeps its core hears a peer at once instead of a
/// wake-up later (on a VM, an idle core halts and its wake-up costs tens of microseconds), and
/// yielding lets ranks that outnumber the cores run in its place. `spin` zero never spins.
pub fn poll_after_spin(fds: &mut [PollFd], timeout: Duration, spin: Duration) -> io::Result<usize> {
    let mut n = 0;
    if look(spin.min(timeout), || {
        n = poll(fds, Duration::ZERO)?;
        Ok::<_, io::Error>(n > 0)
    })? {
        return Ok(n);
    }
    poll(fds, timeout)
}
