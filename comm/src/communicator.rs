//! The communicator: a rank's membership in a job and the collectives it runs.
//!
//! Built from the environment ([`Communicator::from_env`], what launched processes use), from
//! a [`Builder`] (tests, embedding), or over an existing transport
//! ([`Communicator::from_transport`], in-process tests). Collectives take `&mut self`: they
//! must be called in the same order on every rank, which the sequence number in every
//! message's tag checks.
//!
//! On any failure the communicator records the root cause in the store (first writer wins),
//! closes its links so that peers blocked on it fail at once, and becomes unusable. Every
//! rank's error then names the rank that saw the failure first and what it saw.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::algorithms::{blocks_from_counts, even_blocks};
use crate::backend::{Backend, Request, Work, host::HostBackend};
use crate::bootstrap::{PeerInfo, Secret, StoreClient, StoreServer, Topology, exchange_peers};
use crate::config::{self, Config, Tuning};
use crate::dtype::{DType, Element, ReduceOp};
use crate::error::{Error, Result};
use crate::op::{Kind, OpDesc};
use crate::os::Doorbell;
use crate::transport::mem::MemTransport;
use crate::transport::tcp::{TcpListenerHandle, TcpTransport};
use crate::transport::{self, Transport};

/// How long a failing rank waits for the root cause to appear in the store.
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// Communicators created by this process, so that a second one uses fresh store keys.
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// A rank's handle on a job.
pub struct Communicator {
    rank: usize,
    size: usize,
    topology: Topology,
    tuning: Tuning,
    backends: Vec<Box<dyn Backend>>,
    abort: Option<AbortBoard>,
    seq: u32,
    broken: Option<String>,
    // Declared last: dropped after the links, so peers see closed links before a dead store.
    _store: Option<StoreServer>,
}

/// Explicit construction, for tests and for programs that do not use the environment.
#[derive(Debug, Clone)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// This process's rank.
    pub fn rank(mut self, rank: usize) -> Builder {
        self.config.rank = rank;
        self
    }

    /// Number of ranks.
    pub fn size(mut self, size: usize) -> Builder {
        self.config.size = size;
        self
    }

    /// `host:port` of the store.
    pub fn rendezvous(mut self, addr: impl Into<String>) -> Builder {
        self.config.rendezvous = Some(addr.into());
        self
    }

    /// The job secret.
    pub fn secret(mut self, secret: Secret) -> Builder {
        self.config.secret = Some(secret);
        self
    }

    /// Whether rank 0 serves the store itself on the rendezvous address.
    pub fn host_store(mut self, yes: bool) -> Builder {
        self.config.host_store = yes;
        self
    }

    /// Transport and algorithm tuning.
    pub fn tuning(mut self, tuning: Tuning) -> Builder {
        self.config.tuning = tuning;
        self
    }

    /// Joins the job.
    pub fn build(self) -> Result<Communicator> {
        Communicator::join(self.config)
    }
}

impl Communicator {
    /// Joins the job described by the `FERROVOD_*` environment (see [`crate::config`]). Without
    /// any of it, this is rank 0 of a one-rank job.
    pub fn from_env() -> Result<Communicator> {
        Communicator::join(Config::from_env()?)
    }

    /// A builder starting from the defaults (rank 0 of 1).
    pub fn builder() -> Builder {
        // The defaults parse: the lookup finds nothing.
        let config = Config::from_lookup(|_| None).unwrap_or_else(|e| unreachable!("defaults do not parse: {e}"));
        Builder { config }
    }

    /// A communicator over an existing transport, all ranks on one host, no store.
    pub fn from_transport(transport: Box<dyn Transport>, tuning: Tuning) -> Communicator {
        let (rank, size) = (transport.rank(), transport.size());
        Communicator {
            rank,
            size,
            topology: Topology {
                local_rank: rank,
                local_size: size,
                cross_rank: 0,
                cross_size: 1,
                local_ranks: (0..size).collect(),
            },
            backends: vec![Box::new(HostBackend::new(transport, tuning.clone()))],
            tuning,
            abort: None,
            seq: 0,
            broken: None,
            _store: None,
        }
    }

    /// Joins the job `config` describes.
    pub fn from_config(config: Config) -> Result<Communicator> {
        Communicator::join(config)
    }

    fn join(config: Config) -> Result<Communicator> {
        config.validate()?;
        let rank = config.rank;
        if config.size == 1 {
            let [t] = <[MemTransport; 1]>::try_from(MemTransport::world(1, config.tuning.timeout))
                .unwrap_or_else(|_| unreachable!("world(1) has one rank"));
            let mut c = Communicator::from_transport(Box::new(t), config.tuning);
            c.topology = Topology::single();
            return Ok(c);
        }
        let missing = |k: config::Knob| Error::Config {
            name: k.name,
            detail: format!("required when FERROVOD_SIZE={} > 1", config.size),
        };
        let addr = config.rendezvous.clone().ok_or_else(|| missing(config::RENDEZVOUS))?;
        let secret = config.secret.clone().ok_or_else(|| missing(config::SECRET))?;
        let boot = |cause| Error::Bootstrap { rank, cause };
        let tuning = &config.tuning;

        let store_server = if config.host_store && rank == 0 {
            Some(StoreServer::bind(addr.as_str(), secret.clone()).map_err(boot)?)
        } else {
            None
        };
        let mut store = StoreClient::connect(&addr, &secret, tuning.connect_timeout).map_err(boot)?;
        // Peers reach this rank the way it reaches the store, unless told otherwise.
        let ip = match config.advertise_addr {
            Some(ip) => ip,
            None => store.local_addr().map_err(boot)?.ip(),
        };
        let listener = TcpListenerHandle::bind(ip).map_err(boot)?;
        let agreed = tuning.agreed();
        let me = PeerInfo {
            hostname: crate::os::hostname(),
            boot_id: crate::os::boot_id(),
            addr: listener.addr(),
            pid: std::process::id(),
            tuning: agreed.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        let prefix = format!("ferrovod/comm{}", GENERATION.fetch_add(1, Ordering::Relaxed));
        let peers =
            exchange_peers(&mut store, &prefix, rank, config.size, &me, tuning.connect_timeout).map_err(boot)?;
        for (peer, info) in peers.iter().enumerate() {
            let theirs = info.tuning.iter().map(|(_, v)| v);
            if let Some(((name, mine), theirs)) = agreed.iter().zip(theirs).find(|((_, m), t)| m != *t) {
                return Err(Error::Config {
                    name,
                    detail: format!(
                        "rank {peer} has {theirs}, rank {rank} has {mine}: every rank must use the same value"
                    ),
                });
            }
        }
        let addrs: Vec<_> = peers.iter().map(|p| p.addr).collect();
        let transport = TcpTransport::connect(rank, listener, &addrs, &secret, tuning).map_err(boot)?;
        Ok(Communicator {
            rank,
            size: config.size,
            topology: Topology::compute(&peers, rank),
            backends: vec![Box::new(HostBackend::new(Box::new(transport), config.tuning.clone()))],
            tuning: config.tuning.clone(),
            abort: Some(AbortBoard { store, prefix }),
            seq: 0,
            broken: None,
            _store: store_server,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank among the processes on this host.
    pub fn local_rank(&self) -> usize {
        self.topology.local_rank
    }

    /// Number of processes on this host.
    pub fn local_size(&self) -> usize {
        self.topology.local_size
    }

    /// Index among the processes with this local rank.
    pub fn cross_rank(&self) -> usize {
        self.topology.cross_rank
    }

    /// Number of processes with this local rank.
    pub fn cross_size(&self) -> usize {
        self.topology.cross_size
    }

    /// Transport and algorithm tuning (the same on every rank).
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The full placement, including which ranks share this host.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Reduces `buf` over all ranks in place.
    pub fn allreduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        self.allreduce_bytes(bytemuck::cast_slice_mut(buf), T::DTYPE, op)
    }

    /// [`Communicator::allreduce`] on raw bytes of `dtype`.
    pub fn allreduce_bytes(&mut self, buf: &mut [u8], dtype: DType, op: ReduceOp) -> Result<()> {
        let count = self.elements("allreduce", buf.len(), dtype)?;
        let desc = self.desc(Kind::Allreduce, Some(dtype), Some(op), 0, count);
        self.run(Request { desc, dtype, work: Work::Allreduce { buf, op } })
    }

    /// Copies `buf` from `root` to every rank.
    pub fn broadcast<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<()> {
        self.broadcast_bytes(bytemuck::cast_slice_mut(buf), T::DTYPE, root)
    }

    /// [`Communicator::broadcast`] on raw bytes of `dtype`.
    pub fn broadcast_bytes(&mut self, buf: &mut [u8], dtype: DType, root: usize) -> Result<()> {
        let count = self.elements("broadcast", buf.len(), dtype)?;
        self.check_root("broadcast", root)?;
        let desc = self.desc(Kind::Broadcast, Some(dtype), None, root, count);
        self.run(Request { desc, dtype, work: Work::Broadcast { buf, root } })
    }

    /// Gathers equal-sized inputs: `output` (of `size × input.len()` elements) holds rank i's
    /// input at block i.
    pub fn allgather<T: Element>(&mut self, input: &[T], output: &mut [T]) -> Result<()> {
        if output.len() != input.len() * self.size {
            return Err(self.invalid(
                "allgather",
                format!("output has {} elements, expected {} ranks × {}", output.len(), self.size, input.len()),
            ));
        }
        let blocks = even_blocks(output.len(), self.size, size_of::<T>());
        let out: &mut [u8] = bytemuck::cast_slice_mut(output);
        out[blocks[self.rank].clone()].copy_from_slice(bytemuck::cast_slice(input));
        let desc = self.desc(Kind::Allgather, Some(T::DTYPE), None, 0, input.len());
        self.run(Request { desc, dtype: T::DTYPE, work: Work::Allgather { buf: out, blocks: &blocks } })
    }

    /// Gathers inputs of any length (Horovod's allgather with per-rank first dimensions):
    /// returns the concatenation in rank order and each rank's element count.
    pub fn allgatherv<T: Element>(&mut self, input: &[T]) -> Result<(Vec<T>, Vec<usize>)> {
        let counts = self.allgather_counts(input.len(), T::DTYPE)?;
        let mut output = vec![T::zeroed(); counts.iter().sum()];
        self.allgatherv_into(bytemuck::cast_slice(input), bytemuck::cast_slice_mut(&mut output), &counts, T::DTYPE)?;
        Ok((output, counts))
    }

    /// First half of an allgather of unequal inputs: every rank's element count.
    pub fn allgather_counts(&mut self, count: usize, dtype: DType) -> Result<Vec<usize>> {
        let mut raw = vec![0u64; self.size];
        raw[self.rank] = count as u64;
        let blocks = even_blocks(self.size, self.size, 8);
        let desc = self.desc(Kind::AllgatherCounts, Some(dtype), None, 0, 0);
        self.run(Request {
            desc,
            dtype: DType::U8,
            work: Work::Allgather { buf: bytemuck::cast_slice_mut(&mut raw), blocks: &blocks },
        })?;
        self.addressable("allgather", raw, dtype)
    }

    /// Second half: gathers `input` into `output`, laid out by the `counts` of
    /// [`Communicator::allgather_counts`].
    pub fn allgatherv_into(&mut self, input: &[u8], output: &mut [u8], counts: &[usize], dtype: DType) -> Result<()> {
        let blocks = blocks_from_counts(counts, dtype.size());
        let fits = counts.len() == self.size
            && blocks[self.rank].len() == input.len()
            && blocks.last().map_or(0, |b| b.end) == output.len();
        if !fits {
            return Err(self.invalid(
                "allgather",
                format!(
                    "input of {} bytes and output of {} bytes do not fit counts {counts:?}",
                    input.len(),
                    output.len()
                ),
            ));
        }
        output[blocks[self.rank].clone()].copy_from_slice(input);
        let desc = self.desc(Kind::Allgather, Some(dtype), None, 0, 0);
        self.run(Request { desc, dtype, work: Work::Allgather { buf: output, blocks: &blocks } })
    }

    /// Reduces `input` over all ranks and returns this rank's share: the input split as evenly
    /// as possible, the first ranks one element more (Horovod's split).
    pub fn reducescatter<T: Element>(&mut self, input: &[T], op: ReduceOp) -> Result<Vec<T>> {
        let mut scratch = input.to_vec();
        let blocks = even_blocks(input.len(), self.size, size_of::<T>());
        self.reducescatter_bytes(bytemuck::cast_slice_mut(&mut scratch), &blocks, T::DTYPE, op)?;
        let mine = blocks[self.rank].start / size_of::<T>()..blocks[self.rank].end / size_of::<T>();
        Ok(scratch[mine].to_vec())
    }

    /// Reduce-scatter in place over byte `blocks` of `buf`; afterwards this rank's block holds
    /// its share and the rest of `buf` is scratch.
    pub fn reducescatter_bytes(
        &mut self,
        buf: &mut [u8],
        blocks: &[Range<usize>],
        dtype: DType,
        op: ReduceOp,
    ) -> Result<()> {
        let count = self.elements("reducescatter", buf.len(), dtype)?;
        let contiguous = blocks.len() == self.size
            && blocks.first().is_some_and(|b| b.start == 0)
            && blocks.windows(2).all(|w| w[0].end == w[1].start)
            && blocks.last().is_some_and(|b| b.end == buf.len())
            && blocks.iter().all(|b| b.start % dtype.size() == 0 && b.end % dtype.size() == 0);
        if !contiguous {
            return Err(self.invalid(
                "reducescatter",
                format!("blocks {blocks:?} do not tile {} bytes of {dtype} in {} parts", buf.len(), self.size),
            ));
        }
        let desc = self.desc(Kind::Reducescatter, Some(dtype), Some(op), 0, count);
        self.run(Request { desc, dtype, work: Work::Reducescatter { buf, blocks, op } })
    }

    /// Sends `send_counts[i]` consecutive elements of `input` to rank i; returns what every
    /// rank sent to this one, in rank order, and how many elements came from each.
    pub fn alltoall<T: Element>(&mut self, input: &[T], send_counts: &[usize]) -> Result<(Vec<T>, Vec<usize>)> {
        let recv_counts = self.alltoall_counts(input.len(), send_counts, T::DTYPE)?;
        let mut output = vec![T::zeroed(); recv_counts.iter().sum()];
        self.alltoall_into(
            bytemuck::cast_slice(input),
            send_counts,
            bytemuck::cast_slice_mut(&mut output),
            &recv_counts,
            T::DTYPE,
        )?;
        Ok((output, recv_counts))
    }

    /// First half of an all-to-all: tells every rank how much it gets from this one and
    /// returns how much this one gets from each.
    pub fn alltoall_counts(&mut self, input_len: usize, send_counts: &[usize], dtype: DType) -> Result<Vec<usize>> {
        if send_counts.len() != self.size || send_counts.iter().sum::<usize>() != input_len {
            return Err(self.invalid(
                "alltoall",
                format!(
                    "splits {send_counts:?} must have {} entries summing to the input's {input_len} elements",
                    self.size
                ),
            ));
        }
        let send: Vec<u64> = send_counts.iter().map(|&c| c as u64).collect();
        let mut recv = vec![0u64; self.size];
        let blocks = even_blocks(self.size, self.size, 8);
        let desc = self.desc(Kind::AlltoallCounts, Some(dtype), None, 0, 0);
        let work = Work::Alltoall {
            send: bytemuck::cast_slice(&send),
            send_blocks: &blocks,
            recv: bytemuck::cast_slice_mut(&mut recv),
            recv_blocks: &blocks,
        };
        self.run(Request { desc, dtype: DType::U8, work })?;
        self.addressable("alltoall", recv, dtype)
    }

    /// Element counts announced by the ranks, checked to fit in memory together.
    fn addressable(&self, op: &'static str, counts: Vec<u64>, dtype: DType) -> Result<Vec<usize>> {
        let mut total: u64 = 0;
        for (peer, &c) in counts.iter().enumerate() {
            total = match c.checked_mul(dtype.size() as u64).and_then(|b| total.checked_add(b)) {
                Some(t) if t <= isize::MAX as u64 => t,
                _ => {
                    return Err(
                        self.invalid(op, format!("rank {peer} announced {c} elements: more than fits in memory"))
                    );
                }
            };
        }
        Ok(counts.into_iter().map(|c| c as usize).collect())
    }

    /// Second half: the data exchange, laid out by both sides' counts.
    pub fn alltoall_into(
        &mut self,
        input: &[u8],
        send_counts: &[usize],
        output: &mut [u8],
        recv_counts: &[usize],
        dtype: DType,
    ) -> Result<()> {
        let send_blocks = blocks_from_counts(send_counts, dtype.size());
        let recv_blocks = blocks_from_counts(recv_counts, dtype.size());
        let fits = send_blocks.len() == self.size
            && recv_blocks.len() == self.size
            && send_blocks.last().map_or(0, |b| b.end) == input.len()
            && recv_blocks.last().map_or(0, |b| b.end) == output.len();
        if !fits {
            return Err(self.invalid(
                "alltoall",
                format!(
                    "buffers of {} and {} bytes do not fit splits {send_counts:?} / {recv_counts:?}",
                    input.len(),
                    output.len()
                ),
            ));
        }
        if send_counts[self.rank] != recv_counts[self.rank] {
            let (sent, expected) = (send_counts[self.rank], recv_counts[self.rank]);
            return Err(
                self.invalid("alltoall", format!("this rank sends itself {sent} elements but expects {expected}"))
            );
        }
        let desc = self.desc(Kind::Alltoall, Some(dtype), None, 0, 0);
        let work = Work::Alltoall { send: input, send_blocks: &send_blocks, recv: output, recv_blocks: &recv_blocks };
        self.run(Request { desc, dtype, work })
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> Result<()> {
        let desc = self.desc(Kind::Barrier, None, None, 0, 0);
        self.run(Request { desc, dtype: DType::U8, work: Work::Barrier })
    }

    /// Sleeps until a peer sends this rank something, `wake` rings, or `timeout` passes;
    /// returns whether a peer has something (see [`Transport::wait_incoming`]). For the engine,
    /// which sleeps here between rounds.
    pub fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool> {
        if let Some(reason) = &self.broken {
            return Err(Error::Broken { rank: self.rank, reason: reason.clone() });
        }
        let host = self.backends.last_mut().unwrap_or_else(|| unreachable!("the host backend is always present"));
        host.wait_incoming(wake, timeout).map_err(|cause| {
            let e = Error::Collective { rank: self.rank, op: "waiting for peers".into(), cause };
            self.broken = Some(e.to_string());
            e
        })
    }

    fn desc(&mut self, kind: Kind, dtype: Option<DType>, op: Option<ReduceOp>, root: usize, count: usize) -> OpDesc {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        OpDesc { seq, kind, dtype, op, root: root as u32, count: count as u64 }
    }

    fn invalid(&self, op: &'static str, detail: String) -> Error {
        Error::InvalidArgument { rank: self.rank, op, detail }
    }

    fn elements(&self, op: &'static str, bytes: usize, dtype: DType) -> Result<usize> {
        if !bytes.is_multiple_of(dtype.size()) {
            return Err(self.invalid(op, format!("{bytes} bytes is not a whole number of {dtype} elements")));
        }
        Ok(bytes / dtype.size())
    }

    fn check_root(&self, op: &'static str, root: usize) -> Result<()> {
        if root >= self.size {
            return Err(self.invalid(op, format!("root {root} is not a rank of this world of {}", self.size)));
        }
        Ok(())
    }

    fn run(&mut self, req: Request<'_>) -> Result<()> {
        if let Some(reason) = &self.broken {
            return Err(Error::Broken { rank: self.rank, reason: reason.clone() });
        }
        let desc = req.desc;
        let Some(backend) = self.backends.iter_mut().find(|b| b.accepts(&req)) else {
            return Err(self.invalid(desc.kind.name(), "no backend accepts this request".into()));
        };
        match backend.run(req) {
            Ok(()) => Ok(()),
            Err(cause) => Err(self.fail(desc, cause)),
        }
    }

    /// Records the failure, tears down the links, and says who saw the failure first.
    fn fail(&mut self, desc: OpDesc, cause: transport::Error) -> Error {
        let op = desc.to_string();
        let local = match cause {
            transport::Error::TagMismatch { peer, got, .. } => Error::Mismatch {
                rank: self.rank,
                op: op.clone(),
                peer,
                theirs: OpDesc::from_tag(got)
                    .map_or_else(|| format!("an unknown operation (tag {got:#x})"), |d| d.to_string()),
            },
            transport::Error::LengthMismatch { peer, expected, got } => Error::Mismatch {
                rank: self.rank,
                op: op.clone(),
                peer,
                theirs: format!("the same operation with {got} bytes where this rank has {expected}"),
            },
            cause => Error::Collective { rank: self.rank, op: op.clone(), cause },
        };
        // The record holds what went wrong, not which op (every rank is in the same one).
        let what = match &local {
            Error::Collective { cause, .. } => cause.to_string(),
            other => other.to_string(),
        };
        let root = self.abort.as_mut().and_then(|b| b.report(self.rank, &what));
        for b in &mut self.backends {
            b.close();
        }
        let error = match root {
            Some((by, reason)) if by != self.rank => Error::Aborted { rank: self.rank, op, by, reason },
            _ => local,
        };
        self.broken = Some(error.to_string());
        error
    }
}

/// The job-wide record of the first failure, kept in the store.
struct AbortBoard {
    store: StoreClient,
    prefix: String,
}

impl AbortBoard {
    /// Posts `what` if no rank has posted before, then returns the first post (rank, text).
    fn report(&mut self, rank: usize, what: &str) -> Option<(usize, String)> {
        let count = format!("{}/abort/count", self.prefix);
        let reason = format!("{}/abort/reason", self.prefix);
        if let Ok(1) = self.store.add(&count, 1) {
            let record = postcard::to_stdvec(&(rank as u64, what)).ok()?;
            let _ = self.store.set(&reason, &record);
        }
        let found = self.store.wait(std::slice::from_ref(&reason), ABORT_WAIT).ok()?.ok()?;
        let (by, text): (u64, String) = postcard::from_bytes(found.first()?).ok()?;
        Some((by as usize, text))
    }
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}
