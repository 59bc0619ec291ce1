//! The Linux facilities only a launcher needs: blocked signals read through a `signalfd`,
//! process groups, `waitpid(-1)`, `PR_SET_PDEATHSIG` / `PR_SET_CHILD_SUBREAPER`, and inherited
//! listening sockets. The general ones (pidfds, pipes, process ids, signal names) are in
//! [`ferrovod::os`].
//!
//! Every function here is a thin, `Result`-returning wrapper; the policy lives in the callers.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ferrovod::os::Pid;

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

/// One process as `/proc` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEntry {
    /// Its process id.
    pub pid: Pid,
    /// Its parent's.
    pub ppid: Pid,
    /// It has ended and waits to be reaped (nothing left to signal).
    pub zombie: bool,
}

/// Every process in `/proc`: a snapshot, taken while processes come and go (one that ends
/// while it is read is left out). Empty where `/proc` cannot be read.
pub fn processes() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) S ppid ...": comm may hold spaces and parentheses; the state follows the
        // last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_ascii_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next().and_then(|p| p.parse::<Pid>().ok())) else {
            continue;
        };
        out.push(ProcEntry { pid, ppid, zombie: matches!(state, "Z" | "X") });
    }
    out
}

/// Whether process `pid`'s environment holds the entry `NAME=value` exactly (as its process
/// started with it). `false` when it cannot be read (gone, a zombie, another user's).
pub fn environ_has(pid: Pid, entry: &[u8]) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    env.split(|&b| b == 0).any(|e| e == entry)
}

/// Sends `sig` to the process `pid` (never to a group, never to pid 0, 1 or -1). Returns
/// `false` when it no longer exists.
pub fn kill_process(pid: Pid, sig: libc::c_int) -> bool {
    if pid <= 1 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
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

/// Runs in a freshly forked child before `exec`: unblocks every signal (the launcher blocks the
/// ones it reads through its [`SignalFd`], and a blocked mask survives `exec`), gives the
/// signals the launcher forwards their default action back (a shell starts background jobs
/// with SIGINT and SIGQUIT ignored, which `exec` keeps: the ranks would ignore what the
/// launcher forwards until the grace period's SIGKILL), asks the kernel
/// for `SIGKILL` when the thread that forked it exits, then makes sure that thread's process has
/// not died already (in which case the request came too late and the child leaves at once).
///
/// Only async-signal-safe calls: it runs between `fork` and `exec` of a threaded program.
pub fn child_setup(launcher: Pid) -> io::Result<()> {
    // SAFETY: sigemptyset/sigprocmask/signal/prctl/getppid/_exit are async-signal-safe and get
    // valid pointers.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for &s in &HANDLED {
            if libc::signal(s, libc::SIG_DFL) == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
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
