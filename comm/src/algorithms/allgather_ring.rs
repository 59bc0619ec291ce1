//! Ring allgather.
//!
//! Rank r starts with block r filled. In step s = 0..n-2 it sends block (r-s) to its right
//! neighbour and receives block (r-s-1) from its left straight into place. Blocks may differ in
//! size (allgather with per-rank first dimensions). Each block is cut into segments, and every
//! (step, segment) is one message of a [`Schedule`]: a segment is passed on as soon as it has
//! arrived.
//!
//! Cost: (n-1)·α + (n-1)/n·m·β for equal blocks.

use std::ops::Range;

use super::{Params, Schedule, Scratch, ring_steps};
use crate::dtype::{DType, ReduceOp};
use crate::transport::{Error, Transport};

/// Allgather in place: on entry `buf[blocks[rank]]` holds this rank's data; on return every
/// block holds its owner's data.
pub fn allgather_ring<T: Transport + ?Sized>(
    t: &mut T,
    p: &Params,
    buf: &mut [u8],
    blocks: &[Range<usize>],
) -> Result<(), Error> {
    let Params { tag, segment, .. } = *p;
    let mut s = Schedule::default();
    allgather_messages(&mut s, t.rank(), t.size(), blocks, segment.max(1));
    // Nothing is reduced: the dtype and op are never used.
    s.run(t, tag, buf, DType::U8, ReduceOp::Sum, &mut Scratch::default())
}

/// Appends the ring allgather's messages over `blocks` to `s`, in `segment`-byte parts.
pub(crate) fn allgather_messages(s: &mut Schedule, r: usize, n: usize, blocks: &[Range<usize>], segment: usize) {
    ring_steps(s, r, n, blocks, segment, 0, false);
}
