//! Recursive-doubling allreduce, for small messages.
//!
//! With p the largest power of two ≤ n and q = n - p: first the ranks below 2q fold pairwise
//! (even sends to odd), leaving p participants. In round k = 0..log2(p)-1 each participant
//! exchanges its whole buffer with the participant whose virtual rank differs in bit k and
//! reduces, lower rank's data first, so both sides compute the same bytes. Finally the odd
//! ranks below 2q send the result back to their even partner.
//!
//! Cost: (log2 p + 2·[q>0])·(α + m·β + m·γ): latency-optimal, the choice for small messages.

use super::{Fold, Params, Workspace};
use crate::dtype::ReduceOp;
use crate::reduce::{Order, reduce_into};
use crate::transport::{Error, Step, Transport};

/// Allreduce in place (`Average` is left as a sum; the caller divides).
pub fn allreduce_recursive_doubling<T: Transport + ?Sized>(
    t: &mut T,
    p: &Params,
    buf: &mut [u8],
    op: ReduceOp,
    ws: &mut Workspace,
) -> Result<(), Error> {
    let Params { tag, dtype, .. } = *p;
    let (r, n) = (t.rank(), t.size());
    if n == 1 {
        return Ok(());
    }
    let fold = Fold::new(n);
    if let Some(v) = fold.fold(t, tag, buf, dtype, op, ws)? {
        let tmp = ws.a.bytes(buf.len());
        let mut mask = 1;
        while mask < fold.p {
            let partner = fold.real(v ^ mask);
            let mut ops = [Step::Send { peer: partner, buf: &*buf }, Step::Recv { peer: partner, buf: &mut *tmp }];
            t.exchange(tag, &mut ops)?;
            let order = if partner < r { Order::SrcFirst } else { Order::AccFirst };
            reduce_into(dtype, op, buf, tmp, order);
            mask <<= 1;
        }
    }
    fold.unfold(t, tag, buf)?;
    Ok(())
}
