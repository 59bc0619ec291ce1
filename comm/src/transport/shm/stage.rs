//! The stage: each rank's two regions in its segment, which every rank of the host reads in
//! place, for collectives that copy their input in once instead of passing it along a ring.
//!
//! Step k uses region k % 2. A rank fills its region, writes the step's tag and length for that
//! parity, then its step counter (release); it reads its peers' regions once each counter
//! reached k (acquire). It fills region k % 2 again at step k + 2, which it begins only after
//! every peer began step k + 1, that is after every peer finished reading step k. So one
//! counter per rank is all the synchronisation, and a step costs one wait.

use std::sync::atomic::{Ordering, fence};

use super::{Idle, ShmTransport};
use crate::transport::{Error, Stage, Tag};

/// Words of the stage's control line: the counter, then (tag low, tag high, length, layout)
/// per parity.
const COUNTER: usize = 0;

fn header_words(parity: usize) -> [usize; 4] {
    let base = 1 + 4 * (parity & 1);
    [base, base + 1, base + 2, base + 3]
}

impl ShmTransport {
    fn counter(&self, peer: usize) -> u64 {
        self.peer(peer).seg.stage_words()[COUNTER].load(Ordering::Acquire)
    }

    /// Whether every peer has published step `k`.
    fn all_published(&self, k: u64) -> bool {
        self.others().all(|p| self.counter(p) >= k)
    }

    /// Whether `peer` has published a step that this rank has not begun.
    pub(super) fn ahead(&self, peer: usize) -> bool {
        self.counter(peer) > self.steps
    }

    /// The (tag, length, layout) `peer` published for step `k`.
    fn published(&self, peer: usize, k: u64) -> (Tag, u64, u64) {
        let w = self.peer(peer).seg.stage_words();
        let [lo, hi, len, layout] = header_words((k % 2) as usize).map(|i| w[i].load(Ordering::Relaxed));
        ((u128::from(hi) << 64) | u128::from(lo), len, layout)
    }

    /// A ring collective waits on `peer`, which began a stage step instead: another call.
    pub(super) fn stage_instead(&self, peer: usize, tag: Tag) -> Option<Error> {
        self.ahead(peer).then(|| Error::TagMismatch {
            peer,
            expected: tag,
            got: self.published(peer, self.steps + 1).0,
        })
    }

    fn others(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.size).filter(move |&p| p != self.rank)
    }

    /// Waits until every peer published step `k`, failing on a peer that sent a ring message
    /// instead (no ring message is unread between collectives, so it belongs to another call).
    fn wait_published(&mut self, k: u64, tag: Tag) -> Result<(), Error> {
        let mut idle = Idle::new(self.size);
        while !self.all_published(k) {
            let waiting: Vec<usize> = self.others().filter(|&p| self.counter(p) < k).collect();
            if let Some(e) = waiting.iter().find_map(|&p| {
                let got = self.inbound(p).peek_tag()?;
                // A peer publishes step k before it sends anything for a later call: if it has
                // published by now, the message is the next call's and this step is complete.
                (self.counter(p) < k).then_some(Error::TagMismatch { peer: p, expected: tag, got })
            }) {
                return Err(e);
            }
            if !waiting.is_empty() {
                self.pause(&waiting, &mut idle, |t| t.all_published(k))?;
            }
        }
        Ok(())
    }
}

impl Stage for ShmTransport {
    fn region(&self) -> usize {
        self.mine.region(0).1
    }

    fn next(&mut self) -> Result<&mut [u8], Error> {
        if self.failed {
            return Err(Error::Unusable);
        }
        let (base, len) = self.mine.region(((self.steps + 1) % 2) as usize);
        // SAFETY: this rank's region of step `steps + 1`, last published at step `steps - 1`.
        // Step `steps` was published and completed (else `failed` is set), so every peer began
        // it and no longer reads the region; the borrow of `self` keeps it exclusive here.
        Ok(unsafe { std::slice::from_raw_parts_mut(base, len) })
    }

    fn publish(&mut self, tag: Tag, len: usize, layout: u64) -> Result<Vec<&[u8]>, Error> {
        if self.failed {
            return Err(Error::Unusable);
        }
        if len > self.region() {
            self.failed = true;
            let detail = format!("a stage step of {len} bytes exceeds the {}-byte region", self.region());
            return Err(Error::Protocol { peer: self.rank, detail });
        }
        let k = self.steps + 1;
        let parity = (k % 2) as usize;
        let words = self.mine.stage_words();
        let h = header_words(parity);
        for (i, v) in h.into_iter().zip([tag as u64, (tag >> 64) as u64, len as u64, layout]) {
            words[i].store(v, Ordering::Relaxed);
        }
        words[COUNTER].store(k, Ordering::Release);
        fence(Ordering::SeqCst);
        for p in self.others() {
            self.wake_if_asleep(p);
        }
        self.steps = k;

        let checked = self.wait_published(k, tag).and_then(|()| {
            match self
                .others()
                .map(|p| (p, self.published(p, k)))
                .find(|&(_, theirs)| theirs != (tag, len as u64, layout))
            {
                None => Ok(()),
                Some((p, (t, _, _))) if t != tag => Err(Error::TagMismatch { peer: p, expected: tag, got: t }),
                Some((p, (_, n, _))) if n != len as u64 => {
                    Err(Error::LengthMismatch { peer: p, expected: len as u64, got: n })
                }
                Some((p, _)) => {
                    Err(Error::Protocol { peer: p, detail: format!("rank {p} cuts the buffer into other blocks") })
                }
            }
        });
        if let Err(e) = checked {
            self.failed = true;
            return Err(e);
        }
        Ok((0..self.size)
            .map(|p| {
                let seg = if p == self.rank { &self.mine } else { &self.peer(p).seg };
                let (base, _) = seg.region(parity);
                // SAFETY: rank p published this region for step k and writes it again only at
                // step k + 2, after this rank has begun step k + 1 (which needs `&mut self`).
                unsafe { std::slice::from_raw_parts(base.cast_const(), len) }
            })
            .collect())
    }
}
