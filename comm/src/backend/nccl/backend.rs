//! The NCCL backend: collectives on CUDA memory run by NCCL, on ferrovod's stream of the
//! device, with one communicator per job made on the first GPU collective.
//!
//! That first collective begins with an agreement round over the host links (authenticated,
//! like every link): each rank says whether NCCL loaded and which GPU it holds, and rank 0
//! adds NCCL's unique id. Every rank then decides the same: NCCL, when it loaded everywhere and
//! no two ranks share a GPU (the NCCL torch ships refuses that: "Duplicate GPU detected");
//! otherwise the staged path (`auto`), or an error naming the reason on every rank (`nccl`).
//! What NCCL lacks (int16, bool, a reduce-scatter of unequal blocks) runs on the staged path
//! too; every rank chooses alike, from the call alone.
//!
//! Failure: the communicator is non-blocking, and a collective's completion (an event after
//! it) and NCCL's asynchronous error are polled against `FERROVOD_TIMEOUT` and the job's abort
//! bell; on either, or on an error, the communicator is aborted (under a limit of its own) and
//! every later GPU collective fails with the same cause. A dead peer's NCCL never completes,
//! and NCCL cannot say which peer it was, so the communicator names it: under the launcher,
//! the dead rank's launcher records the job's failure and every rank's wait ends at once with
//! that record; otherwise the wait ends at the timeout as the host links' does, and the ranks
//! that do not answer the store's roll call are blamed.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::comm::{Comm, Stop};
use super::library::Nccl;
use super::sys::{self, NcclDataType, NcclRedOp, NcclUniqueId};
use crate::backend::host::HostBackend;
use crate::backend::staged::{OnDevices, device_of};
use crate::backend::{Backend, Error, Links, Request, Work};
use crate::collective::{Call, Collective, Phase};
use crate::config::{GpuBackend, Tuning};
use crate::cuda::{Device, Event};
use crate::dtype::{DType, ReduceOp};
use crate::memory::{DevicePtr, Memory};
use crate::transport::{self, AbortBell};

/// Bytes of each rank's record in the agreement round: NCCL loaded (1), GPU UUID known (1),
/// the UUID (16), rank 0's unique id (128), the id made (1), NCCL's version (4).
const RECORD: usize = 160;
const ID_AT: usize = 18;
const ID_MADE: usize = 146;
const VERSION_AT: usize = 147;

/// CUDA memory through NCCL, and through the staged path where NCCL cannot run.
pub struct NcclBackend {
    mode: GpuBackend,
    tuning: Tuning,
    host: HostBackend,
    staged: OnDevices,
    state: State,
    /// Rung when the job's first failure is on record; every NCCL wait watches it.
    abort: Option<AbortBell>,
}

enum State {
    /// No GPU collective yet.
    Unagreed,
    /// NCCL runs this device's collectives.
    Ready { device: i32, dev: Arc<Device>, comm: Comm, done: Event, order: Event },
    /// Every rank agreed that NCCL cannot run here (`auto`): the staged path.
    Staged,
    /// NCCL failed (or cannot run and was required): every GPU collective fails so.
    Broken(String),
}

impl NcclBackend {
    /// How long an NCCL wait lasts: the links' share of the timeout where the world keeps a
    /// failure record (the rest is the blame window, as for every wait on the links).
    fn wait_limit(&self) -> std::time::Duration {
        match self.abort {
            Some(_) => self.tuning.for_links().timeout,
            None => self.tuning.timeout,
        }
    }

    /// The NCCL backend for `mode` (auto or nccl), with `staged` for what NCCL cannot run;
    /// its waits end when `abort` rings.
    pub fn new(mode: GpuBackend, tuning: Tuning, staged: OnDevices, abort: Option<AbortBell>) -> NcclBackend {
        NcclBackend { mode, host: HostBackend::new(tuning.clone()), tuning, staged, state: State::Unagreed, abort }
    }

    /// The agreement (see the module docs), run by the first GPU collective, `call`: a round
    /// of records, then, when NCCL can run, the join and a round on its outcome, so that every
    /// rank ends in the same state.
    fn agree(&mut self, call: Call, device: i32, links: &mut Links) -> Result<(), Error> {
        let (rank, n) = (links.host.rank(), links.host.size());
        let nccl = Nccl::get().map_err(|e| e.to_string()).and_then(|nccl| {
            // A blocking communicator would block inside NCCL, past every timeout.
            match std::env::var("NCCL_COMM_BLOCKING").as_deref() {
                Ok("1") => {
                    Err("NCCL_COMM_BLOCKING=1 would make every NCCL call block past ferrovod's timeouts; unset it"
                        .into())
                }
                _ => Ok(nccl),
            }
        });
        let dev = Device::get(device);
        let mut mine = [0u8; RECORD];
        if let Ok(nccl) = &nccl {
            mine[0] = 1;
            let version = nccl.version().unwrap_or(0);
            mine[VERSION_AT..VERSION_AT + 4].copy_from_slice(&version.to_le_bytes());
        }
        if let Ok(uuid) = dev.as_ref().map_err(Clone::clone).and_then(|d| d.uuid()) {
            mine[1] = 1;
            mine[2..ID_AT].copy_from_slice(&uuid);
        }
        if let (0, Ok(nccl)) = (rank, &nccl) {
            let mut id = NcclUniqueId { internal: [0; 128] };
            // SAFETY: a valid out-pointer.
            if nccl.check(unsafe { (nccl.get_unique_id)(&mut id) }).is_ok() {
                mine[ID_AT..ID_MADE].copy_from_slice(&id.internal.map(|b| b as u8));
                mine[ID_MADE] = 1;
            }
        }
        let all = self.exchange(call, &mine, links)?;
        let rec = |r: usize| &all[r * RECORD..(r + 1) * RECORD];
        let version = |r: usize| i32::from_le_bytes(rec(r)[VERSION_AT..VERSION_AT + 4].try_into().expect("4 bytes"));
        let pairs = || (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b)));
        let why = if let Some(r) = (0..n).find(|&r| rec(r)[0] == 0) {
            let cause = match (&nccl, r == rank) {
                (Err(e), true) => format!(": {e}"),
                _ => String::new(),
            };
            Some(format!("NCCL could not be loaded on rank {r}{cause}"))
        } else if let Some((a, b)) = pairs().find(|&(a, b)| version(a) != version(b)) {
            Some(format!("ranks {a} and {b} load different NCCL versions ({} and {})", version(a), version(b)))
        } else if let Some(r) = (0..n).find(|&r| rec(r)[1] == 0) {
            let cause = match (&dev, r == rank) {
                (Err(e), true) => format!(": {e}"),
                _ => String::new(),
            };
            Some(format!("rank {r} could not identify its GPU{cause}"))
        } else if let Some((a, b)) = pairs().find(|&(a, b)| rec(a)[2..ID_AT] == rec(b)[2..ID_AT]) {
            Some(format!("ranks {a} and {b} share one GPU, which NCCL refuses"))
        } else if rec(0)[ID_MADE] == 0 {
            Some("rank 0 could not make NCCL's unique id".to_string())
        } else {
            None
        };
        let why = match (why, nccl, dev) {
            (None, Ok(nccl), Ok(dev)) => {
                let mut id = NcclUniqueId { internal: [0; 128] };
                for (dst, &src) in id.internal.iter_mut().zip(&rec(0)[ID_AT..ID_MADE]) {
                    *dst = src as std::ffi::c_char;
                }
                let deadline = Instant::now() + self.wait_limit();
                let joined = dev.enter().and_then(|_in| {
                    let comm = Comm::join(nccl, &id, rank, n, deadline, self.tuning.spin, self.abort.clone())
                        .map_err(|e| e.to_string())?;
                    match comm.device()? {
                        d if d == device => Ok((comm, dev.event()?, dev.event()?)),
                        d => Err(format!("NCCL put the communicator on cuda:{d}, not cuda:{device}")),
                    }
                });
                // Every rank hears whether every join succeeded, and all decide alike.
                let outcome = self.exchange(call, &[joined.is_ok() as u8], links)?;
                match (joined, outcome.iter().position(|&ok| ok == 0)) {
                    (Ok((comm, done, order)), None) => {
                        self.state = State::Ready { device, dev, comm, done, order };
                        return Ok(());
                    }
                    (Err(e), _) => format!("rank {rank} could not join NCCL's communicator on cuda:{device}: {e}"),
                    (Ok(_), Some(r)) => format!("rank {r} could not join NCCL's communicator"),
                }
            }
            (Some(why), _, _) => why,
            (None, ..) => unreachable!("every rank loaded NCCL and knows its GPU"),
        };
        if self.mode == GpuBackend::Nccl {
            let why = format!("FERROVOD_GPU_BACKEND=nccl, but {why}");
            self.state = State::Broken(why.clone());
            return Err(Error::Device { backend: "nccl", detail: why });
        }
        if rank == 0 {
            eprintln!("ferrovod: GPU collectives go through host memory (the staged path): {why}");
        }
        self.state = State::Staged;
        Ok(())
    }

    /// Every rank's `mine` (the same length on each), end to end, over the host links. Its
    /// wire tag is its own: the counts phase of an allgather of bytes at `call`'s sequence
    /// number, with `mine`'s length in it (so the two rounds differ), which no collective's
    /// data nor any size exchange (whose counts are not bytes) uses.
    fn exchange(&mut self, call: Call, mine: &[u8], links: &mut Links) -> Result<Vec<u8>, Error> {
        let (rank, n, len) = (links.host.rank(), links.host.size(), mine.len());
        let mut all = vec![0u8; len * n];
        all[rank * len..(rank + 1) * len].copy_from_slice(mine);
        let blocks: Vec<Range<usize>> = (0..n).map(|r| r * len..(r + 1) * len).collect();
        let round = Call {
            collective: Collective::Allgather,
            phase: Phase::Counts,
            dtype: DType::U8,
            count: len as u64,
            ..call
        };
        let work = Work::Blocks { buf: Memory::Host(&mut all), blocks: &blocks };
        self.host.run(Request { call: round, work }, links)?;
        Ok(all)
    }
}

/// Runs `body`'s calls as one NCCL group: the group is ended whatever happens in it (a group
/// left open on this thread would swallow the next NCCL call made on it, torch's too), and its
/// end is judged and settled.
fn grouped(
    comm: &mut Comm,
    deadline: Instant,
    body: impl FnOnce(&'static Nccl) -> Result<(), String>,
) -> Result<(), Stop> {
    let l = comm.library();
    // SAFETY: begins a group on this thread; ended below on every path.
    l.check(unsafe { (l.group_start)() }).map_err(|e| format!("ncclGroupStart: {e}"))?;
    let inside = body(l);
    // SAFETY: ends the group begun above.
    let end = unsafe { (l.group_end)() };
    inside?;
    comm.started("ncclGroupEnd", end, deadline)
}

/// Judges the immediate result of a call inside a group: only queued there.
fn queued(l: &Nccl, call: &str, code: sys::NcclResult) -> Result<(), String> {
    match code {
        sys::NCCL_SUCCESS | sys::NCCL_IN_PROGRESS => Ok(()),
        code => l.check(code).map_err(|e| format!("{call}: {e}")),
    }
}

/// NCCL's type for `dtype`, if it has one.
fn nccl_dtype(dtype: DType) -> Option<NcclDataType> {
    Some(match dtype {
        DType::U8 => sys::dtype::UINT8,
        DType::I8 => sys::dtype::INT8,
        DType::I32 => sys::dtype::INT32,
        DType::I64 => sys::dtype::INT64,
        DType::F16 => sys::dtype::FLOAT16,
        DType::BF16 => sys::dtype::BFLOAT16,
        DType::F32 => sys::dtype::FLOAT32,
        DType::F64 => sys::dtype::FLOAT64,
        _ => return None,
    })
}

fn nccl_op(op: ReduceOp) -> NcclRedOp {
    match op {
        ReduceOp::Sum => sys::op::SUM,
        ReduceOp::Average => sys::op::AVG,
        ReduceOp::Min => sys::op::MIN,
        ReduceOp::Max => sys::op::MAX,
        ReduceOp::Product => sys::op::PROD,
    }
}

/// Whether NCCL runs `req` (else the staged path does): a dtype NCCL has, and a reduce-scatter
/// only of equal blocks. The same on every rank: it follows from the agreed call and blocks.
fn nccl_takes(req: &Request<'_>) -> bool {
    let typed = nccl_dtype(req.call.dtype).is_some();
    match (&req.work, req.call.collective) {
        (Work::Blocks { blocks, .. }, Collective::Reducescatter(_)) => {
            typed && blocks.windows(2).all(|w| w[0].len() == w[1].len())
        }
        (Work::Exchange { .. }, _) => true, // bytes, whatever their type
        _ => typed,
    }
}

impl Backend for NcclBackend {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn accepts(&self, req: &Request<'_>) -> bool {
        device_of(req).is_some()
    }

    fn run(&mut self, req: Request<'_>, links: &mut Links) -> Result<&'static str, Error> {
        let device =
            device_of(&req).ok_or_else(|| Error::Invalid { backend: "nccl", detail: "no device memory".into() })?;
        if matches!(self.state, State::Unagreed) {
            self.agree(req.call, device, links)?;
        }
        match &self.state {
            State::Broken(why) => Err(Error::Device { backend: "nccl", detail: why.clone() }),
            State::Staged => self.staged.run(req, links),
            State::Ready { device: d, .. } if *d != device => Err(Error::Device {
                backend: "nccl",
                detail: format!(
                    "NCCL runs one GPU per process: this rank's communicator is on cuda:{d}, and this tensor on cuda:{device}"
                ),
            }),
            State::Ready { .. } if !nccl_takes(&req) => self.staged.run(req, links),
            State::Ready { .. } => {
                let (rank, n) = (links.host.rank(), links.host.size());
                let what = format!(
                    "{} of {} bytes",
                    req.call.collective.name(),
                    req.call.count * req.call.dtype.size() as u64
                );
                match self.nccl(req, rank, n) {
                    Ok(()) => Ok("nccl"),
                    Err(e) => {
                        let why = match &e {
                            Stop::Aborted => format!("rank {rank}: {what} on cuda:{device}: the job failed elsewhere"),
                            e => format!("rank {rank}: {what} on cuda:{device}: {e}"),
                        };
                        if !matches!(e, Stop::Failed(_)) {
                            // The error raised is the job's record or the links' timeout, which
                            // say nothing of NCCL: say here what was waited for.
                            eprintln!("ferrovod: {why}");
                        }
                        let was = std::mem::replace(&mut self.state, State::Broken(why.clone()));
                        if let State::Ready { dev, comm, done, .. } = was {
                            // Abort (bounded), then let the stream drain (bounded) before the
                            // caller hears of it and may free the memory NCCL was using.
                            drop(comm);
                            let limit = self.tuning.timeout.min(std::time::Duration::from_secs(10));
                            if let Ok(_in) = dev.enter() {
                                let _ = dev
                                    .mark(&done)
                                    .and_then(|()| dev.wait(&done, limit, self.tuning.spin, "NCCL's aborted work"));
                            }
                        }
                        Err(match e {
                            // The failure on record is the one to report (the communicator
                            // reads it), as when a host link's wait ends so.
                            Stop::Aborted => Error::Transport(transport::Error::JobFailed),
                            // As a host link's timeout: the communicator finds whom to blame
                            // among the others.
                            Stop::TimedOut { waited, .. } => Error::Transport(transport::Error::Timeout {
                                peers: (0..n).filter(|&r| r != rank).collect(),
                                waited,
                                via: Vec::new(),
                            }),
                            Stop::Failed(_) => Error::Device { backend: "nccl", detail: why },
                        })
                    }
                }
            }
            State::Unagreed => unreachable!("agreed above"),
        }
    }
}

impl NcclBackend {
    /// Runs `req` on NCCL and waits (polling) until it is done.
    fn nccl(&mut self, req: Request<'_>, rank: usize, n: usize) -> Result<(), Stop> {
        let deadline = Instant::now() + self.wait_limit();
        let State::Ready { dev, comm, done, order, .. } = &mut self.state else { unreachable!("ready") };
        let _in = dev.enter()?;
        let stream = dev.raw_stream() as sys::CudaStream;
        let call = req.call;
        let size = call.dtype.size();
        let dt = nccl_dtype(call.dtype).unwrap_or(sys::dtype::UINT8);
        let raw = comm.raw();
        let at = |p: &DevicePtr, offset: usize| (p.ptr + offset as u64) as *mut std::ffi::c_void;
        let l = comm.library();
        match req.work {
            Work::InPlace { buf } => {
                let Some(p) = buf.device_ptr() else { return Err(String::from("host memory reached NCCL").into()) };
                dev.after(&p, order)?;
                let count = p.len / size;
                let code = match call.collective {
                    // SAFETY: `p` is live device memory of `p.len` bytes (DevicePtr's contract),
                    // in place, on this communicator's device and stream.
                    Collective::Allreduce(op) => unsafe {
                        (l.all_reduce)(at(&p, 0), at(&p, 0), count, dt, nccl_op(op), raw, stream)
                    },
                    // SAFETY: as above.
                    Collective::Broadcast(root) => unsafe {
                        (l.broadcast)(at(&p, 0), at(&p, 0), count, dt, root as i32, raw, stream)
                    },
                    other => return Err(format!("{} does not run in place on NCCL", other.name()).into()),
                };
                comm.started("the collective", code, deadline)?;
            }
            Work::Blocks { buf, blocks } => {
                let Some(p) = buf.device_ptr() else { return Err(String::from("host memory reached NCCL").into()) };
                dev.after(&p, order)?;
                let equal = blocks.windows(2).all(|w| w[0].len() == w[1].len());
                match call.collective {
                    Collective::Allgather if equal => {
                        let mine = &blocks[rank];
                        // SAFETY: in place as NCCL allows it: the send buffer is this rank's
                        // block of the receive buffer.
                        let code = unsafe {
                            (l.all_gather)(at(&p, mine.start), at(&p, 0), mine.len() / size, dt, raw, stream)
                        };
                        comm.started("ncclAllGather", code, deadline)?;
                    }
                    Collective::Allgather => {
                        // Unequal blocks: each rank's block broadcast from it, as one group.
                        grouped(comm, deadline, |l| {
                            blocks.iter().enumerate().try_for_each(|(r, b)| {
                                // SAFETY: block `b` lies within `p`.
                                let code = unsafe {
                                    (l.broadcast)(
                                        at(&p, b.start),
                                        at(&p, b.start),
                                        b.len() / size,
                                        dt,
                                        r as i32,
                                        raw,
                                        stream,
                                    )
                                };
                                queued(l, "ncclBroadcast", code)
                            })
                        })?;
                    }
                    Collective::Reducescatter(op) => {
                        let mine = &blocks[rank];
                        // SAFETY: in place as NCCL allows it: the receive buffer is this rank's
                        // block of the send buffer (blocks are equal: `nccl_takes`).
                        let code = unsafe {
                            (l.reduce_scatter)(
                                at(&p, 0),
                                at(&p, mine.start),
                                mine.len() / size,
                                dt,
                                nccl_op(op),
                                raw,
                                stream,
                            )
                        };
                        comm.started("ncclReduceScatter", code, deadline)?;
                    }
                    other => return Err(format!("{} does not run on blocks on NCCL", other.name()).into()),
                }
            }
            Work::Exchange { send, send_blocks, recv, recv_blocks } => {
                let (Some(s), Some(r)) = (send.device_ptr(), recv.device_ptr()) else {
                    return Err(String::from("host memory reached NCCL").into());
                };
                dev.after(&s, order)?;
                dev.after(&r, order)?;
                // A group of sends and receives of disjoint blocks, as bytes.
                grouped(comm, deadline, |l| {
                    (0..n).try_for_each(|peer| {
                        let (out, inb) = (&send_blocks[peer], &recv_blocks[peer]);
                        if !out.is_empty() {
                            // SAFETY: the block lies within `s`.
                            let code = unsafe {
                                (l.send)(at(&s, out.start), out.len(), sys::dtype::UINT8, peer as i32, raw, stream)
                            };
                            queued(l, "ncclSend", code)?;
                        }
                        if !inb.is_empty() {
                            // SAFETY: the block lies within `r`.
                            let code = unsafe {
                                (l.recv)(at(&r, inb.start), inb.len(), sys::dtype::UINT8, peer as i32, raw, stream)
                            };
                            queued(l, "ncclRecv", code)?;
                        }
                        Ok(())
                    })
                })?;
            }
        }
        // Done once the event after it has happened; NCCL's own errors meanwhile end it too.
        dev.mark(done)?;
        comm.poll("the collective", deadline, |comm| {
            if dev.happened(done)? {
                return Ok(true);
            }
            match comm.state() {
                Ok(sys::NCCL_SUCCESS | sys::NCCL_IN_PROGRESS) => Ok(false),
                Ok(code) | Err(code) => Err(comm.failure("the collective", code)),
            }
        })
    }
}
