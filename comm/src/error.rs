//! The crate's error type. Every message names this rank, the operation, and the peer or value
//! that was wrong.

use crate::{bootstrap, transport};

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ferrovod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment knob or builder value is missing or malformed.
    #[error("configuration: {name}: {detail}")]
    Config {
        /// The variable or builder field.
        name: &'static str,
        /// What is wrong with it.
        detail: String,
    },

    /// The caller passed arguments that cannot work (buffer sizes, root, splits).
    #[error("rank {rank}: {op}: invalid argument: {detail}")]
    InvalidArgument {
        /// This rank.
        rank: usize,
        /// The operation called.
        op: &'static str,
        /// What is wrong.
        detail: String,
    },

    /// Joining the job failed: store, authentication, rendezvous or connecting peers.
    #[error("rank {rank}: start-up failed: {cause}")]
    Bootstrap {
        /// This rank.
        rank: usize,
        /// The cause (part of the message, so that one line tells the whole story).
        cause: bootstrap::Error,
    },

    /// A collective failed on this rank; this rank saw the cause itself.
    #[error("rank {rank}: {op} failed: {cause}")]
    Collective {
        /// This rank.
        rank: usize,
        /// The collective, with its sequence number, dtype and size.
        op: String,
        /// What the transport saw (part of the message).
        cause: transport::Error,
    },

    /// Two ranks called different collectives, or the same one with different arguments.
    #[error("rank {rank}: {op} does not match rank {peer}, which called {theirs}")]
    Mismatch {
        /// This rank.
        rank: usize,
        /// The collective this rank called.
        op: String,
        /// The rank that disagrees.
        peer: usize,
        /// What that rank called.
        theirs: String,
    },

    /// A collective failed because another rank reported a failure first.
    #[error("rank {rank}: {op} failed: rank {by} reported: {reason}")]
    Aborted {
        /// This rank.
        rank: usize,
        /// The collective this rank was running.
        op: String,
        /// The rank that saw the root cause.
        by: usize,
        /// Its description of the root cause.
        reason: String,
    },

    /// Ranks submitted the same tensor name with different arguments.
    #[error("rank {rank}: tensor {name:?}: ranks disagree on {field}: {values}")]
    TensorMismatch {
        /// This rank.
        rank: usize,
        /// The tensor.
        name: String,
        /// What differs: op, root, dtype, shape or group.
        field: &'static str,
        /// Each side's value, with its ranks.
        values: String,
    },

    /// Tensors waited for other ranks longer than `FERROVOD_STALL_TIMEOUT`.
    #[error("rank {rank}: stalled: {detail}")]
    Stalled {
        /// This rank.
        rank: usize,
        /// Which tensors waited how long for which ranks.
        detail: String,
    },

    /// The engine stopped (shut down, or failed) before this request completed.
    #[error("rank {rank}: engine stopped: {reason}")]
    EngineStopped {
        /// This rank.
        rank: usize,
        /// Why.
        reason: String,
    },

    /// The communicator failed earlier and can no longer be used.
    #[error("rank {rank}: communicator is unusable after an earlier failure: {reason}")]
    Broken {
        /// This rank.
        rank: usize,
        /// The earlier failure.
        reason: String,
    },
}
