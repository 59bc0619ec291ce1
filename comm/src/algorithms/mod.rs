//! Collective algorithms over any [`Transport`](crate::transport::Transport), on byte buffers
//! with a dtype. One file per algorithm; each opens with its phases and its cost in the
//! alpha-beta model (α: per-message latency, β: per-byte transfer time, γ: per-byte reduction
//! time, n ranks, m bytes).
//!
//! Algorithms know nothing of sockets. The host backend picks one by message size.

mod allgather_ring;
mod allreduce_halving_doubling;
mod allreduce_recursive_doubling;
mod allreduce_ring;
mod alltoall_pairwise;
mod barrier_dissemination;
mod broadcast_binomial;
mod broadcast_chain;
mod reducescatter_ring;

pub use allgather_ring::allgather_ring;
pub use allreduce_halving_doubling::allreduce_halving_doubling;
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
use crate::transport::{Error, Op, Tag, Transport, no_work};

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

/// `buf` cut into pieces of about `chunk` bytes (whole elements), large allreduces run piece by
/// piece so that reduced data is still in cache when it is sent. An empty buffer is one empty
/// piece: it still exchanges (empty) messages, so that mismatches are seen.
pub(crate) fn pieces(buf: &mut [u8], chunk: usize, dtype: DType) -> Vec<&mut [u8]> {
    let chunk = (chunk / dtype.size()).max(1) * dtype.size();
    if buf.is_empty() { vec![buf] } else { buf.chunks_mut(chunk).collect() }
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
    b: Scratch,
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

/// One exchange-and-reduce step: send `buf[send]` to `to`, receive as many bytes as `dst` holds
/// from `from`, and reduce them into `buf[dst]`.
pub(crate) struct Unit {
    pub to: usize,
    pub send: Range<usize>,
    pub from: usize,
    pub dst: Range<usize>,
}

/// Runs `units` in order, each cut into the same number of segments of at most `segment`
/// bytes (empty where a unit is shorter), as one pipeline:
/// while segment k is on the wire the transport gives its idle time to reducing segment k-1
/// out of the other of two scratch buffers. A segment is sent only once the reduction of any
/// earlier segment that lands in it has finished.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce_pipeline<T: Transport + ?Sized>(
    t: &mut T,
    tag: Tag,
    buf: &mut [u8],
    units: &[Unit],
    dtype: DType,
    op: ReduceOp,
    segment: usize,
    ws: &mut Workspace,
) -> Result<(), Error> {
    let seg = (segment / dtype.size()).max(1) * dtype.size();
    let mut scratch = [&mut ws.a, &mut ws.b];
    let piece = |r: &Range<usize>, j: usize| {
        let start = (r.start + j * seg).min(r.end);
        start..(start + seg).min(r.end)
    };
    // The segment received last: where it goes in `buf`, and which scratch holds it.
    let mut pending: Option<(Range<usize>, usize)> = None;
    let mut slot = 0;
    // One segment count for every unit: the units of all ranks together cover the same blocks,
    // so every rank computes the same count and sends and receives the same messages. (A count
    // per unit lets neighbours disagree when blocks differ in size.)
    let segments = units.iter().map(|u| u.send.len().max(u.dst.len())).max().unwrap_or(0).div_ceil(seg).max(1);
    for unit in units {
        for j in 0..segments {
            let send = piece(&unit.send, j);
            let recv = piece(&unit.dst, j);
            if let Some((dst, s)) = pending.as_ref().filter(|(dst, _)| dst.start < send.end && send.start < dst.end) {
                let len = dst.len();
                Reducer::new(&mut buf[dst.clone()], scratch[*s].bytes(len), dtype, op, Order::AccFirst).finish();
                pending = None;
            }
            let [a, b] = &mut scratch;
            let (cur, prev) = if slot == 0 { (&mut **a, &mut **b) } else { (&mut **b, &mut **a) };
            let dst = pending.take().map_or(0..0, |(d, _)| d);
            let (send_bytes, dst_bytes) = split_ref_mut(buf, send, dst.clone());
            let mut work = Reducer::new(dst_bytes, prev.bytes(dst.len()), dtype, op, Order::AccFirst);
            let mut ops =
                [Op::Send { peer: unit.to, buf: send_bytes }, Op::Recv { peer: unit.from, buf: cur.bytes(recv.len()) }];
            t.exchange(tag, &mut ops, &mut || work.step())?;
            work.finish();
            pending = Some((recv, slot));
            slot ^= 1;
        }
    }
    if let Some((dst, s)) = pending {
        let len = dst.len();
        Reducer::new(&mut buf[dst], scratch[s].bytes(len), dtype, op, Order::AccFirst).finish();
    }
    Ok(())
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
            t.exchange(tag, &mut [Op::Send { peer: r + 1, buf: &*buf }], &mut no_work)?;
            return Ok(None);
        }
        let tmp = ws.a.bytes(buf.len());
        t.exchange(tag, &mut [Op::Recv { peer: r - 1, buf: &mut *tmp }], &mut no_work)?;
        Reducer::new(buf, tmp, dtype, op, Order::SrcFirst).finish();
        Ok(Some(r / 2))
    }

    /// Hands the result back to the ranks that sat out.
    pub(crate) fn unfold<T: Transport + ?Sized>(&self, t: &mut T, tag: Tag, buf: &mut [u8]) -> Result<(), Error> {
        let r = t.rank();
        if r >= 2 * self.q {
            return Ok(());
        }
        let op = if r.is_multiple_of(2) { Op::Recv { peer: r + 1, buf } } else { Op::Send { peer: r - 1, buf } };
        t.exchange(tag, &mut [op], &mut no_work)
    }
}
