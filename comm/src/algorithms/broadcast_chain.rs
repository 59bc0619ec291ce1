//! Pipelined chain broadcast, for large messages.
//!
//! Ranks form a chain from the root (virtual rank v = rank - root mod n). The buffer is cut
//! into segments; every rank but the ends receives segment k+1 from its predecessor while it
//! forwards segment k to its successor, so after a fill of n-2 segments every link is busy.
//!
//! Cost: (n-2+s)·(α + m/s·β) for s segments, about m·β for large m: independent of n.

use super::Params;
use crate::transport::{Error, Step, Transport};

/// Broadcasts `buf` from `root` to every rank.
pub fn broadcast_chain<T: Transport + ?Sized>(t: &mut T, p: &Params, buf: &mut [u8], root: usize) -> Result<(), Error> {
    let Params { tag, segment, .. } = *p;
    let (r, n) = (t.rank(), t.size());
    if n == 1 {
        return Ok(());
    }
    let v = (r + n - root) % n;
    let prev = (r + n - 1) % n;
    let next = (r + 1) % n;
    let seg = segment.max(1);
    let last = v == n - 1;
    // An empty buffer still travels as one empty message per link, as the middle ranks expect.
    if v == 0 {
        let mut ops: Vec<Step<'_>> = buf.chunks(seg).map(|c| Step::Send { peer: next, buf: c }).collect();
        if ops.is_empty() {
            ops.push(Step::Send { peer: next, buf: &[] });
        }
        return t.exchange(tag, &mut ops);
    }
    if last {
        let mut ops: Vec<Step<'_>> = buf.chunks_mut(seg).map(|c| Step::Recv { peer: prev, buf: c }).collect();
        if ops.is_empty() {
            ops.push(Step::Recv { peer: prev, buf: &mut [] });
        }
        return t.exchange(tag, &mut ops);
    }
    let segments = buf.len().div_ceil(seg);
    if segments == 0 {
        t.exchange(tag, &mut [Step::Recv { peer: prev, buf: &mut [] }])?;
        return t.exchange(tag, &mut [Step::Send { peer: next, buf: &[] }]);
    }
    let first = seg.min(buf.len());
    t.exchange(tag, &mut [Step::Recv { peer: prev, buf: &mut buf[..first] }])?;
    for k in 0..segments {
        let (done, rest) = buf.split_at_mut(((k + 1) * seg).min(buf.len()));
        let send = &done[k * seg..];
        if k + 1 < segments {
            let len = seg.min(rest.len());
            let recv = &mut rest[..len];
            t.exchange(tag, &mut [Step::Send { peer: next, buf: send }, Step::Recv { peer: prev, buf: recv }])?;
        } else {
            t.exchange(tag, &mut [Step::Send { peer: next, buf: send }])?;
        }
    }
    Ok(())
}
