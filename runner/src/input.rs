//! What a launcher run starts from, checked before anything starts: the job secret, the plan
//! (built for local mode, read for plan mode), and task 0's store socket.
//!
//! Reading the plan is bounded three ways, whatever the source (a file, a FIFO, standard input,
//! a device such as `/dev/zero`): at most [`MAX_PLAN_BYTES`] are read, it ends at the connect
//! timeout, and a handled signal (SIGTERM, SIGINT, ...) ends it at once with 128 + N, as it
//! would end a running job.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferrovod::bootstrap::Secret;
use ferrovod::os::{PollFd, poll};

use crate::error::{Error, quoted};
use crate::os::{self, SignalFd};
use crate::plan::{self, MAX_PLAN_BYTES, Plan};
use crate::settings::{Launch, Mode};

/// The plan and what comes with it.
pub struct Input {
    /// The job's plan, this task's index in it.
    pub plan: Plan,
    /// Task 0: the socket to serve the store on.
    pub listener: Option<TcpListener>,
    /// Set `CUDA_VISIBLE_DEVICES`: its host's GPUs, by local rank.
    pub pin_gpus: bool,
    /// The job secret.
    pub secret: String,
}

/// Builds (local mode) or reads (plan mode) the plan and checks everything about it. A signal
/// read from `signals` while the plan is awaited ends it with [`Error::Signal`].
pub fn prepare(cfg: &Launch, signals: &SignalFd) -> Result<Input, Error> {
    match &cfg.mode {
        Mode::Local { np, gpus } => {
            if *np == 0 || *np > plan::MAX_PROCESSES {
                return Err(Error::Usage(format!("-np must be between 1 and {}", plan::MAX_PROCESSES)));
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
                "127.0.0.1",
                port,
                *np,
                gpus.clone().unwrap_or_default(),
            )
            .map_err(|source| Error::Plan { origin: "-np".into(), source })?;
            Ok(Input { plan, listener: Some(listener), pin_gpus: gpus.is_some(), secret })
        }
        Mode::Plan(path) => {
            let plan = read_plan(path.as_ref(), cfg.connect_timeout, signals)?;
            if cfg.listen_fd.is_some() && plan.task_index != 0 {
                return Err(Error::Usage(format!(
                    "--listen-fd is for task 0's launcher, which serves the store; this is task {}",
                    plan.task_index
                )));
            }
            let secret = job_secret(plan.tasks.len())?;
            let listener = if plan.task_index == 0 { Some(bind_store(cfg, &plan)?) } else { None };
            Ok(Input { plan, listener, pin_gpus: true, secret })
        }
    }
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

fn read_plan(path: Option<&PathBuf>, timeout: Duration, signals: &SignalFd) -> Result<Plan, Error> {
    let deadline = Instant::now() + timeout;
    let origin = match path {
        Some(p) if p.as_os_str() != "-" => quoted(&p.display().to_string()),
        _ => "standard input".to_string(),
    };
    let read_err = |source| Error::PlanRead { origin: origin.clone(), source };
    let read = match path {
        Some(p) if p.as_os_str() != "-" => {
            // Non-blocking, so that opening a FIFO does not wait for a writer (reading it
            // then waits in `poll`, where signals and the deadline are heard).
            let file =
                std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).map_err(read_err)?;
            let meta = file.metadata().map_err(read_err)?;
            if meta.is_file() && meta.len() > MAX_PLAN_BYTES as u64 {
                return Err(read_err(too_large()));
            }
            read_bounded(file.as_raw_fd(), deadline, signals)
        }
        // Standard input is not ours to make non-blocking (a terminal would stay so after we
        // exit): it is only read once `poll` says it is readable.
        _ => read_bounded(0, deadline, signals),
    };
    let bytes = match read {
        Ok(b) => b,
        Err(Ended::Signal(signal)) => return Err(Error::Signal { signal, origin }),
        Err(Ended::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
            return Err(read_err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no complete plan within {:?} (--connect-timeout, {}): nothing wrote it, or its writer \
                     did not close it",
                    timeout,
                    ferrovod::config::CONNECT_TIMEOUT.name
                ),
            )));
        }
        Err(Ended::Io(e)) => return Err(read_err(e)),
    };
    let text = String::from_utf8(bytes).map_err(|e| read_err(io::Error::other(format!("not UTF-8: {e}"))))?;
    Plan::parse(&text).map_err(|source| Error::Plan { origin, source })
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("it is larger than {MAX_PLAN_BYTES} bytes (a plan is a few kilobytes); not reading further"),
    )
}

/// Why [`read_bounded`] stopped short of the end of its input.
enum Ended {
    /// A handled signal arrived.
    Signal(i32),
    /// Reading failed, the deadline passed (`TimedOut`), or the input is larger than a plan
    /// can be (`InvalidData`).
    Io(io::Error),
}

/// Reads `fd` to its end, keeping at most [`MAX_PLAN_BYTES`], until `deadline`, returning early
/// on a signal other than `SIGCHLD` (no child exists yet). `fd` is read only when `poll` says
/// it is readable, so it need not be non-blocking.
fn read_bounded(fd: RawFd, deadline: Instant, signals: &SignalFd) -> Result<Vec<u8>, Ended> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Ended::Io(io::Error::from(io::ErrorKind::TimedOut)));
        }
        let mut fds = [
            PollFd { fd: signals.raw_fd(), read: true, write: false, ready: false },
            PollFd { fd, read: true, write: false, ready: false },
        ];
        poll(&mut fds, left).map_err(Ended::Io)?;
        if fds[0].ready {
            while let Some(sig) = signals.next().map_err(Ended::Io)? {
                if sig != libc::SIGCHLD {
                    return Err(Ended::Signal(sig));
                }
            }
        }
        if !fds[1].ready {
            continue;
        }
        // Never more than one byte past the limit: that byte says the input is too large.
        let want = buf.len().min(MAX_PLAN_BYTES + 1 - out.len());
        // SAFETY: `buf` is valid for `want <= buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), want) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if matches!(err.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                continue;
            }
            return Err(Ended::Io(err));
        }
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
        if out.len() > MAX_PLAN_BYTES {
            return Err(Ended::Io(too_large()));
        }
    }
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
