//! TCP transport: a full mesh of authenticated connections, several streams per peer.
//!
//! Every stream is driven without blocking (`MSG_DONTWAIT`) from the calling thread; when no
//! transfer can move (and, in a stream, the flow has no work left), the thread sleeps in
//! `poll(2)` until a socket is ready or the timeout passes. Before it sleeps it looks again,
//! yielding its core between looks, for `FERROVOD_SPIN_US` (50 µs by default): a bounded poll,
//! never an unbounded spin, so ranks may outnumber cores.
//!
//! In an exchange, a message travels as one stripe on stream 0, or, from `stripe_min` bytes, as
//! one stripe per stream; in a stream (`stream.rs`), message k travels whole on stream k mod
//! streams. Each stripe starts with a 32-byte header (tag, total length, stripe index, marker)
//! that the receiver checks before it accepts the payload.

pub(crate) mod connect;
pub(crate) mod pair;
mod stream;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::{Error, Flow, Heard, Step, Tag, Transport, check_peers};
use crate::bootstrap::{self, Secret};
use crate::config::Tuning;
use crate::os::{Doorbell, PollFd, poll, poll_after_spin};
use pair::{HEADER, Pair, check_header, header, io_error, recv2, send2};

/// The TCP transport's endpoint: a bound listener whose address is published at rendezvous
/// before the mesh is built, with the tuning the mesh will use.
pub struct TcpEndpoint {
    listener: TcpListener,
    addr: SocketAddr,
    tuning: Tuning,
}

impl TcpEndpoint {
    /// Binds an ephemeral port on `ip`.
    pub fn bind(ip: IpAddr, tuning: &Tuning) -> Result<TcpEndpoint, bootstrap::Error> {
        let io = |source: std::io::Error| bootstrap::Error::Io {
            what: format!("binding the transport listener on {ip}"),
            source: source.into(),
        };
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        Ok(TcpEndpoint { listener, addr, tuning: tuning.clone() })
    }

    /// The address to publish.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl super::Endpoint for TcpEndpoint {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn address(&self) -> Vec<u8> {
        self.addr.to_string().into_bytes()
    }

    fn connect(
        self: Box<Self>,
        rank: usize,
        addresses: &[&[u8]],
        secret: &Secret,
        gone: &super::Gone<'_>,
    ) -> Result<Box<dyn Transport>, bootstrap::Error> {
        let addrs = addresses
            .iter()
            .enumerate()
            .map(|(r, a)| {
                parse_address(a).ok_or_else(|| {
                    bootstrap::Error::World(format!("rank {r} published a malformed tcp address ({} bytes)", a.len()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tuning = self.tuning.clone();
        Ok(Box::new(TcpTransport::connect(rank, *self, &addrs, secret, &tuning, gone)?))
    }
}

/// A peer's published address: its listener's `ip:port`, as text.
pub(crate) fn parse_address(a: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(a).ok().and_then(|s| s.parse::<SocketAddr>().ok())
}

/// One rank's links to all others over TCP.
pub struct TcpTransport {
    rank: usize,
    size: usize,
    pairs: Vec<Option<Pair>>,
    streams: usize,
    stripe_min: usize,
    timeout: Duration,
    spin: Duration,
    failed: bool,
    abort: Option<super::AbortBell>,
}

impl TcpTransport {
    /// Connects to every peer (`addrs[r]` is rank `r`'s published listener address).
    pub fn connect(
        rank: usize,
        listener: TcpEndpoint,
        addrs: &[SocketAddr],
        secret: &Secret,
        tuning: &Tuning,
        gone: &super::Gone<'_>,
    ) -> Result<TcpTransport, bootstrap::Error> {
        let streams = tuning.tcp_streams.max(1);
        let spec = connect::MeshSpec {
            rank,
            size: addrs.len(),
            streams,
            buffer: tuning.tcp_buffer,
            secret,
            deadline: Instant::now() + tuning.connect_timeout,
            timeout: tuning.connect_timeout,
            gone,
        };
        let pairs = connect::connect_mesh(&spec, listener.listener, addrs)?;
        Ok(TcpTransport {
            rank,
            size: addrs.len(),
            pairs,
            streams,
            stripe_min: tuning.stripe_min.max(1),
            timeout: tuning.timeout,
            spin: tuning.spin,
            failed: false,
            abort: None,
        })
    }

    fn pair(&self, peer: usize) -> &Pair {
        // check_peers ran first: every peer other than self has a pair.
        self.pairs[peer].as_ref().unwrap_or_else(|| unreachable!("no link to rank {peer}"))
    }

    fn run(&mut self, tag: Tag, ops: &mut [Step<'_>]) -> Result<(), Error> {
        let mut chans = self.plan(tag, ops);
        let mut heard = Heard::new(self.size);
        loop {
            let mut pending = false;
            for ch in chans.iter_mut() {
                if ch.ready && !ch.done() && ch.drive(self.pair(ch.peer).fd(ch.stream), ops)? {
                    heard.moved(ch.peer);
                }
                pending |= !ch.done();
            }
            if !pending {
                return Ok(());
            }
            let awaited = chans.iter().filter(|c| !c.done() && !c.ready).map(|c| c.peer);
            let wait = self.time_left(&mut heard, awaited)?;
            let mut fds: Vec<PollFd> = chans
                .iter()
                .filter(|c| !c.done())
                .map(|c| PollFd { fd: self.pair(c.peer).fd(c.stream), read: !c.send, write: c.send, ready: false })
                .collect();
            fds.extend(self.abort_fd());
            let first_peer = chans.iter().find(|c| !c.done()).map_or(0, |c| c.peer);
            poll_after_spin(&mut fds, wait, self.spin)
                .map_err(|source| Error::Io { peer: first_peer, source: source.into() })?;
            let mut fds = fds.into_iter();
            for ch in chans.iter_mut().filter(|c| !c.done()) {
                ch.ready = fds.next().is_some_and(|f| f.ready);
            }
        }
    }

    /// How long a wait may last before a peer it waits for (`awaited`: its socket would
    /// block) has been silent for the timeout (see [`Heard`]); fails at once when the job's
    /// abort bell rang.
    fn time_left(&self, heard: &mut Heard, awaited: impl Iterator<Item = usize>) -> Result<Duration, Error> {
        if self.abort.as_ref().is_some_and(|b| b.is_rung()) {
            return Err(Error::JobFailed);
        }
        let mut waiting = vec![false; self.size];
        for p in awaited {
            waiting[p] = true;
        }
        heard.left(|p| waiting[p], self.timeout)
    }

    /// The abort bell, to poll after the sockets (so that their indices stay the channels').
    fn abort_fd(&self) -> Option<PollFd> {
        self.abort.as_ref().map(|b| PollFd { fd: b.fd(), read: true, write: false, ready: false })
    }

    /// Splits the ops into per-(peer, stream, direction) queues of stripes.
    fn plan(&self, tag: Tag, ops: &[Step<'_>]) -> Vec<Channel> {
        let mut chans: Vec<Channel> = Vec::new();
        for (op, o) in ops.iter().enumerate() {
            let (peer, send, len) = match o {
                Step::Send { peer, buf } => (*peer, true, buf.len()),
                Step::Recv { peer, buf } => (*peer, false, buf.len()),
            };
            let stripes = if len >= self.stripe_min { self.streams } else { 1 };
            for s in 0..stripes {
                let part = Part {
                    op,
                    range: len * s / stripes..len * (s + 1) / stripes,
                    header: header(tag, len as u64, s as u16, stripes as u16),
                    got: [0; HEADER],
                    header_done: 0,
                    done: 0,
                };
                match chans.iter_mut().find(|c| c.peer == peer && c.stream == s && c.send == send) {
                    Some(c) => c.parts.push(part),
                    None => chans.push(Channel { peer, stream: s, send, parts: vec![part], next: 0, ready: true }),
                }
            }
        }
        chans
    }
}

/// The stripes queued on one stream in one direction; the first unfinished one is active.
struct Channel {
    peer: usize,
    stream: usize,
    send: bool,
    parts: Vec<Part>,
    next: usize,
    ready: bool,
}

struct Part {
    op: usize,
    range: Range<usize>,
    header: [u8; HEADER],
    got: [u8; HEADER],
    header_done: usize,
    done: usize,
}

impl Channel {
    fn done(&self) -> bool {
        self.next == self.parts.len()
    }

    /// Moves bytes until the socket would block or the queue is empty. Returns whether any
    /// byte moved.
    fn drive(&mut self, fd: std::os::fd::RawFd, ops: &mut [Step<'_>]) -> Result<bool, Error> {
        let mut moved = false;
        while let Some(part) = self.parts.get_mut(self.next) {
            let payload = part.range.len();
            if part.header_done == HEADER && part.done == payload {
                self.next += 1;
                continue;
            }
            let result = match &mut ops[part.op] {
                Step::Send { buf, .. } => {
                    send2(fd, &part.header[part.header_done..], &buf[part.range.start + part.done..part.range.end])
                }
                Step::Recv { buf, .. } => {
                    recv2(fd, &mut part.got[part.header_done..], &mut buf[part.range.start + part.done..part.range.end])
                }
            };
            let n = match result {
                Ok(0) if !self.send => return Err(Error::Closed { peer: self.peer }),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    return Ok(moved);
                }
                Err(e) => return Err(io_error(self.peer, e)),
            };
            moved |= n > 0;
            let h = n.min(HEADER - part.header_done);
            part.header_done += h;
            part.done += n - h;
            if !self.send && h > 0 && part.header_done == HEADER {
                check_header(self.peer, &part.got, &part.header)?;
            }
        }
        Ok(moved)
    }
}

impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn exchange(&mut self, tag: Tag, ops: &mut [Step<'_>]) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Unusable);
        }
        check_peers(self.rank, self.size, ops)?;
        let result = self.run(tag, ops);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn stream(&mut self, tag: Tag, flow: &mut dyn Flow) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Unusable);
        }
        let result = self.run_stream(tag, flow);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool, Error> {
        if self.failed {
            return Err(Error::Unusable);
        }
        let mut fds = vec![PollFd { fd: wake.fd(), read: true, write: false, ready: false }];
        let mut peers = Vec::new();
        for (peer, pair) in self.pairs.iter().enumerate() {
            for s in 0..pair.as_ref().map_or(0, |p| p.streams.len()) {
                fds.push(PollFd { fd: self.pair(peer).fd(s), read: true, write: false, ready: false });
                peers.push(peer);
            }
        }
        fds.extend(self.abort_fd());
        poll(&mut fds, timeout)
            .map_err(|source| Error::Io { peer: peers.first().copied().unwrap_or(0), source: source.into() })?;
        if self.abort.as_ref().is_some_and(|b| b.is_rung()) {
            return Err(Error::JobFailed);
        }
        Ok(fds[1..=peers.len()].iter().any(|f| f.ready))
    }

    fn watch_abort(&mut self, bell: super::AbortBell) {
        self.abort = Some(bell);
    }

    fn close(&mut self) {
        self.failed = true;
        for pair in self.pairs.iter().flatten() {
            pair.shutdown();
        }
    }
}
