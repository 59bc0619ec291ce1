//! Byte-level point-to-point links between ranks.
//!
//! A transport moves byte slices between ranks and knows nothing of dtypes or reductions. It
//! has two primitives: [`Transport::exchange`] runs a set of sends and receives to completion,
//! concurrently; [`Transport::stream`] moves a
//! numbered sequence of messages (a [`Flow`]), each as soon as the flow says it may go, so that
//! a long pipeline never waits for the slowest message of a step before starting the next. Each
//! message carries a [`Tag`] and its length; the receiver checks both, so ranks that disagree
//! on what they are doing fail instead of misreading each other's bytes.
//!
//! | transport | for | file set |
//! |---|---|---|
//! | [`tcp`] | ranks in different processes | `mod.rs` (transport, exchanges), `stream.rs` (flows), `pair.rs` (one peer), `connect.rs` (mesh set-up) |
//! | [`shm`] | ranks in different processes on one host | `mod.rs` (set-up, transport, exchanges and streams), `pair.rs` (one direction of a link), `segment.rs` (the shared memory), `connect.rs` (handing segments over) |
//! | [`mem`] | ranks as threads of one process, for deterministic tests | `mod.rs` (transport), `pair.rs` (one peer) |
//!
//! [`subset`] is no transport of its own: some of a transport's ranks, seen as one.

pub mod mem;
pub mod shm;
pub mod subset;
pub mod tcp;

use std::time::Duration;

use crate::os::Doorbell;

/// Identifies what a message belongs to. Opaque to transports; compared for equality.
pub type Tag = u128;

/// Rung once the job's first failure is on record (the world's watcher rings it): every wait
/// of this rank's links then fails with [`Error::JobFailed`], so that a rank blocked on a
/// silent peer learns at once of a failure that another rank saw.
pub type AbortBell = std::sync::Arc<Doorbell>;

/// `gone(peer)`: why a peer can no longer take part (it exited), or `None` while it may.
pub type Gone<'a> = dyn Fn(usize) -> Option<String> + Sync + 'a;

/// A transport's listening half during rendezvous: it has an address that the world publishes
/// (opaque bytes only this transport reads), and it becomes the transport once every rank's
/// address is known. New transports register in [`crate::world`].
pub trait Endpoint {
    /// The transport's name, which keys its address in the rendezvous record.
    fn name(&self) -> &'static str;

    /// What peers need to reach this rank.
    fn address(&self) -> Vec<u8>;

    /// Connects to every peer, given each rank's published address (this rank's included).
    /// The endpoint was bound with the tuning it needs. While it waits for a peer it asks
    /// `gone(peer)`, which says (as far as this rank can tell) why that peer can no longer
    /// connect, so that a rank that died after rendezvous fails the others at once.
    fn connect(
        self: Box<Self>,
        rank: usize,
        addresses: &[&[u8]],
        secret: &crate::bootstrap::Secret,
        gone: &Gone<'_>,
    ) -> Result<Box<dyn Transport>, crate::bootstrap::Error>;
}

/// One step of an [`Transport::exchange`]: a send or a receive.
#[derive(Debug)]
pub enum Step<'a> {
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

impl Step<'_> {
    /// The other rank.
    pub fn peer(&self) -> usize {
        match self {
            Step::Send { peer, .. } | Step::Recv { peer, .. } => *peer,
        }
    }
}

/// A numbered sequence of messages that [`Transport::stream`] moves. Message `k` is one send to
/// `to(k)` and one receive from `from(k)`; the sender's message `k` is the receiver's message
/// `k`, which is what both sides use to keep their links in step. The flow decides when each
/// transfer may start (its data is ready, its buffer is free) and does the deferred work
/// (reductions) whenever no transfer can move.
pub trait Flow {
    /// Number of messages.
    fn count(&self) -> usize;
    /// Destination of send `k`.
    fn to(&self, k: usize) -> usize;
    /// Source of receive `k`.
    fn from(&self, k: usize) -> usize;
    /// The bytes of send `k`, once they may be sent (from then on until `sent(k)`).
    fn send(&self, k: usize) -> Option<&[u8]>;
    /// Where receive `k` lands, once it may be received (from then on until `received(k)`).
    fn recv(&mut self, k: usize) -> Option<&mut [u8]>;
    /// Send `k` has left.
    fn sent(&mut self, k: usize);
    /// Receive `k` is complete.
    fn received(&mut self, k: usize);
    /// Does a slice of deferred work; returns whether more is ready to do now.
    fn work(&mut self) -> bool;
}

/// A set of links from this rank to every other rank.
pub trait Transport: Send {
    /// The transport's name ("tcp", "shm", "mem"), for reports.
    fn name(&self) -> &'static str;

    /// This rank.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Runs every op to completion. Ops to the same peer in the same direction complete in
    /// order; all others proceed concurrently. Fails if a peer closes, sends a message with
    /// another tag or length, or if nothing moves for the transport's timeout. After an error
    /// the transport is unusable.
    fn exchange(&mut self, tag: Tag, ops: &mut [Step<'_>]) -> Result<(), Error>;

    /// Moves every message of `flow` and finishes its work. Transfers start as soon as the flow
    /// allows, in message order per link; the same failures as [`Transport::exchange`].
    ///
    /// The default runs one message at a time through `exchange`, the send before the receive
    /// (no overlap between messages); transports whose sends may block override it.
    fn stream(&mut self, tag: Tag, flow: &mut dyn Flow) -> Result<(), Error> {
        for k in 0..flow.count() {
            let (to, from) = (flow.to(k), flow.from(k));
            // Work until the transfer may start; the flow guarantees it will once every
            // earlier message is done and its work finished.
            let ready = |flow: &mut dyn Flow, send: bool| {
                let may = |flow: &mut dyn Flow| if send { flow.send(k).is_some() } else { flow.recv(k).is_some() };
                while !may(flow) {
                    if !flow.work() && !may(flow) {
                        let peer = if send { to } else { from };
                        return Err(Error::Protocol { peer, detail: "stream schedule stalled".into() });
                    }
                }
                Ok(())
            };
            ready(flow, true)?;
            let data = flow.send(k).map(<[u8]>::to_vec).unwrap_or_default();
            self.exchange(tag, &mut [Step::Send { peer: to, buf: &data }])?;
            flow.sent(k);
            ready(flow, false)?;
            let buf = flow.recv(k).unwrap_or_else(|| unreachable!("ready"));
            self.exchange(tag, &mut [Step::Recv { peer: from, buf }])?;
            flow.received(k);
            while flow.work() {}
        }
        Ok(())
    }

    /// Sleeps until a peer has sent something this rank has not received yet (or closed its
    /// link), `wake` rings, or `timeout` passes; returns whether a peer has something. Receives
    /// nothing. The engine sleeps here while idle, so that a round another rank begins wakes it.
    fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool, Error>;

    /// Closes every link, so that peers blocked on this rank fail at once.
    fn close(&mut self);

    /// From now on, fail every wait once `bell` rings (see [`AbortBell`]). Transports whose
    /// waits cannot block on a silent peer (in-process ones) may ignore it.
    fn watch_abort(&mut self, _bell: AbortBell) {}

    /// Memory that every rank of this transport maps, for collectives that read their peers'
    /// data in place; `None` when the ranks share none (sockets, threads of a test).
    fn stage(&mut self) -> Option<&mut dyn Stage> {
        None
    }
}

/// A region per rank that every rank reads, in steps that all ranks take in the same order:
/// each rank writes its region ([`Stage::next`]), publishes it, waits until every rank has
/// published the same step ([`Stage::publish`]), then reads them all. A region is not written
/// again until every rank has read it (regions alternate between steps, and a rank begins a
/// step only after every rank has begun the one before), so one step costs one wait.
pub trait Stage {
    /// Bytes of a region.
    fn region(&self) -> usize;

    /// This rank's region for the next step, to fill before [`Stage::publish`]; fails once the
    /// transport failed (a peer may still be reading the region then).
    fn next(&mut self) -> Result<&mut [u8], Error>;

    /// Publishes the first `len` bytes (at most [`Stage::region`]) of this rank's region under
    /// `tag`, waits for every rank to publish the same step, and returns the first `len` bytes
    /// of every rank's region (index: rank), readable until the next call of [`Stage::next`].
    /// `layout` is whatever else every rank must agree on for the step to make sense (a
    /// fingerprint of how a buffer is cut into blocks, say; 0 when nothing). Fails if a rank
    /// used another tag, length or layout, if one began another kind of collective, if one is
    /// gone before it published, or after the transport's timeout; after an error the transport
    /// is unusable.
    fn publish(&mut self, tag: Tag, len: usize, layout: u64) -> Result<Vec<&[u8]>, Error>;
}

/// What can go wrong on a link.
#[derive(Debug, Clone, thiserror::Error)]
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
        source: std::sync::Arc<std::io::Error>,
    },
    /// Nothing moved for the timeout.
    #[error("no progress for {:.1} s waiting for rank(s) {peers:?}{}", waited.as_secs_f64(), through(via))]
    Timeout {
        /// The silent peers: those with unfinished transfers, or, when those were themselves
        /// waiting, the ranks they waited for that said nothing (see `World::trace_silent`).
        peers: Vec<usize>,
        /// How long.
        waited: Duration,
        /// The peers this rank waited for directly, when they were waiting on `peers` in turn
        /// (empty otherwise).
        via: Vec<usize>,
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
    /// Another rank recorded a failure of the job while this one waited.
    #[error("another rank recorded a failure of the job")]
    JobFailed,
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
            Error::BadPeer { .. } | Error::Unusable | Error::JobFailed => None,
        }
    }
}

/// Checks that every op names another existing rank.
pub(crate) fn check_peers(rank: usize, size: usize, ops: &[Step<'_>]) -> Result<(), Error> {
    match ops.iter().map(Step::peer).find(|&p| p >= size || p == rank) {
        Some(peer) => Err(Error::BadPeer { peer, rank, size }),
        None => Ok(()),
    }
}

/// The tail of a timeout's message that says through whom this rank waited.
fn through(via: &[usize]) -> String {
    match via {
        [] => String::new(),
        via => format!(" (through rank(s) {via:?}, which wait(s) for them)"),
    }
}

/// When each peer last moved a byte, or was last not waited for: a wait fails once a peer it
/// waits for has been silent for the timeout, whatever the other peers do (a rank that still
/// talks to the others must not hide that one of them is gone).
pub(crate) struct Heard(Vec<std::time::Instant>);

impl Heard {
    pub(crate) fn new(size: usize) -> Heard {
        Heard(vec![std::time::Instant::now(); size])
    }

    pub(crate) fn moved(&mut self, peer: usize) {
        self.0[peer] = std::time::Instant::now();
    }

    /// How long this rank may still wait for the peers `awaited` says it waits for, or the
    /// timeout error naming those silent for `timeout`. The others' clocks restart.
    pub(crate) fn left(&mut self, awaited: impl Fn(usize) -> bool, timeout: Duration) -> Result<Duration, Error> {
        let now = std::time::Instant::now();
        let mut left = timeout;
        let mut silent = Vec::new();
        for (p, since) in self.0.iter_mut().enumerate() {
            if !awaited(p) {
                *since = now;
                continue;
            }
            match (*since + timeout).checked_duration_since(now).filter(|d| !d.is_zero()) {
                Some(d) => left = left.min(d),
                None => silent.push(p),
            }
        }
        match silent.is_empty() {
            true => Ok(left),
            false => Err(Error::Timeout { peers: silent, waited: timeout, via: Vec::new() }),
        }
    }
}
