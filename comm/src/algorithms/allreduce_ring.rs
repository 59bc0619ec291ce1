//! Ring allreduce: a pipelined ring reduce-scatter, then a ring allgather.
//!
//! Phase 1 leaves rank r with block r reduced over all ranks (see `reducescatter_ring`);
//! phase 2 circulates the reduced blocks. Every rank ends with the same bytes, since each block
//! is reduced on one rank only and then copied.
//!
//! Large buffers run as a sequence of independent ring allreduces over `chunk`-byte pieces, so
//! that the block a rank has just reduced is still in cache when phase 2 sends it (measured on
//! loopback, where the kernel's copies dominate: see `benches/RESULTS.md`).
//!
//! Cost: 2(n-1)·⌈m/c⌉·α + 2(n-1)/n·m·β + (n-1)/n·m·γ for chunks of c bytes: bandwidth-optimal,
//! the choice for large messages; latency grows with n.

use super::{Workspace, allgather_ring, even_blocks, pieces, reducescatter_ring};
use crate::dtype::{DType, ReduceOp};
use crate::transport::{Error, Tag, Transport};

/// Allreduce in place (`Average` is left as a sum; the caller divides).
#[allow(clippy::too_many_arguments)]
pub fn allreduce_ring<T: Transport + ?Sized>(
    t: &mut T,
    tag: Tag,
    buf: &mut [u8],
    dtype: DType,
    op: ReduceOp,
    segment: usize,
    chunk: usize,
    ws: &mut Workspace,
) -> Result<(), Error> {
    for piece in pieces(buf, chunk, dtype) {
        let blocks = even_blocks(piece.len() / dtype.size(), t.size(), dtype.size());
        reducescatter_ring(t, tag, piece, &blocks, dtype, op, segment, ws)?;
        allgather_ring(t, tag, piece, &blocks)?;
    }
    Ok(())
}
