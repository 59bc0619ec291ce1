//! Shared-memory transport, for ranks on one host: every message goes through a byte ring in
//! the sender's segment (`segment.rs`), one ring per ordered pair of ranks (`pair.rs`), with no
//! system call on the way while both ends are awake. The segment also holds the *stage*
//! (`stage.rs`): regions that every rank reads in place, for the collectives that run on memory
//! rather than messages (the `_stage` algorithms).
//!
//! Set-up (`connect.rs`) has two phases, so that every rank of a job takes the same decision:
//! before rendezvous each rank creates its segment and binds an abstract Unix socket; after it,
//! [`ShmEndpoint::offer`] sends every peer this rank's segment and wake-up descriptors (never
//! waiting), the world agrees through the store that every rank could, and only then
//! [`ShmEndpoint::accept`] takes the peers' descriptors, which are already queued. A rank that
//! could not offer makes the whole job fall back to TCP.
//!
//! Waiting, when no transfer can move: look again for up to `FERROVOD_SPIN_US`, spinning for
//! the first microseconds when this host has a core per rank and yielding the core between
//! looks after that (from the start when ranks outnumber cores), then sleep in `poll(2)` on
//! this rank's eventfd and the pidfds of the peers it waits for. A rank that publishes bytes
//! (or a stage step) writes its peer's eventfd only when the peer's `sleeping` word says it sleeps (a sequentially
//! consistent fence on both sides, so no wake-up is lost). A peer that dies wakes the sleeper
//! through its pidfd; one that closes its links sets its `abort` word and wakes every peer.
//! Either way, what it wrote before is still read; a transfer that needs more fails naming it.

pub(crate) mod connect;
mod pair;
mod segment;
mod stage;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use super::{Error, Flow, Heard, Step, Tag, Transport, check_peers};
use crate::bootstrap;
use crate::config::Tuning;
use crate::os::{Doorbell, PollFd, poll};
use pair::{EXCHANGE, HEADER, Ring, check_header, header};
use segment::{Layout, Segment};

/// How long a waiting rank spins before it starts yielding its core, when the host has a core
/// for every rank.
const PURE_SPIN: Duration = Duration::from_micros(5);

/// Longest sleep between checks of a peer that has no pidfd (kernels before 5.3).
const NO_PIDFD_CHECK: Duration = Duration::from_millis(100);

/// This rank's half of the shared-memory set-up: its segment, its wake-up eventfd and its
/// listening socket, from before rendezvous until the peers' segments are mapped.
pub struct ShmEndpoint {
    listener: connect::Listener,
    segment: Segment,
    memfd: OwnedFd,
    bell: OwnedFd,
    cookie: u64,
    layout: Layout,
    tuning: Tuning,
}

/// A peer's address: its cookie, then its socket's abstract name.
pub(crate) fn parse_address(a: &[u8]) -> Option<(u64, &[u8])> {
    let cookie = u64::from_le_bytes(a.get(..8)?.try_into().ok()?);
    Some((cookie, &a[8..]))
}

/// The address [`parse_address`] reads.
pub(crate) fn encode_address(cookie: u64, name: &[u8]) -> Vec<u8> {
    let mut a = cookie.to_le_bytes().to_vec();
    a.extend_from_slice(name);
    a
}

impl ShmEndpoint {
    /// Creates this rank's segment for a world of `size` and binds its socket.
    pub fn bind(size: usize, tuning: &Tuning) -> std::io::Result<ShmEndpoint> {
        let layout = Layout { size, cap: tuning.shm_ring };
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
        let cookie = u64::from_le_bytes(raw);
        let (segment, memfd) = Segment::create(layout, cookie)?;
        // SAFETY: creates a new descriptor or fails.
        let bell = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if bell < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let bell = unsafe { OwnedFd::from_raw_fd(bell) };
        let listener = connect::Listener::bind()?;
        Ok(ShmEndpoint { listener, segment, memfd, bell, cookie, layout, tuning: tuning.clone() })
    }

    /// What peers need to reach this rank.
    pub fn address(&self) -> Vec<u8> {
        encode_address(self.cookie, &self.listener.name)
    }

    /// Phase one: sends every other rank this rank's segment and eventfd, given each rank's
    /// published address and pid. Never waits. The error says why a peer cannot be reached
    /// through memory (another network or pid namespace, say).
    pub fn offer(&self, rank: usize, addresses: &[&[u8]], pids: &[u32]) -> Result<(), String> {
        let fds = [self.memfd.as_raw_fd(), self.bell.as_raw_fd()];
        for (peer, (a, &pid)) in addresses.iter().zip(pids).enumerate().filter(|&(p, _)| p != rank) {
            let (_, name) = parse_address(a).ok_or_else(|| format!("rank {peer} published a malformed shm address"))?;
            connect::hello(name, pid, rank as u64, self.cookie, &fds)
                .map_err(|e| format!("rank {rank} cannot reach rank {peer} (pid {pid}) through a Unix socket: {e}"))?;
        }
        Ok(())
    }

    /// Phase two, once every rank's offer succeeded: takes every peer's descriptors (already
    /// queued), checks who sent them and maps their segments.
    pub fn accept(self, rank: usize, addresses: &[&[u8]], pids: &[u32]) -> Result<ShmTransport, bootstrap::Error> {
        let size = self.layout.size;
        let deadline = Instant::now() + self.tuning.connect_timeout;
        let fail = |what: String| bootstrap::Error::World(format!("shared memory: {what}"));
        let mut peers: Vec<Option<Peer>> = (0..size).map(|_| None).collect();
        while peers.iter().enumerate().any(|(p, slot)| p != rank && slot.is_none()) {
            let (pid, from, cookie, fds) = self
                .listener
                .accept(deadline)
                .map_err(|e| fail(format!("rank {rank} waiting for its peers' segments: {e}")))?;
            let Some(from) = awaited(from, pid, rank, size, pids, |r| peers[r].is_some()) else { continue };
            let (published, _) = parse_address(addresses[from]).unwrap_or_default();
            let [memfd, bell]: [OwnedFd; 2] = fds
                .try_into()
                .map_err(|fds: Vec<_>| fail(format!("rank {from} passed {} descriptors, expected 2", fds.len())))?;
            let seg =
                Segment::map(&memfd, self.layout).map_err(|e| fail(format!("mapping rank {from}'s segment: {e}")))?;
            if seg.cookie() != cookie || cookie != published {
                return Err(fail(format!("rank {from}'s segment does not hold the cookie it published")));
            }
            let pidfd = crate::os::pidfd_open(pid as crate::os::Pid);
            peers[from] = Some(Peer { seg, bell, pidfd, pid });
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(ShmTransport {
            rank,
            size,
            peers,
            bell: self.bell,
            timeout: self.tuning.timeout,
            spin: self.tuning.spin,
            yield_at_once: size > cores,
            gone: vec![false; size],
            failed: false,
            abort: None,
            mine: self.segment,
            steps: 0,
        })
    }
}

/// The rank a hello on the listener comes from, if it is one this rank still waits for: anything
/// on this host can connect to the socket; only the ranks count.
pub(crate) fn awaited(
    from: u64,
    pid: u32,
    rank: usize,
    size: usize,
    pids: &[u32],
    arrived: impl Fn(usize) -> bool,
) -> Option<usize> {
    let from = usize::try_from(from).ok()?;
    (from < size && from != rank && pids.get(from) == Some(&pid) && !arrived(from)).then_some(from)
}

/// A peer's segment and how to wake it and watch it.
struct Peer {
    seg: Segment,
    bell: OwnedFd,
    pidfd: Option<OwnedFd>,
    pid: u32,
}

/// One rank's links to the others on its host, through shared memory.
pub struct ShmTransport {
    rank: usize,
    size: usize,
    peers: Vec<Option<Peer>>,
    bell: OwnedFd,
    timeout: Duration,
    spin: Duration,
    yield_at_once: bool,
    /// Peers seen to have exited or closed their links.
    gone: Vec<bool>,
    failed: bool,
    /// See [`super::AbortBell`].
    abort: Option<super::AbortBell>,
    mine: Segment,
    /// Stage steps this rank has published.
    steps: u64,
}

/// What an exchange or a stream moves: items, each one message on one lane.
trait Items {
    fn send(&self, k: usize) -> Option<&[u8]>;
    fn recv(&mut self, k: usize) -> Option<&mut [u8]>;
    fn sent(&mut self, k: usize);
    fn received(&mut self, k: usize);
    fn work(&mut self) -> bool;
    fn seq(&self, k: usize) -> u32;
}

struct StepItems<'a, 'b>(&'a mut [Step<'b>]);

impl Items for StepItems<'_, '_> {
    fn send(&self, k: usize) -> Option<&[u8]> {
        match &self.0[k] {
            Step::Send { buf, .. } => Some(buf),
            Step::Recv { .. } => None,
        }
    }
    fn recv(&mut self, k: usize) -> Option<&mut [u8]> {
        match &mut self.0[k] {
            Step::Recv { buf, .. } => Some(buf),
            Step::Send { .. } => None,
        }
    }
    fn sent(&mut self, _: usize) {}
    fn received(&mut self, _: usize) {}
    fn work(&mut self) -> bool {
        false
    }
    fn seq(&self, _: usize) -> u32 {
        EXCHANGE
    }
}

struct FlowItems<'a>(&'a mut dyn Flow);

impl Items for FlowItems<'_> {
    fn send(&self, k: usize) -> Option<&[u8]> {
        self.0.send(k)
    }
    fn recv(&mut self, k: usize) -> Option<&mut [u8]> {
        self.0.recv(k)
    }
    fn sent(&mut self, k: usize) {
        self.0.sent(k)
    }
    fn received(&mut self, k: usize) {
        self.0.received(k)
    }
    fn work(&mut self) -> bool {
        self.0.work()
    }
    fn seq(&self, k: usize) -> u32 {
        k as u32
    }
}

/// How long a rank has waited: for each peer (see [`Heard`]), and since it began to look
/// without finding anything (for the spin and yield budgets).
struct Idle {
    heard: Heard,
    since: Option<Instant>,
}

impl Idle {
    fn new(size: usize) -> Idle {
        Idle { heard: Heard::new(size), since: None }
    }

    fn moved(&mut self, peer: usize) {
        self.heard.moved(peer);
        self.since = None;
    }
}

/// The items one (peer, direction) carries, in order, and the progress of the first unfinished.
struct Lane {
    peer: usize,
    send: bool,
    items: Vec<usize>,
    next: usize,
    header: [u8; HEADER],
    header_done: usize,
    done: usize,
    /// The next item waits for the items' owner (a flow), not for the peer.
    held: bool,
}

impl Lane {
    fn new(peer: usize, send: bool) -> Lane {
        Lane { peer, send, items: Vec::new(), next: 0, header: [0; HEADER], header_done: 0, done: 0, held: false }
    }

    fn finished(&self) -> bool {
        self.next == self.items.len()
    }

    fn add(lanes: &mut Vec<Lane>, peer: usize, send: bool, k: usize) {
        match lanes.iter_mut().find(|l| l.peer == peer && l.send == send) {
            Some(l) => l.items.push(k),
            None => {
                let mut l = Lane::new(peer, send);
                l.items.push(k);
                lanes.push(l);
            }
        }
    }
}

impl ShmTransport {
    fn peer(&self, peer: usize) -> &Peer {
        // Lanes are built after check_peers: every peer other than self is mapped.
        self.peers[peer].as_ref().unwrap_or_else(|| unreachable!("no segment of rank {peer}"))
    }

    fn out(&self, peer: usize) -> Ring<'_> {
        Ring::new(self.mine.ring(peer), self.mine.cap())
    }

    fn inbound(&self, peer: usize) -> Ring<'_> {
        let seg = &self.peer(peer).seg;
        Ring::new(seg.ring(self.rank), seg.cap())
    }

    /// Tells `peer` that a ring it waits on moved, waking it only if it sleeps.
    fn notify(&self, peer: usize) {
        fence(Ordering::SeqCst);
        self.wake_if_asleep(peer);
    }

    /// Rings `peer`'s bell if its `sleeping` word is set; the caller fenced after its write.
    fn wake_if_asleep(&self, peer: usize) {
        let p = self.peer(peer);
        if p.seg.sleeping().load(Ordering::Relaxed) != 0 {
            ring_bell(p.bell.as_raw_fd());
        }
    }

    /// Moves what it can of `lane`'s items; returns whether a byte moved.
    fn drive(&self, lane: &mut Lane, tag: Tag, items: &mut dyn Items) -> Result<bool, Error> {
        let mut moved = false;
        lane.held = false;
        while let Some(&k) = lane.items.get(lane.next) {
            let n = if lane.send {
                let Some(buf) = items.send(k) else {
                    lane.held = true;
                    return Ok(moved);
                };
                if lane.header_done == 0 && lane.done == 0 {
                    lane.header = header(tag, buf.len() as u64, items.seq(k));
                }
                if lane.header_done == HEADER && lane.done == buf.len() {
                    items.sent(k);
                    lane.next += 1;
                    (lane.header_done, lane.done) = (0, 0);
                    continue;
                }
                self.out(lane.peer).push([&lane.header[lane.header_done..], &buf[lane.done..]])
            } else {
                let seq = items.seq(k);
                let Some(buf) = items.recv(k) else {
                    lane.held = true;
                    return Ok(moved);
                };
                if lane.header_done == HEADER && lane.done == buf.len() {
                    items.received(k);
                    lane.next += 1;
                    (lane.header_done, lane.done) = (0, 0);
                    continue;
                }
                let len = buf.len() as u64;
                let n = self.inbound(lane.peer).pop([&mut lane.header[lane.header_done..], &mut buf[lane.done..]]);
                if lane.header_done < HEADER && lane.header_done + n >= HEADER {
                    check_header(lane.peer, &lane.header, &header(tag, len, seq))?;
                }
                n
            };
            if n == 0 {
                return Ok(moved);
            }
            self.notify(lane.peer);
            moved = true;
            let h = n.min(HEADER - lane.header_done);
            lane.header_done += h;
            lane.done += n - h;
        }
        Ok(moved)
    }

    /// Whether some lane waiting on its peer could move now.
    fn could_move(&self, lanes: &[Lane]) -> bool {
        lanes
            .iter()
            .filter(|l| !l.finished() && !l.held)
            .any(|l| if l.send { self.out(l.peer).writable() } else { self.inbound(l.peer).readable() })
    }

    /// Marks the peers that closed their links or whose process is gone.
    fn look_for_gone(&mut self) {
        for p in 0..self.size {
            if p == self.rank || self.gone[p] {
                continue;
            }
            let peer = self.peer(p);
            self.gone[p] = peer.seg.abort().load(Ordering::Acquire) != 0
                || (peer.pidfd.is_none() && !crate::os::process_exists(peer.pid));
        }
    }

    /// Runs `lanes` to completion.
    fn run(&mut self, tag: Tag, lanes: &mut [Lane], items: &mut dyn Items) -> Result<(), Error> {
        let mut idle = Idle::new(self.size);
        let mut work_left = true;
        loop {
            let mut moved = false;
            for lane in lanes.iter_mut().filter(|l| !l.finished()) {
                if self.drive(lane, tag, items)? {
                    idle.moved(lane.peer);
                    moved = true;
                }
            }
            if lanes.iter().all(Lane::finished) {
                while items.work() {}
                return Ok(());
            }
            if moved {
                work_left = true;
                continue;
            }
            if work_left {
                work_left = items.work();
                continue;
            }
            let waiting: Vec<usize> = lanes.iter().filter(|l| !l.finished() && !l.held).map(|l| l.peer).collect();
            if waiting.is_empty() {
                return Err(Error::Protocol { peer: lanes[0].peer, detail: "stream schedule stalled".into() });
            }
            if let Some(e) = waiting.iter().find_map(|&p| self.stage_instead(p, tag)) {
                // A peer on a later stage step has finished this call, so what it sent for it
                // is in the ring already (written before the step's counter, which was read
                // with Acquire): only if nothing can move now is it another call.
                if self.could_move(lanes) {
                    continue;
                }
                return Err(e);
            }
            self.pause(&waiting, &mut idle, |t| t.could_move(lanes))?;
        }
    }

    /// One pause of a rank that found nothing to move from `waiting` (not empty): fails if one
    /// of them is gone (only once the caller has looked again at what it wrote, after the look
    /// that found it gone) or if nothing moved for the timeout; otherwise spins, yields or
    /// sleeps, by the wait policy, until `ready` may be true.
    fn pause(
        &mut self,
        waiting: &[usize],
        idle: &mut Idle,
        ready: impl Fn(&ShmTransport) -> bool,
    ) -> Result<(), Error> {
        if let Some(&p) = waiting.iter().find(|&&p| self.gone[p]) {
            return Err(Error::Closed { peer: p });
        }
        if self.abort.as_ref().is_some_and(|b| b.is_rung()) {
            return Err(Error::JobFailed);
        }
        self.look_for_gone();
        if waiting.iter().any(|&p| self.gone[p]) {
            return Ok(());
        }
        let idle_for = idle.since.get_or_insert_with(Instant::now).elapsed();
        if idle_for < self.spin {
            if self.yield_at_once || idle_for >= PURE_SPIN {
                // SAFETY: no arguments, no failure that matters.
                unsafe { libc::sched_yield() };
            } else {
                std::hint::spin_loop();
            }
            return Ok(());
        }
        let left = idle.heard.left(|p| waiting.contains(&p), self.timeout)?;
        self.sleep(None, waiting, left, ready).map_err(|e| Error::Io { peer: waiting[0], source: e.into() })
    }

    /// Sleeps until a peer moves a ring (`ready` says whether one has), one of `watched` exits,
    /// `wake` rings, or `timeout` passes.
    fn sleep(
        &mut self,
        wake: Option<&Doorbell>,
        watched: &[usize],
        timeout: Duration,
        ready: impl Fn(&ShmTransport) -> bool,
    ) -> std::io::Result<()> {
        self.mine.sleeping().store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let result = if ready(self) {
            Ok(())
        } else {
            let mut fds = vec![PollFd { fd: self.bell.as_raw_fd(), read: true, write: false, ready: false }];
            fds.extend(wake.map(|w| PollFd { fd: w.fd(), read: true, write: false, ready: false }));
            fds.extend(self.abort.as_ref().map(|b| PollFd { fd: b.fd(), read: true, write: false, ready: false }));
            let mut owners = Vec::new();
            let mut timeout = timeout;
            for &p in watched {
                match &self.peer(p).pidfd {
                    Some(fd) if !owners.contains(&p) => {
                        fds.push(PollFd { fd: fd.as_raw_fd(), read: true, write: false, ready: false });
                        owners.push(p);
                    }
                    Some(_) => {}
                    None => timeout = timeout.min(NO_PIDFD_CHECK),
                }
            }
            let base = fds.len() - owners.len();
            let r = poll(&mut fds, timeout);
            for (f, &p) in fds[base..].iter().zip(&owners) {
                self.gone[p] |= f.ready;
            }
            r.map(drop)
        };
        self.mine.sleeping().store(0, Ordering::Relaxed);
        drain_bell(self.bell.as_raw_fd());
        result
    }

    fn lanes_for_steps(&self, ops: &[Step<'_>]) -> Vec<Lane> {
        let mut lanes = Vec::new();
        for (k, op) in ops.iter().enumerate() {
            Lane::add(&mut lanes, op.peer(), matches!(op, Step::Send { .. }), k);
        }
        lanes
    }

    fn lanes_for_flow(&self, flow: &dyn Flow) -> Result<Vec<Lane>, Error> {
        let mut lanes = Vec::new();
        for k in 0..flow.count() {
            for (peer, send) in [(flow.to(k), true), (flow.from(k), false)] {
                if peer >= self.size || peer == self.rank {
                    return Err(Error::BadPeer { peer, rank: self.rank, size: self.size });
                }
                Lane::add(&mut lanes, peer, send, k);
            }
        }
        Ok(lanes)
    }

    fn guarded(&mut self, f: impl FnOnce(&mut ShmTransport) -> Result<(), Error>) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Unusable);
        }
        let result = f(self);
        // Unusable, but still open: the communicator records the failure before it closes the
        // links, so that peers read the cause rather than this rank's going away.
        self.failed |= result.is_err();
        result
    }
}

fn ring_bell(fd: RawFd) {
    // SAFETY: writes 8 bytes from a valid local to an eventfd; a full counter already wakes.
    let _ = unsafe { libc::write(fd, (&1u64 as *const u64).cast(), 8) };
}

fn drain_bell(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a valid local from a non-blocking eventfd.
    let _ = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

impl Transport for ShmTransport {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn exchange(&mut self, tag: Tag, ops: &mut [Step<'_>]) -> Result<(), Error> {
        self.guarded(|t| {
            check_peers(t.rank, t.size, ops)?;
            let mut lanes = t.lanes_for_steps(ops);
            t.run(tag, &mut lanes, &mut StepItems(ops))
        })
    }

    fn stream(&mut self, tag: Tag, flow: &mut dyn Flow) -> Result<(), Error> {
        self.guarded(|t| {
            let mut lanes = t.lanes_for_flow(flow)?;
            t.run(tag, &mut lanes, &mut FlowItems(flow))
        })
    }

    fn stage(&mut self) -> Option<&mut dyn super::Stage> {
        Some(self)
    }

    fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool, Error> {
        if self.failed {
            return Err(Error::Unusable);
        }
        let others: Vec<usize> = (0..self.size).filter(|&p| p != self.rank && !self.gone[p]).collect();
        // News: bytes in a ring, or a stage step that a peer began and this rank did not.
        let anything = |t: &ShmTransport| others.iter().any(|&p| t.inbound(p).readable() || t.ahead(p));
        // The doorbell is not cleared here: the engine cleared it before it last looked for
        // work, and a ring since then must still wake it. (The engine looks, by the wait
        // policy, before it calls this to sleep.)
        let ready = |t: &ShmTransport| wake.is_rung() || anything(t);
        if !ready(self) && !timeout.is_zero() {
            self.sleep(Some(wake), &others, timeout, ready)
                .map_err(|e| Error::Io { peer: others.first().copied().unwrap_or(0), source: e.into() })?;
        }
        if self.abort.as_ref().is_some_and(|b| b.is_rung()) {
            return Err(Error::JobFailed);
        }
        self.look_for_gone();
        // A peer that is gone counts as news, as a closed socket does: the next round fails.
        Ok(anything(self) || self.gone.iter().any(|&g| g))
    }

    fn watch_abort(&mut self, bell: super::AbortBell) {
        self.abort = Some(bell);
    }

    fn close(&mut self) {
        if self.mine.abort().swap(1, Ordering::SeqCst) != 0 {
            self.failed = true;
            return;
        }
        self.failed = true;
        for p in self.peers.iter().flatten() {
            ring_bell(p.bell.as_raw_fd());
        }
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        self.close();
    }
}
