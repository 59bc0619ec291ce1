//! One rank's shared segment: an anonymous `memfd` (no name in `/dev/shm`, so nothing is left
//! behind when a rank is killed), mapped by its owner and by every peer on the host.
//!
//! Layout, every field on a cache-line pair of its own (adjacent-line prefetch makes 128 bytes
//! the unit of false sharing) with a single writer:
//!
//! | offset | field | writer |
//! |---|---|---|
//! | 0 | cookie (random, published at rendezvous: proves a peer mapped this segment) | owner, once |
//! | `LINE` | `sleeping`: 1 while the owner is, or is about to be, asleep in `poll(2)` | owner |
//! | 2 `LINE` | `abort`: 1 once the owner closed its links | owner |
//! | 3 `LINE` | the stage's step counter, then each parity's tag and length (`stage.rs`) | owner |
//! | `ctl(d)` | `head` of the ring from the owner to rank d: bytes written so far | owner |
//! | `ctl(d) + LINE` | `tail` of that ring: bytes rank d has read so far | rank d |
//! | `ring(d)` | the ring's `cap` bytes | owner |
//! | `region(k)` | the stage's region for steps of parity k (0, 1): `cap` bytes each | owner |

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};

/// The unit of false sharing.
pub(super) const LINE: usize = 128;
const PAGE: usize = 4096;

/// The geometry every rank of a host agrees on: world size and ring capacity.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    pub(super) size: usize,
    pub(super) cap: usize,
}

impl Layout {
    fn ctl(&self, peer: usize) -> usize {
        4 * LINE + 2 * LINE * peer
    }

    fn rings(&self) -> usize {
        (self.ctl(self.size)).next_multiple_of(PAGE)
    }

    fn ring(&self, peer: usize) -> usize {
        self.rings() + self.cap * peer
    }

    fn region(&self, parity: usize) -> usize {
        self.ring(self.size) + self.cap * parity
    }

    /// Bytes of a segment.
    pub(super) fn bytes(&self) -> usize {
        self.region(2)
    }
}

/// A mapping of a segment (this rank's or a peer's), unmapped on drop. The memory stays valid
/// while mapped even after its owner died: a reader can drain what a dead peer wrote.
pub(super) struct Segment {
    base: *mut u8,
    layout: Layout,
}

// SAFETY: the mapping is plain shared memory; every concurrent access goes through atomics or
// through byte ranges that the ring protocol hands to one side at a time.
unsafe impl Send for Segment {}

impl Segment {
    /// Creates this rank's segment, with `cookie` written in it; returns it and its descriptor.
    pub(super) fn create(layout: Layout, cookie: u64) -> io::Result<(Segment, OwnedFd)> {
        // SAFETY: a NUL-terminated name and flags; returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"ferrovod-shm".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on an owned descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), layout.bytes() as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let seg = Segment::map(&fd, layout)?;
        // SAFETY: the segment is at least LINE bytes and nobody else has it yet.
        unsafe { seg.base.cast::<u64>().write(cookie) };
        Ok((seg, fd))
    }

    /// Maps a segment received from a peer, checking that it is as large as `layout` says.
    pub(super) fn map(fd: &OwnedFd, layout: Layout) -> io::Result<Segment> {
        // SAFETY: fstat into a zeroed stat of the right type.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (st.st_size as usize) < layout.bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment of {} bytes, expected {}", st.st_size, layout.bytes()),
            ));
        }
        // SAFETY: maps `bytes` of a descriptor we checked is at least that long.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.bytes(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Segment { base: base.cast(), layout })
    }

    /// The cookie its owner wrote.
    pub(super) fn cookie(&self) -> u64 {
        // SAFETY: the first line of a mapped segment, written once before it was shared.
        unsafe { self.base.cast::<u64>().read_volatile() }
    }

    fn word32(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is a line of the mapping, aligned for a u32; the mapping outlives `&self`.
        unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as in word32, aligned for a u64.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    /// The owner's `sleeping` word.
    pub(super) fn sleeping(&self) -> &AtomicU32 {
        self.word32(LINE)
    }

    /// The owner's `abort` word.
    pub(super) fn abort(&self) -> &AtomicU32 {
        self.word32(2 * LINE)
    }

    /// The ring from the owner to `peer`: (head, tail, data).
    pub(super) fn ring(&self, peer: usize) -> (&AtomicU64, &AtomicU64, *mut u8) {
        let ctl = self.layout.ctl(peer);
        // SAFETY: ring(peer) + cap lies within the mapping for peer < size.
        let data = unsafe { self.base.add(self.layout.ring(peer)) };
        (self.word64(ctl), self.word64(ctl + LINE), data)
    }

    /// The stage's control line: the step counter, then (tag low, tag high, length, layout)
    /// for parity 0 and for parity 1.
    pub(super) fn stage_words(&self) -> [&AtomicU64; 9] {
        std::array::from_fn(|i| self.word64(3 * LINE + 8 * i))
    }

    /// The stage's region for steps of `parity`: its start and length.
    pub(super) fn region(&self, parity: usize) -> (*mut u8, usize) {
        // SAFETY: region(parity) + cap lies within the mapping for parity < 2.
        (unsafe { self.base.add(self.layout.region(parity & 1)) }, self.layout.cap)
    }

    /// The ring capacity.
    pub(super) fn cap(&self) -> usize {
        self.layout.cap
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no reference into it outlives `self`.
        unsafe { libc::munmap(self.base.cast(), self.layout.bytes()) };
    }
}
