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

/// Words of the stage's control line: the counter, then (tag low, tag high, length) per parity.
const COUNTER: usize = 0;

fn header_words(parity: usize) -> [usize; 3] {
    let base = 1 + 3 * (parity & 1);
    [base, base + 1, base + 2]
}

impl ShmTransport {
    /// Whether every peer has published step `k`.
    fn all_published(&self, k: u64) -> bool {
        self.others().all(|p| self.peer(p).seg.stage_words()[COUNTER].load(Ordering::Acquire) >= k)
    }

    /// Whether `peer` has published a step that this rank has not begun.
    pub(super) fn ahead(&self, peer: usize) -> bool {
        self.peer(peer).seg.stage_words()[COUNTER].load(Ordering::Acquire) > self.steps
    }

    fn others(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.size).filter(move |&p| p != self.rank)
    }
}

impl Stage for ShmTransport {
    fn region(&self) -> usize {
        self.mine.region(0).1
    }

    fn next(&mut self) -> &mut [u8] {
        let (base, len) = self.mine.region(((self.steps + 1) % 2) as usize);
        // SAFETY: this rank's own region of the next step, which no peer reads until it is
        // published (see the module comment); the borrow of `self` keeps it exclusive here.
        unsafe { std::slice::from_raw_parts_mut(base, len) }
    }

    fn publish(&mut self, tag: Tag, len: usize) -> Result<Vec<&[u8]>, Error> {
        if self.failed {
            return Err(Error::Unusable);
        }
        assert!(len <= self.region(), "stage step of {len} bytes exceeds the region");
        let k = self.steps + 1;
        let parity = (k % 2) as usize;
        let words = self.mine.stage_words();
        let [lo, hi, n] = header_words(parity);
        words[lo].store(tag as u64, Ordering::Relaxed);
        words[hi].store((tag >> 64) as u64, Ordering::Relaxed);
        words[n].store(len as u64, Ordering::Relaxed);
        words[COUNTER].store(k, Ordering::Release);
        fence(Ordering::SeqCst);
        for p in self.others() {
            self.wake_if_asleep(p);
        }
        self.steps = k;

        let mut idle = Idle::new();
        while !self.all_published(k) {
            let waiting: Vec<usize> = self
                .others()
                .filter(|&p| self.peer(p).seg.stage_words()[COUNTER].load(Ordering::Acquire) < k)
                .collect();
            if let Err(e) = self.pause(&waiting, &mut idle, |t| t.all_published(k)) {
                self.failed = true;
                return Err(e);
            }
        }
        let mismatch = self.others().find_map(|p| {
            let w = self.peer(p).seg.stage_words();
            let theirs = (u128::from(w[hi].load(Ordering::Relaxed)) << 64) | u128::from(w[lo].load(Ordering::Relaxed));
            let their_len = w[n].load(Ordering::Relaxed);
            if theirs != tag {
                Some(Error::TagMismatch { peer: p, expected: tag, got: theirs })
            } else if their_len != len as u64 {
                Some(Error::LengthMismatch { peer: p, expected: len as u64, got: their_len })
            } else {
                None
            }
        });
        if let Some(e) = mismatch {
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
