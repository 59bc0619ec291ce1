//! One direction of an in-process link: an unbounded FIFO of tagged messages.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::transport::{Error, Tag};

/// Messages from one rank to another.
#[derive(Default)]
pub(super) struct Pair {
    queue: Mutex<Queue>,
    arrived: Condvar,
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<(Tag, Vec<u8>)>,
    closed: bool,
}

impl Pair {
    pub(super) fn push(&self, tag: Tag, bytes: Vec<u8>) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).messages.push_back((tag, bytes));
        self.arrived.notify_all();
    }

    /// Whether a message is waiting or the link is closed.
    pub(super) fn has_message(&self) -> bool {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.closed || !q.messages.is_empty()
    }

    pub(super) fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.arrived.notify_all();
    }

    /// Takes the next message from `peer` into `buf`, checking tag and length.
    pub(super) fn pop(&self, peer: usize, tag: Tag, buf: &mut [u8], timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let (got, bytes) = loop {
            if let Some(m) = q.messages.pop_front() {
                break m;
            }
            if q.closed {
                return Err(Error::Closed { peer });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout { peers: vec![peer], waited: timeout, via: Vec::new() });
            }
            q = self.arrived.wait_timeout(q, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        };
        if got != tag {
            return Err(Error::TagMismatch { peer, expected: tag, got });
        }
        if bytes.len() != buf.len() {
            return Err(Error::LengthMismatch { peer, expected: buf.len() as u64, got: bytes.len() as u64 });
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }
}
