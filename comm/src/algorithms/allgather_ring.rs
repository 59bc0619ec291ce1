//! Ring allgather.
//!
//! Rank r starts with block r filled. In step s = 0..n-2 it sends block (r-s) to its right
//! neighbour and receives block (r-s-1) from its left straight into place. Blocks may differ in
//! size (allgather with per-rank first dimensions).
//!
//! Cost: (n-1)·α + (n-1)/n·m·β for equal blocks.

use std::ops::Range;

use super::split_ref_mut;
use crate::transport::{Error, Op, Tag, Transport, no_work};

/// Allgather in place: on entry `buf[blocks[rank]]` holds this rank's data; on return every
/// block holds its owner's data.
pub fn allgather_ring<T: Transport + ?Sized>(
    t: &mut T,
    tag: Tag,
    buf: &mut [u8],
    blocks: &[Range<usize>],
) -> Result<(), Error> {
    let (r, n) = (t.rank(), t.size());
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    for step in 0..n.saturating_sub(1) {
        let send = blocks[(r + n - step) % n].clone();
        let recv = blocks[(r + 2 * n - step - 1) % n].clone();
        let (send, recv) = split_ref_mut(buf, send, recv);
        t.exchange(tag, &mut [Op::Send { peer: right, buf: send }, Op::Recv { peer: left, buf: recv }], &mut no_work)?;
    }
    Ok(())
}
