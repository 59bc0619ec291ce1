//! Some of a transport's ranks seen as a transport of their own: the hierarchical allreduce
//! runs its step between hosts over the job's TCP links among the ranks with one local rank,
//! numbered 0..k, without new connections. Errors keep the job's rank numbers, so that a
//! failure names the rank the job knows; [`renumbered`] does the same for a transport that
//! numbers a group's ranks itself (the shared memory among a host's ranks).

use std::time::Duration;

use super::{Error, Flow, Step, Tag, Transport, check_peers};
use crate::os::Doorbell;

/// The ranks `members` (ranks of `inner`, this one among them) as ranks 0..members.len().
pub struct Subset<'a> {
    inner: &'a mut dyn Transport,
    members: &'a [usize],
    rank: usize,
}

impl<'a> Subset<'a> {
    /// The view of `inner` in which `members[i]` is rank i; `None` when this rank is not
    /// among them.
    pub fn new(inner: &'a mut dyn Transport, members: &'a [usize]) -> Option<Subset<'a>> {
        let rank = members.iter().position(|&r| r == inner.rank())?;
        Some(Subset { inner, members, rank })
    }
}

/// A flow whose ranks are renumbered on their way to the inner transport.
struct Mapped<'f, 'm> {
    flow: &'f mut dyn Flow,
    members: &'m [usize],
}

impl Flow for Mapped<'_, '_> {
    fn count(&self) -> usize {
        self.flow.count()
    }
    fn to(&self, k: usize) -> usize {
        self.members[self.flow.to(k)]
    }
    fn from(&self, k: usize) -> usize {
        self.members[self.flow.from(k)]
    }
    fn send(&self, k: usize) -> Option<&[u8]> {
        self.flow.send(k)
    }
    fn recv(&mut self, k: usize) -> Option<&mut [u8]> {
        self.flow.recv(k)
    }
    fn sent(&mut self, k: usize) {
        self.flow.sent(k)
    }
    fn received(&mut self, k: usize) {
        self.flow.received(k)
    }
    fn work(&mut self) -> bool {
        self.flow.work()
    }
}

impl Transport for Subset<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.members.len()
    }

    fn exchange(&mut self, tag: Tag, ops: &mut [Step<'_>]) -> Result<(), Error> {
        check_peers(self.rank, self.members.len(), ops)?;
        let mut mapped: Vec<Step<'_>> = ops
            .iter_mut()
            .map(|op| match op {
                Step::Send { peer, buf } => Step::Send { peer: self.members[*peer], buf },
                Step::Recv { peer, buf } => Step::Recv { peer: self.members[*peer], buf },
            })
            .collect();
        self.inner.exchange(tag, &mut mapped)
    }

    fn stream(&mut self, tag: Tag, flow: &mut dyn Flow) -> Result<(), Error> {
        let n = self.members.len();
        if let Some(k) = (0..flow.count()).find(|&k| flow.to(k) >= n || flow.from(k) >= n) {
            let peer = if flow.to(k) >= n { flow.to(k) } else { flow.from(k) };
            return Err(Error::BadPeer { peer, rank: self.rank, size: n });
        }
        self.inner.stream(tag, &mut Mapped { flow, members: self.members })
    }

    fn wait_incoming(&mut self, wake: &Doorbell, timeout: Duration) -> Result<bool, Error> {
        self.inner.wait_incoming(wake, timeout)
    }

    fn close(&mut self) {
        self.inner.close()
    }
}

/// `e`, raised by a transport whose rank i is the job's rank `members[i]`, with the job's
/// rank numbers.
pub fn renumbered(e: Error, members: &[usize]) -> Error {
    let job = |p: usize| members.get(p).copied().unwrap_or(p);
    match e {
        Error::Closed { peer } => Error::Closed { peer: job(peer) },
        Error::Io { peer, source } => Error::Io { peer: job(peer), source },
        Error::Timeout { peers, waited, via } => Error::Timeout {
            peers: peers.into_iter().map(job).collect(),
            waited,
            via: via.into_iter().map(job).collect(),
        },
        Error::TagMismatch { peer, expected, got } => Error::TagMismatch { peer: job(peer), expected, got },
        Error::LengthMismatch { peer, expected, got } => Error::LengthMismatch { peer: job(peer), expected, got },
        Error::Protocol { peer, detail } => Error::Protocol { peer: job(peer), detail },
        Error::BadPeer { peer, rank, size } => Error::BadPeer { peer, rank, size },
        e @ (Error::Unusable | Error::JobFailed) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::mem::MemTransport;

    #[test]
    fn a_subset_talks_to_its_members_by_their_place_in_it() {
        // Ranks 1 and 3 of 4 exchange through the view; 0 and 2 take no part.
        let ts = MemTransport::world(4, Duration::from_secs(5));
        let members = [1usize, 3];
        let threads: Vec<_> = ts
            .into_iter()
            .enumerate()
            .filter(|(r, _)| members.contains(r))
            .map(|(r, mut t)| {
                std::thread::spawn(move || {
                    let mut view = Subset::new(&mut t, &members).expect("a member");
                    let me = view.rank();
                    let mine = [r as u8; 3];
                    let mut theirs = [0u8; 3];
                    view.exchange(
                        7,
                        &mut [Step::Send { peer: 1 - me, buf: &mine }, Step::Recv { peer: 1 - me, buf: &mut theirs }],
                    )
                    .expect("exchange");
                    let bad = view.exchange(7, &mut [Step::Send { peer: 2, buf: &mine }]).unwrap_err();
                    (me, theirs, bad.to_string())
                })
            })
            .collect();
        let got: Vec<_> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
        assert_eq!(got[0].0, 0);
        assert_eq!(got[0].1, [3; 3]);
        assert_eq!(got[1].1, [1; 3]);
        assert!(got[1].2.contains("invalid peer rank 2 (world of 2"), "{}", got[1].2);
    }

    #[test]
    fn errors_name_the_jobs_ranks() {
        let e = renumbered(Error::Timeout { peers: vec![1], waited: Duration::from_secs(1), via: vec![0] }, &[4, 6]);
        assert!(matches!(e, Error::Timeout { ref peers, ref via, .. } if peers == &[6] && via == &[4]), "{e}");
        assert!(matches!(renumbered(Error::Closed { peer: 0 }, &[4, 6]), Error::Closed { peer: 4 }));
    }
}
