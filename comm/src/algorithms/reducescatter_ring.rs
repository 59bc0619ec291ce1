//! Ring reduce-scatter, pipelined in segments.
//!
//! The buffer is cut into n blocks (any sizes, rank i ends with block i reduced over all
//! ranks). In step s = 0..n-2 rank r sends block (r-s-1) to its right neighbour and receives
//! block (r-s-2) from its left, which it reduces into its own copy; the block it sends at step
//! s+1 is the one it reduced at step s. Each block is cut into segments and the (step, segment)
//! units form one pipeline ([`super::reduce_pipeline`]): while one segment is on the wire, the
//! previous one is reduced.
//!
//! Cost: (n-1)·(α + m/n·β + m/n·γ) without overlap; with it the γ term hides behind β once a
//! block spans two or more segments.

use std::ops::Range;

use super::{Unit, Workspace, reduce_pipeline};
use crate::dtype::{DType, ReduceOp};
use crate::transport::{Error, Tag, Transport};

/// Reduce-scatter in place: afterwards `buf[blocks[rank]]` holds the reduction of that block
/// over all ranks (`Average` is left as a sum). Other blocks hold partial results.
#[allow(clippy::too_many_arguments)]
pub fn reducescatter_ring<T: Transport + ?Sized>(
    t: &mut T,
    tag: Tag,
    buf: &mut [u8],
    blocks: &[Range<usize>],
    dtype: DType,
    op: ReduceOp,
    segment: usize,
    ws: &mut Workspace,
) -> Result<(), Error> {
    let (r, n) = (t.rank(), t.size());
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let units: Vec<Unit> = (0..n.saturating_sub(1))
        .map(|step| Unit {
            to: right,
            send: blocks[(r + 2 * n - step - 1) % n].clone(),
            from: left,
            dst: blocks[(r + 2 * n - step - 2) % n].clone(),
        })
        .collect();
    reduce_pipeline(t, tag, buf, &units, dtype, op, segment, ws)
}
