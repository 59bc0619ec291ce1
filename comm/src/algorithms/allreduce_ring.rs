//! Ring allreduce: a pipelined ring reduce-scatter, then a ring allgather.
//!
//! Phase 1 leaves rank r with block r reduced over all ranks (see `reducescatter_ring`);
//! phase 2 circulates the reduced blocks. Every rank ends with the same bytes, since each block
//! is reduced on one rank only and then copied.
//!
//! Cost: 2(n-1)·α + 2(n-1)/n·m·β + (n-1)/n·m·γ: bandwidth-optimal, the choice for large
//! messages; latency grows with n.

use super::{allgather_ring, even_blocks, reducescatter_ring};
use crate::dtype::{DType, ReduceOp};
use crate::transport::{Error, Tag, Transport};

/// Allreduce in place (`Average` is left as a sum; the caller divides).
pub fn allreduce_ring<T: Transport + ?Sized>(
    t: &mut T,
    tag: Tag,
    buf: &mut [u8],
    dtype: DType,
    op: ReduceOp,
    segment: usize,
) -> Result<(), Error> {
    let blocks = even_blocks(buf.len() / dtype.size(), t.size(), dtype.size());
    reducescatter_ring(t, tag, buf, &blocks, dtype, op, segment)?;
    allgather_ring(t, tag, buf, &blocks)
}
