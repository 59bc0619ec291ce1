//! Dissemination barrier.
//!
//! In round k = 0..⌈log2 n⌉-1 rank r sends an empty message to r+2^k and receives one from
//! r-2^k. After the last round every rank has heard, directly or not, from every other.
//!
//! Cost: ⌈log2 n⌉·α.

use super::Params;
use crate::transport::{Error, Step, Transport};

/// Returns once every rank has entered the barrier.
pub fn barrier_dissemination<T: Transport + ?Sized>(t: &mut T, p: &Params) -> Result<(), Error> {
    let tag = p.tag;
    let (r, n) = (t.rank(), t.size());
    let mut dist = 1;
    while dist < n {
        let mut ops =
            [Step::Send { peer: (r + dist) % n, buf: &[] }, Step::Recv { peer: (r + n - dist) % n, buf: &mut [] }];
        t.exchange(tag, &mut ops)?;
        dist <<= 1;
    }
    Ok(())
}
