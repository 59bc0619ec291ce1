//! Rendezvous: every rank publishes who it is and where its transport listens, then waits for
//! everybody else's record.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Error, StoreClient};

/// What a rank tells the others about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Host name.
    pub hostname: String,
    /// Kernel boot id: with the host name, identifies a machine.
    pub boot_id: String,
    /// Where this rank's transports accept connections: (transport name, opaque address that
    /// only that transport reads).
    pub addresses: Vec<(String, Vec<u8>)>,
    /// Process id, for error messages and, for ranks in the same pid namespace on this host,
    /// for watching the process.
    pub pid: u32,
    /// The pid namespace of the process (see [`crate::os::pid_namespace`]).
    pub pid_ns: String,
    /// The knobs every rank must agree on, as (name, value).
    pub tuning: Vec<(String, String)>,
}

/// Publishes `me` as `rank` under `prefix` and returns every rank's record, in rank order.
/// Fails naming the ranks that did not show up within `timeout`, or a rank claimed twice.
pub fn exchange_peers(
    store: &mut StoreClient,
    prefix: &str,
    rank: usize,
    size: usize,
    me: &PeerInfo,
    timeout: Duration,
) -> Result<Vec<PeerInfo>, Error> {
    if store.add(&format!("{prefix}/claim/{rank}"), 1)? != 1 {
        return Err(Error::World(format!("rank {rank} was claimed by two processes (check FERROVOD_RANK)")));
    }
    let record = postcard::to_stdvec(me).map_err(|e| Error::World(format!("cannot encode peer record: {e}")))?;
    store.set(&format!("{prefix}/peer/{rank}"), &record)?;
    let keys: Vec<String> = (0..size).map(|r| format!("{prefix}/peer/{r}")).collect();
    let values = match store.wait(&keys, timeout)? {
        Ok(v) => v,
        Err(missing) => {
            let ranks: Vec<&str> = missing.iter().filter_map(|k| k.rsplit('/').next()).collect();
            return Err(Error::Timeout {
                what: format!("waiting for ranks [{}] of {size} to join the rendezvous", ranks.join(", ")),
                waited: timeout,
            });
        }
    };
    decode_peers(&values)
}

/// Every rank's record, from the values published under `{prefix}/peer/{rank}`, in rank order.
pub(crate) fn decode_peers(values: &[Vec<u8>]) -> Result<Vec<PeerInfo>, Error> {
    values
        .iter()
        .enumerate()
        .map(|(r, v)| {
            postcard::from_bytes(v).map_err(|e| Error::World(format!("rank {r} published a malformed record: {e}")))
        })
        .collect()
}
