//! One negotiation round: every rank tells every other what it has pending, and each rank
//! derives, from the same gathered messages, the same decisions.
//!
//! There is no coordinator. A round is one allgather of a fixed-size frame per rank, holding a
//! [`Message`]: a bit per cache slot this rank has a matching submission for, the names and
//! arguments of submissions the cache does not hold (sent once, remembered by every rank in
//! the [`Table`] until they run), and the join, shutdown and abort flags. A message too large
//! for the frame spills its tail into a second allgather; steady-state steps never need it.
//!
//! Small cached allreduces may also ride in the frame with their data (up to
//! `FERROVOD_EAGER_BYTES` per rank and round): when every rank sent a tensor's data in the same
//! round, each rank reduces the gathered copies itself, in rank order, so that every rank gets
//! the same bits, and the tensor costs one exchange instead of two.
//!
//! [`agree`] is a pure function of the messages, the cache and the table, which are the same
//! on every rank; so is everything it decides: what is ready, in which order, what mismatches.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::cache::Cache;
use super::request::{Collective, GroupKey, Meta};
use crate::communicator::Communicator;
use crate::dtype::DType;
use crate::error::{Error, Operation, Result, cut, quoted};

/// What one rank says in a round.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Message {
    /// Bit `s` set: this rank has a pending submission matching cache slot `s`.
    #[serde(with = "block")]
    pub bits: Vec<u8>,
    /// Pending submissions the cache does not hold, each announced once.
    pub announce: Vec<(String, Meta)>,
    /// This rank has called join and contributes nothing until every rank has.
    pub joined: bool,
    /// This rank is shutting its engine down; every rank stops after this round.
    pub shutdown: bool,
    /// Every rank fails with this (rank 0's stall verdict).
    pub abort: Option<String>,
    /// Data of cached allreduces (by slot), sent with the round; see the module docs.
    pub eager: Vec<Eager>,
}

/// One cached allreduce's data in a round: its cache slot and its bytes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Eager(pub u32, #[serde(with = "block")] pub Vec<u8>);

/// `Vec<u8>` as one block: postcard writes the length and copies the bytes, where serde's
/// default for a `Vec` goes element by element (most of a small round's time, measured).
mod block {
    use serde::{Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Block;
        impl de::Visitor<'_> for Block {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a block of bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Block)
    }
}

impl Message {
    pub(crate) fn set_bit(&mut self, slot: usize) {
        if self.bits.len() <= slot / 8 {
            self.bits.resize(slot / 8 + 1, 0);
        }
        self.bits[slot / 8] |= 1 << (slot % 8);
    }

    fn bit(&self, slot: usize) -> bool {
        self.bits.get(slot / 8).is_some_and(|b| b & (1 << (slot % 8)) != 0)
    }
}

/// Largest message a rank may send in one round.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// Frame bytes per rank: room for the full bitset, a few announcements, and the eager data.
pub(crate) fn frame_len(cache_len: usize, eager_bytes: usize) -> usize {
    (4 + 16 + cache_len.div_ceil(8) + 96 + eager_room(eager_bytes)).next_multiple_of(8)
}

/// Most tensors one rank sends eagerly in a round.
pub(crate) const MAX_EAGER_TENSORS: usize = 64;

/// Frame bytes that `eager_bytes` of data take with their encoding: a slot and a length of at
/// most 5 bytes each per tensor, and the list's length.
fn eager_room(eager_bytes: usize) -> usize {
    if eager_bytes == 0 { 0 } else { eager_bytes + 10 * MAX_EAGER_TENSORS + 5 }
}

/// Runs one round: returns every rank's message, in rank order.
pub(crate) fn exchange(
    comm: &mut Communicator,
    mine: &Message,
    cache_len: usize,
    eager_bytes: usize,
) -> Result<Vec<Message>> {
    let (rank, size) = (comm.rank(), comm.size());
    let frame = frame_len(cache_len, eager_bytes);
    let mut spilled = Ok(Vec::new());
    // Over a shared stage the frames are written and decoded where they lie; a round that
    // spilled (rare: a burst of announcements) takes a copy of the frames for the second step.
    let gathered = comm.gather_on_stage(
        frame,
        |region| spilled = encode(rank, mine, region),
        |all| {
            if all.iter().all(|f| fits(f, frame)) {
                decode_frames(rank, all).map(Gathered::Decoded)
            } else {
                Ok(Gathered::Frames(all.concat()))
            }
        },
    );
    let all = match gathered {
        Some(Ok(Ok(Gathered::Decoded(messages)))) => {
            spilled?;
            return Ok(messages);
        }
        Some(Ok(Ok(Gathered::Frames(all)))) => all,
        Some(Ok(Err(e))) | Some(Err(e)) => return Err(e),
        None => {
            let mut mine_frame = vec![0u8; frame];
            spilled = encode(rank, mine, &mut mine_frame);
            let mut all = vec![0u8; frame * size];
            comm.allgather(&mine_frame, &mut all)?;
            all
        }
    };
    let spilled = spilled?;
    let spill = spills(rank, frame, &all)?;
    let mut rest = vec![0u8; spill.iter().sum()];
    if !rest.is_empty() {
        comm.allgatherv_into(&spilled, &mut rest, &spill, DType::U8)?;
    }
    decode_round(rank, frame, &all, &rest)
}

/// What the in-place gather gives back: every message, or (when one spilled) the frames.
enum Gathered {
    Decoded(Vec<Message>),
    Frames(Vec<u8>),
}

/// Encodes `mine` into `frame` (length first, then as much of the body as fits) and returns
/// the tail that did not fit.
fn encode(rank: usize, mine: &Message, frame: &mut [u8]) -> Result<Vec<u8>> {
    let result = encode_into(rank, mine, frame);
    if result.is_err() {
        // The frame still goes out (every rank takes the step): a length no message has makes
        // every peer fail naming this rank, rather than read what the region held before.
        frame[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    result
}

fn encode_into(rank: usize, mine: &Message, frame: &mut [u8]) -> Result<Vec<u8>> {
    let encoding = |e: postcard::Error| Error::EngineStopped {
        rank,
        reason: format!("could not encode this rank's negotiation message: {e}"),
    };
    let room = frame.len() - 4;
    let (len, tail) = match postcard::to_slice(mine, &mut frame[4..]) {
        Ok(used) => (used.len(), Vec::new()),
        Err(postcard::Error::SerializeBufferFull) => {
            let body = postcard::to_stdvec(mine).map_err(encoding)?;
            frame[4..].copy_from_slice(&body[..room]);
            (body.len(), body[room..].to_vec())
        }
        Err(e) => return Err(encoding(e)),
    };
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(tail)
}

/// The length of the message in a frame: its first word.
fn message_len(f: &[u8]) -> usize {
    u32::from_le_bytes([f[0], f[1], f[2], f[3]]) as usize
}

/// Whether a frame holds its whole message (nothing spilled).
fn fits(f: &[u8], frame: usize) -> bool {
    message_len(f) <= frame - 4
}

/// Every rank's message, decoded from its frame where it lies (each frame holds its whole
/// message: see [`fits`]).
fn decode_frames(rank: usize, frames: &[&[u8]]) -> Result<Vec<Message>> {
    frames.iter().enumerate().map(|(peer, f)| decode_one(rank, peer, &f[4..4 + message_len(f)])).collect()
}

/// Each rank's message length, from the first word of its frame; a length over the limit is
/// an error naming the rank.
fn totals(rank: usize, frame: usize, all: &[u8]) -> Result<Vec<usize>> {
    let totals: Vec<usize> = all.chunks_exact(frame).map(message_len).collect();
    if let Some((peer, &t)) = totals.iter().enumerate().find(|&(_, &t)| t > MAX_MESSAGE) {
        return Err(protocol(rank, peer, format!("a negotiation message of {t} bytes (the limit is {MAX_MESSAGE})")));
    }
    Ok(totals)
}

/// The bytes of each rank's message that did not fit in its frame: what the second allgather
/// of a round carries.
pub(crate) fn spills(rank: usize, frame: usize, all: &[u8]) -> Result<Vec<usize>> {
    Ok(totals(rank, frame, all)?.into_iter().map(|t| t.saturating_sub(frame - 4)).collect())
}

/// Every rank's message from a round's frames (`frame` bytes per rank, in rank order) and the
/// spilled tails (`rest`, in rank order, as [`spills`] sized them).
pub(crate) fn decode_round(rank: usize, frame: usize, all: &[u8], rest: &[u8]) -> Result<Vec<Message>> {
    let room = frame - 4;
    let totals = totals(rank, frame, all)?;
    let mut messages = Vec::with_capacity(totals.len());
    let mut offset = 0;
    for (peer, f) in all.chunks_exact(frame).enumerate() {
        let spill = totals[peer].saturating_sub(room);
        let head = &f[4..4 + totals[peer].min(room)];
        let tail = rest.get(offset..offset + spill).ok_or_else(|| {
            protocol(rank, peer, format!("a negotiation message whose last {spill} bytes did not arrive"))
        })?;
        offset += spill;
        // Decoded in place, unless a tail spilled (then joined to its head first).
        let joined;
        let bytes = if tail.is_empty() {
            head
        } else {
            joined = [head, tail].concat();
            &joined[..]
        };
        messages.push(decode_one(rank, peer, bytes)?);
    }
    Ok(messages)
}

/// Rank `peer`'s message from its encoded bytes; an unreadable one, or one announcing a tensor
/// whose size cannot be computed, is a protocol error naming the peer.
fn decode_one(rank: usize, peer: usize, bytes: &[u8]) -> Result<Message> {
    let message: Message = postcard::from_bytes(bytes).map_err(|e| {
        protocol(rank, peer, format!("an unreadable negotiation message ({e}): is it the same ferrovod version?"))
    })?;
    // Every size the engine takes from an announcement must be computable.
    if let Some((name, meta)) = message.announce.iter().find(|(_, m)| !m.fits()) {
        let shape = cut(&format!("{:?}", meta.shape));
        return Err(protocol(
            rank,
            peer,
            format!("tensor {} of {shape} {}: more than memory holds", quoted(name), meta.dtype),
        ));
    }
    Ok(message)
}

/// Announced submissions not yet run: name → each rank's arguments (`None`: not yet).
pub(crate) type Table = BTreeMap<String, Vec<Option<Meta>>>;

/// A tensor every rank has submitted (or has joined without it): it runs this round.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub name: String,
    pub meta: Meta,
    /// Which ranks contribute data; the others have joined.
    pub present: Vec<bool>,
    /// The cache slot it came by, if it did.
    pub slot: Option<usize>,
    /// Every rank's data, when every rank sent it with the round: reduce these, do not
    /// communicate.
    pub eager: Option<Vec<Vec<u8>>>,
}

/// Ranks that submitted a name with different arguments.
#[derive(Debug, Clone)]
pub(crate) struct Mismatch {
    pub name: String,
    pub field: &'static str,
    /// "rank 0: f32, rank 1: f64".
    pub values: String,
}

/// A tensor that cannot run because ranks have joined without it.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub name: String,
    pub collective: Collective,
    /// The ranks that have joined.
    pub joined: Vec<usize>,
}

/// What every rank decides from one round.
#[derive(Debug, Default)]
pub(crate) struct Agreement {
    /// To run, in this order.
    pub ready: Vec<Ready>,
    pub mismatches: Vec<Mismatch>,
    /// Submitted everywhere but not runnable while a rank has joined.
    pub refused: Vec<Refusal>,
    /// Pending somewhere but not everywhere: name and the ranks it waits for.
    pub waiting: Vec<(String, Vec<usize>)>,
    /// Ranks that have called join.
    pub joined: Vec<bool>,
    /// The lowest rank that asked to shut down.
    pub shutdown_by: Option<usize>,
    /// The lowest rank that asked every rank to fail, and why.
    pub abort: Option<(usize, String)>,
}

/// Decides a round. Updates `table` (new announcements in, decided names out) and evicts from
/// `cache` every name announced with new arguments.
/// Eager data moves from `messages` into the decisions (it is not copied).
pub(crate) fn agree(messages: &mut [Message], cache: &mut Cache, table: &mut Table) -> Agreement {
    let n = messages.len();
    let joined: Vec<bool> = messages.iter().map(|m| m.joined).collect();
    let abort = messages.iter().enumerate().find_map(|(r, m)| m.abort.clone().map(|a| (r, a)));
    let shutdown_by = messages.iter().position(|m| m.shutdown);

    // An announcement of a cached name means its arguments changed on that rank: the slot
    // goes, and ranks that sent its bit announce again next round.
    let mut evicted: HashSet<String> = HashSet::new();
    for m in messages.iter() {
        for (name, _) in &m.announce {
            if cache.slot_of(name).is_some() {
                evicted.insert(name.clone());
            }
        }
    }
    let mut candidates: Vec<Ready> = Vec::new();
    let mut waiting = Vec::new();
    let everywhere = |present: &[bool]| present.iter().zip(&joined).all(|(&p, &j)| p || j);
    let missing = |present: &[bool]| (0..n).filter(|&r| !present[r] && !joined[r]).collect::<Vec<_>>();
    for slot in sent_slots(messages, cache.len()) {
        let Some((name, meta)) = cache.get(slot) else { continue };
        if evicted.contains(name) {
            continue;
        }
        let present: Vec<bool> = messages.iter().map(|m| m.bit(slot)).collect();
        if everywhere(&present) {
            let eager = eager_data(messages, slot, meta);
            candidates.push(Ready { name: name.to_string(), meta: meta.clone(), present, slot: Some(slot), eager });
        } else {
            waiting.push((name.to_string(), missing(&present)));
        }
    }
    for name in evicted {
        cache.evict(&name);
    }

    for (rank, m) in messages.iter().enumerate() {
        for (name, meta) in &m.announce {
            table.entry(name.clone()).or_insert_with(|| vec![None; n])[rank] = Some(meta.clone());
        }
    }
    let mut mismatches = Vec::new();
    let mut decided = Vec::new();
    for (name, metas) in table.iter() {
        let present: Vec<bool> = metas.iter().map(Option::is_some).collect();
        if !everywhere(&present) {
            waiting.push((name.clone(), missing(&present)));
            continue;
        }
        let given: Vec<(usize, &Meta)> = metas.iter().enumerate().filter_map(|(r, m)| Some((r, m.as_ref()?))).collect();
        let first = given[0].1;
        match given.iter().find_map(|(_, m)| first.first_difference(m)) {
            Some(field) => {
                let values: Vec<String> = given.iter().map(|(r, m)| format!("rank {r}: {}", m.field(field))).collect();
                mismatches.push(Mismatch { name: name.clone(), field, values: values.join(", ") });
                decided.push(name.clone());
            }
            None => {
                candidates.push(Ready { name: name.clone(), meta: first.clone(), present, slot: None, eager: None })
            }
        }
    }

    // A group runs when all of its members can.
    let mut counts: BTreeMap<GroupKey, u32> = BTreeMap::new();
    for c in &candidates {
        if let Some(g) = c.meta.group {
            *counts.entry(g).or_default() += 1;
        }
    }
    let (ready, held): (Vec<Ready>, Vec<Ready>) =
        candidates.into_iter().partition(|c| c.meta.group.is_none_or(|g| counts[&g] >= g.size));
    for h in held {
        waiting.push((h.name, Vec::new()));
    }
    // As in Horovod, only allreduces (and barriers) run while a rank has joined: the others
    // get an error on the ranks that submitted them.
    let (refused, ready): (Vec<Ready>, Vec<Ready>) = ready.into_iter().partition(|r| {
        !matches!(r.meta.collective, Collective::Allreduce(_) | Collective::Barrier) && r.present.contains(&false)
    });
    let refused: Vec<Refusal> = refused
        .into_iter()
        .map(|r| Refusal {
            joined: (0..n).filter(|&i| !r.present[i]).collect(),
            collective: r.meta.collective,
            name: r.name,
        })
        .collect();
    decided.extend(ready.iter().filter(|r| r.slot.is_none()).map(|r| r.name.clone()));
    decided.extend(refused.iter().map(|r| r.name.clone()));
    for name in decided {
        table.remove(&name);
    }
    Agreement { ready, mismatches, refused, waiting, joined, shutdown_by, abort }
}

/// The slots below `len` whose bit any rank sent, in increasing order: the bytes of the
/// bitsets, not the cache's slots, are scanned (a full cache has many more slots than a round
/// uses).
fn sent_slots(messages: &[Message], len: usize) -> Vec<usize> {
    let width = messages.iter().map(|m| m.bits.len()).max().unwrap_or(0).min(len.div_ceil(8));
    let mut union = vec![0u8; width];
    for m in messages {
        for (u, b) in union.iter_mut().zip(&m.bits) {
            *u |= b;
        }
    }
    let mut slots = Vec::new();
    for (i, &byte) in union.iter().enumerate() {
        let mut b = byte;
        while b != 0 {
            let slot = i * 8 + b.trailing_zeros() as usize;
            if slot < len {
                slots.push(slot);
            }
            b &= b - 1;
        }
    }
    slots
}

/// Every rank's eager data for cached `slot`, if every rank sent it (a joined rank sends none),
/// ungrouped, and of the agreed size: taken out of the messages.
fn eager_data(messages: &mut [Message], slot: usize, meta: &Meta) -> Option<Vec<Vec<u8>>> {
    if !matches!(meta.collective, Collective::Allreduce(_)) || meta.group.is_some() {
        return None;
    }
    let found =
        |m: &Message| m.eager.iter().position(|e| e.0 as usize == slot).filter(|&i| m.eager[i].1.len() == meta.bytes());
    if !messages.iter().all(|m| found(m).is_some()) {
        return None;
    }
    Some(messages.iter_mut().map(|m| found(m).map(|i| std::mem::take(&mut m.eager[i].1)).unwrap_or_default()).collect())
}

/// A peer's negotiation message that breaks the protocol: a collective failure naming the peer.
fn protocol(rank: usize, peer: usize, detail: String) -> Error {
    Error::Collective {
        rank,
        op: Operation::Negotiation(Box::default()),
        cause: crate::transport::Error::Protocol { peer, detail: format!("rank {peer} sent {detail}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::ReduceOp;

    fn meta(dtype: DType, n: u64) -> Meta {
        Meta { collective: Collective::Allreduce(ReduceOp::Sum), dtype, shape: vec![n], group: None, device: false }
    }

    fn announce(items: &[(&str, Meta)]) -> Message {
        Message { announce: items.iter().map(|(n, m)| (n.to_string(), m.clone())).collect(), ..Message::default() }
    }

    /// Found by `fuzz/fuzz_targets/negotiate.rs`: a peer announcing a tensor whose size
    /// overflows `usize` made `Meta::bytes` panic in the fusion (and wrap in a release build).
    #[test]
    fn an_announcement_larger_than_memory_is_refused_when_decoded() {
        // The fuzzer's input: 4 harness bytes (1 rank, no cache, 12 eager bytes), then rank 0's
        // frame; its length word spills the rest of the message into zeros.
        let crash: [u8; 41] = [
            0x00, 0x00, 0x03, 0x00, 0x3f, 0x00, 0x03, 0x00, 0x00, 0x03, 0x02, 0x00, 0x03, 0x01, 0x00, 0x48, 0x48, 0x48,
            0x48, 0x48, 0x48, 0x48, 0x48, 0x48, 0x48, 0x48, 0x48, 0x48, 0x48, 0x48, 0x48, 0x48, 0x00, 0x00, 0x00, 0x00,
            0x01, 0x00, 0x03, 0x83, 0x35,
        ];
        let frame = frame_len(0, 12);
        let mut all = crash[4..].to_vec();
        all.resize(frame, 0);
        let rest = vec![0u8; spills(0, frame, &all).unwrap().iter().sum()];
        let err = decode_round(0, frame, &all, &rest).unwrap_err();
        assert!(err.to_string().contains("more than memory holds"), "{err}");

        // The same refusal, spelled out: the whole tensor, or one row of a ragged one, too big.
        let round = |m: &Message| {
            let body = postcard::to_stdvec(m).unwrap();
            let frame = frame_len(0, 0);
            let mut all = vec![0u8; frame];
            all[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
            all[4..4 + body.len()].copy_from_slice(&body);
            decode_round(0, frame, &all, &[])
        };
        let huge = Meta { shape: vec![1 << 62, 4], ..meta(DType::F32, 1) };
        let rows = Meta { collective: Collective::Allgather, shape: vec![0, 1 << 40, 1 << 40], ..meta(DType::U8, 1) };
        for bad in [huge, rows] {
            let err = round(&announce(&[("big", bad)])).unwrap_err();
            assert!(err.to_string().contains("rank 0 sent tensor \"big\""), "{err}");
        }
        assert_eq!(round(&announce(&[("ok", meta(DType::F32, 1 << 20))])).unwrap().len(), 1);
    }

    #[test]
    fn ready_only_when_every_rank_announced() {
        let (mut cache, mut table) = (Cache::new(8), Table::new());
        let a = agree(&mut [announce(&[("x", meta(DType::F32, 4))]), announce(&[])], &mut cache, &mut table);
        assert!(a.ready.is_empty());
        assert_eq!(a.waiting, [("x".to_string(), vec![1])]);
        let a = agree(&mut [announce(&[]), announce(&[("x", meta(DType::F32, 4))])], &mut cache, &mut table);
        assert_eq!(a.ready.len(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn mismatch_names_field_and_ranks() {
        let (mut cache, mut table) = (Cache::new(8), Table::new());
        let mut msgs = [announce(&[("x", meta(DType::F32, 4))]), announce(&[("x", meta(DType::F64, 4))])];
        let a = agree(&mut msgs, &mut cache, &mut table);
        assert!(a.ready.is_empty());
        assert_eq!(a.mismatches.len(), 1);
        assert_eq!(a.mismatches[0].field, "dtype");
        assert_eq!(a.mismatches[0].values, "rank 0: f32, rank 1: f64");
        assert!(table.is_empty());
    }

    #[test]
    fn bits_make_cached_tensors_ready_and_announcements_evict() {
        let (mut cache, mut table) = (Cache::new(8), Table::new());
        cache.insert("x", &meta(DType::F32, 4), 0);
        let mut bit = Message::default();
        bit.set_bit(0);
        let a = agree(&mut [bit, Message { bits: vec![1], ..Message::default() }], &mut cache, &mut table);
        assert_eq!(a.ready.len(), 1);
        assert_eq!(a.ready[0].slot, Some(0));
        let mut bit = Message::default();
        bit.set_bit(0);
        let a = agree(&mut [bit, announce(&[("x", meta(DType::F32, 5))])], &mut cache, &mut table);
        assert!(a.ready.is_empty());
        assert_eq!(cache.slot_of("x"), None, "a changed submission evicts the slot");
    }

    #[test]
    fn joined_ranks_do_not_hold_anything_up_and_groups_wait_for_all_members() {
        let (mut cache, mut table) = (Cache::new(8), Table::new());
        let joined = || Message { joined: true, ..Message::default() };
        let a = agree(&mut [announce(&[("x", meta(DType::F32, 1))]), joined()], &mut cache, &mut table);
        assert_eq!(a.ready[0].present, [true, false]);
        // Anything but an allreduce or a barrier is refused while a rank has joined, as in
        // Horovod, and leaves the table.
        let gather = Meta { collective: Collective::Allgather, ..meta(DType::F32, 1) };
        let a = agree(&mut [announce(&[("y", gather)]), joined()], &mut cache, &mut table);
        assert!(a.ready.is_empty());
        assert_eq!(a.refused.iter().map(|r| (r.name.as_str(), r.joined.clone())).collect::<Vec<_>>(), [("y", vec![1])]);
        assert!(table.is_empty());
        let g = GroupKey::of(["a", "b"].into_iter());
        let m = Meta { group: Some(g), ..meta(DType::F32, 1) };
        let one = announce(&[("a", m.clone())]);
        let a = agree(&mut [one, announce(&[("a", m.clone())])], &mut cache, &mut table);
        assert!(a.ready.is_empty(), "b is missing");
        let a = agree(&mut [announce(&[("b", m.clone())]), announce(&[("b", m)])], &mut cache, &mut table);
        assert_eq!(a.ready.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn the_slots_sent_are_the_union_of_the_bits_below_the_cache_length() {
        let bits = |b: Vec<u8>| Message { bits: b, ..Message::default() };
        let msgs = [bits(vec![0b1010_0001]), bits(vec![0, 0b11]), bits(Vec::new())];
        assert_eq!(sent_slots(&msgs, 16), [0, 5, 7, 8, 9]);
        assert_eq!(sent_slots(&msgs, 9), [0, 5, 7, 8]);
        assert_eq!(sent_slots(&msgs, 6), [0, 5]);
        assert_eq!(sent_slots(&msgs, 0), Vec::<usize>::new());
    }
}
