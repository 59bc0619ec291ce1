//! Ring reduce-scatter, pipelined in segments.
//!
//! The buffer is cut into n blocks (any sizes, rank i ends with block i reduced over all
//! ranks). In step s = 0..n-2 rank r sends block (r-s-1) to its right neighbour and receives
//! block (r-s-2) from its left, which it reduces into its own copy; the block it sends at step
//! s+1 is the one it reduced at step s. Each block is cut into segments, and every (step,
//! segment) is one message of a [`Schedule`]: a segment moves on as soon as it is reduced,
//! while the other segments are still on the wire.
//!
//! Cost: (n-1)·(α + m/n·β + m/n·γ) without overlap; with it the γ term hides behind β once a
//! block spans two or more segments.

use std::ops::Range;

use super::{Params, Schedule, Workspace, ring_steps};
use crate::dtype::ReduceOp;
use crate::transport::{Error, Transport};

/// Reduce-scatter in place: afterwards `buf[blocks[rank]]` holds the reduction of that block
/// over all ranks (`Average` is left as a sum). Other blocks hold partial results.
pub fn reducescatter_ring<T: Transport + ?Sized>(
    t: &mut T,
    p: &Params,
    buf: &mut [u8],
    blocks: &[Range<usize>],
    op: ReduceOp,
    ws: &mut Workspace,
) -> Result<(), Error> {
    let Params { tag, dtype, segment, .. } = *p;
    let mut s = Schedule::default();
    reducescatter_messages(&mut s, t.rank(), t.size(), blocks, (segment / dtype.size()).max(1) * dtype.size());
    s.run(t, tag, buf, dtype, op, &mut ws.a)
}

/// Appends the ring reduce-scatter's messages over `blocks` to `s`, in `segment`-byte parts.
pub(crate) fn reducescatter_messages(s: &mut Schedule, r: usize, n: usize, blocks: &[Range<usize>], segment: usize) {
    ring_steps(s, r, n, blocks, segment, 1, true);
}
