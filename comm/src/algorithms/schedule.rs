//! A pipelined schedule of messages over one buffer, run by
//! [`Transport::stream`](crate::transport::Transport::stream).
//!
//! An algorithm lists its messages in one global order that every rank shares (message k:
//! send a byte range to one peer, receive a byte range from another, reduced into the buffer
//! or stored as is). The schedule works out from the byte ranges alone what each transfer
//! must wait for, so no step waits for more than the bytes it touches:
//! - a send waits for the latest earlier receive that writes any byte it reads (and for that
//!   receive's reduction);
//! - a receive waits for every earlier send that reads, and every earlier receive that writes,
//!   any byte it writes.
//!
//! Messages are cut into groups (the ring's pieces) that touch disjoint bytes, so hazards are
//! only looked for within a group. Received data to be reduced lands in one of [`SLOTS`]
//! scratch slots and is reduced, in message order, whenever the transport has nothing to move.
//!
//! Any rank's receive k matches its peer's send k: the algorithms build the same list on every
//! rank, so the peer numbers it alike.

use std::ops::Range;

use super::{Reducer, Scratch};
use crate::dtype::{DType, ReduceOp};
use crate::reduce::{Order, reduce_into};
use crate::transport::{Error, Flow, Tag, Transport};

/// Scratch slots for received data awaiting reduction: how far receives may run ahead of the
/// reductions.
const SLOTS: usize = 4;

/// One message: `buf[send]` to `to`, and from `from` as many bytes as `recv` holds, reduced
/// into `buf[recv]` or written there.
pub(crate) struct Msg {
    pub to: usize,
    pub from: usize,
    pub send: Range<usize>,
    pub recv: Range<usize>,
    pub reduce: bool,
}

/// What message k waits for: every transfer with an index up to the one named (`None`: none).
#[derive(Default, Clone, Copy)]
struct After {
    /// Send k: receives (and their reductions).
    send_recvs: Option<usize>,
    /// Receive k: sends.
    recv_sends: Option<usize>,
    /// Receive k: receives (and their reductions).
    recv_recvs: Option<usize>,
}

/// The messages of one collective call, in order, with their hazards.
#[derive(Default)]
pub(crate) struct Schedule {
    msgs: Vec<Msg>,
    after: Vec<After>,
    /// Position of each message among those reduced (valid where `reduce`).
    ordinal: Vec<usize>,
    /// The reduced messages, in order.
    reduced: Vec<usize>,
    group_start: usize,
    slot_bytes: usize,
}

fn overlap(a: &Range<usize>, b: &Range<usize>) -> bool {
    !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
}

impl Schedule {
    /// Starts a group: later messages touch no byte of earlier groups.
    pub(crate) fn group(&mut self) {
        self.group_start = self.msgs.len();
    }

    /// Appends message `m`.
    pub(crate) fn push(&mut self, m: Msg) {
        let k = self.msgs.len();
        let group = self.group_start..k;
        let latest = |hit: &dyn Fn(&Msg) -> bool| group.clone().rev().find(|&j| hit(&self.msgs[j]));
        let after = After {
            send_recvs: latest(&|p| overlap(&p.recv, &m.send)),
            recv_sends: if overlap(&m.send, &m.recv) { Some(k) } else { latest(&|p| overlap(&p.send, &m.recv)) },
            recv_recvs: latest(&|p| overlap(&p.recv, &m.recv)),
        };
        self.after.push(after);
        self.ordinal.push(self.reduced.len());
        if m.reduce {
            self.reduced.push(k);
            self.slot_bytes = self.slot_bytes.max(m.recv.len());
        }
        self.msgs.push(m);
    }

    /// How many parts of at most `segment` bytes every step over `blocks` is cut into: the
    /// largest block's count, the same on every rank (at least one, so that empty blocks still
    /// exchange headers and mismatches are seen).
    pub(crate) fn parts(blocks: &[Range<usize>], segment: usize) -> usize {
        blocks.iter().map(|b| b.len().div_ceil(segment)).max().unwrap_or(0).max(1)
    }

    /// Part `j` of `block` cut into `segment`-byte parts (empty past the block's end).
    pub(crate) fn part(block: &Range<usize>, segment: usize, j: usize) -> Range<usize> {
        let start = (block.start + j * segment).min(block.end);
        start..(start + segment).min(block.end)
    }

    /// Runs every message over `t` on `buf`, reducing with `op`.
    pub(crate) fn run<T: Transport + ?Sized>(
        &self,
        t: &mut T,
        tag: Tag,
        buf: &mut [u8],
        dtype: DType,
        op: ReduceOp,
        scratch: &mut Scratch,
    ) -> Result<(), Error> {
        let slots = scratch.bytes(self.slot_bytes * SLOTS.min(self.reduced.len()));
        let n = self.msgs.len();
        let mut run = Run {
            s: self,
            buf,
            slots,
            dtype,
            op,
            sent: vec![false; n],
            received: vec![false; n],
            send_prefix: 0,
            recv_prefix: 0,
            next_reduce: 0,
            reduce_done: 0,
        };
        t.stream(tag, &mut run)
    }
}

/// A schedule in progress.
struct Run<'a> {
    s: &'a Schedule,
    buf: &'a mut [u8],
    slots: &'a mut [u8],
    dtype: DType,
    op: ReduceOp,
    sent: Vec<bool>,
    received: Vec<bool>,
    /// Every send below this index has left.
    send_prefix: usize,
    /// Every receive below this index is complete and reduced.
    recv_prefix: usize,
    /// Reduced messages before this position are done.
    next_reduce: usize,
    /// Bytes of the current reduction done.
    reduce_done: usize,
}

impl Run<'_> {
    /// Where message k's slot starts in the scratch.
    fn slot_start(&self, k: usize) -> usize {
        self.s.ordinal[k] % SLOTS * self.s.slot_bytes
    }

    fn advance_recvs(&mut self) {
        let s = self.s;
        while self.recv_prefix < s.msgs.len()
            && self.received[self.recv_prefix]
            && (!s.msgs[self.recv_prefix].reduce || s.ordinal[self.recv_prefix] < self.next_reduce)
        {
            self.recv_prefix += 1;
        }
    }
}

fn done_through(prefix: usize, after: Option<usize>) -> bool {
    after.is_none_or(|j| j < prefix)
}

impl Flow for Run<'_> {
    fn count(&self) -> usize {
        self.s.msgs.len()
    }

    fn to(&self, k: usize) -> usize {
        self.s.msgs[k].to
    }

    fn from(&self, k: usize) -> usize {
        self.s.msgs[k].from
    }

    fn send(&self, k: usize) -> Option<&[u8]> {
        done_through(self.recv_prefix, self.s.after[k].send_recvs).then(|| &self.buf[self.s.msgs[k].send.clone()])
    }

    fn recv(&mut self, k: usize) -> Option<&mut [u8]> {
        let (m, after) = (&self.s.msgs[k], self.s.after[k]);
        let free = !m.reduce || self.s.ordinal[k] < self.next_reduce + SLOTS;
        if !(free
            && done_through(self.send_prefix, after.recv_sends)
            && done_through(self.recv_prefix, after.recv_recvs))
        {
            return None;
        }
        let r = m.recv.clone();
        Some(if m.reduce {
            let start = self.slot_start(k);
            &mut self.slots[start..start + r.len()]
        } else {
            &mut self.buf[r]
        })
    }

    fn sent(&mut self, k: usize) {
        self.sent[k] = true;
        while self.send_prefix < self.sent.len() && self.sent[self.send_prefix] {
            self.send_prefix += 1;
        }
    }

    fn received(&mut self, k: usize) {
        self.received[k] = true;
        self.advance_recvs();
    }

    fn work(&mut self) -> bool {
        let Some(&k) = self.s.reduced.get(self.next_reduce) else { return false };
        if !self.received[k] {
            return false;
        }
        let r = self.s.msgs[k].recv.clone();
        let step = Reducer::STEP / self.dtype.size() * self.dtype.size();
        let (from, to) = (self.reduce_done, (self.reduce_done + step).min(r.len()));
        let start = self.slot_start(k);
        reduce_into(
            self.dtype,
            self.op,
            &mut self.buf[r.start + from..r.start + to],
            &self.slots[start + from..start + to],
            Order::AccFirst,
        );
        if to < r.len() {
            self.reduce_done = to;
            return true;
        }
        self.reduce_done = 0;
        self.next_reduce += 1;
        self.advance_recvs();
        self.s.reduced.get(self.next_reduce).is_some_and(|&next| self.received[next])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::allgather_ring::allgather_messages;
    use crate::algorithms::reducescatter_ring::reducescatter_messages;

    /// Rank 0 of 3, blocks of 3 parts of 4 bytes: a ring allreduce is 2 reduce steps and 2
    /// gather steps of 3 messages each (indices step * 3 + part).
    fn ring() -> Schedule {
        let blocks = [0..12, 12..24, 24..36];
        let mut s = Schedule::default();
        s.group();
        reducescatter_messages(&mut s, 0, 3, &blocks, 4);
        allgather_messages(&mut s, 0, 3, &blocks, 4);
        s
    }

    #[test]
    fn each_send_waits_for_exactly_the_receive_that_wrote_its_bytes() {
        let s = ring();
        assert_eq!(s.msgs.len(), 12);
        for j in 0..3 {
            // Step 0 sends this rank's own data.
            assert_eq!(s.after[j].send_recvs, None);
            // Each later step sends what the step before received (and reduced), part by part.
            for step in 1..4 {
                assert_eq!(s.after[step * 3 + j].send_recvs, Some((step - 1) * 3 + j), "step {step} part {j}");
            }
        }
    }

    #[test]
    fn a_receive_waits_for_the_sends_and_receives_of_its_bytes() {
        let s = ring();
        // Rank 0 reduces into blocks 1 then 0 and gathers blocks 2 then 1. Gather step 0 writes
        // block 2, which only reduce step 0 sent: it waits for that send only.
        let gather0 = 2 * 3;
        assert_eq!(s.msgs[gather0].recv, 24..28);
        assert_eq!(s.after[gather0].recv_sends, Some(0));
        assert_eq!(s.after[gather0].recv_recvs, None);
        // Gather step 1 writes block 1: received at reduce step 0, sent at reduce step 1.
        let gather1 = 3 * 3;
        assert_eq!(s.msgs[gather1].recv, 12..16);
        assert_eq!(s.after[gather1].recv_recvs, Some(0));
        assert_eq!(s.after[gather1].recv_sends, Some(3));
    }

    #[test]
    fn groups_do_not_wait_for_each_other_and_empty_parts_touch_nothing() {
        let mut s = Schedule::default();
        s.group();
        s.push(Msg { to: 1, from: 1, send: 0..8, recv: 8..16, reduce: true });
        s.group();
        s.push(Msg { to: 1, from: 1, send: 8..16, recv: 0..8, reduce: true });
        s.push(Msg { to: 1, from: 1, send: 4..4, recv: 20..20, reduce: false });
        assert_eq!(s.after[1].send_recvs, None);
        assert_eq!(s.after[1].recv_sends, None);
        assert_eq!((s.after[2].send_recvs, s.after[2].recv_sends, s.after[2].recv_recvs), (None, None, None));
        assert_eq!(s.reduced, vec![0, 1]);
        assert_eq!(s.slot_bytes, 8);
    }
}
