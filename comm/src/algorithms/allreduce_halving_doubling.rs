//! Halving-doubling allreduce (Rabenseifner): a reduce-scatter by recursive halving, then an
//! allgather by recursive doubling.
//!
//! With p the largest power of two ≤ n, the ranks beyond p first fold into a partner as in
//! recursive doubling. Then, for k = log2(p)-1 down to 0, each participant exchanges half of
//! its current range with the participant whose virtual rank differs in bit k: it keeps the
//! lower half if its bit is 0, sends the other, and reduces what it receives into the half it
//! keeps. Virtual rank v ends owning block v. The allgather runs the same pairs in reverse,
//! doubling the range each time. Large buffers are cut into `chunk`-byte pieces, as the ring
//! does, to stay in cache. Every (step, segment) of every piece is one message of a
//! [`Schedule`], so a segment moves on as soon as the bytes it carries are reduced.
//!
//! Cost: 2·log2(p)·α + 2(p-1)/p·m·β + (p-1)/p·m·γ (plus 2·(α + m·β) when n is not a power of
//! two): the ring's bandwidth in log2(p) instead of p-1 steps per phase.

use std::ops::Range;

use super::{Fold, Params, Schedule, Workspace, even_blocks, piece_ranges, schedule::Msg};
use crate::dtype::{DType, ReduceOp};
use crate::transport::{Error, Transport};

/// Allreduce in place (`Average` is left as a sum; the caller divides).
pub fn allreduce_halving_doubling<T: Transport + ?Sized>(
    t: &mut T,
    p: &Params,
    buf: &mut [u8],
    op: ReduceOp,
    ws: &mut Workspace,
) -> Result<(), Error> {
    let Params { tag, dtype, segment, chunk } = *p;
    let n = t.size();
    if n == 1 {
        return Ok(());
    }
    let fold = Fold::new(n);
    if let Some(v) = fold.fold(t, tag, buf, dtype, op, ws)? {
        let segment = (segment / dtype.size()).max(1) * dtype.size();
        let mut s = Schedule::default();
        for piece in piece_ranges(buf.len(), chunk, dtype) {
            s.group();
            halve_then_double(&mut s, piece, v, &fold, dtype, segment);
        }
        s.run(t, tag, buf, dtype, op, &mut ws.a)?;
    }
    fold.unfold(t, tag, buf)?;
    Ok(())
}

/// Appends the messages of one piece: the halving steps (reduced), then the doubling steps.
fn halve_then_double(s: &mut Schedule, piece: Range<usize>, v: usize, fold: &Fold, dtype: DType, segment: usize) {
    let p = fold.p;
    let blocks: Vec<_> = even_blocks(piece.len() / dtype.size(), p, dtype.size())
        .into_iter()
        .map(|b| piece.start + b.start..piece.start + b.end)
        .collect();
    let bytes = |lo: usize, hi: usize| blocks[lo].start..blocks[hi - 1].end;
    // Every range of a step spans `width` blocks; the first such range is the longest (the
    // larger blocks come first). Cutting every rank's step into as many parts as that range
    // needs keeps the message numbering the same on all ranks, which the schedule requires:
    // partners of a doubling step held different ranges in earlier steps.
    let mut push = |partner: usize, width: usize, send: Range<usize>, recv: Range<usize>, reduce: bool| {
        for j in 0..Schedule::parts(&[bytes(0, width)], segment) {
            let (send, recv) = (Schedule::part(&send, segment, j), Schedule::part(&recv, segment, j));
            s.push(Msg { to: partner, from: partner, send, recv, reduce });
        }
    };
    let (mut lo, mut hi) = (0, p);
    let mut mask = p / 2;
    while mask > 0 {
        let mid = lo + (hi - lo) / 2;
        let (keep, give) = if v & mask == 0 { ((lo, mid), (mid, hi)) } else { ((mid, hi), (lo, mid)) };
        push(fold.real(v ^ mask), mid - lo, bytes(give.0, give.1), bytes(keep.0, keep.1), true);
        (lo, hi) = keep;
        mask >>= 1;
    }
    let mut mask = 1;
    while mask < p {
        let width = hi - lo;
        let theirs = if v & mask == 0 { (hi, hi + width) } else { (lo - width, lo) };
        push(fold.real(v ^ mask), width, bytes(lo, hi), bytes(theirs.0, theirs.1), false);
        (lo, hi) = (lo.min(theirs.0), hi.max(theirs.1));
        mask <<= 1;
    }
}
