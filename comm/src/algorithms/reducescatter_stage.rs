//! Reduce-scatter over a shared stage: per piece of the buffer (a region's worth), every rank
//! copies the piece but the part of its own block into its region, then reduces that part of
//! every peer's region into its own block, in place (lower ranks' data first in each pair).
//! Blocks may differ in size.
//!
//! Cost per piece of m bytes: one wait (α) + m less the own part copied in + the own part read
//! from every peer and reduced (γ).

use std::ops::Range;

use super::{Params, layout, piece_ranges};
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
        // The part of this rank's block in the piece: peers never read it, it reduces in place.
        let (start, end) = (own.start.clamp(piece.start, piece.end), own.end.clamp(piece.start, piece.end));
        let (from, to) = (start - piece.start, end - piece.start);
        let region = s.next()?;
        region[..from].copy_from_slice(&buf[piece.start..start]);
        region[to..piece.len()].copy_from_slice(&buf[end..piece.end]);
        let all = s.publish(p.tag, piece.len(), layout(blocks))?;
        let out = &mut buf[start..end];
        for (q, theirs) in all.iter().enumerate().filter(|&(q, _)| q != rank && from < to) {
            let order = if q < rank { Order::SrcFirst } else { Order::AccFirst };
            reduce_into(p.dtype, op, out, &theirs[from..to], order);
        }
    }
    Ok(())
}
