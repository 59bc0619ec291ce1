//! One direction of a link: a single-producer, single-consumer byte ring in the sender's
//! segment, and the 32-byte frame header in front of every message.
//!
//! `head` and `tail` count bytes since the link opened (they never wrap at 2^64 in practice);
//! the sender writes bytes, then publishes `head` with release order; the receiver reads
//! `head` with acquire order, copies the bytes out, then publishes `tail`, which frees them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::transport::{Error, Tag};

/// Bytes of the header in front of every message.
pub(super) const HEADER: usize = 32;
const MARK: u32 = 0xFE77_5A01;

/// Sequence number of an exchange's messages (a stream's carry their index).
pub(super) const EXCHANGE: u32 = u32::MAX;

/// One ring, seen from either end.
pub(super) struct Ring<'a> {
    head: &'a AtomicU64,
    tail: &'a AtomicU64,
    data: *mut u8,
    cap: usize,
}

impl<'a> Ring<'a> {
    pub(super) fn new((head, tail, data): (&'a AtomicU64, &'a AtomicU64, *mut u8), cap: usize) -> Ring<'a> {
        Ring { head, tail, data, cap }
    }

    /// Sender: copies from `parts`, in order, as many bytes as the ring has room for; returns
    /// how many.
    pub(super) fn push(&self, parts: [&[u8]; 2]) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        let free = self.cap - (head - self.tail.load(Ordering::Acquire)) as usize;
        let mut n = 0;
        for part in parts {
            let k = part.len().min(free - n);
            self.copy_in(head + n as u64, &part[..k]);
            n += k;
            if k < part.len() {
                break;
            }
        }
        if n > 0 {
            self.head.store(head + n as u64, Ordering::Release);
        }
        n
    }

    /// Receiver: copies into `parts`, in order, as many bytes as have arrived; returns how many.
    pub(super) fn pop(&self, parts: [&mut [u8]; 2]) -> usize {
        let tail = self.tail.load(Ordering::Relaxed);
        let ready = (self.head.load(Ordering::Acquire) - tail) as usize;
        let mut n = 0;
        for part in parts {
            let k = part.len().min(ready - n);
            self.copy_out(tail + n as u64, &mut part[..k]);
            n += k;
            if k < part.len() {
                break;
            }
        }
        if n > 0 {
            self.tail.store(tail + n as u64, Ordering::Release);
        }
        n
    }

    /// Receiver, between messages: the tag of the next message, once its first 16 bytes are in.
    pub(super) fn peek_tag(&self) -> Option<Tag> {
        let tail = self.tail.load(Ordering::Relaxed);
        if self.head.load(Ordering::Acquire) - tail < 16 {
            return None;
        }
        let mut t = [0u8; 16];
        self.copy_out(tail, &mut t);
        Some(Tag::from_le_bytes(t))
    }

    /// Receiver: whether bytes are waiting.
    pub(super) fn readable(&self) -> bool {
        self.head.load(Ordering::Acquire) != self.tail.load(Ordering::Relaxed)
    }

    /// Sender: whether the ring has room.
    pub(super) fn writable(&self) -> bool {
        self.head.load(Ordering::Relaxed) - self.tail.load(Ordering::Acquire) < self.cap as u64
    }

    fn copy_in(&self, pos: u64, src: &[u8]) {
        let off = pos as usize & (self.cap - 1);
        let first = src.len().min(self.cap - off);
        // SAFETY: [off, off + first) and [0, rest) lie in the ring, and the protocol gives them
        // to the sender alone until `head` publishes them; `src` is not in the ring.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(off), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data, src.len() - first);
        }
    }

    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let off = pos as usize & (self.cap - 1);
        let first = dst.len().min(self.cap - off);
        // SAFETY: the bytes were published by `head` and stay the receiver's until `tail` frees
        // them; `dst` is not in the ring.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(off), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }
}

/// The header of message `seq` of `len` bytes.
pub(super) fn header(tag: Tag, len: u64, seq: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..16].copy_from_slice(&tag.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24..28].copy_from_slice(&seq.to_le_bytes());
    h[28..32].copy_from_slice(&MARK.to_le_bytes());
    h
}

/// Checks a received header against the one this rank expects.
pub(super) fn check_header(peer: usize, got: &[u8; HEADER], expected: &[u8; HEADER]) -> Result<(), Error> {
    if got[28..32] != expected[28..32] {
        return Err(Error::Protocol { peer, detail: "shared-memory link out of step (bad frame marker)".into() });
    }
    let tag = |h: &[u8; HEADER]| Tag::from_le_bytes(h[..16].try_into().unwrap_or_default());
    if tag(got) != tag(expected) {
        return Err(Error::TagMismatch { peer, expected: tag(expected), got: tag(got) });
    }
    let len = |h: &[u8; HEADER]| u64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
    if len(got) != len(expected) {
        return Err(Error::LengthMismatch { peer, expected: len(expected), got: len(got) });
    }
    let seq = |h: &[u8; HEADER]| u32::from_le_bytes(h[24..28].try_into().unwrap_or_default());
    if seq(got) != seq(expected) {
        let name = |s: u32| if s == EXCHANGE { "an exchange's message".to_string() } else { format!("message {s}") };
        return Err(Error::Protocol {
            peer,
            detail: format!("out of step: {} arrived where this rank expects {}", name(seq(got)), name(seq(expected))),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_wrap_around_and_arrive_in_order() {
        let (head, tail) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut mem = vec![0u8; 16];
        let ring = Ring::new((&head, &tail, mem.as_mut_ptr()), 16);
        let data: Vec<u8> = (0..100).collect();
        let (mut sent, mut got) = (0, Vec::<u8>::new());
        while got.len() < data.len() {
            // Odd sizes on both sides, so that copies straddle the end of the ring.
            sent += ring.push([&data[sent..(sent + 3).min(100)], &data[(sent + 3).min(100)..(sent + 7).min(100)]]);
            assert!(head.load(Ordering::Relaxed) - tail.load(Ordering::Relaxed) <= 16);
            let (mut a, mut b) = ([0u8; 2], [0u8; 3]);
            let n = ring.pop([&mut a, &mut b]);
            got.extend(a.iter().chain(&b).take(n));
        }
        assert_eq!(got, data);
        assert!(!ring.readable());
    }

    #[test]
    fn a_full_ring_takes_nothing_more() {
        let (head, tail) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut mem = vec![0u8; 8];
        let ring = Ring::new((&head, &tail, mem.as_mut_ptr()), 8);
        assert_eq!(ring.push([&[1; 6], &[2; 6]]), 8);
        assert!(!ring.writable());
        assert_eq!(ring.push([&[3; 1], &[]]), 0);
        let mut out = [0u8; 8];
        assert_eq!(ring.pop([&mut out, &mut []]), 8);
        assert_eq!(out, [1, 1, 1, 1, 1, 1, 2, 2]);
    }

    #[test]
    fn headers_that_disagree_are_named() {
        let h = header(7, 100, EXCHANGE);
        assert!(check_header(1, &h, &h).is_ok());
        assert!(matches!(check_header(1, &header(8, 100, EXCHANGE), &h), Err(Error::TagMismatch { peer: 1, .. })));
        assert!(matches!(
            check_header(1, &header(7, 99, EXCHANGE), &h),
            Err(Error::LengthMismatch { expected: 100, got: 99, .. })
        ));
        let e = check_header(1, &header(7, 100, 3), &h).unwrap_err().to_string();
        assert!(e.contains("message 3") && e.contains("exchange"), "{e}");
    }
}
