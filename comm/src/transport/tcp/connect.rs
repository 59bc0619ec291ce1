//! Building the mesh: every rank connects `streams` times to each lower rank and accepts the
//! same from each higher rank, concurrently. Each connection is authenticated, then says which
//! rank and stream it is; anything else on the listener is dropped and accepting goes on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::pair::{Pair, configure};
use crate::bootstrap::{Error, Purpose, Secret, accept_handshake, connect_handshake};
use crate::os::{Doorbell, PollFd, poll};

/// Per-connection limit for the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a rank waiting for peers looks whether one of them is gone.
const LIVENESS_CHECK: Duration = Duration::from_millis(200);
/// After the handshake a connecting rank says: its rank, the stream, the world size, and its
/// number of streams (u32 each).
pub(crate) const HELLO: usize = 16;

pub(super) struct MeshSpec<'a> {
    pub rank: usize,
    pub size: usize,
    pub streams: usize,
    pub buffer: usize,
    pub secret: &'a Secret,
    pub deadline: Instant,
    pub timeout: Duration,
    /// Why a peer can no longer connect, if it is known to be gone.
    pub gone: &'a super::super::Gone<'a>,
}

impl MeshSpec<'_> {
    /// An error if one of `peers` is gone.
    fn check_alive(&self, peers: impl IntoIterator<Item = usize>) -> Result<(), Error> {
        for peer in peers {
            if let Some(why) = (self.gone)(peer) {
                return Err(Error::World(format!("rank {peer} {why} before connecting to rank {}", self.rank)));
            }
        }
        Ok(())
    }
}

/// Connects to every peer; element `r` of the result is the link to rank `r` (`None` for self).
pub(super) fn connect_mesh(
    spec: &MeshSpec<'_>,
    listener: TcpListener,
    addrs: &[SocketAddr],
) -> Result<Vec<Option<Pair>>, Error> {
    let mut slots: Vec<Vec<Option<TcpStream>>> =
        (0..spec.size).map(|_| (0..spec.streams).map(|_| None).collect()).collect();
    let (accepted, connected) = std::thread::scope(|s| {
        let acceptor = s.spawn(|| accept_all(spec, &listener));
        let connected = connect_lower(spec, addrs);
        let accepted = acceptor.join().unwrap_or_else(|_| Err(Error::World("accept thread panicked".into())));
        (accepted, connected)
    });
    for (peer, stream, conn) in connected?.into_iter().chain(accepted?) {
        slots[peer][stream] = Some(conn);
    }
    let mut pairs = Vec::with_capacity(spec.size);
    for (peer, slot) in slots.into_iter().enumerate() {
        if peer == spec.rank {
            pairs.push(None);
            continue;
        }
        let streams: Option<Vec<TcpStream>> = slot.into_iter().collect();
        let streams = streams.ok_or_else(|| Error::World(format!("link to rank {peer} is incomplete")))?;
        for s in &streams {
            configure(s, spec.buffer).map_err(|source| Error::Io {
                what: format!("configuring the link to rank {peer}"),
                source: source.into(),
            })?;
        }
        pairs.push(Some(Pair { streams }));
    }
    Ok(pairs)
}

fn connect_lower(spec: &MeshSpec<'_>, addrs: &[SocketAddr]) -> Result<Vec<(usize, usize, TcpStream)>, Error> {
    let mut out = Vec::new();
    for (peer, addr) in addrs.iter().enumerate().take(spec.rank) {
        for stream in 0..spec.streams {
            let what = || format!("connecting to rank {peer} at {addr}");
            let mut conn = connect_retry(spec, peer, *addr)?;
            let _ = conn.set_nodelay(true);
            set_timeouts(&conn, spec.deadline).map_err(|source| Error::Io { what: what(), source: source.into() })?;
            connect_handshake(&mut conn, spec.secret, Purpose::Transport)?;
            let hello = hello(spec.rank, stream, spec.size, spec.streams);
            conn.write_all(&hello).map_err(|source| Error::Io { what: what(), source: source.into() })?;
            out.push((peer, stream, conn));
        }
    }
    Ok(out)
}

/// Connects to `peer` at `addr`, retrying until the deadline unless the peer is gone.
fn connect_retry(spec: &MeshSpec<'_>, peer: usize, addr: SocketAddr) -> Result<TcpStream, Error> {
    let mut backoff = Duration::from_millis(5);
    loop {
        let left = spec.deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() + backoff >= spec.deadline => {
                return Err(Error::Io { what: format!("connecting to rank {peer} at {addr}"), source: e.into() });
            }
            Err(_) => {
                spec.check_alive([peer])?;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
    }
}

fn set_timeouts(conn: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let t = deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(10), HANDSHAKE_TIMEOUT);
    conn.set_read_timeout(Some(t))?;
    conn.set_write_timeout(Some(t))
}

/// Accepts until every higher rank's streams are in. Each connection is authenticated on a
/// thread of its own, so a silent or slow client holds up nobody else.
fn accept_all(spec: &MeshSpec<'_>, listener: &TcpListener) -> Result<Vec<(usize, usize, TcpStream)>, Error> {
    let expected = (spec.size - 1 - spec.rank) * spec.streams;
    let mut got: Vec<(usize, usize, TcpStream)> = Vec::with_capacity(expected);
    let mut last_refusal: Option<String> = None;
    let (tx, rx) = std::sync::mpsc::channel::<Result<(usize, usize, TcpStream), String>>();
    // Handshake threads write a byte here when they are done, waking the poll below.
    let wake = std::sync::Arc::new(
        Doorbell::new().map_err(|source| Error::Io { what: "accept wake-up pipe".into(), source: source.into() })?,
    );
    while got.len() < expected {
        for result in rx.try_iter() {
            match result {
                Ok((peer, stream, conn)) if !got.iter().any(|g| g.0 == peer && g.1 == stream) => {
                    got.push((peer, stream, conn))
                }
                Ok((peer, stream, _)) => last_refusal = Some(format!("rank {peer} stream {stream} connected twice")),
                Err(note) => last_refusal = Some(note),
            }
        }
        if got.len() == expected {
            break;
        }
        let left = spec.deadline.saturating_duration_since(Instant::now());
        let missing: Vec<usize> =
            (spec.rank + 1..spec.size).filter(|&r| got.iter().filter(|g| g.0 == r).count() < spec.streams).collect();
        spec.check_alive(missing.iter().copied())?;
        if left.is_zero() {
            let note = last_refusal.map(|r| format!("; last refused connection: {r}")).unwrap_or_default();
            return Err(Error::Timeout {
                what: format!("waiting for rank(s) {missing:?} to connect{note}"),
                waited: spec.timeout,
            });
        }
        let mut pfd = [
            PollFd { fd: listener.as_raw_fd(), read: true, write: false, ready: false },
            PollFd { fd: wake.fd(), read: true, write: false, ready: false },
        ];
        poll(&mut pfd, left.min(LIVENESS_CHECK))
            .map_err(|source| Error::Io { what: "waiting for peers to connect".into(), source: source.into() })?;
        if pfd[1].ready {
            wake.clear();
        }
        if !pfd[0].ready {
            continue;
        }
        let (conn, from) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or similar: note it and back off rather than spin.
                last_refusal = Some(format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let (tx, secret) = (tx.clone(), spec.secret.clone());
        let wake = wake.clone();
        let (rank, size, streams, deadline) = (spec.rank, spec.size, spec.streams, spec.deadline);
        let spawned = std::thread::Builder::new().name("ferrovod-accept".into()).spawn(move || {
            let _ = tx.send(admit(conn, from, &secret, rank, size, streams, deadline));
            wake.ring();
        });
        if spawned.is_err() {
            last_refusal = Some(format!("{from}: could not start a handshake thread"));
        }
    }
    Ok(got)
}

/// Authenticates one incoming connection and reads which rank and stream it is.
fn admit(
    mut conn: TcpStream,
    from: SocketAddr,
    secret: &Secret,
    rank: usize,
    size: usize,
    streams: usize,
    deadline: Instant,
) -> Result<(usize, usize, TcpStream), String> {
    let _ = conn.set_nodelay(true);
    set_timeouts(&conn, deadline).map_err(|e| format!("{from}: {e}"))?;
    accept_handshake(&mut conn, secret, Purpose::Transport, deadline).map_err(|e| format!("{from}: {e}"))?;
    set_timeouts(&conn, deadline).map_err(|e| format!("{from}: {e}"))?;
    let mut hello = [0u8; HELLO];
    conn.read_exact(&mut hello).map_err(|e| format!("{from}: no hello after the handshake: {e}"))?;
    let (peer, stream) = read_hello(&hello, from, rank, size, streams)?;
    Ok((peer, stream, conn))
}

/// What a connecting rank says after the handshake.
pub(crate) fn hello(rank: usize, stream: usize, size: usize, streams: usize) -> [u8; HELLO] {
    let mut hello = [0u8; HELLO];
    hello[..4].copy_from_slice(&(rank as u32).to_le_bytes());
    hello[4..8].copy_from_slice(&(stream as u32).to_le_bytes());
    hello[8..12].copy_from_slice(&(size as u32).to_le_bytes());
    hello[12..].copy_from_slice(&(streams as u32).to_le_bytes());
    hello
}

/// Which higher rank and stream a hello from `from` is, if it fits this rank's world.
pub(crate) fn read_hello(
    hello: &[u8; HELLO],
    from: impl std::fmt::Display,
    rank: usize,
    size: usize,
    streams: usize,
) -> Result<(usize, usize), String> {
    let word = |i: usize| u32::from_le_bytes([hello[i], hello[i + 1], hello[i + 2], hello[i + 3]]) as usize;
    let (peer, stream, their_size, their_streams) = (word(0), word(4), word(8), word(12));
    if their_size != size || peer <= rank || peer >= size || stream >= streams {
        return Err(format!("{from}: claimed rank {peer} stream {stream} of a world of {their_size}"));
    }
    if their_streams != streams {
        return Err(format!(
            "rank {peer} uses {their_streams} TCP streams, this rank {streams} (FERROVOD_TCP_STREAMS differs)"
        ));
    }
    Ok((peer, stream))
}
