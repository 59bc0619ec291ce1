//! Broadcast over a shared stage: per piece (a region's worth) the root copies it into its
//! region and every other rank copies it out, all at once.
//!
//! Cost per piece of m bytes: one wait (α) + m copy in + m copy out on every other rank.

use super::{Params, piece_ranges};
use crate::transport::{Error, Stage};

/// Broadcast in place from `root`, this being `rank`.
pub fn broadcast_stage(
    s: &mut dyn Stage,
    p: &Params,
    (rank, n): (usize, usize),
    buf: &mut [u8],
    root: usize,
) -> Result<(), Error> {
    if root >= n {
        return Err(Error::BadPeer { peer: root, rank, size: n });
    }
    for piece in piece_ranges(buf.len(), s.region(), p.dtype) {
        let chunk = &mut buf[piece];
        if rank == root {
            s.next()?[..chunk.len()].copy_from_slice(chunk);
        }
        let all = s.publish(p.tag, chunk.len(), 0)?;
        if rank != root {
            chunk.copy_from_slice(all[root]);
        }
    }
    Ok(())
}
