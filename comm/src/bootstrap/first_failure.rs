//! The first failure of a job, agreed through the store: many writers may fail at once, exactly
//! one record wins, and everyone else reads that one.
//!
//! Two keys under `{prefix}/first_failure/`: `claim`, a counter every writer adds 1 to (the
//! writer that reads back 1 is the first), and `value`, which only that writer sets. Readers
//! wait on `value`. The value is encoded before the claim is taken, so a claim is never left
//! without its value by an encoding error.
//!
//! The launchers of a multi-task job use it to agree on the failure every task reports, and the
//! communicator's ranks to agree on why the job stopped.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Error, StoreClient};

/// The first-failure record of one job (or one communicator) in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstFailure {
    claim: String,
    value: String,
}

impl FirstFailure {
    /// The record whose keys live under `{prefix}/first_failure/`.
    pub fn new(prefix: impl Into<String>) -> FirstFailure {
        let prefix = prefix.into();
        FirstFailure { claim: format!("{prefix}/first_failure/claim"), value: format!("{prefix}/first_failure/value") }
    }

    /// The key the first value is published under, for callers that wait on it together with
    /// other keys.
    pub fn value_key(&self) -> &str {
        &self.value
    }

    /// Publishes `value` unless another writer did first; `Ok(true)` when ours is the first.
    pub fn publish<T: Serialize>(&self, store: &mut StoreClient, value: &T) -> Result<bool, Error> {
        let bytes = postcard::to_stdvec(value)
            .map_err(|e| Error::World(format!("encoding the first failure for {}: {e}", self.value)))?;
        if store.add(&self.claim, 1)? != 1 {
            return Ok(false);
        }
        store.set(&self.value, &bytes)?;
        Ok(true)
    }

    /// The first published value, waiting up to `wait` for it; `None` if none appeared, the
    /// store failed, or it does not decode.
    pub fn first<T: DeserializeOwned>(&self, store: &mut StoreClient, wait: Duration) -> Option<T> {
        self.watch(store, wait).ok().flatten()
    }

    /// Like [`FirstFailure::first`], for a watcher that must tell "not yet" (`Ok(None)`) from a
    /// lost store or a value that does not decode (`Err`).
    pub fn watch<T: DeserializeOwned>(&self, store: &mut StoreClient, wait: Duration) -> Result<Option<T>, Error> {
        match store.wait(std::slice::from_ref(&self.value), wait)? {
            Err(_missing) => Ok(None),
            Ok(values) => {
                let bytes = values.first().ok_or_else(|| Error::Protocol {
                    addr: store.addr().to_string(),
                    detail: format!("no value in the answer to a wait on {}", self.value),
                })?;
                self.decode(bytes, &store.addr().to_string()).map(Some)
            }
        }
    }

    /// The published value, as read from the store at `addr`.
    pub(crate) fn decode<T: DeserializeOwned>(&self, bytes: &[u8], addr: &str) -> Result<T, Error> {
        postcard::from_bytes(bytes).map_err(|e| Error::Protocol {
            addr: addr.to_string(),
            detail: format!("the first failure at {} does not decode: {e}", self.value),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Serialize};

    use super::FirstFailure;
    use crate::bootstrap::{Secret, StoreClient, StoreServer};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Why {
        rank: u32,
        text: String,
    }

    fn store() -> (StoreServer, String) {
        let server = StoreServer::bind("127.0.0.1:0", Secret::new(b"first-failure")).unwrap();
        let addr = server.local_addr().to_string();
        (server, addr)
    }

    fn client(addr: &str) -> StoreClient {
        StoreClient::connect(addr, &Secret::new(b"first-failure"), Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn the_first_writer_wins_and_everyone_reads_its_value() {
        let (_server, addr) = store();
        let writers = 6;
        let start = Arc::new(Barrier::new(writers));
        let threads: Vec<_> = (0..writers)
            .map(|rank| {
                let (addr, start) = (addr.clone(), start.clone());
                std::thread::spawn(move || {
                    let mut c = client(&addr);
                    let board = FirstFailure::new("job-a");
                    start.wait();
                    let why = Why { rank: rank as u32, text: format!("rank {rank} failed") };
                    let ours = board.publish(&mut c, &why).unwrap();
                    let first: Why = board.first(&mut c, Duration::from_secs(5)).unwrap();
                    (why, ours, first)
                })
            })
            .collect();
        let got: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<&Why> = got.iter().filter(|(_, ours, _)| *ours).map(|(w, _, _)| w).collect();
        assert_eq!(winners.len(), 1, "exactly one writer is first: {got:?}");
        for (_, _, first) in &got {
            assert_eq!(first, winners[0], "every reader sees the winner's value");
        }
    }

    #[test]
    fn a_reader_waits_for_the_value_and_gives_up_after_its_wait() {
        let (_server, addr) = store();
        let board = FirstFailure::new("job-b");
        let mut reader = client(&addr);
        let t0 = Instant::now();
        assert_eq!(board.first::<Why>(&mut reader, Duration::from_millis(200)), None);
        assert!(t0.elapsed() >= Duration::from_millis(150), "returned before its wait: {:?}", t0.elapsed());

        let writer_addr = addr.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let why = Why { rank: 3, text: "late".into() };
            FirstFailure::new("job-b").publish(&mut client(&writer_addr), &why).unwrap()
        });
        let first: Option<Why> = board.first(&mut reader, Duration::from_secs(5));
        assert!(writer.join().unwrap());
        assert_eq!(first, Some(Why { rank: 3, text: "late".into() }));
    }

    #[test]
    fn prefixes_keep_records_apart() {
        let (_server, addr) = store();
        let mut c = client(&addr);
        let (a, b) = (FirstFailure::new("one"), FirstFailure::new("two"));
        assert!(a.publish(&mut c, &Why { rank: 0, text: "a".into() }).unwrap());
        assert!(b.publish(&mut c, &Why { rank: 1, text: "b".into() }).unwrap());
        assert!(!a.publish(&mut c, &Why { rank: 2, text: "a again".into() }).unwrap());
        assert_eq!(a.first::<Why>(&mut c, Duration::from_secs(1)).map(|w| w.text), Some("a".into()));
        assert_eq!(b.first::<Why>(&mut c, Duration::from_secs(1)).map(|w| w.text), Some("b".into()));
        assert_eq!(a.value_key(), "one/first_failure/value");
    }

    #[test]
    fn a_value_that_does_not_decode_is_none_for_first_and_an_error_for_watch() {
        let (_server, addr) = store();
        let mut c = client(&addr);
        let board = FirstFailure::new("job-c");
        c.set(board.value_key(), &[0xff, 0xff, 0xff]).unwrap();
        assert_eq!(board.first::<Why>(&mut c, Duration::from_secs(1)), None);
        let err = board.watch::<Why>(&mut c, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }
}
