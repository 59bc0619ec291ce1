//! All-to-all over a shared stage.
//!
//! First step: every rank publishes how many bytes it sends to and expects from each rank
//! (2n numbers). Every rank then knows the whole matrix: how many data steps the largest block
//! needs, and whether what each rank sends to another is what that one expects (if not, that
//! pair fails at once, each naming the other, and the others learn of it from their abort).
//!
//! Data steps: a rank's region holds n slots of `slot` bytes, slot q for rank q; in step k every
//! rank puts piece k of its block for q in slot q, and takes piece k of its block from q out of
//! slot `rank` of q's region. Its own block is copied directly.
//!
//! Cost: one wait (α) for the sizes, then per step one wait + n-1 slots copied in and out; a
//! block of m bytes takes ⌈m·n / region⌉ steps.

use std::ops::Range;

use super::Params;
use crate::transport::{Error, Stage};

/// Whether a stage region is large enough for the size step of `n` ranks, and for data slots
/// worth the steps.
pub(crate) fn alltoall_stage_fits(region: usize, n: usize) -> bool {
    region >= 2 * n * 8 && region / n >= 64
}

/// All-to-all: `send[send_blocks[i]]` goes to rank i, and rank i's block for this rank lands
/// in `recv[recv_blocks[i]]` (both lists in rank order). The region must fit (see
/// [`alltoall_stage_fits`]).
pub fn alltoall_stage(
    s: &mut dyn Stage,
    p: &Params,
    rank: usize,
    send: &[u8],
    send_blocks: &[Range<usize>],
    recv: &mut [u8],
    recv_blocks: &[Range<usize>],
) -> Result<(), Error> {
    let n = send_blocks.len();
    let sizes = 2 * n * 8;
    // Step 1: the sizes, this rank's row (sends) then its column (receives).
    {
        let region = s.next()?;
        let lens = send_blocks.iter().chain(recv_blocks).map(|b| b.len() as u64);
        for (i, len) in lens.enumerate() {
            region[i * 8..(i + 1) * 8].copy_from_slice(&len.to_le_bytes());
        }
    }
    let all = s.publish(p.tag, sizes, 0)?;
    let read = |q: usize, i: usize| u64::from_le_bytes(all[q][i * 8..(i + 1) * 8].try_into().unwrap_or_default());
    let mut largest = 0u64;
    for q in 0..n {
        for j in 0..n {
            let (sent, expected) = (read(q, j), read(j, n + q));
            // The pair refuses, each naming the other; the other ranks go on to the data steps
            // and learn of it from the pair's abort.
            if sent != expected && rank == j {
                return Err(Error::LengthMismatch { peer: q, expected, got: sent });
            }
            if sent != expected && rank == q {
                return Err(Error::LengthMismatch { peer: j, expected: sent, got: expected });
            }
            largest = largest.max(sent).max(expected);
        }
    }

    recv[recv_blocks[rank].clone()].copy_from_slice(&send[send_blocks[rank].clone()]);
    let slot = s.region() / n;
    let steps = (largest as usize).div_ceil(slot);
    for k in 0..steps {
        let piece = |block: &Range<usize>| {
            let start = (block.start + k * slot).min(block.end);
            start..(start + slot).min(block.end)
        };
        let region = s.next()?;
        for (q, block) in send_blocks.iter().enumerate().filter(|&(q, _)| q != rank) {
            let part = piece(block);
            region[q * slot..q * slot + part.len()].copy_from_slice(&send[part]);
        }
        let all = s.publish(p.tag, n * slot, 0)?;
        for (q, block) in recv_blocks.iter().enumerate().filter(|&(q, _)| q != rank) {
            let part = piece(block);
            let len = part.len();
            recv[part].copy_from_slice(&all[q][rank * slot..rank * slot + len]);
        }
    }
    Ok(())
}
