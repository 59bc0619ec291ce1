//! Collective algorithms over any [`Transport`](crate::transport::Transport), on byte buffers
//! with a dtype. One file per algorithm; each opens with its phases and its cost in the
//! alpha-beta model (α: per-message latency, β: per-byte transfer time, γ: per-byte reduction
//! time, n ranks, m bytes).
//!
//! Algorithms know nothing of sockets. The host backend picks one by message size.

mod allgather_ring;
mod allreduce_recursive_doubling;
mod allreduce_ring;
mod alltoall_pairwise;
mod barrier_dissemination;
mod broadcast_binomial;
mod broadcast_chain;
mod reducescatter_ring;

pub use allgather_ring::allgather_ring;
pub use allreduce_recursive_doubling::allreduce_recursive_doubling;
pub use allreduce_ring::allreduce_ring;
pub use alltoall_pairwise::alltoall_pairwise;
pub use barrier_dissemination::barrier_dissemination;
pub use broadcast_binomial::broadcast_binomial;
pub use broadcast_chain::broadcast_chain;
pub use reducescatter_ring::reducescatter_ring;

use std::ops::Range;

use crate::dtype::{DType, ReduceOp};
use crate::reduce::{Order, reduce_into};

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

/// A scratch buffer aligned for every dtype.
pub(crate) struct Scratch(Vec<u64>);

impl Scratch {
    pub(crate) fn new(bytes: usize) -> Scratch {
        Scratch(vec![0; bytes.div_ceil(8)])
    }

    pub(crate) fn bytes(&mut self, len: usize) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.0)[..len]
    }
}

/// `(&buf[a], &mut buf[b])` for disjoint ranges (either may be empty).
pub(crate) fn split_ref_mut(buf: &mut [u8], a: Range<usize>, b: Range<usize>) -> (&[u8], &mut [u8]) {
    if a.is_empty() {
        return (&[], &mut buf[b]);
    }
    if b.is_empty() {
        return (&buf[a], &mut []);
    }
    assert!(a.end <= b.start || b.end <= a.start, "split_ref_mut: ranges {a:?} and {b:?} overlap");
    if a.end <= b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&lo[a], &mut hi[..b.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&hi[..a.len()], &mut lo[b])
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
    const STEP: usize = 64 << 10;

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
