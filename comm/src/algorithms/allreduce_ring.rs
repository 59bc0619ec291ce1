//! Ring allreduce: a pipelined ring reduce-scatter, then a ring allgather.
//!
//! Phase 1 leaves rank r with block r reduced over all ranks (see `reducescatter_ring`);
//! phase 2 circulates the reduced blocks. Every rank ends with the same bytes, since each block
//! is reduced on one rank only and then copied.
//!
//! Large buffers are cut into `chunk`-byte pieces, each a ring allreduce of its own, so that the
//! block a rank has just reduced is still in cache when phase 2 sends it (measured on loopback,
//! where the kernel's copies dominate: see `benches/RESULTS.md`). All pieces form one
//! [`Schedule`]: the next piece starts while the last one's final segments are on the wire.
//!
//! Cost: 2(n-1)·⌈m/c⌉·α + 2(n-1)/n·m·β + (n-1)/n·m·γ for chunks of c bytes: bandwidth-optimal,
//! the choice for large messages; latency grows with n.

use super::{
    Params, Schedule, Workspace, allgather_ring::allgather_messages, even_blocks, piece_ranges,
    reducescatter_ring::reducescatter_messages,
};
use crate::dtype::ReduceOp;
use crate::transport::{Error, Transport};

/// Allreduce in place (`Average` is left as a sum; the caller divides).
pub fn allreduce_ring<T: Transport + ?Sized>(
    t: &mut T,
    p: &Params,
    buf: &mut [u8],
    op: ReduceOp,
    ws: &mut Workspace,
) -> Result<(), Error> {
    let Params { tag, dtype, segment, chunk } = *p;
    let (r, n, size) = (t.rank(), t.size(), dtype.size());
    let segment = (segment / size).max(1) * size;
    let mut s = Schedule::default();
    for piece in piece_ranges(buf.len(), chunk, dtype) {
        let blocks: Vec<_> = even_blocks(piece.len() / size, n, size)
            .into_iter()
            .map(|b| piece.start + b.start..piece.start + b.end)
            .collect();
        s.group();
        reducescatter_messages(&mut s, r, n, &blocks, segment);
        allgather_messages(&mut s, r, n, &blocks, segment);
    }
    s.run(t, tag, buf, dtype, op, &mut ws.a)
}
