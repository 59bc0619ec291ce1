//! Recursive-doubling allreduce, for small messages.
//!
//! With p the largest power of two ≤ n and q = n - p: first the ranks below 2q fold pairwise
//! (even sends to odd), leaving p participants. In round k = 0..log2(p)-1 each participant
//! exchanges its whole buffer with the participant whose virtual rank differs in bit k and
//! reduces, lower rank's data first, so both sides compute the same bytes. Finally the odd
//! ranks below 2q send the result back to their even partner.
//!
//! Cost: (log2 p + 2·[q>0])·(α + m·β + m·γ): latency-optimal, the choice for small messages.

use super::Workspace;
use crate::dtype::{DType, ReduceOp};
use crate::reduce::{Order, reduce_into};
use crate::transport::{Error, Op, Tag, Transport, no_work};

/// Allreduce in place (`Average` is left as a sum; the caller divides).
pub fn allreduce_recursive_doubling<T: Transport + ?Sized>(
    t: &mut T,
    tag: Tag,
    buf: &mut [u8],
    dtype: DType,
    op: ReduceOp,
    ws: &mut Workspace,
) -> Result<(), Error> {
    let (r, n) = (t.rank(), t.size());
    if n == 1 {
        return Ok(());
    }
    let p = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let q = n - p;
    let tmp = ws.a.bytes(buf.len());
    let real = |v: usize| if v < q { 2 * v + 1 } else { v + q };

    let vrank = if r < 2 * q {
        if r % 2 == 0 {
            t.exchange(tag, &mut [Op::Send { peer: r + 1, buf }], &mut no_work)?;
            None
        } else {
            t.exchange(tag, &mut [Op::Recv { peer: r - 1, buf: tmp }], &mut no_work)?;
            reduce_into(dtype, op, buf, tmp, Order::SrcFirst);
            Some(r / 2)
        }
    } else {
        Some(r - q)
    };
    if let Some(v) = vrank {
        let mut mask = 1;
        while mask < p {
            let partner = real(v ^ mask);
            t.exchange(
                tag,
                &mut [Op::Send { peer: partner, buf }, Op::Recv { peer: partner, buf: tmp }],
                &mut no_work,
            )?;
            let order = if partner < r { Order::SrcFirst } else { Order::AccFirst };
            reduce_into(dtype, op, buf, tmp, order);
            mask <<= 1;
        }
    }
    if r < 2 * q {
        let op = if r % 2 == 0 { Op::Recv { peer: r + 1, buf } } else { Op::Send { peer: r - 1, buf } };
        t.exchange(tag, &mut [op], &mut no_work)?;
    }
    Ok(())
}
