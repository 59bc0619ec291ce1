//! Collective algorithms over any [`Transport`](crate::transport::Transport), on byte buffers
//! with a dtype. One file per algorithm; each opens with its phases and its cost in the
//! alpha-beta model (α: per-message latency, β: per-byte transfer time, γ: per-byte reduction
//! time, n ranks, m bytes).
//!
//! Algorithms know nothing of sockets. Those named `_stage` run over memory that every rank
//! maps ([`Stage`](crate::transport::Stage)) instead of messages. The host backend picks one by
//! message size and by what the transport offers.

mod allgather_ring;
mod allgather_stage;
mod allreduce_halving_doubling;
pub mod allreduce_hierarchical;
mod allreduce_recursive_doubling;
mod allreduce_ring;
mod allreduce_stage_slots;
mod allreduce_stage_split;
mod alltoall_pairwise;
mod alltoall_stage;
mod barrier_dissemination;
mod barrier_stage;
mod broadcast_binomial;
mod broadcast_chain;
mod broadcast_stage;
mod packed;
mod reducescatter_ring;
mod reducescatter_stage;
mod schedule;

pub use allgather_ring::allgather_ring;
pub use allgather_stage::allgather_stage;
pub use allreduce_halving_doubling::allreduce_halving_doubling;
pub use allreduce_hierarchical::allreduce_hierarchical;
pub use allreduce_recursive_doubling::allreduce_recursive_doubling;
pub use allreduce_ring::allreduce_ring;
pub use allreduce_stage_slots::{allreduce_stage_slots, allreduce_stage_slots_packed};
pub use allreduce_stage_split::{allreduce_stage_split, allreduce_stage_split_packed};
pub use alltoall_pairwise::alltoall_pairwise;
pub use alltoall_stage::alltoall_stage;
pub(crate) use alltoall_stage::alltoall_stage_fits;
pub use barrier_dissemination::barrier_dissemination;
pub use barrier_stage::barrier_stage;
pub use broadcast_binomial::broadcast_binomial;
pub use broadcast_chain::broadcast_chain;
pub use broadcast_stage::broadcast_stage;
pub use packed::{Packed, Runs, runs_within};
pub use reducescatter_ring::reducescatter_ring;
pub use reducescatter_stage::reducescatter_stage;
use schedule::Schedule;

use std::ops::Range;

use crate::dtype::{DType, ReduceOp};
use crate::reduce::{Order, reduce_into};
use crate::transport::{Error, Step, Tag, Transport};

/// What every algorithm call takes besides its transport and buffers.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// The call's tag, on every message.
    pub tag: Tag,
    /// Element type of the buffers.
    pub dtype: DType,
    /// Largest message of a streamed schedule, in bytes (broadcast: of its chain).
    pub segment: usize,
    /// Ring allreduce: bytes per piece (the pipeline's unit).
    pub chunk: usize,
}

/// Splits `count` elements into `n` contiguous blocks as evenly as possible, the first
/// `count % n` blocks one element larger (Horovod's reducescatter split). Byte ranges.
pub fn even_blocks(count: usize, n: usize, elem: usize) -> Vec<Range<usize>> {
    blocks_from_counts(&(0..n).map(|i| count / n + usize::from(i < count % n)).collect::<Vec<_>>(), elem)
}

/// Contiguous byte ranges for blocks of `counts[i]` elements each.
pub fn blocks_from_counts(counts: &[usize], elem: usize) -> Vec<Range<usize>> {
    let mut start = 0;
    counts
        .iter()
        .map(|c| {
            let r = start..start + c * elem;
            start = r.end;
            r
        })
        .collect()
}

/// A fingerprint of how a buffer is cut into `blocks` (FNV-1a over their bounds), for the stage
/// algorithms to check that every rank cuts it alike.
pub(crate) fn layout(blocks: &[Range<usize>]) -> u64 {
    blocks
        .iter()
        .flat_map(|b| [b.start as u64, b.end as u64])
        .flat_map(u64::to_le_bytes)
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `len` bytes cut into pieces of about `chunk` bytes (whole elements): large allreduces run
/// piece by piece so that reduced data is still in cache when it is sent. An empty buffer is
/// one empty piece: it still exchanges (empty) messages, so that mismatches are seen.
pub(crate) fn piece_ranges(len: usize, chunk: usize, dtype: DType) -> Vec<Range<usize>> {
    let chunk = (chunk / dtype.size()).max(1) * dtype.size();
    (0..len.max(1)).step_by(chunk).map(|s| s..(s + chunk).min(len)).collect()
}

/// A grow-only scratch buffer aligned for every dtype.
#[derive(Default)]
pub(crate) struct Scratch(Vec<u64>);

impl Scratch {
    /// The first `len` bytes, growing the buffer if needed.
    pub(crate) fn bytes(&mut self, len: usize) -> &mut [u8] {
        if self.0.len() * 8 < len {
            self.0.resize(len.div_ceil(8), 0);
        }
        &mut bytemuck::cast_slice_mut(&mut self.0)[..len]
    }
}

/// Scratch memory for the algorithms, kept by the backend between calls: steady-state
/// collectives allocate (and page-fault) nothing.
#[derive(Default)]
pub struct Workspace {
    a: Scratch,
}

/// Appends the n-1 steps of a ring over `blocks` to `s`, each cut into `segment`-byte parts:
/// in step i rank r sends block (r-i-lag) to its right neighbour and receives block (r-i-lag-1)
/// from its left, reduced into place or stored as is. The reduce-scatter has lag 1 (a rank
/// never sends the block it ends with), the allgather lag 0 (it starts by sending its own).
pub(crate) fn ring_steps(
    s: &mut Schedule,
    r: usize,
    n: usize,
    blocks: &[Range<usize>],
    segment: usize,
    lag: usize,
    reduce: bool,
) {
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let parts = Schedule::parts(blocks, segment);
    for step in 0..n.saturating_sub(1) {
        let (send, recv) = (&blocks[(r + 2 * n - step - lag) % n], &blocks[(r + 2 * n - step - lag - 1) % n]);
        for j in 0..parts {
            let (send, recv) = (Schedule::part(send, segment, j), Schedule::part(recv, segment, j));
            s.push(schedule::Msg { to: right, from: left, send, recv, reduce });
        }
    }
}

/// Reduction handed to the transport as overlap work: a slice at a time, so that I/O gets its
/// turn between slices.
pub(crate) struct Reducer<'a> {
    dst: &'a mut [u8],
    src: &'a [u8],
    done: usize,
    dtype: DType,
    op: ReduceOp,
    order: Order,
}

impl<'a> Reducer<'a> {
    /// Bytes reduced per step: large enough to amortise the poll between steps, small enough
    /// to keep the sockets busy.
    pub(crate) const STEP: usize = 64 << 10;

    pub(crate) fn new(dst: &'a mut [u8], src: &'a [u8], dtype: DType, op: ReduceOp, order: Order) -> Reducer<'a> {
        Reducer { dst, src, done: 0, dtype, op, order }
    }

    /// Reduces the next slice; returns whether more is left.
    pub(crate) fn step(&mut self) -> bool {
        let end = (self.done + Self::STEP / self.dtype.size() * self.dtype.size()).min(self.dst.len());
        if self.done < end {
            reduce_into(self.dtype, self.op, &mut self.dst[self.done..end], &self.src[self.done..end], self.order);
        }
        self.done = end;
        self.done < self.dst.len()
    }

    pub(crate) fn finish(&mut self) {
        while self.step() {}
    }
}

/// Folding a world of n ranks onto p, the largest power of two ≤ n, for the algorithms that
/// pair ranks by bits: the even ranks below 2q (q = n - p) hand their data to the odd rank
/// above them and sit out; the others take virtual ranks 0..p.
pub(crate) struct Fold {
    /// Participants: the largest power of two ≤ n.
    pub p: usize,
    q: usize,
}

impl Fold {
    pub(crate) fn new(n: usize) -> Fold {
        let p = 1usize << (usize::BITS - 1 - n.leading_zeros());
        Fold { p, q: n - p }
    }

    /// The real rank of virtual rank `v`.
    pub(crate) fn real(&self, v: usize) -> usize {
        if v < self.q { 2 * v + 1 } else { v + self.q }
    }

    /// Folds this rank's data in; returns its virtual rank, or `None` if it sits out.
    pub(crate) fn fold<T: Transport + ?Sized>(
        &self,
        t: &mut T,
        tag: Tag,
        buf: &mut [u8],
        dtype: DType,
        op: ReduceOp,
        ws: &mut Workspace,
    ) -> Result<Option<usize>, Error> {
        let r = t.rank();
        if r >= 2 * self.q {
            return Ok(Some(r - self.q));
        }
        if r.is_multiple_of(2) {
            t.exchange(tag, &mut [Step::Send { peer: r + 1, buf: &*buf }])?;
            return Ok(None);
        }
        let tmp = ws.a.bytes(buf.len());
        t.exchange(tag, &mut [Step::Recv { peer: r - 1, buf: &mut *tmp }])?;
        Reducer::new(buf, tmp, dtype, op, Order::SrcFirst).finish();
        Ok(Some(r / 2))
    }

    /// Hands the result back to the ranks that sat out.
    pub(crate) fn unfold<T: Transport + ?Sized>(&self, t: &mut T, tag: Tag, buf: &mut [u8]) -> Result<(), Error> {
        let r = t.rank();
        if r >= 2 * self.q {
            return Ok(());
        }
        let op = if r.is_multiple_of(2) { Step::Recv { peer: r + 1, buf } } else { Step::Send { peer: r - 1, buf } };
        t.exchange(tag, &mut [op])
    }
}
