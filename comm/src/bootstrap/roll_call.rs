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

use std::time::Duration;

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

    /// Calls the roll of `ranks` and waits up to `window` for their answers: the ranks that
    /// did not answer, in the order given.
    pub fn call(&self, store: &mut StoreClient, ranks: &[usize], window: Duration) -> Result<Vec<usize>, Error> {
        let n = store.add(&format!("{}/seq", self.prefix), 1)? as u64;
        store.set(&self.call_key(n), &[])?;
        let keys: Vec<String> = ranks.iter().map(|&r| self.here_key(n, r)).collect();
        match store.wait(&keys, window)? {
            Ok(_) => Ok(Vec::new()),
            Err(missing) => Ok(ranks.iter().zip(&keys).filter(|(_, k)| missing.contains(k)).map(|(&r, _)| r).collect()),
        }
    }

    /// `rank`'s answer to the `n`-th call.
    pub fn answer(&self, store: &mut StoreClient, n: u64, rank: usize) -> Result<(), Error> {
        store.set(&self.here_key(n, rank), &[])
    }
}
