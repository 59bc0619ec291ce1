//! Allreduce over a shared stage, split: a reduce-scatter then an allgather, both read in
//! place from the peers' regions. For large messages.
//!
//! Per piece (a region's worth, so that it stays in cache): each rank copies the shares of its
//! piece that its peers reduce into its region and publishes it; rank r reduces share r of
//! every peer's region into its own share, in place (lower ranks' data first in each pair);
//! then it publishes that share in its region and copies every other share from its owner's
//! region. Each share is reduced once, by its owner, so results are identical on every rank.
//!
//! Cost per piece of m bytes: two waits (2α) + m·(n-1)/n copied in + m·(n-1)/n read and
//! reduced (γ) + m/n copy + m·(n-1)/n read: constant in n per byte, where the slots read n·m.
//!
//! [`allreduce_stage_split_packed`] is the same for a piece whose bytes lie elsewhere (the
//! engine's fused tensors, see [`Packed`]): the whole piece is written into the region, this
//! rank's share is reduced straight into where its bytes lie, and the other shares are copied
//! straight there from their owners' regions.

use super::{Packed, Params, even_blocks, piece_ranges};
use crate::dtype::ReduceOp;
use crate::reduce::{Order, reduce_into};
use crate::transport::{Error, Stage};

/// One step of the split for `len` bytes (at most a region) packed by `packed`, over `n` ranks
/// of which this is `rank`: the reduced bytes are those [`allreduce_stage_split`] computes for
/// the packed piece, bit for bit (each share is reduced by its owner in the same order).
pub fn allreduce_stage_split_packed(
    s: &mut dyn Stage,
    p: &Params,
    (rank, n): (usize, usize),
    len: usize,
    op: ReduceOp,
    packed: &mut dyn Packed,
) -> Result<(), Error> {
    let shares = even_blocks(len / p.dtype.size(), n, p.dtype.size());
    let mine = shares[rank].clone();

    packed.pack(0..len, &mut s.next()?[..len]);
    let all = s.publish(p.tag, len, 0)?;
    packed.unpack(mine.clone(), &mut |out: &mut [u8], at: usize| {
        let bytes = at..at + out.len();
        out.copy_from_slice(&all[rank][bytes.clone()]);
        for (q, theirs) in all.iter().enumerate().filter(|&(q, _)| q != rank) {
            let order = if q < rank { Order::SrcFirst } else { Order::AccFirst };
            reduce_into(p.dtype, op, out, &theirs[bytes.clone()], order);
        }
    });

    packed.pack(mine.clone(), &mut s.next()?[mine.clone()]);
    let all = s.publish(p.tag, len, 0)?;
    for (q, share) in shares.into_iter().enumerate().filter(|&(q, _)| q != rank) {
        packed.unpack(share, &mut |out: &mut [u8], at: usize| out.copy_from_slice(&all[q][at..at + out.len()]));
    }
    Ok(())
}

/// Allreduce in place over `n` ranks of which this is `rank` (`Average` is left as a sum; the
/// caller divides).
pub fn allreduce_stage_split(
    s: &mut dyn Stage,
    p: &Params,
    (rank, n): (usize, usize),
    buf: &mut [u8],
    op: ReduceOp,
) -> Result<(), Error> {
    let elem = p.dtype.size();
    for piece in piece_ranges(buf.len(), s.region(), p.dtype) {
        let chunk = &mut buf[piece];
        let len = chunk.len();
        let shares = even_blocks(len / elem, n, elem);
        let mine = shares[rank].clone();

        // Peers read every share but this rank's own, which it reduces in place.
        let region = s.next()?;
        region[..mine.start].copy_from_slice(&chunk[..mine.start]);
        region[mine.end..len].copy_from_slice(&chunk[mine.end..]);
        let all = s.publish(p.tag, len, 0)?;
        let out = &mut chunk[mine.clone()];
        for (q, theirs) in all.iter().enumerate().filter(|&(q, _)| q != rank) {
            let order = if q < rank { Order::SrcFirst } else { Order::AccFirst };
            reduce_into(p.dtype, op, out, &theirs[mine.clone()], order);
        }

        s.next()?[mine.clone()].copy_from_slice(&chunk[mine.clone()]);
        let all = s.publish(p.tag, len, 0)?;
        for (q, share) in shares.iter().enumerate().filter(|&(q, _)| q != rank) {
            chunk[share.clone()].copy_from_slice(&all[q][share.clone()]);
        }
    }
    Ok(())
}
