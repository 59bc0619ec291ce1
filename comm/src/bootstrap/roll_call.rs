//! Roll calls: which ranks of a job are alive, asked through the store.
//!
//! A rank that timed out knows only that a peer said nothing; the peer may be dead, stopped,
//! or alive and waiting for someone else (a ring that a stopped rank broke upstream leaves its
//! other ranks idle, not waiting). A roll call tells these apart: every rank's watcher thread
//! answers each call on its own store connection, whatever the rank's other threads are doing,
//! and a rank that does not answer within the caller's window is dead or stopped.
//!
//! Keys under `{prefix}/roll/`: `seq`, a counter that numbers the calls; `call/<n>`, set by the
//! n-th caller; `here/<n>/<rank>`, set by each rank's answer to it. Watchers answer calls in
//! order, so none is missed, whenever the watcher started.

use super::{Error, StoreClient};

/// The roll calls of one job (or one communicator) in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollCall {
    prefix: String,
}

impl RollCall {
    /// The roll calls whose keys live under `{prefix}/roll/`.
    pub fn new(prefix: &str) -> RollCall {
        RollCall { prefix: format!("{prefix}/roll") }
    }

    /// The key the `n`-th call (from 1) sets, for a watcher to wait on.
    pub fn call_key(&self, n: u64) -> String {
        format!("{}/call/{n}", self.prefix)
    }

    fn here_key(&self, n: u64, rank: usize) -> String {
        format!("{}/here/{n}/{rank}", self.prefix)
    }

    /// Calls the roll: the keys that `ranks` answer it under, in their order, for the caller
    /// to wait on. Those not set in the caller's window are the ranks that are gone.
    pub fn call(&self, store: &mut StoreClient, ranks: &[usize]) -> Result<Vec<String>, Error> {
        let n = store.add(&format!("{}/seq", self.prefix), 1)? as u64;
        store.set(&self.call_key(n), &[])?;
        Ok(ranks.iter().map(|&r| self.here_key(n, r)).collect())
    }

    /// `rank`'s answer to the `n`-th call.
    pub fn answer(&self, store: &mut StoreClient, n: u64, rank: usize) -> Result<(), Error> {
        store.set(&self.here_key(n, rank), &[])
    }
}
