//! Joining a job: a small authenticated key-value store, the handshake every connection opens
//! with, the rendezvous that publishes each rank's transport address and host identity, and the
//! job's first-failure record.
//!
//! Transports never find peers themselves: they get addresses from here.

pub(crate) mod auth;
mod client;
mod first_failure;
pub(crate) mod rendezvous;
mod roll_call;
mod secret;
pub(crate) mod store;
mod topology;
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

pub use auth::{Purpose, accept_handshake, connect_handshake, was_dropped};
pub use client::StoreClient;
pub use first_failure::FirstFailure;
pub use rendezvous::{PeerInfo, exchange_peers};
pub use roll_call::RollCall;
pub use secret::Secret;
pub use store::StoreServer;
pub use topology::Topology;
pub use wire::{MAX_MESSAGE, read_msg, write_msg};

/// Errors of the bootstrap layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the address.
        what: String,
        /// The OS error.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// The other side refused our handshake (wrong secret, wrong protocol version).
    #[error("{addr} refused the connection: {reason}")]
    Refused {
        /// The peer's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer sent something that is not the ferrovod protocol.
    #[error("protocol error with {addr}: {detail}")]
    Protocol {
        /// The peer's address.
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {:.1} s {what}", waited.as_secs_f64())]
    Timeout {
        /// What was awaited, naming the missing ranks or keys.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// The store answered with an error.
    #[error("store at {addr}: {detail}")]
    Store {
        /// The store's address.
        addr: SocketAddr,
        /// Its message.
        detail: String,
    },
    /// The rendezvous found an inconsistent world (a rank claimed twice, a bad peer record).
    #[error("rendezvous: {0}")]
    World(String),
}
