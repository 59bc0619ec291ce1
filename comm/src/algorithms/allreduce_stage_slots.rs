//! Allreduce over a shared stage, whole: every rank reads every rank's data. For small messages.
//!
//! Per piece (a region's worth): each rank copies its piece into its region, publishes it, then
//! reduces all regions in rank order into its buffer. Every rank computes the same bytes in the
//! same order, so results are identical on every rank.
//!
//! Cost per piece of m bytes: one wait (α) + m copy in + n·m read and (n-1)·m reduced (γ).
//! The least latency there is; the reads grow with n, so larger messages take the split.
//!
//! [`allreduce_stage_slots_packed`] is the same step for a piece whose bytes lie elsewhere (the
//! engine's fused tensors, see [`Packed`]).

use super::{Packed, Params, piece_ranges};
use crate::dtype::ReduceOp;
use crate::reduce::{Order, reduce_into};
use crate::transport::{Error, Stage};

/// One step of the slots for `len` bytes (at most a region) packed by `packed`: the reduced
/// bytes are those [`allreduce_stage_slots`] computes for the packed piece, bit for bit.
pub fn allreduce_stage_slots_packed(
    s: &mut dyn Stage,
    p: &Params,
    len: usize,
    op: ReduceOp,
    packed: &mut dyn Packed,
) -> Result<(), Error> {
    packed.pack(0..len, &mut s.next()?[..len]);
    let all = s.publish(p.tag, len, 0)?;
    packed.unpack(0..len, &mut |dst: &mut [u8], at: usize| {
        let end = at + dst.len();
        dst.copy_from_slice(&all[0][at..end]);
        for theirs in &all[1..] {
            reduce_into(p.dtype, op, dst, &theirs[at..end], Order::AccFirst);
        }
    });
    Ok(())
}

/// Allreduce in place (`Average` is left as a sum; the caller divides).
pub fn allreduce_stage_slots(s: &mut dyn Stage, p: &Params, buf: &mut [u8], op: ReduceOp) -> Result<(), Error> {
    for piece in piece_ranges(buf.len(), s.region(), p.dtype) {
        let chunk = &mut buf[piece];
        s.next()?[..chunk.len()].copy_from_slice(chunk);
        let all = s.publish(p.tag, chunk.len(), 0)?;
        chunk.copy_from_slice(all[0]);
        for theirs in &all[1..] {
            reduce_into(p.dtype, op, chunk, theirs, Order::AccFirst);
        }
    }
    Ok(())
}
