//! The key-value store server: set, get, wait (for several keys, or for the first of several,
//! with a timeout), add, and a key to set when a connection closes (so that a client that dies
//! without a word is still seen to be gone: its kernel closes the socket).
//!
//! Thread per connection, blocking I/O with timeouts. A connection that fails the handshake or
//! sends a malformed request is dropped; the others are unaffected. Dropping the server stops
//! the accept loop, wakes every waiter and shuts every connection.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Error, MAX_MESSAGE, Purpose, Secret, accept_handshake, read_msg, write_msg};
use crate::os::{Doorbell, PollFd, poll};

/// A request from a store client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Set {
        key: String,
        value: Vec<u8>,
    },
    Get {
        key: String,
    },
    Wait {
        keys: Vec<String>,
        timeout_ms: u64,
    },
    Add {
        key: String,
        delta: i64,
    },
    /// When this connection closes, however it closes, set `key` to `value` unless it is set.
    SetOnClose {
        key: String,
        value: Vec<u8>,
    },
    /// Waits until any of `keys` is set: answers the first of them, in `keys`' order, that is.
    WaitAny {
        keys: Vec<String>,
        timeout_ms: u64,
    },
}

/// The store's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Done,
    Value(Option<Vec<u8>>),
    Values(Vec<Vec<u8>>),
    Counter(i64),
    TimedOut {
        missing: Vec<String>,
    },
    Failed(String),
    /// The answer to `WaitAny`: which key (its index in the request) and its value.
    Found {
        index: u64,
        value: Vec<u8>,
    },
}

/// The whole handshake of a new connection, however the peer paces its bytes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_KEY: usize = 4096;
const MAX_TOTAL: usize = 1 << 30;
/// Authenticated connections (every rank's and launcher's clients).
const MAX_CONNECTIONS: usize = 4096;
/// Connections still in their handshake. Past this, the oldest of them is dropped to make room:
/// unauthenticated connections can never take the place of authenticated ones, and a flood of
/// them delays a real client by at most one handshake's worth of their turnover.
const MAX_UNAUTHENTICATED: usize = 64;
/// Keys one connection may ask to have set when it closes.
const MAX_ON_CLOSE: usize = 16;

/// A connection the store serves: its socket (to shut it on drop or eviction) and whether it
/// has proved the secret.
struct Conn {
    stream: TcpStream,
    authenticated: bool,
}

struct Shared {
    secret: Secret,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    map: HashMap<String, Vec<u8>>,
    bytes: usize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated (every update is
        // one insert), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running store. Dropping it stops it.
pub struct StoreServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    /// Rung on drop: wakes the accept loop at once.
    bell: Arc<Doorbell>,
}

impl StoreServer {
    /// Binds `addr` (port 0 picks one) and serves.
    pub fn bind(addr: impl ToSocketAddrs, secret: Secret) -> Result<StoreServer, Error> {
        let listener = TcpListener::bind(addr)
            .map_err(|source| Error::Io { what: "binding the store".into(), source: source.into() })?;
        StoreServer::serve(listener, secret)
    }

    /// Serves on a listener that is already bound, so its address can be published before the
    /// store starts and no other process can take the port in between.
    pub fn serve(listener: TcpListener, secret: Secret) -> Result<StoreServer, Error> {
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Io { what: "store address".into(), source: source.into() })?;
        let shared = Arc::new(Shared {
            secret,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let bell = Arc::new(
            Doorbell::new().map_err(|source| Error::Io { what: "store wake-up pipe".into(), source: source.into() })?,
        );
        let (s, b) = (shared.clone(), bell.clone());
        let accept = std::thread::Builder::new()
            .name("ferrovod-store".into())
            .spawn(move || accept_loop(listener, &b, s))
            .map_err(|source| Error::Io { what: "starting the store thread".into(), source: source.into() })?;
        Ok(StoreServer { addr, shared, accept: Some(accept), bell })
    }

    /// The address the store listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        self.bell.ring();
        for conn in self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, bell: &Doorbell, shared: Arc<Shared>) {
    let fd = listener.as_raw_fd();
    while !shared.stop.load(Ordering::SeqCst) {
        // Sleep until a connection is pending or the server is dropped (the bell rings).
        let mut pfd = [
            PollFd { fd, read: true, write: false, ready: false },
            PollFd { fd: bell.fd(), read: true, write: false, ready: false },
        ];
        match poll(&mut pfd, Duration::from_secs(3600)) {
            Ok(_) if pfd[1].ready => return,
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => continue,
            // Out of descriptors or similar: back off rather than spin.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
            let pending: Vec<u64> = conns.iter().filter(|(_, c)| !c.authenticated).map(|(id, _)| *id).collect();
            if pending.len() >= MAX_UNAUTHENTICATED {
                // The oldest handshake in progress makes room; its thread sees the shutdown
                // and ends.
                if let Some(oldest) = pending.iter().min().and_then(|id| conns.remove(id)) {
                    let _ = oldest.stream.shutdown(std::net::Shutdown::Both);
                }
            }
            match stream.try_clone() {
                Ok(c) => conns.insert(id, Conn { stream: c, authenticated: false }),
                Err(_) => continue,
            };
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new().name("ferrovod-store-conn".into()).spawn(move || {
            serve_connection(stream, id, &s);
            s.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
        if spawned.is_err() {
            shared.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }
}

fn serve_connection(mut stream: TcpStream, id: u64, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    if accept_handshake(&mut stream, &shared.secret, Purpose::Store, deadline).is_err() {
        return;
    }
    {
        let mut conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
        let authenticated = conns.values().filter(|c| c.authenticated).count();
        match conns.get_mut(&id) {
            // Evicted while it finished its handshake: its socket is shut.
            None => return,
            Some(_) if authenticated >= MAX_CONNECTIONS => return,
            Some(c) => c.authenticated = true,
        }
    }
    // Clients keep their connection for the whole job; idle is fine, writes still time out.
    let _ = stream.set_read_timeout(None);
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut on_close: Vec<(String, Vec<u8>)> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok(req) = read_msg::<Request>(&mut stream, MAX_MESSAGE, &peer) else { break };
        let resp = match req {
            Request::SetOnClose { key, value } => remember_on_close(&mut on_close, key, value),
            req => handle(shared, req),
        };
        if write_msg(&mut stream, &resp, &peer).is_err() {
            break;
        }
    }
    for (key, value) in on_close {
        let mut st = shared.state();
        if !st.map.contains_key(&key) {
            let _ = set(&mut st, key, value);
            drop(st);
            shared.changed.notify_all();
        }
    }
}

fn remember_on_close(on_close: &mut Vec<(String, Vec<u8>)>, key: String, value: Vec<u8>) -> Response {
    if key.len() > MAX_KEY || value.len() > MAX_KEY {
        return Response::Failed(format!("an on-close key or value over {MAX_KEY} bytes"));
    }
    if on_close.len() >= MAX_ON_CLOSE {
        return Response::Failed(format!("more than {MAX_ON_CLOSE} on-close keys on one connection"));
    }
    on_close.push((key, value));
    Response::Done
}

fn handle(shared: &Shared, req: Request) -> Response {
    match req {
        Request::Set { key, value } => {
            let resp = set(&mut shared.state(), key, value);
            shared.changed.notify_all();
            resp
        }
        Request::Get { key } => Response::Value(shared.state().map.get(&key).cloned()),
        Request::Add { key, delta } => {
            let mut st = shared.state();
            let current = match st.map.get(&key) {
                None => 0,
                Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                    Ok(b) => i64::from_le_bytes(b),
                    Err(_) => return Response::Failed(format!("key {key:?} holds a value that is not a counter")),
                },
            };
            let next = current.wrapping_add(delta);
            if !st.map.contains_key(&key) {
                st.bytes += key.len() + 8;
            }
            st.map.insert(key, next.to_le_bytes().to_vec());
            drop(st);
            shared.changed.notify_all();
            Response::Counter(next)
        }
        // Kept per connection by `serve_connection`; never reaches here.
        Request::SetOnClose { .. } => Response::Failed("on-close keys belong to a connection".into()),
        Request::Wait { keys, timeout_ms } => wait(shared, timeout_ms, |map| {
            let missing: Vec<String> = keys.iter().filter(|k| !map.contains_key(*k)).cloned().collect();
            if missing.is_empty() {
                Ok(Response::Values(keys.iter().map(|k| map[k].clone()).collect()))
            } else {
                Err(missing)
            }
        }),
        Request::WaitAny { keys, timeout_ms } => {
            wait(shared, timeout_ms, |map| match keys.iter().enumerate().find_map(|(i, k)| Some((i, map.get(k)?))) {
                Some((i, value)) => Ok(Response::Found { index: i as u64, value: value.clone() }),
                None => Err(keys.clone()),
            })
        }
    }
}

/// Waits up to `timeout_ms` until `ready` answers (it is asked again on every change of the
/// store); on timeout, or when the server stops, the keys it last said were missing.
fn wait(
    shared: &Shared,
    timeout_ms: u64,
    ready: impl Fn(&HashMap<String, Vec<u8>>) -> Result<Response, Vec<String>>,
) -> Response {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut st = shared.state();
    loop {
        let missing = match ready(&st.map) {
            Ok(resp) => return resp,
            Err(missing) => missing,
        };
        let now = Instant::now();
        if now >= deadline || shared.stop.load(Ordering::SeqCst) {
            return Response::TimedOut { missing };
        }
        st = shared.changed.wait_timeout(st, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
    }
}

fn set(st: &mut State, key: String, value: Vec<u8>) -> Response {
    if key.len() > MAX_KEY {
        return Response::Failed(format!("key of {} bytes exceeds {MAX_KEY}", key.len()));
    }
    let old = st.map.get(&key).map_or(0, |v| v.len() + key.len());
    if st.bytes - old + key.len() + value.len() > MAX_TOTAL {
        return Response::Failed(format!("store is full ({MAX_TOTAL} bytes)"));
    }
    st.bytes = st.bytes - old + key.len() + value.len();
    st.map.insert(key, value);
    Response::Done
}

/// Serves `input` as the requests of one authenticated connection to an empty store, as
/// [`serve_connection`] does, and returns the answers written back. Waits do not wait (no other
/// client could set a key meanwhile). Checks after every request that the store's byte count
/// matches what it holds.
#[cfg(feature = "fuzzing")]
pub(crate) fn serve_bytes(mut input: &[u8]) -> Vec<u8> {
    let shared = Shared {
        secret: Secret::new(b"fuzzing"),
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        stop: AtomicBool::new(false),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
    };
    let mut out = Vec::new();
    while let Ok(req) = read_msg::<Request>(&mut input, MAX_MESSAGE, "fuzzing") {
        let req = match req {
            Request::Wait { keys, .. } => Request::Wait { keys, timeout_ms: 0 },
            Request::WaitAny { keys, .. } => Request::WaitAny { keys, timeout_ms: 0 },
            other => other,
        };
        let resp = handle(&shared, req);
        let st = shared.state();
        let held: usize = st.map.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(st.bytes, held, "the store's byte count drifted from what it holds");
        drop(st);
        if write_msg(&mut out, &resp, "fuzzing").is_err() {
            break;
        }
    }
    out
}
