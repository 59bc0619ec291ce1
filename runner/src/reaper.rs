//! The reaper: a tiny forked process that outlives the launcher by a moment, to kill what the
//! launcher started when the launcher is killed (`SIGKILL` cannot be caught).
//!
//! `PR_SET_PDEATHSIG` takes down the launcher's direct children, but not their children: a
//! training script's data-loader workers would be reparented and live on. So the launcher forks
//! this process once, keeps the write end of a pipe to it, and sends it the id of every process
//! group it creates (and of every group it has seen empty again). When the launcher dies for any
//! reason the kernel closes the pipe; the reaper reads end-of-file, sends `SIGKILL` to every group
//! it still knows, and exits. When the launcher ends normally it has emptied those groups
//! itself, so the reaper finds nothing to do.
//!
//! The reaper is forked from a threaded program and never executes anything: between `fork` and
//! its `_exit` it only makes system calls (no allocation, no locks, no panics), on memory set up
//! before the fork. It blocks every catchable signal and leads its own process group, so neither
//! a Ctrl-C on the terminal nor a signal to the launcher's group stops it before its work.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use ferrovod::os::{self, Pid};

/// Most process groups the reaper tracks at once.
const CAPACITY: usize = 1 << 16;

/// The handle the launcher keeps to its reaper. Dropping it lets the reaper exit.
#[derive(Debug)]
pub struct Reaper {
    pid: Pid,
    tx: Option<OwnedFd>,
}

impl Reaper {
    /// Forks the reaper.
    pub fn start() -> io::Result<Reaper> {
        let (rx, tx) = os::pipe()?;
        // Everything the child touches is allocated here, before the fork.
        let mut groups: Vec<Pid> = Vec::with_capacity(CAPACITY);
        let buf = groups.as_mut_ptr();
        // SAFETY: fork has no memory-safety preconditions. The child only runs `reaper_main`,
        // which is restricted to async-signal-safe system calls on memory allocated above.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: we are the freshly forked child; `buf` has room for CAPACITY pids.
            unsafe { reaper_main(rx.as_raw_fd(), buf, CAPACITY) }
        }
        drop(rx);
        drop(groups);
        Ok(Reaper { pid, tx: Some(tx) })
    }

    /// The reaper's process id (the launcher reaps it like any child).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Asks the reaper to kill group `pgid` if the launcher dies.
    pub fn watch(&self, pgid: Pid) {
        self.send(pgid);
    }

    /// Tells the reaper that group `pgid` is empty, so that its id may be reused by others.
    pub fn forget(&self, pgid: Pid) {
        self.send(pgid.wrapping_neg());
    }

    fn send(&self, value: Pid) {
        let Some(tx) = &self.tx else { return };
        let bytes = value.to_ne_bytes();
        loop {
            // SAFETY: `bytes` is valid for its length. Writes of at most PIPE_BUF bytes to a pipe
            // are atomic, so records never interleave.
            let n = unsafe { libc::write(tx.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return; // a dead reaper cannot be helped; the launcher's own teardown still runs
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the pipe lets the reaper exit; the launcher's child reaping collects it.
        self.tx = None;
    }
}

/// The reaper's whole life. Only system calls; see the module docs.
///
/// # Safety
/// Must be called only in a freshly forked child, with `buf` valid for `cap` pids.
unsafe fn reaper_main(rx: libc::c_int, buf: *mut Pid, cap: usize) -> ! {
    // SAFETY (whole function): every call is an async-signal-safe system call on valid
    // arguments; `buf` writes stay below `cap`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        libc::setpgid(0, 0);
        close_all_but(rx);

        let mut len = 0usize;
        let mut chunk = [0u8; 4096];
        let mut carry = [0u8; 4];
        let mut have = 0usize;
        loop {
            let n = libc::read(rx, chunk.as_mut_ptr().cast(), chunk.len());
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            if n == 0 {
                break;
            }
            let mut i = 0usize;
            while i < n as usize {
                if let (Some(slot), Some(byte)) = (carry.get_mut(have), chunk.get(i)) {
                    *slot = *byte;
                }
                have += 1;
                i += 1;
                if have < 4 {
                    continue;
                }
                have = 0;
                let v = Pid::from_ne_bytes(carry);
                if v > 0 && len < cap {
                    *buf.add(len) = v;
                    len += 1;
                } else if v < 0 {
                    let gone = v.wrapping_neg();
                    let mut j = 0usize;
                    while j < len {
                        if *buf.add(j) == gone {
                            len -= 1;
                            *buf.add(j) = *buf.add(len);
                        } else {
                            j += 1;
                        }
                    }
                }
            }
        }
        let mut j = 0usize;
        while j < len {
            let pgid = *buf.add(j);
            if pgid > 1 {
                libc::kill(-pgid, libc::SIGKILL);
            }
            j += 1;
        }
        libc::_exit(0)
    }
}

/// Closes every descriptor except `keep` (so that the reaper holds no pipe, socket or terminal
/// of the launcher's open).
///
/// # Safety
/// Only in the forked child: it closes descriptors that other code might think it owns.
unsafe fn close_all_but(keep: libc::c_int) {
    // SAFETY: close_range/close on descriptor numbers have no memory-safety preconditions.
    unsafe {
        let max = libc::c_uint::MAX;
        let ok_low =
            keep == 0 || libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, (keep - 1) as libc::c_uint, 0) == 0;
        let ok_high = libc::syscall(libc::SYS_close_range, keep.wrapping_add(1) as libc::c_uint, max, 0) == 0;
        if ok_low && ok_high {
            return;
        }
        // Kernels before 5.9: close one by one up to the descriptor limit.
        let mut lim: libc::rlimit = std::mem::zeroed();
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 16) as libc::c_int
        } else {
            1024
        };
        let mut fd = 0;
        while fd < top {
            if fd != keep {
                libc::close(fd);
            }
            fd += 1;
        }
    }
}
