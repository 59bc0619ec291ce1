//! Reduce-scatter over a shared stage: per piece of the buffer (a region's worth), every rank
//! copies the piece into its region, then reduces the part of its own block that lies in the
//! piece from every rank's region, in rank order. Blocks may differ in size.
//!
//! Cost per piece of m bytes: one wait (α) + m copied in + the own block's share read from
//! every rank and reduced (γ).

use std::ops::Range;

use super::{Params, piece_ranges};
use crate::dtype::ReduceOp;
use crate::reduce::{Order, reduce_into};
use crate::transport::{Error, Stage};

/// Leaves this rank's block (`blocks[rank]`) reduced over every rank; the rest of `buf` is
/// left as it was (`Average` is left as a sum; the caller divides).
pub fn reducescatter_stage(
    s: &mut dyn Stage,
    p: &Params,
    rank: usize,
    buf: &mut [u8],
    blocks: &[Range<usize>],
    op: ReduceOp,
) -> Result<(), Error> {
    let own = &blocks[rank];
    for piece in piece_ranges(buf.len(), s.region(), p.dtype) {
        s.next()[..piece.len()].copy_from_slice(&buf[piece.clone()]);
        let all = s.publish(p.tag, piece.len())?;
        let (start, end) = (own.start.max(piece.start), own.end.min(piece.end));
        if start >= end {
            continue;
        }
        let (from, to) = (start - piece.start, end - piece.start);
        let out = &mut buf[start..end];
        out.copy_from_slice(&all[0][from..to]);
        for theirs in &all[1..] {
            reduce_into(p.dtype, op, out, &theirs[from..to], Order::AccFirst);
        }
    }
    Ok(())
}
