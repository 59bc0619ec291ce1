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
//! Then it ends what left those groups: the launcher gives it one environment entry,
//! `FERROVOD_JOB_TAG=<random>`, that every rank gets and its children inherit, and the reaper
//! sends `SIGKILL` to every process whose `/proc/PID/environ` holds it (a helper started with
//! `setsid` by a rank, whose group nobody knows), in rounds until a round finds none, so that
//! one forking meanwhile is caught too.
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

/// Longest tag entry the reaper searches environments for.
const MAX_TAG: usize = 256;

/// At most this many rounds of killing tagged processes, [`TAG_ROUND_PAUSE_NS`] apart.
const TAG_ROUNDS: usize = 50;

/// Between two rounds (nanoseconds).
const TAG_ROUND_PAUSE_NS: libc::c_long = 20_000_000;

/// The handle the launcher keeps to its reaper. Dropping it lets the reaper exit.
#[derive(Debug)]
pub struct Reaper {
    pid: Pid,
    tx: Option<OwnedFd>,
}

impl Reaper {
    /// Forks the reaper. `tag` is the environment entry (`NAME=value`, at most 256 bytes, no
    /// NUL) that marks the job's processes; an empty one marks none.
    pub fn start(tag: &[u8]) -> io::Result<Reaper> {
        if tag.len() > MAX_TAG || tag.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a job tag of at most 256 bytes without NUL"));
        }
        let (rx, tx) = os::pipe()?;
        // Everything the child touches is allocated here, before the fork.
        let mut groups: Vec<Pid> = Vec::with_capacity(CAPACITY);
        let buf = groups.as_mut_ptr();
        // One whole entry of an environment block: NUL, the entry, NUL (the block is read with
        // a NUL in front, so that its first entry matches too).
        let mut needle = Vec::with_capacity(tag.len() + 2);
        needle.push(0);
        needle.extend_from_slice(tag);
        needle.push(0);
        let tagged = if tag.is_empty() { &[][..] } else { &needle[..] };
        // SAFETY: fork has no memory-safety preconditions. The child only runs `reaper_main`,
        // which is restricted to async-signal-safe system calls on memory allocated above.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: we are the freshly forked child; `buf` has room for CAPACITY pids.
            unsafe { reaper_main(rx.as_raw_fd(), buf, CAPACITY, tagged) }
        }
        drop(rx);
        drop(groups);
        drop(needle);
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
unsafe fn reaper_main(rx: libc::c_int, buf: *mut Pid, cap: usize, tagged: &[u8]) -> ! {
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
        if !tagged.is_empty() {
            let me = libc::getpid();
            let pause = libc::timespec { tv_sec: 0, tv_nsec: TAG_ROUND_PAUSE_NS };
            let mut round = 0;
            while round < TAG_ROUNDS && kill_tagged(tagged, me) > 0 {
                libc::nanosleep(&pause, std::ptr::null_mut());
                round += 1;
            }
        }
        libc::_exit(0)
    }
}

/// Sends `SIGKILL` to every process (but `me`) whose environment holds `needle` (see
/// [`Reaper::start`]); returns how many were signalled. Only system calls, on the stack.
///
/// # Safety
/// Only in the forked reaper: see the module docs.
unsafe fn kill_tagged(needle: &[u8], me: Pid) -> usize {
    // SAFETY (whole function): open/getdents64/close/kill on valid, NUL-terminated paths and
    // buffers of the advertised sizes.
    unsafe {
        let dir = libc::open(c"/proc".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if dir < 0 {
            return 0;
        }
        let mut killed = 0;
        let mut ents = [0u8; 4096];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, ents.as_mut_ptr(), ents.len());
            if n <= 0 {
                break;
            }
            let n = (n as usize).min(ents.len());
            // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, then the name.
            let mut off = 0usize;
            while off < n {
                let reclen = match (ents.get(off + 16), ents.get(off + 17)) {
                    (Some(&a), Some(&b)) => u16::from_ne_bytes([a, b]) as usize,
                    _ => break,
                };
                if reclen == 0 {
                    break;
                }
                let name = ents.get(off + 19..(off + reclen).min(n)).unwrap_or(&[]);
                if let Some(pid) = parse_pid(name)
                    && pid > 1
                    && pid != me
                    && environ_holds(pid, needle)
                    && libc::kill(pid, libc::SIGKILL) == 0
                {
                    killed += 1;
                }
                off += reclen;
            }
        }
        libc::close(dir);
        killed
    }
}

/// A directory entry's name (NUL-terminated within `name`) as a process id.
fn parse_pid(name: &[u8]) -> Option<Pid> {
    let mut pid: Pid = 0;
    let mut digits = 0;
    for &c in name {
        if c == 0 {
            break;
        }
        if !c.is_ascii_digit() || digits == 9 {
            return None;
        }
        pid = pid * 10 + Pid::from(c - b'0');
        digits += 1;
    }
    (digits > 0).then_some(pid)
}

/// Whether `/proc/PID/environ` holds `needle`. Only system calls, on the stack.
///
/// # Safety
/// Only in the forked reaper: see the module docs.
unsafe fn environ_holds(pid: Pid, needle: &[u8]) -> bool {
    // "/proc/<pid>/environ\0"
    let mut path = [0u8; 32];
    let mut len = 0usize;
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            if let Some(slot) = path.get_mut(len) {
                *slot = b;
                len += 1;
            }
        }
    };
    push(b"/proc/");
    let mut digits = [0u8; 10];
    let (mut v, mut i) = (pid, digits.len());
    while v > 0 && i > 0 {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (v % 10) as u8;
        }
        v /= 10;
    }
    push(digits.get(i..).unwrap_or(&[]));
    push(b"/environ\0");
    if len >= path.len() || needle.is_empty() || needle.len() > MAX_TAG + 2 {
        return false;
    }
    // SAFETY (rest): open/read/close on a NUL-terminated path and a buffer of the given size.
    unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        const CHUNK: usize = 4096;
        let mut win = [0u8; CHUNK + MAX_TAG + 2];
        let mut have = 1usize; // the NUL in front of the first entry
        let mut found = false;
        loop {
            let room = win.len() - have;
            let n = libc::read(fd, win.as_mut_ptr().add(have).cast(), room.min(CHUNK));
            if n <= 0 {
                break;
            }
            have += n as usize;
            let seen = win.get(..have).unwrap_or(&[]);
            if seen.windows(needle.len()).any(|w| w == needle) {
                found = true;
                break;
            }
            // Keep the tail that could start a match split across two reads.
            let keep = have.min(needle.len() - 1);
            win.copy_within(have - keep..have, 0);
            have = keep;
        }
        libc::close(fd);
        found
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
