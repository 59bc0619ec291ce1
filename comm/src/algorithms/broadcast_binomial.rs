//! Binomial-tree broadcast, for small messages.
//!
//! With virtual ranks counted from the root, virtual rank v receives from v minus its lowest
//! set bit, then sends to v + 2^k for every 2^k below that bit (the root: below n), all sends
//! posted at once.
//!
//! Cost: ⌈log2 n⌉·(α + m·β).

use super::Params;
use crate::transport::{Error, Step, Transport};

/// Broadcasts `buf` from `root` to every rank.
pub fn broadcast_binomial<T: Transport + ?Sized>(
    t: &mut T,
    p: &Params,
    buf: &mut [u8],
    root: usize,
) -> Result<(), Error> {
    let tag = p.tag;
    let (r, n) = (t.rank(), t.size());
    let v = (r + n - root) % n;
    let real = |v: usize| (v + root) % n;
    let mut mask = 1;
    while mask < n {
        if v & mask != 0 {
            t.exchange(tag, &mut [Step::Recv { peer: real(v - mask), buf: &mut *buf }])?;
            break;
        }
        mask <<= 1;
    }
    let mut sends = Vec::new();
    mask >>= 1;
    while mask > 0 {
        if v + mask < n {
            sends.push(Step::Send { peer: real(v + mask), buf: &*buf });
        }
        mask >>= 1;
    }
    if !sends.is_empty() {
        t.exchange(tag, &mut sends)?;
    }
    Ok(())
}
