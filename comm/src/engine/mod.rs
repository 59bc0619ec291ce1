//! The engine: asynchronous, named collectives, matched across ranks, fused, watched.
//!
//! Training frameworks hand gradients over one at a time, in whatever order autograd produces
//! them. [`Engine::submit`] queues a named tensor and returns a [`Handle`] at once; a
//! background thread owns the [`Communicator`] and works in rounds:
//!
//! 1. Negotiate ([`negotiate`]): one allgather in which every rank says what it has pending —
//!    a bit per cached tensor, name and arguments for the rest. Every rank derives the same
//!    decisions from the same messages: which tensors every rank has submitted, and which
//!    disagree (an error on every rank, naming the tensor, the field and each rank's value).
//! 2. Fuse ([`fusion`]): ready allreduces of one dtype and op form buckets of up to
//!    `FERROVOD_FUSION_THRESHOLD` bytes.
//! 3. Run ([`execute`]): each bucket is one logical allreduce, streamed through a staging buffer
//!    in ring-chunk-sized pieces. Small tensors are packed into a piece (that is the fusion);
//!    a piece that lies within one tensor runs in place, so large tensors cost no copy.
//! 4. Complete the handles; remember what was agreed in the [`cache`], so the next step's
//!    identical submissions negotiate with one bit each.
//!
//! Between rounds the thread sleeps in `poll(2)` on the links and a doorbell: a local
//! submission or a round begun by another rank wakes it. Before it sleeps it looks again for
//! up to `FERROVOD_SPIN_US`, yielding its core, and so does a thread that
//! waits on a handle: a step's collectives that come back to back cost no wake-ups. Nothing
//! spins longer.
//!
//! The caller of a synchronous collective ([`Engine::submit_and_wait`]) runs the rounds itself
//! when no one else is running them ([`drive`]): it then costs no thread hand-off at all, and
//! the engine thread stays parked for a short lease while this rank has nothing pending. The
//! rounds are the same whichever thread runs them.
//!
//! A tensor that waits for other ranks longer than `FERROVOD_STALL_WARNING` is logged by rank 0
//! with the ranks it waits for; past `FERROVOD_STALL_TIMEOUT` every rank fails. `join` lets a
//! rank that ran out of data contribute nothing (the identity of each reduction) until every
//! rank has joined. `FERROVOD_TIMELINE` records every tensor's phases as a Chrome trace.

pub(crate) mod cache;
mod drive;
mod execute;
pub(crate) mod fusion;
mod handle;
pub(crate) mod negotiate;
mod request;
mod runloop;
mod stall;
mod timeline;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use handle::Handle;
pub use request::{Collective, GroupKey, MAX_NAME, Meta, Output, Submission};

use crate::bootstrap::Topology;
use crate::communicator::Communicator;
use crate::config::{Config, EngineSettings};
use crate::dtype::{DType, ReduceOp};
use crate::error::{Error, Operation, Result};
use crate::memory::{Ops, Owned};
use crate::os::Doorbell;
use handle::Slot;

// What `Engine::from_env`'s docs promise: the engine is shared between threads, handles move.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    fn moved<T: Send>() {}
    shared::<Engine>();
    moved::<Handle>();
};

/// A rank's engine. Submit from any thread; results come back through handles.
pub struct Engine {
    shared: Arc<Shared>,
    /// The loop, run by its thread or by a waiting caller.
    driver: Arc<drive::Driver>,
    thread: Mutex<Option<JoinHandle<()>>>,
    topology: Topology,
    rank: usize,
    size: usize,
    /// Whether the engine's memory operations reach device memory.
    device_memory: bool,
    /// How long a waiter looks at its handle before it sleeps (`FERROVOD_SPIN_US`).
    spin: Duration,
}

/// What submitters and the engine thread share.
pub(crate) struct Shared {
    inbox: Mutex<Inbox>,
    /// Rung on every submission, join and shutdown.
    bell: Doorbell,
}

#[derive(Default)]
pub(crate) struct Inbox {
    /// Submitted, not yet taken by the engine thread.
    pub(crate) new: Vec<Pending>,
    /// Names pending on this rank (a name may be in flight once).
    pub(crate) in_flight: HashSet<String>,
    /// The engine thread was rung for what is in `new` (a synchronous submission rings
    /// nobody, so the first submission to arrive may not have).
    pub(crate) rang: bool,
    /// A join this rank asked for, until every rank has joined.
    pub(crate) join: Option<Arc<Slot>>,
    pub(crate) shutdown: bool,
    /// Why the engine stopped; later calls fail with it.
    pub(crate) stopped: Option<Error>,
}

/// A submission on its way through the engine.
pub(crate) struct Pending {
    pub(crate) sub: Submission,
    pub(crate) meta: Meta,
    pub(crate) slot: Arc<Slot>,
    /// The group's gate, for a group member.
    pub(crate) gate: Option<Arc<Slot>>,
    pub(crate) queued: Instant,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine {
    /// Joins the job described by the `FERROVOD_*` environment and starts the engine.
    ///
    /// The engine is `Send + Sync` and its handles are `Send`: submit from several threads,
    /// wait on any.
    ///
    /// ```
    /// use ferrovod::engine::{Collective, Submission};
    /// use ferrovod::{Engine, ReduceOp};
    /// let engine = Engine::from_env()?; // without a launcher: rank 0 of 1
    /// let n = engine.size() as f32;
    /// let sums = std::thread::scope(|s| {
    ///     let engine = &engine;
    ///     let workers: Vec<_> = (0..4)
    ///         .map(|i| s.spawn(move || engine.allreduce(&format!("grad.{i}"), &[i as f32; 3], ReduceOp::Sum)))
    ///         .collect();
    ///     workers.into_iter().map(|w| w.join().unwrap()).collect::<Result<Vec<_>, _>>()
    /// })?;
    /// assert_eq!(sums[2], [2.0 * n; 3]);
    ///
    /// // Submitted here, waited for on another thread.
    /// let avg = Collective::Allreduce(ReduceOp::Average);
    /// let handle = engine.submit(Submission::from_slice("w", avg, &[2], &[1.0f32, 3.0]))?;
    /// let out = std::thread::spawn(move || handle.wait()).join().unwrap()?;
    /// assert_eq!(out.to_vec::<f32>()?, [1.0, 3.0]);
    /// engine.shutdown()?;
    /// # Ok::<(), ferrovod::Error>(())
    /// ```
    pub fn from_env() -> Result<Engine> {
        let config = Config::from_env()?;
        let comm = Communicator::from_config(config.clone())?;
        Engine::start(comm, &config.engine)
    }

    /// Joins process set `id` of the job described by the `FERROVOD_*` environment (see
    /// [`Communicator::join_set`]) and starts an engine of its own for it.
    pub fn for_set(id: u32, members: &[usize]) -> Result<Engine> {
        let config = Config::from_env()?;
        let comm = Communicator::join_set(&config, id, members)?;
        Engine::start(comm, &config.engine)
    }

    /// Starts an engine thread that owns `comm`, doing its memory operations on the host and,
    /// once GPU memory arrives, on its device ([`crate::cuda::ops::MemoryOps`]).
    pub fn start(comm: Communicator, settings: &EngineSettings) -> Result<Engine> {
        let ops = crate::cuda::ops::MemoryOps::new(comm.tuning());
        Engine::start_with(comm, settings, Box::new(ops))
    }

    /// Starts an engine thread that owns `comm` and does its copies, fills and scalings
    /// through `ops` (a device version reaches device memory).
    pub fn start_with(comm: Communicator, settings: &EngineSettings, ops: Box<dyn Ops>) -> Result<Engine> {
        let (rank, size) = (comm.rank(), comm.size());
        let device_memory = ops.takes_device_memory();
        let bell = Doorbell::lazy().map_err(|e| Error::EngineStopped {
            rank,
            reason: format!("could not create the engine's wake-up pipe: {e}"),
        })?;
        let shared = Arc::new(Shared { inbox: Mutex::new(Inbox::default()), bell });
        let topology = comm.topology().clone();
        let spin = comm.tuning().spin;
        let worker = runloop::RunLoop::new(comm, shared.clone(), settings, ops)?;
        let driver = Arc::new(drive::Driver::new(worker, shared.clone(), rank, spin));
        let run = driver.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ferrovod-engine-{rank}"))
            .spawn(move || run.engine_thread())
            .map_err(|e| Error::EngineStopped { rank, reason: format!("could not start the engine thread: {e}") })?;
        Ok(Engine { shared, driver, thread: Mutex::new(Some(thread)), topology, rank, size, device_memory, spin })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Placement of the ranks on hosts.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Queues one tensor; never blocks on the network.
    pub fn submit(&self, sub: Submission) -> Result<Handle> {
        Ok(self.enqueue(vec![sub], false, true)?.remove(0))
    }

    /// Queues one tensor for a caller that waits on the handle next, and returns the handle.
    /// The engine thread is not woken: the wait runs the engine's rounds on the caller's own
    /// thread when no one else runs them, which saves two thread hand-offs per collective,
    /// and wakes the thread when it cannot. A handle that will not be waited for after all
    /// must be dropped or given to the engine thread ([`Handle::hand_to_engine`]).
    pub fn submit_to_wait(&self, sub: Submission) -> Result<Handle> {
        Ok(self.enqueue(vec![sub], false, false)?.remove(0))
    }

    /// Submits one tensor and waits for its result, on this thread where it can (see
    /// [`Engine::submit_to_wait`]).
    pub fn submit_and_wait(&self, sub: Submission) -> Result<Output> {
        self.submit_to_wait(sub)?.wait()
    }

    /// `(rounds run by waiting callers, rounds run by the engine thread)` so far: how often
    /// the caller-run path (see [`Engine::submit_to_wait`]) was taken.
    pub fn rounds(&self) -> (u64, u64) {
        self.driver.rounds()
    }

    /// Queues tensors that run together: in the same round, and completing together. Every
    /// rank must submit a group with the same names.
    pub fn submit_group(&self, subs: Vec<Submission>) -> Result<Vec<Handle>> {
        if subs.is_empty() {
            return Ok(Vec::new());
        }
        self.enqueue(subs, true, true)
    }

    /// Queues `subs`; `ring` wakes the engine thread (else the caller's wait runs the round).
    fn enqueue(&self, subs: Vec<Submission>, grouped: bool, ring: bool) -> Result<Vec<Handle>> {
        for s in &subs {
            s.validate(self.rank, self.size)?;
            if s.data.is_device() && !self.device_memory {
                return Err(Error::InvalidArgument {
                    rank: self.rank,
                    op: s.collective.into(),
                    detail: format!(
                        "tensor {:?} is in device memory, and this engine has no device support (NCCL or the staged path)",
                        s.name
                    ),
                });
            }
        }
        let group = grouped.then(|| GroupKey::of(subs.iter().map(|s| s.name.as_str())));
        let mut inbox = self.shared.lock();
        if let Some(error) = &inbox.stopped {
            return Err(error.clone());
        }
        let mut names = HashSet::new();
        for s in &subs {
            if inbox.in_flight.contains(&s.name) || !names.insert(s.name.as_str()) {
                return Err(Error::InvalidArgument {
                    rank: self.rank,
                    op: s.collective.into(),
                    detail: format!("tensor {:?} is already in flight: names must be unique until done", s.name),
                });
            }
        }
        // The engine thread takes the whole inbox at once: one ring for all that is in it.
        let wake = ring && !inbox.rang;
        inbox.rang |= wake;
        let queued = Instant::now();
        let gate = grouped.then(|| Arc::new(Slot::default()));
        let mut handles = Vec::with_capacity(subs.len());
        for sub in subs {
            let (mut handle, slot) = Handle::new(sub.name.clone(), gate.clone(), self.spin);
            if !ring {
                // Only a synchronous submission's wait runs the rounds: an asynchronous one
                // started on the engine thread, which may be mid-round (or at work on what
                // follows it) by the time the caller waits.
                handle.driver = Some(self.driver.clone());
                handle.quiet = true;
            }
            inbox.in_flight.insert(sub.name.clone());
            let meta = sub.meta(group);
            inbox.new.push(Pending { sub, meta, slot, gate: gate.clone(), queued });
            handles.push(handle);
        }
        drop(inbox);
        if wake {
            self.shared.bell.ring();
        }
        Ok(handles)
    }

    /// Allreduce of a typed slice, waited for: a convenience over [`Engine::submit`].
    pub fn allreduce<T: crate::Element>(&self, name: &str, data: &[T], op: ReduceOp) -> Result<Vec<T>> {
        let sub = Submission::from_slice(name, Collective::Allreduce(op), &[data.len()], data);
        self.submit_and_wait(sub)?.to_vec()
    }

    /// Says this rank has no more data: until every rank has joined, it contributes nothing to
    /// the other ranks' collectives (the identity for reductions, no rows for allgather; an
    /// average still divides by every rank, as Horovod's). Blocks until every rank has joined;
    /// returns the rank that joined last.
    pub fn join(&self) -> Result<usize> {
        let out = self.join_async()?.wait()?;
        let last = out.to_vec::<i64>()?.first().copied().unwrap_or(0);
        Ok(last as usize)
    }

    /// [`Engine::join`] without the wait: the handle's output is one `i64`, the rank that
    /// joined last.
    pub fn join_async(&self) -> Result<Handle> {
        let (handle, slot) = Handle::new("join".into(), None, self.spin);
        {
            let mut inbox = self.shared.lock();
            if let Some(error) = &inbox.stopped {
                return Err(error.clone());
            }
            if inbox.join.is_some() {
                return Err(Error::InvalidArgument {
                    rank: self.rank,
                    op: Operation::Join,
                    detail: "this rank is already joining".into(),
                });
            }
            inbox.join = Some(slot);
        }
        self.shared.bell.ring();
        Ok(handle)
    }

    /// Stops the engine on every rank after the current round; requests still pending on any
    /// rank fail. Waits for this rank's engine thread.
    pub fn shutdown(&self) -> Result<()> {
        self.shared.lock().shutdown = true;
        self.shared.bell.ring();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread
            && t.join().is_err()
        {
            return Err(Error::EngineStopped { rank: self.rank, reason: "the engine thread panicked".into() });
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("rank", &self.rank).field("size", &self.size).finish_non_exhaustive()
    }
}

/// The result a join handle carries: the last rank to join.
pub(crate) fn join_output(last: usize) -> Output {
    Output::owned(Owned::Host((last as i64).to_le_bytes().to_vec()), DType::I64, vec![1], None)
}
