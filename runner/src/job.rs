//! One job under supervision: start this task's processes, then an event loop until they are
//! gone, then the teardown and the [`Report`].
//!
//! The loop waits in `poll(2)` on a `signalfd` (SIGCHLD and the stop signals), the
//! coordination thread's doorbell and a pidfd of the launcher's parent; it never sleeps on the
//! happy path. Every failure it records or adopts is also written to the events channel.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use ferrovod::os::{Pid, PollFd, poll, signal_name};

use crate::coord::{CoordEvent, Coordinator};
use crate::events::{Event, Events};
use crate::failure::{Cause, ExitKind, Failure};
use crate::os::SignalFd;
use crate::placement::{self, ENV_REMOVED, JobEnv, Placement};
use crate::report::{Outcome, Report, say};
use crate::settings::Launch;
use crate::supervisor::{Spec, Supervisor};

/// Poll period while running: bounds how late a dead parent is noticed when the kernel has no
/// pidfds.
const TICK: Duration = Duration::from_millis(250);
/// Poll period while stopping: how often emptied process groups are checked.
const STOP_TICK: Duration = Duration::from_millis(50);
/// After SIGKILL, how long to wait for processes to disappear before giving up on them.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// After the last process ended, how long to wait for the rest of its output.
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long a launcher whose failure was not the first waits to learn the first one.
const FIRST_FAILURE_WAIT: Duration = Duration::from_secs(2);
/// In a job of several tasks: how long a rank's exit with an error code waits before this
/// launcher claims it as the job's first failure, for another launcher to claim the cause.
/// A rank whose peer on another task was killed exits with an error moments after the death;
/// the dead rank's launcher normally claims within a millisecond, but not when it is
/// descheduled. The local ranks are stopped at once all the same; only the claim waits.
const SETTLE: Duration = Duration::from_millis(500);
/// On task 0 after a failure: how long, beyond the grace period, to keep the store for the
/// other launchers to stop and report.
const AFTER_FAILURE_LINGER: Duration = Duration::from_secs(10);

/// Which of several processes reaped together is blamed for the job's failure: the lowest
/// value, then the lowest rank.
///
/// A process killed by a signal that the launcher did not send (SIGKILL from a user or the OOM
/// killer, SIGSEGV) cannot be the consequence of another rank's failure: ranks never signal each
/// other. A process that exited with an error code may be (a ferrovod rank whose peer died
/// fails its collective, naming that peer, and exits with 1). When the launcher is slow to
/// wake, both are waiting to be reaped, and `waitpid` returns them in start order, not in the
/// order they ended.
fn blame_order(status: ExitKind) -> u8 {
    match status {
        ExitKind::Signal(_) => 0,
        ExitKind::Code(_) => 1,
    }
}

/// Watches the launcher's parent: a Spark task's Python worker is SIGKILLed on cancel, and
/// nothing this launcher started may survive it.
pub(crate) struct ParentWatch {
    original: Pid,
    pidfd: Option<OwnedFd>,
    enabled: bool,
}

impl ParentWatch {
    pub(crate) fn new(enabled: bool) -> ParentWatch {
        let original = ferrovod::os::getppid();
        let enabled = enabled && original > 1;
        let pidfd = if enabled { ferrovod::os::pidfd_open(original) } else { None };
        ParentWatch { original, pidfd, enabled }
    }

    fn fd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(|f| f.as_raw_fd())
    }

    fn died(&self) -> bool {
        self.enabled && ferrovod::os::getppid() != self.original
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Phase {
    /// Waiting for the coordination with the other tasks (MASTER_PORT, store reachable).
    Starting,
    /// Processes are running.
    Running,
    /// Processes were signalled; SIGKILL at `deadline` (or give up at it, once `killed`).
    Stopping { deadline: Instant, killed: bool },
    /// Nothing left to supervise.
    Done,
}

/// One launcher's job, from the first process started to the report.
pub(crate) struct Job<'a> {
    pub(crate) cfg: &'a Launch,
    pub(crate) world: usize,
    pub(crate) env: JobEnv,
    pub(crate) mine: Vec<Placement>,
    pub(crate) task: usize,
    pub(crate) host: String,
    pub(crate) sup: Supervisor,
    pub(crate) coord: Option<Coordinator>,
    pub(crate) signals: SignalFd,
    pub(crate) parent: ParentWatch,
    pub(crate) events: Events,
    pub(crate) failure: Option<(Failure, bool)>,
    /// A local failure waiting out [`SETTLE`] before it is claimed (see there).
    pub(crate) settling: Option<(Cause, Instant)>,
    pub(crate) phase: Phase,
    pub(crate) stopped: usize,
}

impl Job<'_> {
    pub(crate) fn log(&self, level: u8, msg: &str) {
        if self.cfg.verbose >= level {
            say(msg);
        }
    }

    pub(crate) fn start_all(&mut self, master_port: u16) {
        self.env.master_port = master_port;
        self.phase = Phase::Running;
        let (program, args) = match self.cfg.command.split_first() {
            Some((p, a)) => (p.clone(), a.to_vec()),
            None => return,
        };
        for i in 0..self.mine.len() {
            let p = &self.mine[i];
            let spec = Spec {
                rank: p.rank,
                host: p.host.clone(),
                program: program.clone(),
                args: args.clone(),
                env: placement::child_env(p, &self.env),
                env_remove: ENV_REMOVED.iter().map(|s| s.to_string()).collect(),
            };
            match self.sup.spawn(&spec) {
                Ok(c) => {
                    let msg = format!("started rank {} as pid {}", spec.rank, c.pid);
                    self.log(2, &msg);
                }
                Err(e) => {
                    let code = match e.source.kind() {
                        std::io::ErrorKind::NotFound => 127,
                        std::io::ErrorKind::PermissionDenied => 126,
                        _ => 1,
                    };
                    let cause = Cause::Start { rank: spec.rank, detail: e.to_string(), code };
                    self.fail(cause);
                    self.begin_stop(libc::SIGTERM);
                    return;
                }
            }
        }
    }

    /// Records a failure seen here (the first one wins) and publishes it to the other tasks.
    ///
    /// When another launcher claimed the job's first failure before us, ours is a consequence
    /// (a rank that saw its peer die): the first one is adopted instead, so that neither the
    /// events channel nor the report ever names our rank for it.
    fn fail(&mut self, cause: Cause) {
        if self.failure.is_some() {
            return;
        }
        let publish = !matches!(cause, Cause::StoreLost(_));
        let f = Failure { task: self.task, host: self.host.clone(), cause };
        self.log(2, &format!("failure: {}", f.describe()));
        if publish && let Some(coord) = &mut self.coord {
            match coord.publish_failure(&f) {
                Ok(false) if coord.connected() => {
                    if let Some(first) = coord.first_failure(FIRST_FAILURE_WAIT) {
                        self.log(2, &format!("another task failed first: {}", first.describe()));
                        self.events.emit(&Event::Failure { local: false, failure: (&first).into() });
                        self.failure = Some((first, false));
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if self.cfg.verbose >= 1 {
                        say(&format!("could not tell the other tasks: {e}"));
                    }
                }
            }
        }
        self.events.emit(&Event::Failure { local: true, failure: (&f).into() });
        self.failure = Some((f, true));
    }

    /// Adopts another launcher's failure: it came first, unless we published ours.
    fn fail_remote(&mut self, f: Failure) {
        let ours_first = self.coord.as_ref().is_some_and(|c| c.published_first);
        let adopt = match &self.failure {
            None => true,
            Some((_, true)) => !ours_first,
            Some(_) => false,
        };
        if adopt {
            self.events.emit(&Event::Failure { local: false, failure: (&f).into() });
            self.failure = Some((f, false));
        }
    }

    /// Signals every process group and moves to stopping (from running; a no-op otherwise).
    fn begin_stop(&mut self, sig: libc::c_int) {
        match self.phase {
            Phase::Starting => self.phase = Phase::Done,
            Phase::Running => {
                self.stopped = self.sup.running();
                let n = self.sup.signal_all(sig);
                self.log(2, &format!("sent {} to {n} process group(s)", signal_name(sig)));
                self.phase = Phase::Stopping { deadline: Instant::now() + self.cfg.grace, killed: false };
            }
            Phase::Stopping { .. } | Phase::Done => {}
        }
    }

    fn kill_now(&mut self) {
        let n = self.sup.signal_all(libc::SIGKILL);
        self.log(2, &format!("sent SIGKILL to {n} process group(s)"));
        self.phase = Phase::Stopping { deadline: Instant::now() + KILL_WAIT, killed: true };
    }

    fn on_signal(&mut self, sig: libc::c_int) {
        self.log(2, &format!("received {}", signal_name(sig)));
        match self.phase {
            Phase::Stopping { killed: false, .. } => self.kill_now(),
            Phase::Stopping { .. } | Phase::Done => {}
            Phase::Starting | Phase::Running => {
                self.fail(Cause::Signal(sig));
                self.begin_stop(sig);
            }
        }
    }

    /// Handles the processes reaped together (`ended`, indices into the children): while the
    /// job runs, the bad exit among them that [`blame_order`] puts first is the job's failure,
    /// never merely the first that `waitpid` returned. In a job of several tasks, an exit with a
    /// code is claimed only after [`SETTLE`].
    ///
    /// Once the launcher stopped the job, exits are consequences of that, not causes.
    fn on_exits(&mut self, ended: &[usize]) {
        let mut cause: Option<(u8, usize, ExitKind)> = None;
        for &idx in ended {
            let Some(c) = self.sup.children().get(idx) else { continue };
            let Some(status) = c.status else { continue };
            let (rank, pid, signalled) = (c.rank, c.pid, c.signalled);
            self.log(2, &format!("rank {rank} (pid {pid}) {status}"));
            if status.success() || signalled {
                continue;
            }
            let order = blame_order(status);
            if cause.is_none_or(|(o, ..)| order < o) {
                cause = Some((order, rank, status));
            }
        }
        if let Some((_, rank, status)) = cause
            && self.phase == Phase::Running
        {
            let cause = Cause::Rank { rank, status };
            if matches!(status, ExitKind::Code(_)) && self.coord.is_some() {
                self.settling = Some((cause, Instant::now() + SETTLE));
            } else {
                self.fail(cause);
            }
            self.begin_stop(libc::SIGTERM);
        }
    }

    /// Claims a settling failure once [`SETTLE`] is over, unless another launcher's failure
    /// was adopted meanwhile (or the store is gone: there is nobody to tell).
    fn settle(&mut self, force: bool) {
        let Some((_, deadline)) = &self.settling else { return };
        if self.failure.is_some() {
            self.settling = None;
        } else if (force || Instant::now() >= *deadline)
            && let Some((cause, _)) = self.settling.take()
        {
            self.fail(cause);
        }
    }

    fn on_coord(&mut self, ev: CoordEvent) {
        match ev {
            CoordEvent::Ready { master_port } => {
                self.log(2, &format!("linked with the other tasks; MASTER_PORT {master_port}"));
                if self.phase == Phase::Starting {
                    self.start_all(master_port);
                }
            }
            CoordEvent::Abort(f) => {
                if f.task == self.task && self.coord.as_ref().is_some_and(|c| c.published_first) {
                    return; // our own failure coming back
                }
                self.log(2, &format!("another task failed: {}", f.describe()));
                self.fail_remote(f);
                self.begin_stop(libc::SIGTERM);
            }
            CoordEvent::Lost(e) => {
                self.settle(true); // a rank's failure before the loss stays the cause
                self.fail(Cause::StoreLost(e));
                self.begin_stop(libc::SIGTERM);
            }
        }
    }

    /// Moves the phase on once its condition holds.
    fn advance(&mut self) {
        match self.phase {
            Phase::Starting | Phase::Done => {}
            Phase::Running => {
                if self.sup.running() == 0 {
                    // Every rank exited 0. Anything they left behind in their groups goes too.
                    if self.sup.sweep() == 0 {
                        self.phase = Phase::Done;
                    } else {
                        self.log(1, "processes left behind by the ranks are being stopped");
                        self.begin_stop(libc::SIGTERM);
                    }
                }
            }
            Phase::Stopping { deadline, killed } => {
                if self.sup.running() == 0 && self.sup.sweep() == 0 {
                    // Not before the failure is known: the report names it.
                    if self.settling.is_none() {
                        self.phase = Phase::Done;
                    }
                } else if Instant::now() >= deadline {
                    if killed {
                        self.phase = Phase::Done; // unkillable (uninterruptible sleep): give up
                    } else {
                        self.log(1, "grace period over; sending SIGKILL");
                        self.kill_now();
                    }
                }
            }
        }
    }

    pub(crate) fn supervise(&mut self) {
        while self.phase != Phase::Done {
            let timeout = match self.phase {
                Phase::Stopping { deadline, .. } => {
                    deadline.saturating_duration_since(Instant::now()).min(STOP_TICK).max(Duration::from_millis(1))
                }
                _ => TICK,
            };
            let mut fds = vec![PollFd { fd: self.signals.raw_fd(), read: true, write: false, ready: false }];
            if let Some(fd) = self.coord.as_ref().map(Coordinator::wake_fd) {
                fds.push(PollFd { fd, read: true, write: false, ready: false });
            }
            let parent_slot = self.parent.fd().map(|fd| {
                fds.push(PollFd { fd, read: true, write: false, ready: false });
                fds.len() - 1
            });
            let _ = poll(&mut fds, timeout);
            if parent_slot.is_some_and(|i| fds[i].ready) {
                // The parent exited: stop polling its pidfd (it stays readable); the ppid check
                // below (or the next tick, if reparenting is not visible yet) does the rest.
                self.parent.pidfd = None;
            }
            loop {
                match self.signals.next() {
                    Ok(Some(libc::SIGCHLD)) => {}
                    Ok(Some(sig)) => self.on_signal(sig),
                    Ok(None) | Err(_) => break,
                }
            }
            // Another task's failure that arrived with our ranks' exits came first: a rank
            // that ends because its peer on another host died is not the cause.
            while let Some(ev) = self.coord.as_mut().and_then(Coordinator::next_event) {
                self.on_coord(ev);
            }
            let ended = self.sup.reap();
            self.on_exits(&ended);
            self.settle(false);
            if self.parent.died() && matches!(self.phase, Phase::Starting | Phase::Running) {
                self.parent.enabled = false;
                self.fail(Cause::ParentDied);
                self.begin_stop(libc::SIGTERM);
            }
            self.advance();
        }
    }

    pub(crate) fn finish(mut self) -> Report {
        self.settle(true);
        let leftovers = self.sup.sweep();
        let open = self.sup.drain_output(Instant::now() + DRAIN_WAIT);
        if open > 0 {
            self.log(1, &format!("{open} output pipe(s) still held open by processes outside the job; not waiting"));
        }
        if let Some(coord) = &mut self.coord {
            if matches!(self.failure, Some((_, true)))
                && !coord.published_first
                && let Some(first) = coord.first_failure(FIRST_FAILURE_WAIT)
            {
                self.events.emit(&Event::Failure { local: false, failure: (&first).into() });
                self.failure = Some((first, false));
            }
            coord.finish();
            if self.task == 0 {
                let (signals, parent) = (&self.signals, &self.parent);
                // A cancelled Spark task (parent gone) must not leave the store behind.
                let interrupted = || matches!(signals.next(), Ok(Some(s)) if s != libc::SIGCHLD) || parent.died();
                // After a failure the others stop within their grace period; a launcher that
                // died or never started will not report, so do not wait the full linger.
                let linger = match self.failure {
                    Some(_) => self.cfg.store_linger.min(self.cfg.grace + AFTER_FAILURE_LINGER),
                    None => self.cfg.store_linger,
                };
                let others = coord.wait_for_others(Instant::now() + linger, interrupted);
                if self.cfg.verbose >= 1 {
                    if !others.vanished.is_empty() {
                        say(&format!(
                            "the launchers of tasks {:?} died (their store connections closed)",
                            others.vanished
                        ));
                    }
                    if !others.missing.is_empty() {
                        say(&format!(
                            "closing the store although tasks {:?} did not report that they are done",
                            others.missing
                        ));
                    }
                }
            }
        }
        let outcome = match self.failure.take() {
            None => Outcome::Success,
            Some((failure, local)) => Outcome::Failed { failure, local },
        };
        Report { outcome, started: self.sup.children().len(), stopped: self.stopped, world: self.world, leftovers }
    }
}
