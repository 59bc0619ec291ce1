//! Allgather over a shared stage: every rank copies its block into its region and copies every
//! other block out of its owner's region, in pieces of a region when the largest block is
//! larger. Blocks may differ in size; every rank knows them all, so every rank takes the same
//! steps (as many as the largest block has pieces).
//!
//! Cost per piece: one wait (α) + the piece copied in + (n-1) pieces copied out.

use std::ops::Range;

use super::{Params, layout, piece_ranges};
use crate::transport::{Error, Stage};

/// The part of `block` that falls in bytes `piece` of every block (relative to its start).
fn part(block: &Range<usize>, piece: &Range<usize>) -> Range<usize> {
    let len = block.len();
    (block.start + piece.start.min(len))..(block.start + piece.end.min(len))
}

/// Fills every block of `buf` from its owner; this rank, `rank`, filled its own.
pub fn allgather_stage(
    s: &mut dyn Stage,
    p: &Params,
    rank: usize,
    buf: &mut [u8],
    blocks: &[Range<usize>],
) -> Result<(), Error> {
    let largest = blocks.iter().map(Range::len).max().unwrap_or(0);
    for piece in piece_ranges(largest, s.region(), p.dtype) {
        let mine = part(&blocks[rank], &piece);
        s.next()?[..mine.len()].copy_from_slice(&buf[mine]);
        let all = s.publish(p.tag, piece.len(), layout(blocks))?;
        for (q, block) in blocks.iter().enumerate().filter(|&(q, _)| q != rank) {
            let theirs = part(block, &piece);
            let len = theirs.len();
            buf[theirs].copy_from_slice(&all[q][..len]);
        }
    }
    Ok(())
}
