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
use std::time::Duration;

use crate::algorithms::{blocks_from_counts, even_blocks};
use crate::backend::{self, Backend, Links, Request, Work};
use crate::bootstrap::{Secret, Topology};
use crate::collective::{Call, Collective, Phase};
use crate::config::{AllreduceAlgorithm, Config, Tuning};
use crate::dtype::{DType, Element, ReduceOp};
use crate::error::{Error, Fault, Operation, Result, Theirs};
use crate::failure::FailureNote;
use crate::memory::{Memory, MemoryRef};
use crate::os::Doorbell;
use crate::transport::{self, Transport};
use crate::world::World;

/// A rank's handle on a job.
pub struct Communicator {
    // Drop order matters: links first (peers see closed links), the world (and a store it
    // serves) last.
    links: Links,
    backends: Vec<Box<dyn Backend>>,
    world: World,
    seq: u32,
    broken: Option<Error>,
    /// The algorithm of the last collective that ran.
    ran: &'static str,
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
    ///
    /// ```
    /// use ferrovod::{Communicator, ReduceOp};
    /// let mut comm = Communicator::from_env()?; // under `ferrovod-run -np N`: rank r of N
    /// // Typed collectives take slices of any `Element` (f32, f64, f16, bf16, i8 ... i64, u8, bool).
    /// let mut grads = [0.5f32, 1.5];
    /// comm.allreduce(&mut grads, ReduceOp::Sum)?;
    /// let n = comm.size() as f32;
    /// assert_eq!(grads, [0.5 * n, 1.5 * n]);
    /// let (rows, counts) = comm.allgatherv(&[comm.rank() as i64; 2])?;
    /// assert_eq!((rows.len(), counts.len()), (2 * comm.size(), comm.size()));
    /// # Ok::<(), ferrovod::Error>(())
    /// ```
    pub fn from_env() -> Result<Communicator> {
        Communicator::join(Config::from_env()?)
    }

    /// A builder starting from the defaults (rank 0 of 1). A job of N ranks sets `.rank(r)`,
    /// `.size(N)`, `.rendezvous("host:port")` (rank 0 serves the store there) and `.secret(..)`
    /// on every rank.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ferrovod::Communicator;
    /// use ferrovod::config::Tuning;
    /// let tuning = Tuning { timeout: Duration::from_secs(10), ..Tuning::default() };
    /// let mut comm = Communicator::builder().tuning(tuning).build()?;
    /// assert_eq!((comm.rank(), comm.size()), (0, 1));
    /// comm.barrier()?;
    /// # Ok::<(), ferrovod::Error>(())
    /// ```
    pub fn builder() -> Builder {
        // The defaults parse: the lookup finds nothing.
        let config = Config::from_lookup(|_| None).unwrap_or_else(|e| unreachable!("defaults do not parse: {e}"));
        Builder { config }
    }

    /// A communicator over an existing transport, all ranks on one host, no store.
    pub fn from_transport(transport: Box<dyn Transport>, tuning: Tuning) -> Communicator {
        let (world, links) = World::local(transport, tuning);
        Communicator::over(world, links)
    }

    /// Joins the job `config` describes.
    pub fn from_config(config: Config) -> Result<Communicator> {
        Communicator::join(config)
    }

    /// Joins process set `id` of the job `config` describes (see [`World::join_set`]): a
    /// communicator among `members` only, whose ranks are positions in `members`.
    pub fn join_set(config: &Config, id: u32, members: &[usize]) -> Result<Communicator> {
        let (world, links) = World::join_set(config, id, members)?;
        Ok(Communicator::over(world, links))
    }

    fn join(config: Config) -> Result<Communicator> {
        let (world, links) = World::join(&config)?;
        Ok(Communicator::over(world, links))
    }

    fn over(world: World, links: Links) -> Communicator {
        Communicator { backends: backend::registry(&world), links, world, seq: 0, broken: None, ran: "" }
    }

    /// Puts `backend` first among the backends asked to run each collective: a device path
    /// of the caller's making (the staged path over a [`DeviceCopies`] of its own, say).
    ///
    /// [`DeviceCopies`]: crate::backend::staged::device::DeviceCopies
    pub fn register_backend(&mut self, backend: Box<dyn backend::Backend>) {
        self.backends.insert(0, backend);
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.world.rank()
    }

    /// The transport that carries host memory ("shm", "tcp", or "mem" in one process).
    pub fn transport(&self) -> &'static str {
        self.links.host.name()
    }

    /// Whether the ranks share memory that collectives read in place (a [`transport::Stage`]):
    /// then a collective copies its input in once, whatever its size, and callers need not
    /// pack small buffers together to amortise messages.
    pub fn staged(&mut self) -> bool {
        self.links.host.stage().is_some()
    }

    /// The algorithm that ran the last collective that succeeded (`"ring"`, `"stage-split"`,
    /// ...; empty before the first), for reports and tests.
    pub fn last_algorithm(&self) -> &'static str {
        self.ran
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.world.size()
    }

    /// Rank among the processes on this host.
    pub fn local_rank(&self) -> usize {
        self.world.topology().local_rank
    }

    /// Number of processes on this host.
    pub fn local_size(&self) -> usize {
        self.world.topology().local_size
    }

    /// Index among the processes with this local rank.
    pub fn cross_rank(&self) -> usize {
        self.world.topology().cross_rank
    }

    /// Number of processes with this local rank.
    pub fn cross_size(&self) -> usize {
        self.world.topology().cross_size
    }

    /// Transport and algorithm tuning (the same on every rank).
    pub fn tuning(&self) -> &Tuning {
        self.world.tuning()
    }

    /// The full placement, including which ranks share this host.
    pub fn topology(&self) -> &Topology {
        self.world.topology()
    }

    /// Reduces `buf` over all ranks in place.
    pub fn allreduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        self.allreduce_bytes(bytemuck::cast_slice_mut(buf), T::DTYPE, op)
    }

    /// [`Communicator::allreduce`] on raw bytes of `dtype`.
    /// The memory may be host bytes (`&mut [u8]`) or device memory, for a backend that takes it.
    pub fn allreduce_bytes<'a>(&mut self, buf: impl Into<Memory<'a>>, dtype: DType, op: ReduceOp) -> Result<()> {
        let buf = buf.into();
        let count = self.elements(Collective::Allreduce(op), buf.len(), dtype)?;
        let call = self.call(Collective::Allreduce(op), Phase::Data, dtype, count);
        self.run(Request { call, work: Work::InPlace { buf } })
    }

    /// Copies `buf` from `root` to every rank.
    pub fn broadcast<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<()> {
        self.broadcast_bytes(bytemuck::cast_slice_mut(buf), T::DTYPE, root)
    }

    /// [`Communicator::broadcast`] on raw bytes of `dtype`.
    /// The memory may be host bytes (`&mut [u8]`) or device memory, for a backend that takes it.
    pub fn broadcast_bytes<'a>(&mut self, buf: impl Into<Memory<'a>>, dtype: DType, root: usize) -> Result<()> {
        let buf = buf.into();
        let collective = Collective::Broadcast(root as u32);
        let count = self.elements(collective, buf.len(), dtype)?;
        self.check_root(collective, root)?;
        let call = self.call(collective, Phase::Data, dtype, count);
        self.run(Request { call, work: Work::InPlace { buf } })
    }

    /// An allgather of `len` bytes a rank, read where the bytes lie: `fill` writes this rank's
    /// bytes straight into its region of the host's shared stage, and `read` sees every rank's
    /// (index: rank) in the peers' own regions, without a copy. `None` (and no call made) when
    /// the ranks share no stage or `len` is more than a region: use [`Communicator::allgather`].
    /// Every rank must take the same path, as with any collective (the stage is the job's).
    pub(crate) fn gather_on_stage<R>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        read: impl FnOnce(&[&[u8]]) -> R,
    ) -> Option<Result<R>> {
        if let Err(e) = self.usable() {
            return Some(Err(e));
        }
        if self.links.host.stage().is_none_or(|s| s.region() < len) {
            return None;
        }
        let call = self.call(Collective::Allgather, Phase::Data, DType::U8, len);
        let stage = self.links.host.stage()?;
        let result = (|| {
            fill(&mut stage.next()?[..len]);
            let all = stage.publish(call.tag(), len, 0)?;
            Ok(read(&all))
        })();
        Some(match result {
            Ok(r) => {
                self.ran = "stage";
                Ok(r)
            }
            Err(cause) => Err(self.fail(call, backend::Error::Transport(cause))),
        })
    }

    /// An allreduce of a piece whose bytes lie elsewhere, reduced on the host's shared stage
    /// with the region as the fusion buffer: `packed` writes this rank's `len` bytes straight
    /// into its region and gets the sums straight back (see
    /// [`crate::algorithms::allreduce_stage_slots_packed`] and
    /// [`crate::algorithms::allreduce_stage_split_packed`]; the same bits as
    /// [`Communicator::allreduce_bytes`] of the packed piece). `None` (and no call made) unless
    /// the host backend would run that allreduce on the stage: the ranks share a stage, `len`
    /// fits a region, the host backend takes host memory here, the algorithm for `len` bytes
    /// is the slots or the split, and `op` is not an average (which the backend divides). Every
    /// rank decides alike, from what is the job's: the stage, the tuning and `len`.
    #[doc(hidden)] // for the engine, and for the tests that hold it to the contiguous allreduce
    pub fn allreduce_on_stage(
        &mut self,
        len: usize,
        dtype: DType,
        op: ReduceOp,
        packed: &mut dyn crate::algorithms::Packed,
    ) -> Option<Result<()>> {
        if op == ReduceOp::Average || len == 0 || !len.is_multiple_of(dtype.size()) {
            return None;
        }
        let algorithm = crate::backend::host::stage_allreduce(self.world.tuning(), len, self.size())?;
        // A stage of the job's host links means one host: no hierarchical group to go through.
        if self.links.local.is_some() || self.links.host.stage().is_none_or(|s| s.region() < len) {
            return None;
        }
        let (collective, count) = (Collective::Allreduce(op), len / dtype.size());
        // Asked without a call made: a call takes a sequence number, which every rank must spend alike.
        let probe = Call { seq: self.seq, collective, phase: Phase::Data, dtype, count: count as u64 };
        let probe = Request { call: probe, work: Work::InPlace { buf: Memory::Host(&mut []) } };
        if self.backends.iter().find(|b| b.accepts(&probe)).is_none_or(|b| b.name() != "host") {
            return None;
        }
        if let Err(e) = self.usable() {
            return Some(Err(e));
        }
        let call = self.call(collective, Phase::Data, dtype, count);
        let p = crate::algorithms::Params {
            tag: call.tag(),
            dtype,
            segment: self.world.tuning().segment,
            chunk: self.world.tuning().ring_chunk,
        };
        let rank = (self.links.host.rank(), self.links.host.size());
        let stage = self.links.host.stage().expect("a stage, checked above (a call is made: no way back)");
        let result = match algorithm {
            AllreduceAlgorithm::StageSlots => {
                crate::algorithms::allreduce_stage_slots_packed(stage, &p, len, op, packed)
            }
            _ => crate::algorithms::allreduce_stage_split_packed(stage, &p, rank, len, op, packed),
        };
        Some(match result {
            Ok(()) => {
                self.ran = algorithm.name();
                Ok(())
            }
            Err(cause) => Err(self.fail(call, backend::Error::Transport(cause))),
        })
    }

    /// Gathers equal-sized inputs: `output` (of `size × input.len()` elements) holds rank i's
    /// input at block i.
    pub fn allgather<T: Element>(&mut self, input: &[T], output: &mut [T]) -> Result<()> {
        if output.len() != input.len() * self.size() {
            return Err(self.invalid(
                Collective::Allgather,
                format!("output has {} elements, expected {} ranks × {}", output.len(), self.size(), input.len()),
            ));
        }
        let blocks = even_blocks(output.len(), self.size(), size_of::<T>());
        let out: &mut [u8] = bytemuck::cast_slice_mut(output);
        out[blocks[self.rank()].clone()].copy_from_slice(bytemuck::cast_slice(input));
        let call = self.call(Collective::Allgather, Phase::Data, T::DTYPE, input.len());
        self.run(Request { call, work: Work::Blocks { buf: Memory::Host(out), blocks: &blocks } })
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
        let mut raw = vec![0u64; self.size()];
        raw[self.rank()] = count as u64;
        let blocks = even_blocks(self.size(), self.size(), 8);
        let call = self.call(Collective::Allgather, Phase::Counts, dtype, 0);
        let work = Work::Blocks { buf: Memory::Host(bytemuck::cast_slice_mut(&mut raw)), blocks: &blocks };
        self.run(Request { call, work })?;
        self.addressable(Collective::Allgather, raw, dtype)
    }

    /// Second half: gathers `input` into `output`, laid out by the `counts` of
    /// [`Communicator::allgather_counts`].
    pub fn allgatherv_into(&mut self, input: &[u8], output: &mut [u8], counts: &[usize], dtype: DType) -> Result<()> {
        let blocks = blocks_from_counts(counts, dtype.size());
        if blocks.get(self.rank()).is_none_or(|b| b.len() != input.len() || b.end > output.len()) {
            return Err(self.invalid(
                Collective::Allgather,
                format!("input of {} bytes does not fit counts {counts:?}", input.len()),
            ));
        }
        output[blocks[self.rank()].clone()].copy_from_slice(input);
        self.allgather_in_place(output, counts, dtype)
    }

    /// The allgather itself, on host or device memory: `buf` is laid out by `counts` and this
    /// rank's block already holds its input; afterwards every block holds its rank's.
    pub fn allgather_in_place<'a>(&mut self, buf: impl Into<Memory<'a>>, counts: &[usize], dtype: DType) -> Result<()> {
        let buf = buf.into();
        let blocks = blocks_from_counts(counts, dtype.size());
        if counts.len() != self.size() || blocks.last().map_or(0, |b| b.end) != buf.len() {
            return Err(self.invalid(
                Collective::Allgather,
                format!("an output of {} bytes does not fit counts {counts:?}", buf.len()),
            ));
        }
        let call = self.call(Collective::Allgather, Phase::Data, dtype, 0);
        self.run(Request { call, work: Work::Blocks { buf, blocks: &blocks } })
    }

    /// Reduces `input` over all ranks and returns this rank's share: the input split as evenly
    /// as possible, the first ranks one element more (Horovod's split).
    pub fn reducescatter<T: Element>(&mut self, input: &[T], op: ReduceOp) -> Result<Vec<T>> {
        let mut scratch = input.to_vec();
        let blocks = even_blocks(input.len(), self.size(), size_of::<T>());
        self.reducescatter_bytes(bytemuck::cast_slice_mut(&mut scratch), &blocks, T::DTYPE, op)?;
        let mine = blocks[self.rank()].start / size_of::<T>()..blocks[self.rank()].end / size_of::<T>();
        Ok(scratch[mine].to_vec())
    }

    /// Reduce-scatter in place over byte `blocks` of `buf` (host or device memory); afterwards
    /// this rank's block holds its share and the rest of `buf` is scratch.
    pub fn reducescatter_bytes<'a>(
        &mut self,
        buf: impl Into<Memory<'a>>,
        blocks: &[Range<usize>],
        dtype: DType,
        op: ReduceOp,
    ) -> Result<()> {
        let buf = buf.into();
        let count = self.elements(Collective::Reducescatter(op), buf.len(), dtype)?;
        let contiguous = blocks.len() == self.size()
            && blocks.first().is_some_and(|b| b.start == 0)
            && blocks.windows(2).all(|w| w[0].end == w[1].start)
            && blocks.last().is_some_and(|b| b.end == buf.len())
            && blocks.iter().all(|b| b.start % dtype.size() == 0 && b.end % dtype.size() == 0);
        if !contiguous {
            return Err(self.invalid(
                Collective::Reducescatter(op),
                format!("blocks {blocks:?} do not tile {} bytes of {dtype} in {} parts", buf.len(), self.size()),
            ));
        }
        let call = self.call(Collective::Reducescatter(op), Phase::Data, dtype, count);
        self.run(Request { call, work: Work::Blocks { buf, blocks } })
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
        if send_counts.len() != self.size() || send_counts.iter().sum::<usize>() != input_len {
            return Err(self.invalid(
                Collective::Alltoall,
                format!(
                    "splits {send_counts:?} must have {} entries summing to the input's {input_len} elements",
                    self.size()
                ),
            ));
        }
        let send: Vec<u64> = send_counts.iter().map(|&c| c as u64).collect();
        let mut recv = vec![0u64; self.size()];
        let blocks = even_blocks(self.size(), self.size(), 8);
        let call = self.call(Collective::Alltoall, Phase::Counts, dtype, 0);
        let work = Work::Exchange {
            send: MemoryRef::Host(bytemuck::cast_slice(&send)),
            send_blocks: &blocks,
            recv: Memory::Host(bytemuck::cast_slice_mut(&mut recv)),
            recv_blocks: &blocks,
        };
        self.run(Request { call, work })?;
        self.addressable(Collective::Alltoall, recv, dtype)
    }

    /// Element counts announced by the ranks, checked to fit in memory together.
    fn addressable(&self, op: Collective, counts: Vec<u64>, dtype: DType) -> Result<Vec<usize>> {
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

    /// Second half: the data exchange, laid out by both sides' counts (host or device memory).
    pub fn alltoall_into<'a>(
        &mut self,
        input: impl Into<MemoryRef<'a>>,
        send_counts: &[usize],
        output: impl Into<Memory<'a>>,
        recv_counts: &[usize],
        dtype: DType,
    ) -> Result<()> {
        let (input, output) = (input.into(), output.into());
        let send_blocks = blocks_from_counts(send_counts, dtype.size());
        let recv_blocks = blocks_from_counts(recv_counts, dtype.size());
        let fits = send_blocks.len() == self.size()
            && recv_blocks.len() == self.size()
            && send_blocks.last().map_or(0, |b| b.end) == input.len()
            && recv_blocks.last().map_or(0, |b| b.end) == output.len();
        if !fits {
            return Err(self.invalid(
                Collective::Alltoall,
                format!(
                    "buffers of {} and {} bytes do not fit splits {send_counts:?} / {recv_counts:?}",
                    input.len(),
                    output.len()
                ),
            ));
        }
        if send_counts[self.rank()] != recv_counts[self.rank()] {
            let (sent, expected) = (send_counts[self.rank()], recv_counts[self.rank()]);
            return Err(self.invalid(
                Collective::Alltoall,
                format!("this rank sends itself {sent} elements but expects {expected}"),
            ));
        }
        let call = self.call(Collective::Alltoall, Phase::Data, dtype, 0);
        let work = Work::Exchange { send: input, send_blocks: &send_blocks, recv: output, recv_blocks: &recv_blocks };
        self.run(Request { call, work })
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> Result<()> {
        let call = self.call(Collective::Barrier, Phase::Data, DType::U8, 0);
        self.run(Request { call, work: Work::InPlace { buf: Memory::Host(&mut []) } })
    }

    /// Sleeps until a peer sends this rank something, `wake` rings, or `timeout` passes;
    /// returns whether a peer has something (see [`Transport::wait_incoming`]). For the engine,
    /// which sleeps here between rounds.
    pub fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool> {
        self.usable()?;
        match self.links.host.wait_incoming(wake, timeout) {
            Ok(news) => Ok(news),
            Err(cause) => {
                let local = Error::Collective { rank: self.rank(), op: Operation::Waiting, cause };
                Err(self.settle(Operation::Waiting, local))
            }
        }
    }

    fn call(&mut self, collective: Collective, phase: Phase, dtype: DType, count: usize) -> Call {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        Call { seq, collective, phase, dtype, count: count as u64 }
    }

    fn invalid(&self, op: impl Into<Operation>, detail: String) -> Error {
        Error::InvalidArgument { rank: self.rank(), op: op.into(), detail }
    }

    fn elements(&self, op: Collective, bytes: usize, dtype: DType) -> Result<usize> {
        if let Some(why) = op.refuses(dtype) {
            return Err(self.invalid(op, why.to_string()));
        }
        if !bytes.is_multiple_of(dtype.size()) {
            return Err(self.invalid(op, format!("{bytes} bytes is not a whole number of {dtype} elements")));
        }
        Ok(bytes / dtype.size())
    }

    fn check_root(&self, op: Collective, root: usize) -> Result<()> {
        if root >= self.size() {
            return Err(self.invalid(op, format!("root {root} is not a rank of this world of {}", self.size())));
        }
        Ok(())
    }

    fn usable(&self) -> Result<()> {
        match &self.broken {
            Some(earlier) => Err(Error::Broken { rank: self.rank(), earlier: Box::new(earlier.clone()) }),
            None => Ok(()),
        }
    }

    fn run(&mut self, req: Request<'_>) -> Result<()> {
        self.usable()?;
        let call = req.call;
        let Some(backend) = self.backends.iter_mut().find(|b| b.accepts(&req)) else {
            let memory = if req.work.is_host() { "host" } else { "device" };
            return Err(self.invalid(call.collective, format!("no backend takes {memory} memory")));
        };
        match backend.run(req, &mut self.links) {
            Ok(ran) => {
                self.ran = ran;
                Ok(())
            }
            Err(cause) => Err(self.fail(call, cause)),
        }
    }

    /// Records the failure, tears down the links, and says who saw the failure first.
    fn fail(&mut self, call: Call, mut cause: backend::Error) -> Error {
        let rank = self.rank();
        let op = Operation::Call(call);
        // A silent peer may be waiting on another in turn: blame the rank at the end of the
        // chain. The links gave up early for this, so the failure still comes at the timeout.
        if let backend::Error::Transport(transport::Error::Timeout { peers, waited, via }) = &mut cause {
            let silent = self.world.trace_silent(peers);
            if silent != *peers {
                *via = std::mem::replace(peers, silent);
            }
            *waited = self.world.tuning().timeout;
        }
        let local = match cause {
            backend::Error::Transport(transport::Error::TagMismatch { peer, got, .. }) => Error::Mismatch {
                rank,
                op: op.clone(),
                peer,
                theirs: Call::from_tag(got).map_or(Theirs::Unknown(got), Theirs::Call),
            },
            backend::Error::Transport(transport::Error::LengthMismatch { peer, expected, got }) => {
                Error::Mismatch { rank, op: op.clone(), peer, theirs: Theirs::Bytes { theirs: got, ours: expected } }
            }
            backend::Error::Transport(cause) => Error::Collective { rank, op: op.clone(), cause },
            backend::Error::Invalid { backend, detail } | backend::Error::Device { backend, detail } => {
                Error::Backend { rank, op: op.clone(), backend, detail }
            }
        };
        self.settle(op, local)
    }

    /// The ranks other than this one to blame when no round completes and rank 0's verdict did
    /// not come (the engine's stall backstop): the dead or stopped ones, else those not
    /// waiting (see `World::trace_silent`).
    pub(crate) fn silent_others(&mut self) -> Vec<usize> {
        let others: Vec<usize> = (0..self.size()).filter(|&r| r != self.rank()).collect();
        self.world.trace_silent(&others)
    }

    /// The ranks other than this one that are dead or stopped (they do not answer a roll call
    /// of the store's within the blame window).
    pub(crate) fn gone_others(&mut self) -> Vec<usize> {
        self.world.gone_others()
    }

    /// Whether a failure recorded here reaches every rank without the links (through the
    /// store and each rank's watcher).
    pub(crate) fn records_failures(&self) -> bool {
        self.world.records_failures()
    }

    /// The engine's stall watch: records the stall `detail`, blaming `culprits`, as the job's
    /// failure (every rank's watcher then stops its waits, and fails with it as a stall) and
    /// tears down the links.
    pub(crate) fn fail_stalled(&mut self, detail: String, culprits: Vec<usize>) -> Error {
        let note = FailureNote {
            by: self.rank() as u64,
            fault: Fault::Stall,
            culprits: culprits.iter().map(|&r| r as u64).collect(),
            text: detail.clone(),
        };
        let local = Error::Stalled { rank: self.rank(), detail, culprits };
        self.record(Operation::Waiting, local, note)
    }

    /// Records `local` (what this rank saw) as the job's first failure unless a rank did
    /// first, tears down the links, and returns the error to raise: `local`, or the first
    /// failure as another rank saw it.
    fn settle(&mut self, op: Operation, local: Error) -> Error {
        let rank = self.rank();
        // The record holds what went wrong, not which op (every rank is in the same one).
        let note = FailureNote {
            by: rank as u64,
            fault: local.fault().unwrap_or(Fault::Other),
            culprits: local.culprits().into_iter().map(|r| r as u64).collect(),
            text: match &local {
                Error::Collective { cause, .. } => cause.to_string(),
                other => other.to_string(),
            },
        };
        self.record(op, local, note)
    }

    fn record(&mut self, op: Operation, local: Error, note: FailureNote) -> Error {
        let rank = self.rank();
        let first = self.world.report_failure(&note);
        self.links.close();
        let error = match first {
            // Another rank's stall verdict: this rank stalled too, as it would with the verdict
            // from a round.
            Some(f) if f.by != rank as u64 && f.fault == Fault::Stall => Error::Stalled {
                rank,
                detail: format!("rank {} reported: {}", f.by, f.text),
                culprits: f.culprits.into_iter().map(|r| r as usize).collect(),
            },
            Some(f) if f.by != rank as u64 => Error::Aborted {
                rank,
                op,
                by: f.by as usize,
                fault: f.fault,
                culprits: f.culprits.into_iter().map(|r| r as usize).collect(),
                reason: f.text,
            },
            _ => local,
        };
        self.broken = Some(error.clone());
        error
    }
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .field("topology", self.topology())
            .finish_non_exhaustive()
    }
}
