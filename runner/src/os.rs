//! The Linux facilities the launcher needs beyond std: blocked signals read through a
//! `signalfd`, process groups, `waitpid(-1)`, `PR_SET_PDEATHSIG` / `PR_SET_CHILD_SUBREAPER`,
//! pidfds, and inherited listening sockets.
//!
//! Every function here is a thin, `Result`-returning wrapper; the policy lives in the callers.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use ferrovod::os::{PollFd, poll};

/// A process id (also a process-group id: every child leads its own group).
pub type Pid = libc::pid_t;

/// The signals the launcher handles itself: they are blocked in every thread and read from a
/// [`SignalFd`]. `SIGCHLD` says that a child changed state.
pub const HANDLED: [libc::c_int; 5] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGCHLD];

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// A set of blocked signals, readable as a non-blocking descriptor.
///
/// Create it first thing in `main`, before any thread exists: the mask is per thread and
/// threads inherit it from their creator, so a thread started earlier would still take the
/// default action (terminate) for these signals.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` in the calling thread (and so in every thread it starts later) and opens
    /// a descriptor that reports them.
    pub fn new(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid constants.
        unsafe {
            cvt(libc::sigemptyset(&mut set))?;
            for &s in signals {
                cvt(libc::sigaddset(&mut set, s))?;
            }
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
        // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
        Ok(SignalFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// The next pending signal number, if any (never blocks).
    pub fn next(&self) -> io::Result<Option<libc::c_int>> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: `info` is valid for `size` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
            if n == size as isize {
                return Ok(Some(info.ssi_signo as libc::c_int));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ if n >= 0 => {
                    return Err(io::Error::other(format!("short read of {n} bytes from signalfd")));
                }
                _ => return Err(err),
            }
        }
    }

    /// The descriptor, for `poll`.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sends `sig` to the process group `pgid`. Returns `false` when the group no longer exists.
pub fn kill_group(pgid: Pid, sig: libc::c_int) -> bool {
    if pgid <= 1 {
        return false; // never signal "every process" or init's group by accident
    }
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(-pgid, sig) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether any process is still in the group `pgid`.
pub fn group_exists(pgid: Pid) -> bool {
    kill_group(pgid, 0)
}

/// Moves the already-started child `pid` into its own process group (the child does the same
/// before it executes; doing it on both sides closes the window in which a group signal would
/// miss it).
pub fn set_own_group(pid: Pid) {
    // SAFETY: setpgid has no memory-safety preconditions; failure (the child already executed
    // and did it itself) is harmless.
    let _ = unsafe { libc::setpgid(pid, pid) };
}

/// Makes this process the reaper of its orphaned descendants, so that grandchildren whose
/// parent died are reparented here (and reaped by [`reap_any`]) instead of escaping to init.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with these arguments has no memory-safety preconditions.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// How a reaped process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

/// Reaps one terminated child of this process, without blocking. `None` when no child has
/// terminated (or there are no children).
pub fn reap_any() -> Option<(Pid, WaitStatus)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            let ws = if libc::WIFSIGNALED(status) {
                WaitStatus::Signaled(libc::WTERMSIG(status))
            } else {
                WaitStatus::Exited(libc::WEXITSTATUS(status))
            };
            return Some((pid, ws));
        }
        if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// This process's id.
pub fn getpid() -> Pid {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// The parent's process id.
pub fn getppid() -> Pid {
    // SAFETY: getppid cannot fail.
    unsafe { libc::getppid() }
}

/// Runs in a freshly forked child before `exec`: unblocks every signal (the launcher blocks the
/// ones it reads through its [`SignalFd`], and a blocked mask survives `exec`), asks the kernel
/// for `SIGKILL` when the thread that forked it exits, then makes sure that thread's process has
/// not died already (in which case the request came too late and the child leaves at once).
///
/// Only async-signal-safe calls: it runs between `fork` and `exec` of a threaded program.
pub fn child_setup(launcher: Pid) -> io::Result<()> {
    // SAFETY: sigemptyset/sigprocmask/prctl/getppid/_exit are async-signal-safe and get valid
    // pointers.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != launcher {
            libc::_exit(137);
        }
    }
    Ok(())
}

/// A descriptor that becomes readable when process `pid` exits (Linux 5.3+); `None` where the
/// kernel has no pidfds, in which case callers poll.
pub fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: the syscall takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A pipe whose both ends are close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `fd` non-blocking.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number has no memory-safety preconditions.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Takes ownership of an inherited, already bound and listening TCP socket (`--listen-fd`),
/// after checking that it is one, and marks it close-on-exec so that the training processes do
/// not inherit it.
pub fn inherited_listener(fd: RawFd) -> Result<TcpListener, String> {
    if fd < 0 {
        return Err(format!("descriptor {fd} is negative"));
    }
    // SAFETY: F_GETFD on any number is safe; it fails with EBADF for a closed one.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!("descriptor {fd} is not open: {}", io::Error::last_os_error()));
    }
    // SAFETY: `st` is plain data filled in by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("descriptor {fd} is not a socket"));
    }
    let int_opt = |level, name| -> io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid out-pointers of the advertised size.
        cvt(unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut libc::c_int).cast(), &mut len) })?;
        Ok(v)
    };
    match int_opt(libc::SOL_SOCKET, libc::SO_TYPE) {
        Ok(t) if t == libc::SOCK_STREAM => {}
        Ok(_) => return Err(format!("descriptor {fd} is not a stream socket")),
        Err(e) => return Err(format!("descriptor {fd}: {e}")),
    }
    match int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN) {
        Ok(d) if d == libc::AF_INET || d == libc::AF_INET6 => {}
        Ok(_) => return Err(format!("socket {fd} is not a TCP/IP socket")),
        Err(e) => return Err(format!("descriptor {fd}: {e}")),
    }
    match int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) {
        Ok(1) => {}
        Ok(_) => {
            return Err(format!("socket {fd} is not listening (call listen() before passing it)"));
        }
        Err(e) => return Err(format!("descriptor {fd}: {e}")),
    }
    // SAFETY: the descriptor is open; setting FD_CLOEXEC has no other effect.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the caller hands this descriptor over to us (it came from our parent for this
    // purpose); it is an open, listening TCP socket, checked above.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
}

/// Reads `fd` to end of file, giving up at `deadline` (the plan on standard input).
pub fn read_to_end_until(fd: RawFd, deadline: Instant, limit: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no end of input"));
        }
        let mut pfd = [PollFd { fd, read: true, write: false, ready: false }];
        if poll(&mut pfd, left.min(Duration::from_secs(1)))? == 0 {
            continue;
        }
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if matches!(err.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
        if out.len() > limit {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("more than {limit} bytes")));
        }
    }
}

/// The conventional name of a signal ("SIGTERM"), or "signal N".
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}
