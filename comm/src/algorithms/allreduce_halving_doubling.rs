//! Halving-doubling allreduce (Rabenseifner): a reduce-scatter by recursive halving, then an
//! allgather by recursive doubling.
//!
//! With p the largest power of two ≤ n, the ranks beyond p first fold into a partner as in
//! recursive doubling. Then, for k = log2(p)-1 down to 0, each participant exchanges half of
//! its current range with the participant whose virtual rank differs in bit k: it keeps the
//! lower half if its bit is 0, sends the other, and reduces what it receives into the half it
//! keeps (pipelined in segments, see [`super::reduce_pipeline`]). Virtual rank v ends owning
//! block v. The allgather runs the same pairs in reverse, doubling the range each time. Large
//! buffers run as a sequence of `chunk`-byte pieces, as the ring does, to stay in cache.
//!
//! Cost: 2·log2(p)·α + 2(p-1)/p·m·β + (p-1)/p·m·γ (plus 2·(α + m·β) when n is not a power of
//! two): the ring's bandwidth in log2(p) instead of p-1 steps per phase.

use super::{Fold, Unit, Workspace, even_blocks, pieces, reduce_pipeline, split_ref_mut};
use crate::dtype::{DType, ReduceOp};
use crate::transport::{Error, Op, Tag, Transport, no_work};

/// Allreduce in place (`Average` is left as a sum; the caller divides).
#[allow(clippy::too_many_arguments)]
pub fn allreduce_halving_doubling<T: Transport + ?Sized>(
    t: &mut T,
    tag: Tag,
    buf: &mut [u8],
    dtype: DType,
    op: ReduceOp,
    segment: usize,
    chunk: usize,
    ws: &mut Workspace,
) -> Result<(), Error> {
    let n = t.size();
    if n == 1 {
        return Ok(());
    }
    let fold = Fold::new(n);
    if let Some(v) = fold.fold(t, tag, buf, dtype, op, ws)? {
        for piece in pieces(buf, chunk, dtype) {
            halve_then_double(t, tag, piece, v, &fold, dtype, op, segment, ws)?;
        }
    }
    fold.unfold(t, tag, buf)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn halve_then_double<T: Transport + ?Sized>(
    t: &mut T,
    tag: Tag,
    buf: &mut [u8],
    v: usize,
    fold: &Fold,
    dtype: DType,
    op: ReduceOp,
    segment: usize,
    ws: &mut Workspace,
) -> Result<(), Error> {
    let (p, real) = (fold.p, |v: usize| fold.real(v));
    let blocks = even_blocks(buf.len() / dtype.size(), p, dtype.size());
    let bytes = |lo: usize, hi: usize| blocks[lo].start..blocks[hi - 1].end;
    let (mut lo, mut hi) = (0, p);
    let mut mask = p / 2;
    while mask > 0 {
        let mid = lo + (hi - lo) / 2;
        let partner = real(v ^ mask);
        let (keep, give) = if v & mask == 0 { ((lo, mid), (mid, hi)) } else { ((mid, hi), (lo, mid)) };
        let unit = Unit { to: partner, send: bytes(give.0, give.1), from: partner, dst: bytes(keep.0, keep.1) };
        reduce_pipeline(t, tag, buf, &[unit], dtype, op, segment, ws)?;
        (lo, hi) = keep;
        mask >>= 1;
    }
    let mut mask = 1;
    while mask < p {
        let width = hi - lo;
        let partner = real(v ^ mask);
        let theirs = if v & mask == 0 { (hi, hi + width) } else { (lo - width, lo) };
        let (send, recv) = split_ref_mut(buf, bytes(lo, hi), bytes(theirs.0, theirs.1));
        t.exchange(
            tag,
            &mut [Op::Send { peer: partner, buf: send }, Op::Recv { peer: partner, buf: recv }],
            &mut no_work,
        )?;
        (lo, hi) = (lo.min(theirs.0), hi.max(theirs.1));
        mask <<= 1;
    }
    Ok(())
}
