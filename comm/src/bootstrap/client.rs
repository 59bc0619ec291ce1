//! The store client: one authenticated connection, one request at a time.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::store::{Request, Response};
use super::{Error, MAX_MESSAGE, Purpose, Secret, connect_handshake, read_msg, was_dropped, write_msg};

/// Slack on top of a server-side wait before the client gives up on the answer.
const REPLY_SLACK: Duration = Duration::from_secs(5);

/// A connection to a [`super::StoreServer`].
pub struct StoreClient {
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
    /// Set once an answer was lost (a timeout mid-reply): the stream is out of step.
    broken: bool,
}

impl StoreClient {
    /// Connects and authenticates, retrying refused connections until `timeout` (the store may
    /// start after its clients). A refused handshake is final.
    pub fn connect(addr: &str, secret: &Secret, timeout: Duration) -> Result<StoreClient, Error> {
        let deadline = Instant::now() + timeout;
        let resolved: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|source| Error::Io { what: format!("resolving store address {addr:?}"), source: source.into() })?
            .next()
            .ok_or_else(|| Error::Protocol { addr: addr.to_string(), detail: "address resolves to nothing".into() })?;
        let mut backoff = Duration::from_millis(10);
        // A store under a flood of unauthenticated connections drops the oldest handshakes,
        // which may be ours: try again until the deadline, then say so.
        let mut dropped: Option<Error> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut stream = match TcpStream::connect_timeout(&resolved, left.max(Duration::from_millis(1))) {
                Ok(s) => s,
                Err(e) if Instant::now() + backoff < deadline => {
                    let _ = e;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                    continue;
                }
                Err(source) => {
                    return Err(dropped.unwrap_or_else(|| Error::Io {
                        what: format!("connecting to the store at {resolved} for {:.0} s", timeout.as_secs_f64()),
                        source: source.into(),
                    }));
                }
            };
            let io = |source: std::io::Error| Error::Io {
                what: format!("configuring store connection to {resolved}"),
                source: source.into(),
            };
            stream.set_nodelay(true).map_err(io)?;
            let hs = timeout.clamp(Duration::from_secs(1), Duration::from_secs(30));
            stream.set_read_timeout(Some(hs)).map_err(io)?;
            stream.set_write_timeout(Some(hs)).map_err(io)?;
            match connect_handshake(&mut stream, secret, Purpose::Store) {
                Ok(()) => return Ok(StoreClient { stream, addr: resolved, timeout, broken: false }),
                Err(e) if was_dropped(&e) && Instant::now() + backoff < deadline => {
                    dropped = Some(e);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The store's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn call(&mut self, req: &Request, wait: Duration) -> Result<Response, Error> {
        if self.broken {
            return Err(Error::Store { addr: self.addr, detail: "connection lost an earlier answer".into() });
        }
        let peer = self.addr.to_string();
        let limit = wait + self.timeout.min(REPLY_SLACK).max(Duration::from_secs(1));
        let io =
            |source: std::io::Error| Error::Io { what: format!("store connection to {peer}"), source: source.into() };
        self.stream.set_read_timeout(Some(limit)).map_err(io)?;
        self.broken = true;
        write_msg(&mut self.stream, req, &peer)?;
        let resp = read_msg::<Response>(&mut self.stream, MAX_MESSAGE, &peer)?;
        self.broken = false;
        match resp {
            Response::Failed(detail) => Err(Error::Store { addr: self.addr, detail }),
            other => Ok(other),
        }
    }

    fn unexpected(&self, what: &str) -> Error {
        Error::Protocol { addr: self.addr.to_string(), detail: format!("unexpected answer to {what}") }
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), Error> {
        match self.call(&Request::Set { key: key.into(), value: value.to_vec() }, Duration::ZERO)? {
            Response::Done => Ok(()),
            _ => Err(self.unexpected("set")),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.call(&Request::Get { key: key.into() }, Duration::ZERO)? {
            Response::Value(v) => Ok(v),
            _ => Err(self.unexpected("get")),
        }
    }

    /// Adds `delta` to the counter `key` (0 when unset) and returns the new value.
    pub fn add(&mut self, key: &str, delta: i64) -> Result<i64, Error> {
        match self.call(&Request::Add { key: key.into(), delta }, Duration::ZERO)? {
            Response::Counter(v) => Ok(v),
            _ => Err(self.unexpected("add")),
        }
    }

    /// Asks the store to set `key` to `value` when this connection closes, unless the key is
    /// set by then: a client that is killed still leaves its mark, since its kernel closes the
    /// socket. A connection may ask for a few such keys (16).
    pub fn set_on_close(&mut self, key: &str, value: &[u8]) -> Result<(), Error> {
        match self.call(&Request::SetOnClose { key: key.into(), value: value.to_vec() }, Duration::ZERO)? {
            Response::Done => Ok(()),
            _ => Err(self.unexpected("set_on_close")),
        }
    }

    /// Waits until every key is set and returns their values in order. On timeout the error
    /// lists the missing keys (`Err(missing)` in the inner result), so that callers can name
    /// what they waited for.
    pub fn wait(&mut self, keys: &[String], timeout: Duration) -> Result<Result<Vec<Vec<u8>>, Vec<String>>, Error> {
        let req = Request::Wait { keys: keys.to_vec(), timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64 };
        match self.call(&req, timeout)? {
            Response::Values(v) if v.len() == keys.len() => Ok(Ok(v)),
            Response::TimedOut { missing } => Ok(Err(missing)),
            _ => Err(self.unexpected("wait")),
        }
    }

    /// Waits until any of `keys` is set; returns the first set one (its index in `keys`) with
    /// its value, or `None` on timeout.
    pub fn wait_any(&mut self, keys: &[String], timeout: Duration) -> Result<Option<(usize, Vec<u8>)>, Error> {
        let req =
            Request::WaitAny { keys: keys.to_vec(), timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64 };
        match self.call(&req, timeout)? {
            Response::Found { index, value } if (index as usize) < keys.len() => Ok(Some((index as usize, value))),
            Response::TimedOut { .. } => Ok(None),
            _ => Err(self.unexpected("wait_any")),
        }
    }
}

impl StoreClient {
    /// This end's address: the interface that routes to the store.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.stream
            .local_addr()
            .map_err(|source| Error::Io { what: "store connection address".into(), source: source.into() })
    }
}
