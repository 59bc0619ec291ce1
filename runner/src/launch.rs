//! One launcher run, start to end: [`run`] takes its settings ([`Launch`]), checks the input
//! ([`crate::input`]), serves the store (task 0), starts the coordination with the other tasks'
//! launchers ([`crate::coord`]), supervises the job (module `job`) and returns its
//! [`Report`], which also goes to the events channel ([`crate::events`]).

use std::net::TcpListener;

use ferrovod::bootstrap::{Secret, StoreServer};

use crate::coord::{CoordConfig, Coordinator, Keys};
use crate::error::Error;
use crate::events::{Event, Events};
use crate::job::{Job, ParentWatch, Phase};
use crate::os::{self, SignalFd};
use crate::placement::{self, JobEnv, Placement};
use crate::plan;
use crate::report::Report;
use crate::settings::{Launch, Mode};
use crate::supervisor::Supervisor;

/// Runs one launcher. Call it from `main` before any other thread exists: it blocks the
/// signals it handles, for this thread and every thread started afterwards.
///
/// With [`Launch::events_fd`], every failure, then the report (or the error) also goes to the
/// events channel.
pub fn run(cfg: &Launch) -> Result<Report, Error> {
    let events = match cfg.events_fd {
        Some(fd) => Events::from_fd(fd).map_err(|e| Error::Usage(format!("--events-fd {fd}: {e}")))?,
        None => Events::disabled(),
    };
    match run_job(cfg, &events) {
        Ok(report) => {
            events.emit(&Event::from(&report));
            Ok(report)
        }
        Err(e) => {
            events.emit(&Event::Error { exit_code: e.exit_code(), message: e.to_string() });
            Err(e)
        }
    }
}

fn run_job(cfg: &Launch, events: &Events) -> Result<Report, Error> {
    // A parent that ignores SIGCHLD passes that on through exec, and then the kernel reaps our
    // children itself: waitpid would never report a rank's exit. Back to the default action.
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory effects.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    let signals = SignalFd::new(&os::HANDLED).map_err(Error::io("blocking the handled signals"))?;
    let parent = ParentWatch::new(cfg.watch_parent);
    if cfg.command.is_empty() {
        return Err(Error::Usage("no command to run".into()));
    }
    if cfg.events_output && cfg.events_fd.is_none() {
        return Err(Error::Usage("--events-output needs --events-fd".into()));
    }

    // Everything that can be wrong with the input is found before anything starts.
    let crate::input::Input { plan, listener, pin_gpus, secret } = crate::input::prepare(cfg, &signals)?;
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
    let coord = if plan.tasks.len() > 1 {
        Some(
            Coordinator::start(CoordConfig {
                addr: plan.rendezvous.clone(),
                secret: Secret::new(secret.as_bytes()),
                keys: Keys::new(&plan.job_id),
                task: me,
                tasks: plan.tasks.len(),
                master_port,
                connect_timeout: cfg.connect_timeout,
            })
            .map_err(Error::io("starting the coordination thread"))?,
        )
    } else {
        None
    };
    let mine: Vec<Placement> = placement::place(&plan).into_iter().filter(|p| p.task == me).collect();
    let host = plan.my_task().map(|t| t.host.clone()).unwrap_or_default();
    let mut output = cfg.output.clone();
    output.rank_width = plan.world_size().saturating_sub(1).to_string().len();
    if cfg.events_output {
        output.events = events.clone();
    }
    let sup = Supervisor::new(output).map_err(Error::io("setting up process supervision"))?;

    let mut job = Job {
        cfg,
        world: plan.world_size(),
        env: JobEnv { rendezvous: plan.rendezvous.clone(), secret, master_addr: rdv_host, master_port: 0, pin_gpus },
        mine,
        task: me,
        host,
        sup,
        coord,
        signals,
        parent,
        events: events.clone(),
        failure: None,
        settling: None,
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
    if job.coord.is_none() {
        job.start_all(master_port.unwrap_or(0));
    }
    job.supervise();
    let report = job.finish();
    drop(store);
    Ok(report)
}
