//! Ring reduce-scatter, pipelined in segments.
//!
//! The buffer is cut into n blocks (any sizes, rank i ends with block i reduced over all
//! ranks). In step s = 0..n-2 rank r sends block (r-s-1) to its right neighbour and receives
//! block (r-s-2) from its left, which it reduces into its own copy; the block it sends at step
//! s+1 is the one it reduced at step s. Each block is cut into segments of `segment` bytes and
//! the (step, segment) units form one pipeline: while unit u is on the wire, the transport
//! gives its idle time to reducing unit u-1 out of the other of two scratch buffers.
//!
//! Cost: (n-1)·(α + m/n·β + m/n·γ) without overlap; with it the γ term hides behind β once a
//! block spans two or more segments.

use std::ops::Range;

use super::{Reducer, Scratch, split_ref_mut};
use crate::dtype::{DType, ReduceOp};
use crate::reduce::Order;
use crate::transport::{Error, Op, Tag, Transport};

/// Reduce-scatter in place: afterwards `buf[blocks[rank]]` holds the reduction of that block
/// over all ranks (`Average` is left as a sum). Other blocks hold partial results.
pub fn reducescatter_ring<T: Transport + ?Sized>(
    t: &mut T,
    tag: Tag,
    buf: &mut [u8],
    blocks: &[Range<usize>],
    dtype: DType,
    op: ReduceOp,
    segment: usize,
) -> Result<(), Error> {
    let (r, n) = (t.rank(), t.size());
    if n == 1 {
        return Ok(());
    }
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let seg = (segment / dtype.size()).max(1) * dtype.size();
    let segments = blocks.iter().map(|b| b.len()).max().unwrap_or(0).div_ceil(seg).max(1);
    let piece = |block: usize, j: usize| {
        let b = &blocks[block];
        let start = (b.start + j * seg).min(b.end);
        start..(start + seg).min(b.end)
    };
    let mut scratch = [Scratch::new(seg), Scratch::new(seg)];
    // The unit received last: where it goes in `buf`, and which scratch holds it.
    let mut pending: Option<(Range<usize>, usize)> = None;
    for step in 0..n - 1 {
        let send_block = (r + 2 * n - step - 1) % n;
        let recv_block = (r + 2 * n - step - 2) % n;
        for j in 0..segments {
            let send = piece(send_block, j);
            let recv = piece(recv_block, j);
            let slot = (step * segments + j) % 2;
            // A segment is sent only once it is fully reduced.
            if let Some((dst, s)) = pending.as_ref().filter(|(dst, _)| dst.start < send.end && send.start < dst.end) {
                reduce_now(buf, dst.clone(), &mut scratch[*s], dtype, op);
                pending = None;
            }
            let (cur, prev) = match slot {
                0 => {
                    let [a, b] = &mut scratch;
                    (a, b)
                }
                _ => {
                    let [a, b] = &mut scratch;
                    (b, a)
                }
            };
            let dst = pending.take().map_or(0..0, |(d, _)| d);
            let (send_bytes, dst_bytes) = split_ref_mut(buf, send, dst.clone());
            let src = &prev.bytes(dst.len())[..];
            let mut work = Reducer::new(dst_bytes, src, dtype, op, Order::AccFirst);
            let mut ops =
                [Op::Send { peer: right, buf: send_bytes }, Op::Recv { peer: left, buf: cur.bytes(recv.len()) }];
            t.exchange(tag, &mut ops, &mut || work.step())?;
            work.finish();
            pending = Some((recv, slot));
        }
    }
    if let Some((dst, s)) = pending {
        reduce_now(buf, dst, &mut scratch[s], dtype, op);
    }
    Ok(())
}

fn reduce_now(buf: &mut [u8], dst: Range<usize>, scratch: &mut Scratch, dtype: DType, op: ReduceOp) {
    let len = dst.len();
    Reducer::new(&mut buf[dst], scratch.bytes(len), dtype, op, Order::AccFirst).finish();
}
