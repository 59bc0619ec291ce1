//! Starting training processes and taking them down: the part of the launcher a long-lived
//! worker pool will reuse.
//!
//! Every child leads its own process group, gets `SIGKILL` from the kernel if the thread that
//! started it dies (`PR_SET_PDEATHSIG`), and is registered with the [`Reaper`], which kills its
//! whole group (grandchildren included) if the launcher is killed outright. The launcher is a
//! child subreaper, so grandchildren orphaned by a dead rank are reparented to it and reaped
//! here rather than escaping to init.
//!
//! Processes that leave the ranks' groups (`setsid`, Python's `start_new_session=True`: data
//! loader helpers, servers) are found apart, as *strays* ([`Supervisor::strays`]): every
//! descendant of a running rank (by parent chain, from `/proc`), every child of the launcher
//! that is not a rank (an orphan reparented to it, the subreaper), what those started, and
//! every process whose environment carries this launcher's `FERROVOD_JOB_TAG`, which each rank
//! gets and its children inherit. The job is not over until the ranks' groups and the strays
//! are gone: after a normal end, on a signal, on a failure. When the launcher is killed, its
//! reaper ends the groups and then every process that carries the tag.
//!
//! What is guaranteed: while the launcher lives, every process started below a rank, whatever
//! its session or group, is ended with the job. After a SIGKILL of the launcher, the ranks'
//! groups and every process that kept the tag in its environment are. A process that both left
//! the ranks' groups and replaced its environment (`env -i`, `execve` with a fresh one), or
//! made itself unreadable in `/proc` (`PR_SET_DUMPABLE` 0, another user), can escape that
//! last case; a cgroup would close it where one can be created, and is not used yet.
//!
//! Exit statuses are collected with `waitpid(-1)` ([`Supervisor::reap`]): the process that owns
//! a `Supervisor` must not wait for children by other means, and its other children count as
//! strays of the job.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::marker::PhantomData;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use ferrovod::os::Pid;

use crate::events::Stream;
use crate::failure::ExitKind;
use crate::os;
use crate::output::{Forwarders, OutputOptions};
use crate::reaper::Reaper;

/// What to start: one training process. Its `Debug` output shows variable names only (one of
/// them is the job secret).
#[derive(Clone)]
pub struct Spec {
    /// Its global rank (names it in output prefixes and messages).
    pub rank: usize,
    /// Its host as the plan names it.
    pub host: String,
    /// The program, looked up in `PATH` when it has no slash.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables set on top of the launcher's environment.
    pub env: Vec<(String, String)>,
    /// Variables removed from the launcher's environment.
    pub env_remove: Vec<String>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("rank", &self.rank)
            .field("host", &self.host)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("env_remove", &self.env_remove)
            .finish()
    }
}

/// A started process.
#[derive(Clone, Debug)]
pub struct Child {
    /// Its rank.
    pub rank: usize,
    /// Its host as the plan names it.
    pub host: String,
    /// Its process id, which is also its process group id.
    pub pid: Pid,
    /// How it ended, once it has.
    pub status: Option<ExitKind>,
    /// When it ended.
    pub ended: Option<Instant>,
    /// Its process group was seen empty (the process and everything it started are gone).
    pub group_gone: bool,
    /// The launcher signalled it while it was running: how it ends is a consequence of that,
    /// never the cause of a failure.
    pub signalled: bool,
}

/// Starting a process failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot start rank {rank} ({program}): {source}")]
pub struct SpawnError {
    /// The rank.
    pub rank: usize,
    /// The program, as given.
    pub program: String,
    /// The OS error (`NotFound` when the program does not exist).
    #[source]
    pub source: io::Error,
}

/// The processes of one launcher and the machinery that keeps them in check.
///
/// Not `Send`: the thread that creates it forks the children, and `PR_SET_PDEATHSIG` fires when
/// that thread exits, so the value must live and die on it.
pub struct Supervisor {
    launcher: Pid,
    /// `FERROVOD_JOB_TAG=<random>`: the environment entry every rank gets.
    tag: String,
    reaper: Option<Reaper>,
    children: Vec<Child>,
    by_pid: HashMap<Pid, usize>,
    output: Forwarders,
    _same_thread: PhantomData<*const ()>,
}

impl Supervisor {
    /// Becomes a child subreaper (where the kernel allows it) and starts the [`Reaper`].
    pub fn new(output: OutputOptions) -> io::Result<Supervisor> {
        // Without it, grandchildren orphaned by a dead rank go to init; the process-group
        // signals and the reaper still reach them.
        let _ = os::become_subreaper();
        let random = ferrovod::bootstrap::Secret::generate_hex()?;
        let tag = format!("{}={}", ferrovod::config::JOB_TAG.name, random.get(..32).unwrap_or(&random));
        let reaper = Reaper::start(tag.as_bytes())?;
        Ok(Supervisor {
            launcher: ferrovod::os::getpid(),
            tag,
            reaper: Some(reaper),
            children: Vec::new(),
            by_pid: HashMap::new(),
            output: Forwarders::new(output),
            _same_thread: PhantomData,
        })
    }

    /// Starts one process (its output forwarded from now on).
    pub fn spawn(&mut self, spec: &Spec) -> Result<&Child, SpawnError> {
        let err = |source| SpawnError { rank: spec.rank, program: spec.program.to_string_lossy().into_owned(), source };
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for k in &spec.env_remove {
            cmd.env_remove(k);
        }
        if let Some((name, value)) = self.tag.split_once('=') {
            cmd.env(name, value);
        }
        let launcher = self.launcher;
        // SAFETY: `child_setup` only makes async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(move || os::child_setup(launcher));
        }
        let mut child = cmd.spawn().map_err(err)?;
        let pid = child.id() as Pid;
        os::set_own_group(pid);
        if let Some(r) = &self.reaper {
            r.watch(pid);
        }
        let idx = self.children.len();
        self.children.push(Child {
            rank: spec.rank,
            host: spec.host.clone(),
            pid,
            status: None,
            ended: None,
            group_gone: false,
            signalled: false,
        });
        self.by_pid.insert(pid, idx);
        // `child` is never waited on through std: `reap` collects every status.
        let streams = [
            (child.stdout.take().map(|p| Box::new(p) as Box<dyn io::Read + Send>), Stream::Stdout),
            (child.stderr.take().map(|p| Box::new(p) as Box<dyn io::Read + Send>), Stream::Stderr),
        ];
        for (pipe, stream) in streams {
            if let Some(pipe) = pipe {
                self.output.forward(spec.rank, stream, pipe).map_err(err)?;
            }
        }
        Ok(&self.children[idx])
    }

    /// The started processes, in start order.
    pub fn children(&self) -> &[Child] {
        &self.children
    }

    /// How many started processes have not ended.
    pub fn running(&self) -> usize {
        self.children.iter().filter(|c| c.status.is_none()).count()
    }

    /// Collects every terminated child (and orphaned grandchild) without blocking; returns the
    /// indices (into [`Supervisor::children`]) of the processes that ended.
    pub fn reap(&mut self) -> Vec<usize> {
        let mut ended = Vec::new();
        while let Some((pid, status)) = os::reap_any() {
            if let Some(&i) = self.by_pid.get(&pid) {
                let c = &mut self.children[i];
                if c.status.is_none() {
                    c.status = Some(status.into());
                    c.ended = Some(Instant::now());
                    ended.push(i);
                }
            } else if self.reaper.as_ref().is_some_and(|r| r.pid() == pid) {
                self.reaper = None; // it died early; the launcher's own teardown still works
            }
            // Anything else was an orphaned grandchild: reaping it is all there is to do.
        }
        ended
    }

    /// The job's processes outside the ranks' groups that are still alive: see the module docs.
    /// Ranks themselves are not in it (they are [`Supervisor::running`]), nor the reaper.
    pub fn strays(&self) -> Vec<Pid> {
        let procs = os::processes();
        let reaper = self.reaper.as_ref().map(Reaper::pid);
        let ranks: HashSet<Pid> = self.children.iter().filter(|c| c.status.is_none()).map(|c| c.pid).collect();
        let mut marked: HashSet<Pid> = ranks.clone();
        for p in &procs {
            if p.pid == self.launcher || Some(p.pid) == reaper || ranks.contains(&p.pid) {
                continue;
            }
            let orphan = p.ppid == self.launcher && !self.by_pid.contains_key(&p.pid);
            if orphan || os::environ_has(p.pid, self.tag.as_bytes()) {
                marked.insert(p.pid);
            }
        }
        // Whatever the marked processes started, however deep.
        let mut kids: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for p in &procs {
            kids.entry(p.ppid).or_default().push(p.pid);
        }
        let mut todo: Vec<Pid> = marked.iter().copied().collect();
        while let Some(pid) = todo.pop() {
            for &k in kids.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
                if k != self.launcher && Some(k) != reaper && marked.insert(k) {
                    todo.push(k);
                }
            }
        }
        procs
            .iter()
            .filter(|p| !p.zombie && marked.contains(&p.pid) && !ranks.contains(&p.pid))
            .map(|p| p.pid)
            .collect()
    }

    /// Sends `sig` to every process group that may still have members and to every stray;
    /// returns how many groups and strays were signalled.
    pub fn signal_all(&mut self, sig: libc::c_int) -> usize {
        let mut n = 0;
        for c in &mut self.children {
            if c.group_gone {
                continue;
            }
            if os::kill_group(c.pid, sig) {
                n += 1;
                c.signalled |= c.status.is_none() && sig != 0;
            } else if c.status.is_some() {
                c.group_gone = true;
                if let Some(r) = &self.reaper {
                    r.forget(c.pid);
                }
            }
        }
        for pid in self.strays() {
            n += usize::from(os::kill_process(pid, sig));
        }
        n
    }

    /// Checks which groups of ended processes are now empty (and tells the reaper to forget
    /// them); returns how many groups still have members plus how many strays are alive.
    pub fn sweep(&mut self) -> usize {
        let mut left = 0;
        for c in &mut self.children {
            if c.group_gone {
                continue;
            }
            if c.status.is_some() && !os::group_exists(c.pid) {
                c.group_gone = true;
                if let Some(r) = &self.reaper {
                    r.forget(c.pid);
                }
            } else {
                left += 1;
            }
        }
        left + self.strays().len()
    }

    /// Waits (until `deadline`) for the output of every process to reach end of file; returns
    /// how many pipes are still held open by processes outside the job's groups.
    pub fn drain_output(&mut self, deadline: Instant) -> usize {
        self.output.wait(deadline)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Normally every group is empty by now. On an early return, take everything down:
        // closing the reaper's pipe makes it SIGKILL every group it still knows.
        for c in &self.children {
            if !c.group_gone {
                os::kill_group(c.pid, libc::SIGKILL);
            }
        }
        if let Some(reaper) = self.reaper.take() {
            let pid = reaper.pid();
            let pidfd = ferrovod::os::pidfd_open(pid);
            drop(reaper);
            if let Some(fd) = pidfd {
                use std::os::fd::AsRawFd;
                let mut pfd = [ferrovod::os::PollFd { fd: fd.as_raw_fd(), read: true, write: false, ready: false }];
                let _ = ferrovod::os::poll(&mut pfd, std::time::Duration::from_millis(500));
            }
            let _ = self.reap();
        }
    }
}
