//! All-to-all exchange.
//!
//! Rank r sends block i of its input to rank i and receives rank i's block for r into block i
//! of its output. Every pairwise transfer is posted at once; the transport runs them
//! concurrently over the full mesh, so no step waits for the slowest pair of another step.
//!
//! Cost: (n-1)·α + (n-1)/n·m·β per rank for m bytes of input, bounded by the rank's link.

use std::ops::Range;

use super::Params;
use crate::transport::{Error, Step, Transport};

/// All-to-all: `send[send_blocks[i]]` goes to rank i, rank i's data for this rank lands in
/// `recv[recv_blocks[i]]`. Both block lists are contiguous and in rank order.
pub fn alltoall_pairwise<T: Transport + ?Sized>(
    t: &mut T,
    p: &Params,
    send: &[u8],
    send_blocks: &[Range<usize>],
    recv: &mut [u8],
    recv_blocks: &[Range<usize>],
) -> Result<(), Error> {
    let tag = p.tag;
    let r = t.rank();
    let mut ops = Vec::with_capacity(2 * send_blocks.len());
    let mut rest = recv;
    let mut offset = 0;
    for (peer, block) in recv_blocks.iter().enumerate() {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(block.start - offset);
        let (mine, tail) = tail.split_at_mut(block.len());
        rest = tail;
        offset = block.end;
        if peer == r {
            mine.copy_from_slice(&send[send_blocks[r].clone()]);
        } else {
            ops.push(Step::Send { peer, buf: &send[send_blocks[peer].clone()] });
            ops.push(Step::Recv { peer, buf: mine });
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    t.exchange(tag, &mut ops)
}
