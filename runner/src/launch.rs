//! One launcher run, start to end: read or build the plan, serve the store (task 0), link up
//! with the other tasks' launchers, start this task's processes, supervise them, tear down,
//! and report.
//!
//! The event loop waits in `poll(2)` on a `signalfd` (SIGCHLD and the stop signals), the link
//! thread's wake pipe and a pidfd of the launcher's parent; it never sleeps on the happy path.

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferrovod::bootstrap::{Secret, StoreServer};
use ferrovod::os::{PollFd, poll};

use crate::coord::{Cause, Failure, Keys, Link, LinkConfig, LinkEvent};
use crate::error::Error;
use crate::os::{self, Pid, SignalFd};
use crate::output::OutputOptions;
use crate::placement::{self, ENV_REMOVED, JobEnv, Placement};
use crate::plan::{self, MAX_PLAN_BYTES, Plan};
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

/// Where the plan comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `-np N`: N processes on this host; the launcher builds the plan and serves the store.
    Local {
        /// Number of processes.
        np: usize,
        /// GPU ids, one per process; `None` leaves `CUDA_VISIBLE_DEVICES` as inherited.
        gpus: Option<Vec<u32>>,
    },
    /// `--plan PATH`, or standard input when `None`.
    Plan(Option<PathBuf>),
}

/// Everything one launcher run needs.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Local or planned.
    pub mode: Mode,
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// Task 0: an inherited, already listening socket for the store.
    pub listen_fd: Option<RawFd>,
    /// Output forwarding.
    pub output: OutputOptions,
    /// Between SIGTERM (or the forwarded signal) and SIGKILL.
    pub grace: Duration,
    /// Waiting for the store, the plan on stdin, and task 0.
    pub connect_timeout: Duration,
    /// Task 0: how long to keep the store up for the other launchers.
    pub store_linger: Duration,
    /// Stop the job when the launcher's parent dies.
    pub watch_parent: bool,
    /// 0: only the failure summary; 1: start and end; 2: every event.
    pub verbose: u8,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every process exited 0.
    Success,
    /// The job was stopped.
    Failed {
        /// The job's first failure.
        failure: Failure,
        /// Seen by this launcher (not learnt from another task's).
        local: bool,
    },
}

/// What a launcher run reports.
#[derive(Clone, Debug)]
pub struct Report {
    /// How the job ended.
    pub outcome: Outcome,
    /// Processes this launcher started.
    pub started: usize,
    /// Of those, how many were still running when the job was stopped.
    pub stopped: usize,
    /// Processes of the job (all tasks).
    pub world: usize,
    /// Process groups that could not be emptied, even with SIGKILL.
    pub leftovers: usize,
}

impl Report {
    /// The launcher's exit code: 0, the first failing rank's code (128 + signal for a signal),
    /// 128 + the signal the launcher received, 126/127 when the command cannot be executed or
    /// found, 1 for a lost parent or store.
    pub fn exit_code(&self) -> i32 {
        match &self.outcome {
            Outcome::Success => 0,
            Outcome::Failed { failure, .. } => failure.exit_code(),
        }
    }

    /// The one-line summary printed on failure (and on success with `-v`).
    pub fn summary(&self) -> String {
        match &self.outcome {
            Outcome::Success => format!("all {} processes exited with code 0", self.started),
            Outcome::Failed { failure, local } => {
                let what = match failure.cause {
                    Cause::Signal(_) | Cause::ParentDied => "job stopped",
                    _ => "job failed",
                };
                let mut s = format!("{what}: {}", failure.describe());
                let other = if matches!(failure.cause, Cause::Rank { .. }) { "other " } else { "" };
                match (local, self.stopped) {
                    (_, 0) => {}
                    (true, n) => s.push_str(&format!("; stopped {n} {other}process{}", plural(n))),
                    (false, n) => s.push_str(&format!("; stopped this task's {n} process{}", plural(n))),
                }
                if self.leftovers > 0 {
                    s.push_str(&format!("; {} process group(s) could not be killed", self.leftovers));
                }
                s
            }
        }
    }
}

/// Writes `ferrovod-run: MSG` to stderr; a closed stderr is ignored, never a panic.
pub fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "ferrovod-run: {msg}");
}

/// On task 0 after a failure: how long, beyond the grace period, to keep the store for the
/// other launchers to stop and report.
const AFTER_FAILURE_LINGER: Duration = Duration::from_secs(10);

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "es" }
}

/// Runs one launcher. Call it from `main` before any other thread exists: it blocks the
/// signals it handles, for this thread and every thread started afterwards.
pub fn run(cfg: &Launch) -> Result<Report, Error> {
    // A parent that ignores SIGCHLD passes that on through exec, and then the kernel reaps our
    // children itself: waitpid would never report a rank's exit. Back to the default action.
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory effects.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    let signals = SignalFd::new(&os::HANDLED).map_err(Error::io("blocking the handled signals"))?;
    let parent = ParentWatch::new(cfg.watch_parent);
    if cfg.command.is_empty() {
        return Err(Error::Usage("no command to run".into()));
    }

    // Everything that can be wrong with the input is found before anything starts.
    let (plan, listener, pin_gpus, secret) = match &cfg.mode {
        Mode::Local { np, gpus } => {
            if *np == 0 || *np > crate::plan::MAX_PROCESSES {
                return Err(Error::Usage(format!("-np must be between 1 and {}", crate::plan::MAX_PROCESSES)));
            }
            if let Some(g) = gpus
                && let Some(dup) = g.iter().enumerate().find(|(i, id)| g[..*i].contains(id)).map(|(_, id)| id)
            {
                return Err(Error::Usage(format!("--gpus lists GPU {dup} twice")));
            }
            if let Some(g) = gpus
                && g.len() != *np
            {
                return Err(Error::Usage(format!("-np {np} but --gpus lists {} GPUs", g.len())));
            }
            let listener =
                TcpListener::bind(("127.0.0.1", 0)).map_err(Error::io("binding the rendezvous store on 127.0.0.1"))?;
            let port = listener.local_addr().map_err(Error::io("rendezvous store address"))?.port();
            let secret = job_secret(1)?;
            let job_id = Secret::generate_hex().map_err(Error::io("generating a job id"))?;
            let plan = Plan::local(
                job_id.get(..16).unwrap_or(&job_id).to_string(),
                format!("127.0.0.1:{port}"),
                *np,
                gpus.clone().unwrap_or_default(),
            );
            (plan, Some(listener), gpus.is_some(), secret)
        }
        Mode::Plan(path) => {
            let plan = read_plan(path.as_ref(), cfg.connect_timeout)?;
            if cfg.listen_fd.is_some() && plan.task_index != 0 {
                return Err(Error::Usage(format!(
                    "--listen-fd is for task 0's launcher, which serves the store; this is task {}",
                    plan.task_index
                )));
            }
            let secret = job_secret(plan.tasks.len())?;
            let listener = if plan.task_index == 0 { Some(bind_store(cfg, &plan)?) } else { None };
            (plan, listener, true, secret)
        }
    };
    let me = plan.task_index;
    let (rdv_host, rdv_port) = plan::parse_host_port(&plan.rendezvous).map_err(Error::Usage)?;
    let store = match listener {
        Some(l) => Some(StoreServer::serve(l, Secret::new(secret.as_bytes())).map_err(|source| Error::Store {
            what: format!("serving the rendezvous store on port {rdv_port}"),
            source,
        })?),
        None => None,
    };
    let master_port = if me == 0 {
        let any = if matches!(cfg.mode, Mode::Local { .. }) { "127.0.0.1" } else { "0.0.0.0" };
        let probe = TcpListener::bind((any, 0)).map_err(Error::io("finding a free port for MASTER_PORT"))?;
        Some(probe.local_addr().map_err(Error::io("MASTER_PORT probe"))?.port())
    } else {
        None
    };
    let link = if plan.tasks.len() > 1 {
        Some(
            Link::start(LinkConfig {
                addr: plan.rendezvous.clone(),
                secret: Secret::new(secret.as_bytes()),
                keys: Keys::new(&plan.job_id),
                task: me,
                tasks: plan.tasks.len(),
                master_port,
                connect_timeout: cfg.connect_timeout,
            })
            .map_err(Error::io("starting the link thread"))?,
        )
    } else {
        None
    };
    let mine: Vec<Placement> = placement::place(&plan).into_iter().filter(|p| p.task == me).collect();
    let host = plan.my_task().map(|t| t.host.clone()).unwrap_or_default();
    let mut output = cfg.output.clone();
    output.rank_width = plan.world_size().saturating_sub(1).to_string().len();
    let sup = Supervisor::new(output).map_err(Error::io("setting up process supervision"))?;

    let mut job = Job {
        cfg,
        world: plan.world_size(),
        env: JobEnv { rendezvous: plan.rendezvous.clone(), secret, master_addr: rdv_host, master_port: 0, pin_gpus },
        mine,
        task: me,
        host,
        sup,
        link,
        signals,
        parent,
        failure: None,
        phase: Phase::Starting,
        stopped: 0,
    };
    job.log(
        1,
        &format!(
            "task {me} of {}: starting {} of {} processes; rendezvous {}",
            plan.tasks.len(),
            job.mine.len(),
            job.world,
            plan.rendezvous
        ),
    );
    if job.link.is_none() {
        job.start_all(master_port.unwrap_or(0));
    }
    job.supervise();
    let report = job.finish();
    drop(store);
    Ok(report)
}

/// The job secret: `FERROVOD_SECRET`, or a fresh one when this launcher is the job's only one.
fn job_secret(tasks: usize) -> Result<String, Error> {
    match std::env::var("FERROVOD_SECRET") {
        Ok(s) if !s.is_empty() => Ok(s),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Error::Usage("FERROVOD_SECRET is not valid UTF-8 (use hex)".into()))
        }
        _ if tasks > 1 => Err(Error::Usage(format!(
            "FERROVOD_SECRET is not set: the {tasks} task launchers of a plan must share the job secret, so it \
             must come from the environment (32 random bytes, hex)"
        ))),
        _ => Secret::generate_hex().map_err(Error::io("generating the job secret")),
    }
}

fn read_plan(path: Option<&PathBuf>, timeout: Duration) -> Result<Plan, Error> {
    let origin = match path {
        Some(p) if p.as_os_str() != "-" => p.display().to_string(),
        _ => "standard input".to_string(),
    };
    let read_err = |source| Error::PlanRead { origin: origin.clone(), source };
    let bytes = match path {
        Some(p) if p.as_os_str() != "-" => {
            let meta = std::fs::metadata(p).map_err(read_err)?;
            if meta.len() > MAX_PLAN_BYTES as u64 {
                return Err(read_err(std::io::Error::other(format!("larger than {MAX_PLAN_BYTES} bytes"))));
            }
            std::fs::read(p).map_err(read_err)?
        }
        _ => os::read_to_end_until(0, Instant::now() + timeout, MAX_PLAN_BYTES).map_err(read_err)?,
    };
    let text = String::from_utf8(bytes).map_err(|e| read_err(std::io::Error::other(format!("not UTF-8: {e}"))))?;
    Plan::parse(&text).map_err(|source| Error::Plan { origin, source })
}

/// Task 0's store socket: the inherited one, or the plan's rendezvous address bound here.
fn bind_store(cfg: &Launch, plan: &Plan) -> Result<TcpListener, Error> {
    let (host, port) = plan::parse_host_port(&plan.rendezvous).map_err(Error::Usage)?;
    if let Some(fd) = cfg.listen_fd {
        let l = os::inherited_listener(fd).map_err(|e| Error::Usage(format!("--listen-fd {fd}: {e}")))?;
        let actual = l.local_addr().map_err(Error::io(format!("--listen-fd {fd}: its address")))?;
        if actual.port() != port {
            return Err(Error::Usage(format!(
                "--listen-fd {fd} listens on {actual}, but the plan's rendezvous address is {}",
                plan.rendezvous
            )));
        }
        return Ok(l);
    }
    match TcpListener::bind((host.as_str(), port)) {
        Ok(l) => Ok(l),
        // The plan names the address others reach us by (NAT, a hostname of another
        // interface): listen on every interface with that port.
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            let any = if host.contains(':') { "::" } else { "0.0.0.0" };
            TcpListener::bind((any, port)).map_err(Error::io(format!("binding the rendezvous port {port} on {any}")))
        }
        Err(e) => Err(Error::Io { what: format!("binding the rendezvous address {}", plan.rendezvous), source: e }),
    }
}

/// Watches the launcher's parent: a Spark task's Python worker is SIGKILLed on cancel, and
/// nothing this launcher started may survive it.
struct ParentWatch {
    original: Pid,
    pidfd: Option<OwnedFd>,
    enabled: bool,
}

impl ParentWatch {
    fn new(enabled: bool) -> ParentWatch {
        let original = os::getppid();
        let enabled = enabled && original > 1;
        let pidfd = if enabled { os::pidfd_open(original) } else { None };
        ParentWatch { original, pidfd, enabled }
    }

    fn fd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(|f| f.as_raw_fd())
    }

    fn died(&self) -> bool {
        self.enabled && os::getppid() != self.original
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Waiting for the link (MASTER_PORT, store reachable).
    Starting,
    /// Processes are running.
    Running,
    /// Processes were signalled; SIGKILL at `deadline` (or give up at it, once `killed`).
    Stopping { deadline: Instant, killed: bool },
    /// Nothing left to supervise.
    Done,
}

struct Job<'a> {
    cfg: &'a Launch,
    world: usize,
    env: JobEnv,
    mine: Vec<Placement>,
    task: usize,
    host: String,
    sup: Supervisor,
    link: Option<Link>,
    signals: SignalFd,
    parent: ParentWatch,
    failure: Option<(Failure, bool)>,
    phase: Phase,
    stopped: usize,
}

impl Job<'_> {
    fn log(&self, level: u8, msg: &str) {
        if self.cfg.verbose >= level {
            say(msg);
        }
    }

    fn start_all(&mut self, master_port: u16) {
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
    fn fail(&mut self, cause: Cause) {
        if self.failure.is_some() {
            return;
        }
        let publish = !matches!(cause, Cause::StoreLost(_));
        let f = Failure { task: self.task, host: self.host.clone(), cause };
        self.log(2, &format!("failure: {}", f.describe()));
        if publish
            && let Some(link) = &mut self.link
            && let Err(e) = link.publish_failure(&f)
            && self.cfg.verbose >= 1
        {
            say(&format!("could not tell the other tasks: {e}"));
        }
        self.failure = Some((f, true));
    }

    /// Adopts another launcher's failure: it came first, unless we published ours.
    fn fail_remote(&mut self, f: Failure) {
        let ours_first = self.link.as_ref().is_some_and(|l| l.published_first);
        match &self.failure {
            None => self.failure = Some((f, false)),
            Some((_, true)) if !ours_first => self.failure = Some((f, false)),
            Some(_) => {}
        }
    }

    /// Signals every process group and moves to stopping (from running; a no-op otherwise).
    fn begin_stop(&mut self, sig: libc::c_int) {
        match self.phase {
            Phase::Starting => self.phase = Phase::Done,
            Phase::Running => {
                self.stopped = self.sup.running();
                let n = self.sup.signal_all(sig);
                self.log(2, &format!("sent {} to {n} process group(s)", os::signal_name(sig)));
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
        self.log(2, &format!("received {}", os::signal_name(sig)));
        match self.phase {
            Phase::Stopping { killed: false, .. } => self.kill_now(),
            Phase::Stopping { .. } | Phase::Done => {}
            Phase::Starting | Phase::Running => {
                self.fail(Cause::Signal(sig));
                self.begin_stop(sig);
            }
        }
    }

    fn on_exit(&mut self, idx: usize) {
        let Some(c) = self.sup.children().get(idx).cloned() else {
            return;
        };
        let Some(status) = c.status else { return };
        self.log(2, &format!("rank {} (pid {}) {status}", c.rank, c.pid));
        if !status.success() && self.phase == Phase::Running {
            self.fail(Cause::Rank { rank: c.rank, status });
            self.begin_stop(libc::SIGTERM);
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Ready { master_port } => {
                self.log(2, &format!("linked with the other tasks; MASTER_PORT {master_port}"));
                if self.phase == Phase::Starting {
                    self.start_all(master_port);
                }
            }
            LinkEvent::Abort(f) => {
                if f.task == self.task && self.link.as_ref().is_some_and(|l| l.published_first) {
                    return; // our own failure coming back
                }
                self.log(2, &format!("another task failed: {}", f.describe()));
                self.fail_remote(f);
                self.begin_stop(libc::SIGTERM);
            }
            LinkEvent::Lost(e) => {
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
                    self.phase = Phase::Done;
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

    fn supervise(&mut self) {
        while self.phase != Phase::Done {
            let timeout = match self.phase {
                Phase::Stopping { deadline, .. } => {
                    deadline.saturating_duration_since(Instant::now()).min(STOP_TICK).max(Duration::from_millis(1))
                }
                _ => TICK,
            };
            let mut fds = vec![PollFd { fd: self.signals.raw_fd(), read: true, write: false, ready: false }];
            if let Some(fd) = self.link.as_ref().and_then(Link::wake_fd) {
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
            for idx in self.sup.reap() {
                self.on_exit(idx);
            }
            while let Some(ev) = self.link.as_mut().and_then(Link::next_event) {
                self.on_link(ev);
            }
            if self.parent.died() && matches!(self.phase, Phase::Starting | Phase::Running) {
                self.parent.enabled = false;
                self.fail(Cause::ParentDied);
                self.begin_stop(libc::SIGTERM);
            }
            self.advance();
        }
    }

    fn finish(mut self) -> Report {
        let leftovers = self.sup.sweep();
        let open = self.sup.drain_output(Instant::now() + DRAIN_WAIT);
        if open > 0 {
            self.log(1, &format!("{open} output pipe(s) still held open by processes outside the job; not waiting"));
        }
        if let Some(link) = &mut self.link {
            if matches!(self.failure, Some((_, true)))
                && !link.published_first
                && let Some(first) = link.first_failure(FIRST_FAILURE_WAIT)
            {
                self.failure = Some((first, false));
            }
            link.finish();
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
                let missing = link.wait_for_others(Instant::now() + linger, interrupted);
                if !missing.is_empty() && self.cfg.verbose >= 1 {
                    say(&format!("closing the store although tasks {missing:?} did not report that they are done"));
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
