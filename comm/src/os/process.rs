//! Processes: ids, pidfds (a descriptor that becomes readable when a process exits), and signal
//! names for messages. The launcher watches its parent through a pidfd; shared memory will watch
//! its peers the same way.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A process id (also a process-group id for a group leader).
pub type Pid = libc::pid_t;

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

/// Makes the process `cmd` starts get SIGKILL when the thread that starts it ends, or its
/// process dies, however it dies (`PR_SET_PDEATHSIG`); a start that finds its parent already
/// gone fails instead. For helpers that must not outlive the process that ran them.
pub fn killed_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let parent = getpid();
    // SAFETY: prctl and getppid are async-signal-safe, and the closure allocates nothing
    // (io::Error::last_os_error and from_raw_os_error do not allocate).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// A descriptor that becomes readable when process `pid` exits (Linux 5.3+); `None` where the
/// kernel has no pidfds (or `pid` is gone), in which case callers poll.
pub fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: the syscall takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
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

/// Whether a process with this pid exists on this host (a zombie counts as gone only once
/// reaped). Pid reuse within the seconds this is used for is not a concern.
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks for existence and permission; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;
    use crate::os::{PollFd, poll};

    #[test]
    fn a_pidfd_becomes_readable_when_its_process_exits() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let Some(fd) = pidfd_open(child.id() as Pid) else {
            let _ = child.wait();
            return; // a kernel without pidfds: callers poll instead
        };
        let mut pfd = [PollFd { fd: fd.as_raw_fd(), read: true, write: false, ready: false }];
        assert_eq!(poll(&mut pfd, Duration::from_millis(10)).unwrap(), 0, "readable while the child runs");
        assert_eq!(poll(&mut pfd, Duration::from_secs(10)).unwrap(), 1, "not readable after the child exited");
        let _ = child.wait();
    }

    #[test]
    fn a_child_killed_with_its_parent_ends_with_the_thread_that_started_it() {
        // PR_SET_PDEATHSIG fires when the starting thread ends: a thread stands in for the parent.
        let mut child = std::thread::spawn(|| {
            super::killed_with_parent(std::process::Command::new("sleep").arg("60")).spawn().unwrap()
        })
        .join()
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "the child outlived its parent thread");
            std::thread::sleep(Duration::from_millis(10));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(64), "signal 64");
        assert_ne!(getpid(), getppid());
    }
}
