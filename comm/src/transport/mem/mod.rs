//! In-process transport: ranks are threads, links are queues. Sends never block, so any
//! schedule of an algorithm completes; tests use it to check algorithms without sockets.

mod pair;

use std::sync::Arc;
use std::time::Duration;

use super::{Error, Step, Tag, Transport, check_peers};
use crate::os::{Doorbell, PollFd, poll};
use pair::Pair;

/// One rank's end of an in-process world.
pub struct MemTransport {
    rank: usize,
    size: usize,
    /// `links[src * size + dst]`.
    links: Arc<Vec<Pair>>,
    /// Rung on every message to rank `r`, for [`Transport::wait_incoming`].
    bells: Arc<Vec<Doorbell>>,
    timeout: Duration,
    failed: bool,
}

impl MemTransport {
    /// A world of `size` connected ranks; element `r` is rank `r`.
    ///
    /// # Panics
    /// If the process is out of file descriptors (each rank has a doorbell pipe).
    pub fn world(size: usize, timeout: Duration) -> Vec<MemTransport> {
        let links: Arc<Vec<Pair>> = Arc::new((0..size * size).map(|_| Pair::default()).collect());
        let bells: Arc<Vec<Doorbell>> =
            Arc::new((0..size).map(|_| Doorbell::new().expect("a pipe for an in-process rank")).collect());
        (0..size)
            .map(|rank| MemTransport { rank, size, links: links.clone(), bells: bells.clone(), timeout, failed: false })
            .collect()
    }

    fn anything_for_me(&self) -> bool {
        (0..self.size).any(|peer| peer != self.rank && self.link(peer, self.rank).has_message())
    }

    fn link(&self, src: usize, dst: usize) -> &Pair {
        &self.links[src * self.size + dst]
    }
}

impl Transport for MemTransport {
    fn name(&self) -> &'static str {
        "mem"
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
        for op in ops.iter() {
            if let Step::Send { peer, buf } = op {
                self.link(self.rank, *peer).push(tag, buf.to_vec());
                self.bells[*peer].ring();
            }
        }
        for op in ops.iter_mut() {
            if let Step::Recv { peer, buf } = op
                && let Err(e) = self.link(*peer, self.rank).pop(*peer, tag, buf, self.timeout)
            {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool, Error> {
        if self.failed {
            return Err(Error::Unusable);
        }
        let bell = &self.bells[self.rank];
        bell.clear();
        if self.anything_for_me() {
            return Ok(true);
        }
        let mut fds = [
            PollFd { fd: wake.fd(), read: true, write: false, ready: false },
            PollFd { fd: bell.fd(), read: true, write: false, ready: false },
        ];
        poll(&mut fds, timeout).map_err(|source| Error::Io { peer: self.rank, source: source.into() })?;
        Ok(self.anything_for_me())
    }

    fn close(&mut self) {
        self.failed = true;
        for peer in 0..self.size {
            self.link(self.rank, peer).close();
            self.bells[peer].ring();
        }
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        self.close();
    }
}
