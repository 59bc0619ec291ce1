//! Byte-level point-to-point links between ranks.
//!
//! A transport moves byte slices between ranks and knows nothing of dtypes or reductions. Its
//! one primitive is [`Transport::exchange`]: run a set of sends and receives to completion,
//! concurrently, while giving spare time to the caller's `work` (the ring reduces one segment
//! while the next one is on the wire). Each message carries a [`Tag`] and its length; the
//! receiver checks both, so ranks that disagree on what they are doing fail instead of
//! misreading each other's bytes.
//!
//! | transport | for | file set |
//! |---|---|---|
//! | [`tcp`] | ranks in different processes | `mod.rs` (transport), `pair.rs` (one peer), `connect.rs` (mesh set-up) |
//! | [`mem`] | ranks as threads of one process, for deterministic tests | `mod.rs` (transport), `pair.rs` (one peer) |

pub mod mem;
pub mod tcp;

use std::time::Duration;

use crate::sys::Doorbell;

/// Identifies what a message belongs to. Opaque to transports; compared for equality.
pub type Tag = u128;

/// One transfer within an [`Transport::exchange`].
#[derive(Debug)]
pub enum Op<'a> {
    /// Send `buf` to `peer`.
    Send {
        /// Destination rank.
        peer: usize,
        /// The bytes.
        buf: &'a [u8],
    },
    /// Receive exactly `buf.len()` bytes from `peer` into `buf`.
    Recv {
        /// Source rank.
        peer: usize,
        /// Where the bytes go.
        buf: &'a mut [u8],
    },
}

impl Op<'_> {
    /// The other rank.
    pub fn peer(&self) -> usize {
        match self {
            Op::Send { peer, .. } | Op::Recv { peer, .. } => *peer,
        }
    }
}

/// No work to overlap with I/O.
pub fn no_work() -> bool {
    false
}

/// A set of links from this rank to every other rank.
pub trait Transport: Send {
    /// This rank.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Runs every op to completion. Ops to the same peer in the same direction complete in
    /// order; all others proceed concurrently. Whenever no I/O can proceed, `work` is called
    /// until it returns `false` (no work left); only then does the transport block. Fails if a
    /// peer closes, sends a message with another tag or length, or if nothing moves for the
    /// transport's timeout. After an error the transport is unusable.
    fn exchange(&mut self, tag: Tag, ops: &mut [Op<'_>], work: &mut dyn FnMut() -> bool) -> Result<(), Error>;

    /// Sleeps until a peer has sent something this rank has not received yet (or closed its
    /// link), `wake` rings, or `timeout` passes; returns whether a peer has something. Receives
    /// nothing. The engine sleeps here while idle, so that a round another rank begins wakes it.
    fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool, Error>;

    /// Closes every link, so that peers blocked on this rank fail at once.
    fn close(&mut self);
}

/// What can go wrong on a link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer closed the connection (it exited, crashed or aborted).
    #[error("connection to rank {peer} closed (rank {peer} exited or aborted)")]
    Closed {
        /// The peer.
        peer: usize,
    },
    /// A socket call failed.
    #[error("I/O error on the link to rank {peer}: {source}")]
    Io {
        /// The peer.
        peer: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Nothing moved for the timeout.
    #[error("no progress for {:.1} s waiting for rank(s) {peers:?}", waited.as_secs_f64())]
    Timeout {
        /// The peers with unfinished transfers.
        peers: Vec<usize>,
        /// How long.
        waited: Duration,
    },
    /// The peer sent a message that belongs to another operation.
    #[error("rank {peer} sent a message with tag {got:#x}, expected {expected:#x}")]
    TagMismatch {
        /// The peer.
        peer: usize,
        /// Our tag.
        expected: Tag,
        /// Theirs.
        got: Tag,
    },
    /// The peer sent a message of another length for the same operation.
    #[error("rank {peer} sent {got} bytes, expected {expected}")]
    LengthMismatch {
        /// The peer.
        peer: usize,
        /// What we expected.
        expected: u64,
        /// What the peer sent.
        got: u64,
    },
    /// The peer broke the link protocol.
    #[error("protocol error on the link to rank {peer}: {detail}")]
    Protocol {
        /// The peer.
        peer: usize,
        /// What was wrong.
        detail: String,
    },
    /// An op names a rank that does not exist or this rank itself.
    #[error("invalid peer rank {peer} (world of {size}, this is rank {rank})")]
    BadPeer {
        /// The rank named.
        peer: usize,
        /// This rank.
        rank: usize,
        /// World size.
        size: usize,
    },
    /// The transport failed earlier and was closed.
    #[error("transport closed after an earlier failure")]
    Unusable,
}

impl Error {
    /// The peer this error is about, if one.
    pub fn peer(&self) -> Option<usize> {
        match self {
            Error::Closed { peer }
            | Error::Io { peer, .. }
            | Error::TagMismatch { peer, .. }
            | Error::LengthMismatch { peer, .. }
            | Error::Protocol { peer, .. } => Some(*peer),
            Error::Timeout { peers, .. } => peers.first().copied(),
            Error::BadPeer { .. } | Error::Unusable => None,
        }
    }
}

/// Checks that every op names another existing rank.
pub(crate) fn check_peers(rank: usize, size: usize, ops: &[Op<'_>]) -> Result<(), Error> {
    match ops.iter().map(Op::peer).find(|&p| p >= size || p == rank) {
        Some(peer) => Err(Error::BadPeer { peer, rank, size }),
        None => Ok(()),
    }
}
