//! Coordination between the launchers of a multi-task job, through the rendezvous store that
//! task 0's launcher serves.
//!
//! Keys, all under `ferrovod-run/<job_id>/`:
//!
//! | key                         | written by                  | meaning                                      |
//! |-----------------------------|-----------------------------|----------------------------------------------|
//! | `master_port`               | task 0                      | `MASTER_PORT` for torch.distributed (u16 LE) |
//! | `first_failure/claim`       | any launcher (counter)      | 1 for the first launcher to fail             |
//! | `first_failure/value`       | the first failing launcher  | a postcard [`Failure`]                       |
//! | `done/<task>`               | every launcher but task 0's | its processes are gone; it no longer needs the store (`1`) |
//! |                             | the store, on its behalf    | its connection closed before it said so (`0`): it died |
//!
//! The two `first_failure` keys are a [`FirstFailure`] record, the same one the communicator's
//! ranks agree on their first failure with.
//!
//! Each launcher runs a coordination thread with its own store connection that waits on the
//! first failure (in slices of [`WATCH_SLICE`], so that it notices a stop request) and wakes the
//! launcher's event loop through a [`Doorbell`]. The first launcher to fail publishes its
//! failure; every other launcher stops its processes within a slice and reports that same
//! failure, so all tasks exit with the first failing rank's code. Task 0's launcher keeps the
//! store up until every other launcher wrote `done/<task>` (bounded by the linger timeout). A
//! launcher that is killed cannot write it, so each asks the store to write it when its
//! connection closes: task 0 then knows at once that no one is left to wait for.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::failure::Failure;
use ferrovod::bootstrap::{Error as StoreError, FirstFailure, Secret, StoreClient};
use ferrovod::os::Doorbell;

/// How long one store wait of the coordination thread lasts; bounds how late it notices a stop
/// request.
pub const WATCH_SLICE: Duration = Duration::from_millis(500);

/// Store keys of one job.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of job `job_id`.
    pub fn new(job_id: &str) -> Keys {
        Keys { prefix: format!("ferrovod-run/{job_id}") }
    }
    fn master_port(&self) -> String {
        format!("{}/master_port", self.prefix)
    }
    fn first_failure(&self) -> FirstFailure {
        FirstFailure::new(self.prefix.clone())
    }
    fn done(&self, task: usize) -> String {
        format!("{}/done/{task}", self.prefix)
    }
}

/// `done/<task>` as the launcher writes it.
const DONE: u8 = 1;
/// `done/<task>` as the store writes it when the launcher's connection closes first.
const VANISHED: u8 = 0;

/// What the coordination thread reports.
#[derive(Debug)]
pub enum CoordEvent {
    /// Connected; `MASTER_PORT` is known. Processes may start.
    Ready {
        /// The port for torch.distributed.
        master_port: u16,
    },
    /// Another launcher failed first.
    Abort(Failure),
    /// The store is unreachable (task 0's launcher is gone) or refused us.
    Lost(String),
}

enum Msg {
    Ready { master_port: u16, client: StoreClient },
    Abort(Failure),
    Lost(String),
}

/// Settings of the coordination with the other tasks' launchers.
#[derive(Clone, Debug)]
pub struct CoordConfig {
    /// The store's address.
    pub addr: String,
    /// The job secret.
    pub secret: Secret,
    /// The job's keys.
    pub keys: Keys,
    /// This launcher's task.
    pub task: usize,
    /// Number of tasks.
    pub tasks: usize,
    /// Task 0 publishes `MASTER_PORT`; the others read it.
    pub master_port: Option<u16>,
    /// How long to keep trying to reach the store, and to wait for `MASTER_PORT`.
    pub connect_timeout: Duration,
}

/// This launcher's end of the coordination between the tasks' launchers (named apart from the
/// transports' links between ranks).
pub struct Coordinator {
    cfg: CoordConfig,
    first_failure: FirstFailure,
    rx: mpsc::Receiver<Msg>,
    bell: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
    client: Option<StoreClient>,
    /// We published the job's first failure.
    pub published_first: bool,
}

impl Coordinator {
    /// Starts the coordination thread.
    pub fn start(cfg: CoordConfig) -> io::Result<Coordinator> {
        let bell = Arc::new(Doorbell::new()?);
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, b) = (cfg.clone(), stop.clone(), bell.clone());
        std::thread::Builder::new().name("ferrovod-run-coord".into()).spawn(move || {
            let notify = |m: Msg| {
                let _ = tx.send(m);
                b.ring();
            };
            coord_main(&c, &s, notify);
        })?;
        let first_failure = cfg.keys.first_failure();
        Ok(Coordinator { cfg, first_failure, rx, bell, stop, client: None, published_first: false })
    }

    /// Becomes readable when an event is waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.bell.fd()
    }

    /// The next event, if any (never blocks).
    pub fn next_event(&mut self) -> Option<CoordEvent> {
        // Cleared before looking, so that a message sent after the look rings again.
        self.bell.clear();
        match self.rx.try_recv().ok()? {
            Msg::Ready { master_port, client } => {
                self.client = Some(client);
                Some(CoordEvent::Ready { master_port })
            }
            Msg::Abort(f) => Some(CoordEvent::Abort(f)),
            Msg::Lost(e) => Some(CoordEvent::Lost(e)),
        }
    }

    /// Publishes `f` as the job's failure unless another launcher did first; returns whether
    /// ours is the first. Without a store connection (not ready yet, or lost) nothing happens.
    pub fn publish_failure(&mut self, f: &Failure) -> Result<bool, StoreError> {
        let Some(client) = &mut self.client else {
            return Ok(false);
        };
        let first = self.first_failure.publish(client, f)?;
        self.published_first |= first;
        Ok(first)
    }

    /// Whether this launcher has its store connection (the coordination is ready and the
    /// store was not lost).
    pub fn connected(&self) -> bool {
        self.client.is_some()
    }

    /// The job's first failure as published, waiting up to `wait` for it.
    pub fn first_failure(&mut self, wait: Duration) -> Option<Failure> {
        let client = self.client.as_mut()?;
        self.first_failure.first(client, wait)
    }

    /// Stops the coordination thread and, on tasks other than 0, tells task 0 that this
    /// launcher is done with the store.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if self.cfg.task != 0
            && let Some(client) = &mut self.client
        {
            let _ = client.set(&self.cfg.keys.done(self.cfg.task), &[DONE]);
        }
    }

    /// On task 0: waits until every other launcher is done with the store or gone, until
    /// `deadline`, in slices, giving up early when `interrupted` says so.
    pub fn wait_for_others(&mut self, deadline: Instant, mut interrupted: impl FnMut() -> bool) -> Others {
        let mut others = Others { missing: (1..self.cfg.tasks).collect(), vanished: Vec::new() };
        let Some(client) = &mut self.client else {
            return others;
        };
        while !others.missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || interrupted() {
                break;
            }
            let keys: Vec<String> = others.missing.iter().map(|&t| self.cfg.keys.done(t)).collect();
            match client.wait(&keys, left.min(WATCH_SLICE)) {
                Ok(Ok(values)) => {
                    let gone = others.missing.iter().zip(&values).filter(|(_, v)| v.as_slice() == [VANISHED]);
                    others.vanished.extend(gone.map(|(&t, _)| t));
                    others.missing.clear();
                }
                Ok(Err(still)) => others.missing.retain(|&t| still.contains(&self.cfg.keys.done(t))),
                Err(_) => break,
            }
        }
        others
    }
}

/// What task 0 learned of the other launchers while it kept the store.
#[derive(Debug, Default)]
pub struct Others {
    /// Said nothing before the deadline (or the store failed).
    pub missing: Vec<usize>,
    /// Their store connection closed before they said they were done: they died.
    pub vanished: Vec<usize>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn connect(cfg: &CoordConfig, stop: &AtomicBool, deadline: Instant) -> Result<StoreClient, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match StoreClient::connect(&cfg.addr, &cfg.secret, left.min(Duration::from_secs(1))) {
            Ok(c) => return Ok(c),
            Err(e @ StoreError::Refused { .. }) => return Err(e.to_string()),
            Err(e) => {
                if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                    return Err(format!("{e} (gave up after {:.0} s)", cfg.connect_timeout.as_secs_f64()));
                }
                // Some failures return at once (a name that does not resolve): do not spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn coord_main(cfg: &CoordConfig, stop: &AtomicBool, notify: impl Fn(Msg)) {
    let deadline = Instant::now() + cfg.connect_timeout;
    let lost = |e: String| Msg::Lost(format!("rendezvous store at {}: {e}", cfg.addr));
    let (mut watcher, mut client) = match (connect(cfg, stop, deadline), connect(cfg, stop, deadline)) {
        (Ok(w), Ok(c)) => (w, c),
        (Err(e), _) | (_, Err(e)) => return notify(lost(e)),
    };
    // Task 0 keeps the store for the others until they are done; one that is killed is done
    // when the kernel closes its connections.
    if cfg.task != 0
        && let Err(e) = client.set_on_close(&cfg.keys.done(cfg.task), &[VANISHED])
    {
        return notify(lost(e.to_string()));
    }
    let master_port = match cfg.master_port {
        Some(port) => match client.set(&cfg.keys.master_port(), &port.to_le_bytes()) {
            Ok(()) => port,
            Err(e) => return notify(lost(e.to_string())),
        },
        None => loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return notify(lost("task 0's launcher never published MASTER_PORT".into()));
            }
            match watcher.wait(&[cfg.keys.master_port()], left.min(WATCH_SLICE)) {
                Ok(Ok(v)) => match v.first().and_then(|b| <[u8; 2]>::try_from(b.as_slice()).ok()) {
                    Some(b) => break u16::from_le_bytes(b),
                    None => return notify(lost("MASTER_PORT is malformed".into())),
                },
                Ok(Err(_)) => continue,
                Err(e) => return notify(lost(e.to_string())),
            }
        },
    };
    notify(Msg::Ready { master_port, client });
    let first_failure = cfg.keys.first_failure();
    while !stop.load(Ordering::SeqCst) {
        match first_failure.watch::<Failure>(&mut watcher, WATCH_SLICE) {
            Ok(Some(f)) => return notify(Msg::Abort(f)),
            Ok(None) => continue,
            Err(e) => {
                if !stop.load(Ordering::SeqCst) {
                    notify(lost(e.to_string()));
                }
                return;
            }
        }
    }
}
