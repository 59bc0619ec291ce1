//! Building the mesh: every rank connects `streams` times to each lower rank and accepts the
//! same from each higher rank, concurrently. Each connection is authenticated, then says which
//! rank and stream it is; anything else on the listener is dropped and accepting goes on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::pair::{Pair, configure};
use crate::bootstrap::{Error, Purpose, Secret, accept_handshake, connect_handshake};
use crate::sys::{PollFd, poll};

/// Per-connection limit for the handshake, so a silent client cannot hold up the mesh.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct MeshSpec<'a> {
    pub rank: usize,
    pub size: usize,
    pub streams: usize,
    pub buffer: usize,
    pub secret: &'a Secret,
    pub deadline: Instant,
    pub timeout: Duration,
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
            configure(s, spec.buffer)
                .map_err(|source| Error::Io { what: format!("configuring the link to rank {peer}"), source })?;
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
            let mut conn = connect_retry(*addr, spec.deadline).map_err(|source| Error::Io { what: what(), source })?;
            let _ = conn.set_nodelay(true);
            set_timeouts(&conn, spec.deadline).map_err(|source| Error::Io { what: what(), source })?;
            connect_handshake(&mut conn, spec.secret, Purpose::Transport)?;
            let mut hello = [0u8; 12];
            hello[..4].copy_from_slice(&(spec.rank as u32).to_le_bytes());
            hello[4..8].copy_from_slice(&(stream as u32).to_le_bytes());
            hello[8..].copy_from_slice(&(spec.size as u32).to_le_bytes());
            conn.write_all(&hello).map_err(|source| Error::Io { what: what(), source })?;
            out.push((peer, stream, conn));
        }
    }
    Ok(out)
}

fn connect_retry(addr: SocketAddr, deadline: Instant) -> std::io::Result<TcpStream> {
    let mut backoff = Duration::from_millis(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() + backoff >= deadline => return Err(e),
            Err(_) => {
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

fn accept_all(spec: &MeshSpec<'_>, listener: &TcpListener) -> Result<Vec<(usize, usize, TcpStream)>, Error> {
    let expected = (spec.size - 1 - spec.rank) * spec.streams;
    let mut got: Vec<(usize, usize, TcpStream)> = Vec::with_capacity(expected);
    let mut last_refusal: Option<String> = None;
    while got.len() < expected {
        let left = spec.deadline.saturating_duration_since(Instant::now());
        let mut pfd = [PollFd { fd: listener.as_raw_fd(), read: true, write: false, ready: false }];
        let ready =
            poll(&mut pfd, left).map_err(|source| Error::Io { what: "waiting for peers to connect".into(), source })?;
        if ready == 0 {
            let missing: Vec<usize> = (spec.rank + 1..spec.size)
                .filter(|&r| got.iter().filter(|g| g.0 == r).count() < spec.streams)
                .collect();
            let note = last_refusal.map(|r| format!("; last refused connection: {r}")).unwrap_or_default();
            return Err(Error::Timeout {
                what: format!("waiting for rank(s) {missing:?} to connect{note}"),
                waited: spec.timeout,
            });
        }
        let Ok((mut conn, from)) = listener.accept() else { continue };
        let _ = conn.set_nodelay(true);
        if set_timeouts(&conn, spec.deadline).is_err() {
            continue;
        }
        if let Err(e) = accept_handshake(&mut conn, spec.secret, Purpose::Transport) {
            last_refusal = Some(format!("{from}: {e}"));
            continue;
        }
        let mut hello = [0u8; 12];
        if conn.read_exact(&mut hello).is_err() {
            continue;
        }
        let word = |i: usize| u32::from_le_bytes([hello[i], hello[i + 1], hello[i + 2], hello[i + 3]]) as usize;
        let (peer, stream, size) = (word(0), word(4), word(8));
        let valid = size == spec.size && peer > spec.rank && peer < spec.size && stream < spec.streams;
        if !valid || got.iter().any(|g| g.0 == peer && g.1 == stream) {
            last_refusal = Some(format!("{from}: claimed rank {peer} stream {stream} of a world of {size}"));
            continue;
        }
        got.push((peer, stream, conn));
    }
    Ok(got)
}
