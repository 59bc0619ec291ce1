//! [`Transport::stream`](crate::transport::Transport::stream) over TCP: every message of a
//! flow moves as soon as the flow allows, without waiting for the other messages of its step.
//!
//! Message `k` travels whole (one header, no striping) on stream `k % streams` of its link, so
//! consecutive messages use different connections and both ends agree on where each one is.
//! Its header carries `k` (mod 2^16) where an exchange's carries the stripe index, so ranks
//! whose schedules number messages differently fail instead of reading each other's bytes.
//! Each (peer, stream, direction) is a lane that moves its messages in order; lanes move
//! independently. When no lane can move, the flow's work runs; when there is none, the thread
//! sleeps in `poll(2)` on the lanes whose next message is waiting for the socket (never on a
//! lane waiting for the flow, which would spin).

use std::os::fd::RawFd;
use std::time::Duration;

use super::TcpTransport;
use super::pair::{HEADER, check_header, header, io_error, recv2, send2};
use crate::os::{PollFd, poll_after_spin};
use crate::transport::{Error, Flow, Heard, Tag};

/// The messages one (peer, stream, direction) carries, in order, and the progress of the first
/// unfinished one.
struct Lane {
    peer: usize,
    stream: usize,
    send: bool,
    msgs: Vec<usize>,
    next: usize,
    /// The socket may take (or give) bytes: cleared on `EAGAIN`, set again by `poll`.
    ready: bool,
    header: [u8; HEADER],
    header_done: usize,
    done: usize,
}

/// What a lane's next message is waiting for.
#[derive(PartialEq)]
enum Wait {
    Nothing,
    Flow,
    Socket,
}

impl Lane {
    fn finished(&self) -> bool {
        self.next == self.msgs.len()
    }

    /// Moves bytes until the socket would block, the flow holds the next message back, or the
    /// lane is empty. Returns whether any byte moved and what the lane now waits for.
    fn drive(&mut self, fd: RawFd, tag: Tag, lanes: usize, flow: &mut dyn Flow) -> Result<(bool, Wait), Error> {
        let mut moved = false;
        while let Some(&k) = self.msgs.get(self.next) {
            let result = if self.send {
                let Some(buf) = flow.send(k) else { return Ok((moved, Wait::Flow)) };
                if self.header_done == 0 && self.done == 0 {
                    self.header = header(tag, buf.len() as u64, k as u16, lanes as u16);
                }
                if self.header_done == HEADER && self.done == buf.len() {
                    flow.sent(k);
                    self.advance();
                    continue;
                }
                send2(fd, &self.header[self.header_done..], &buf[self.done..])
            } else {
                let Some(buf) = flow.recv(k) else { return Ok((moved, Wait::Flow)) };
                if self.header_done == HEADER && self.done == buf.len() {
                    flow.received(k);
                    self.advance();
                    continue;
                }
                let len = buf.len();
                let r = recv2(fd, &mut self.header[self.header_done..], &mut buf[self.done..]);
                if let Ok(0) = r {
                    return Err(Error::Closed { peer: self.peer });
                }
                if let Ok(n) = r
                    && self.header_done < HEADER
                    && self.header_done + n >= HEADER
                {
                    let expected = header(tag, len as u64, k as u16, lanes as u16);
                    check_header(self.peer, &self.header, &expected)?;
                }
                r
            };
            let n = match result {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    return Ok((moved, Wait::Socket));
                }
                Err(e) => return Err(io_error(self.peer, e)),
            };
            moved |= n > 0;
            let h = n.min(HEADER - self.header_done);
            self.header_done += h;
            self.done += n - h;
        }
        Ok((moved, Wait::Nothing))
    }

    fn advance(&mut self) {
        self.next += 1;
        self.header_done = 0;
        self.done = 0;
    }
}

impl TcpTransport {
    pub(super) fn run_stream(&mut self, tag: Tag, flow: &mut dyn Flow) -> Result<(), Error> {
        let mut lanes = self.lanes(flow)?;
        let mut work_left = true;
        let mut heard = Heard::new(self.size);
        loop {
            let mut pending = false;
            let mut moved = false;
            for lane in lanes.iter_mut().filter(|l| l.ready && !l.finished()) {
                if lane.drive(self.pair(lane.peer).fd(lane.stream), tag, self.streams, flow)?.0 {
                    heard.moved(lane.peer);
                    moved = true;
                }
            }
            for lane in &lanes {
                pending |= !lane.finished();
            }
            if !pending {
                while flow.work() {}
                return Ok(());
            }
            if moved {
                work_left = true;
                continue;
            }
            let wait = if work_left {
                work_left = flow.work();
                Duration::ZERO
            } else {
                // Lanes the flow holds back wait for this rank's work, not for their peer.
                let awaited = lanes.iter().filter(|l| !l.finished() && !l.ready).map(|l| l.peer);
                self.time_left(&mut heard, awaited)?
            };
            // Poll only the lanes stopped by their socket; a lane the flow holds back is
            // driven again after the work that frees it.
            let polled: Vec<usize> = (0..lanes.len()).filter(|&i| !lanes[i].ready && !lanes[i].finished()).collect();
            if polled.is_empty() {
                if wait.is_zero() {
                    continue;
                }
                let peer = lanes.iter().find(|l| !l.finished()).map_or(0, |l| l.peer);
                return Err(Error::Protocol { peer, detail: "stream schedule stalled".into() });
            }
            let mut fds: Vec<PollFd> = polled
                .iter()
                .map(|&i| {
                    let l = &lanes[i];
                    PollFd { fd: self.pair(l.peer).fd(l.stream), read: !l.send, write: l.send, ready: false }
                })
                .collect();
            fds.extend(self.abort_fd());
            poll_after_spin(&mut fds, wait, self.spin)
                .map_err(|source| Error::Io { peer: lanes[polled[0]].peer, source: source.into() })?;
            for (&i, f) in polled.iter().zip(&fds) {
                lanes[i].ready = f.ready;
            }
        }
    }

    /// One lane per (peer, stream, direction) that the flow uses, holding its messages in order.
    fn lanes(&self, flow: &dyn Flow) -> Result<Vec<Lane>, Error> {
        let mut lanes: Vec<Lane> = Vec::new();
        for k in 0..flow.count() {
            for (peer, send) in [(flow.to(k), true), (flow.from(k), false)] {
                if peer >= self.size || peer == self.rank {
                    return Err(Error::BadPeer { peer, rank: self.rank, size: self.size });
                }
                let stream = k % self.streams;
                match lanes.iter_mut().find(|l| l.peer == peer && l.stream == stream && l.send == send) {
                    Some(l) => l.msgs.push(k),
                    None => lanes.push(Lane {
                        peer,
                        stream,
                        send,
                        msgs: vec![k],
                        next: 0,
                        ready: true,
                        header: [0; HEADER],
                        header_done: 0,
                        done: 0,
                    }),
                }
            }
        }
        Ok(lanes)
    }
}
