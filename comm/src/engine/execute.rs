//! Running one bucket on the communicator, and turning the result into each tensor's output.
//!
//! A bucket of allreduces is one logical collective over its tensors laid end to end, streamed
//! in pieces of `piece` bytes (the ring's chunk): consecutive small tensors are copied into a
//! staging piece and reduced together; the whole pieces that lie within one tensor are reduced
//! in place, by one allreduce. Where the ranks share a stage (and the piece runs on it, slots or
//! split), the staging piece is this rank's region of the stage itself (the fusion buffer in the
//! shared segment): the tensors are copied straight into it, and the sums straight back from the
//! ranks' regions, with no private piece between.
//! Every rank cuts the same pieces, since they follow from the agreed sizes alone.
//!
//! A rank that has joined and did not submit a tensor contributes a stand-in: the identity of
//! the reduction for an allreduce, nothing for a barrier (the other collectives are refused
//! while a rank has joined, as in Horovod: see `negotiate::agree`). An average still divides by
//! every rank (the joined one counting as zeros), as Horovod's does.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::Pending;
use super::fusion::Bucket;
use super::handle::Slot;
use super::negotiate::Ready;
use super::request::{Buffer, Collective, Output};
use super::timeline::{Phase, Timeline};
use crate::algorithms::{blocks_from_counts, even_blocks};
use crate::communicator::Communicator;
use crate::dtype::{DType, ReduceOp};
use crate::error::{Error, Result};
use crate::memory::{Memory, MemoryRef, Ops, OpsError, Owned, Place};
use crate::reduce::{Order, divide, reduce_into};

/// A tensor whose collective has run (or failed on its own, without breaking the engine).
pub(crate) struct Done {
    pub name: String,
    pub slot: Arc<Slot>,
    pub result: Result<Output>,
    /// A group member's gate, opened once every result of the batch is in.
    pub gate: Option<Arc<Slot>>,
}

impl Done {
    /// `pending` ended with `result`.
    pub(crate) fn of(pending: Pending, result: Result<Output>) -> Done {
        Done { name: pending.sub.name, slot: pending.slot, result, gate: pending.gate }
    }

    /// The same tensor, failed with the error that stopped the engine.
    pub(crate) fn stopped(self, error: &Error) -> Done {
        Done { result: Err(error.clone()), ..self }
    }
}

/// What running a bucket needs besides the bucket.
pub(crate) struct Ctx<'a> {
    pub comm: &'a mut Communicator,
    /// The copies, fills and scalings on the tensors' memory.
    pub ops: &'a mut dyn Ops,
    /// The fusion buffer, where the bucket's tensors lie (reallocated when it must move).
    pub stage: &'a mut Owned,
    /// This rank's GPU, once it gave device memory (see `stand_in`).
    pub device: &'a mut Option<i32>,
    pub piece: usize,
    pub timeline: Option<&'a mut Timeline>,
    /// Start and end of the negotiation round that made the bucket ready.
    pub negotiated: (Instant, Instant),
}

/// One tensor of the bucket: what every rank agreed on, and this rank's submission if any.
struct Item {
    ready: Ready,
    pending: Option<Pending>,
    data: Buffer,
    spans: [Option<(Instant, Instant)>; 3],
    /// A joined rank's stand-in in device memory: `data` points into it.
    _stand_in: Option<Owned>,
}

const COPY_IN: usize = 0;
const COMM: usize = 1;
const COPY_OUT: usize = 2;

impl Item {
    fn note(&mut self, which: usize, from: Instant, to: Instant) {
        let s = &mut self.spans[which];
        *s = Some(s.map_or((from, to), |(a, _)| (a, to)));
    }
}

/// A tensor whose every rank's data came with the negotiation round: reduced here, in rank
/// order, so that every rank computes the same bits.
pub(crate) fn eager(ctx: &mut Ctx<'_>, mut ready: Ready, mut pending: Pending) -> Done {
    let t = Instant::now();
    let meta = &ready.meta;
    let Collective::Allreduce(op) = meta.collective else { unreachable!("only allreduces travel eagerly") };
    let wire = if op == ReduceOp::Average { ReduceOp::Sum } else { op };
    let mut ranks = ready.eager.take().unwrap_or_default().into_iter();
    let mut acc = ranks.next().unwrap_or_default();
    for data in ranks {
        reduce_into(meta.dtype, wire, &mut acc, &data, Order::AccFirst);
    }
    if op == ReduceOp::Average {
        // Every rank counts, a joined one as zeros (Horovod's average under join).
        divide(meta.dtype, &mut acc, ready.present.len());
    }
    let mut buffer = std::mem::take(&mut pending.sub.data);
    // Only host memory travels eagerly (see the engine's `add_eager`).
    if let Memory::Host(b) = buffer.memory() {
        b.copy_from_slice(&acc);
    }
    let (data, in_place) = buffer.into_result();
    let shape = meta.shape.iter().map(|&d| d as usize).collect();
    let out = Output { data, dtype: meta.dtype, shape, splits: None, in_place };
    let mut item = Item { ready, pending: Some(pending), data: Buffer::default(), spans: [None; 3], _stand_in: None };
    item.note(COMM, t, Instant::now());
    let mut done = Vec::with_capacity(1);
    finish(ctx, item, Ok(out), &mut done);
    done.remove(0)
}

/// Runs `bucket`; `take` hands over this rank's submission of a name, if it made one.
pub(crate) fn run(
    ctx: &mut Ctx<'_>,
    bucket: Bucket,
    mut take: impl FnMut(&str) -> Option<Pending>,
) -> std::result::Result<Vec<Done>, Box<Failure>> {
    let rank = ctx.comm.rank();
    let mut items: Vec<Item> = Vec::with_capacity(bucket.entries.len());
    let mut standing_in = Ok(());
    for ready in bucket.entries {
        let mut pending = take(&ready.name);
        let (data, keep) = match pending.as_mut() {
            Some(p) => {
                if let Buffer::Device(d) = &p.sub.data {
                    *ctx.device = Some(d.device);
                }
                (std::mem::take(&mut p.sub.data), None)
            }
            None => match stand_in(ctx, &ready) {
                Ok(s) => s,
                Err(e) => {
                    standing_in = standing_in.and(Err(e));
                    (Buffer::default(), None)
                }
            },
        };
        items.push(Item { ready, pending, data, spans: [None; 3], _stand_in: keep });
    }
    if let Err(e) = standing_in {
        return Err(failure(e, items, Vec::new()));
    }
    let collective = items[0].ready.meta.collective;
    let mut done = Vec::with_capacity(items.len());
    let result = match collective {
        Collective::Allreduce(op) => allreduce(ctx, &mut items, op, &mut done),
        _ => {
            let start = Instant::now();
            let result = single(ctx, &mut items[0], rank);
            items[0].note(COMM, start, Instant::now());
            match result {
                // A per-tensor argument problem: every rank saw the same, the engine goes on.
                Err(e @ Error::InvalidArgument { .. }) => finish(ctx, items.remove(0), Err(e), &mut done),
                Err(e) => {
                    let _ = ctx.ops.finish(); // as below: queued device work ends first
                    return Err(failure(e, items, done));
                }
                Ok(out) => finish(ctx, items.remove(0), Ok(out), &mut done),
            }
            Ok(())
        }
    };
    // Device work of the bucket may still be queued: done before any handle completes, also
    // when it failed (the callers may free their memory once told).
    let finished = ctx.ops.finish().map_err(|e| ops_failed(rank, collective, e));
    match result.and(finished) {
        Ok(()) => Ok(done),
        Err(e) => Err(failure(e, items, done)),
    }
}

/// A bucket whose collective failed: the error, and every tensor of this rank it held, failed
/// with it (also those that had completed, so that a group never half-succeeds).
pub(crate) struct Failure {
    pub error: Error,
    pub done: Vec<Done>,
}

fn failure(error: Error, items: Vec<Item>, done: Vec<Done>) -> Box<Failure> {
    let taken = items.into_iter().filter_map(|i| i.pending).map(|p| Done::of(p, Err(error.clone())));
    let done = done.into_iter().map(|d| d.stopped(&error)).chain(taken).collect();
    Box::new(Failure { error, done })
}

/// What a joined rank puts in for a tensor it did not submit: the identity of the reduction,
/// where the others' tensors lie (on this rank's GPU for device tensors, so that it runs the
/// same backend as they do), and the allocation that holds it when that is a device's.
fn stand_in(ctx: &mut Ctx<'_>, ready: &Ready) -> Result<(Buffer, Option<Owned>)> {
    let (rank, meta) = (ctx.comm.rank(), &ready.meta);
    match meta.collective {
        Collective::Allreduce(op) if meta.device => {
            let Some(device) = *ctx.device else {
                return Err(Error::Backend {
                    rank,
                    op: meta.collective.into(),
                    backend: "engine",
                    detail: format!(
                        "this rank has joined and has not given GPU memory before, so it has no GPU to stand in on for {:?}",
                        ready.name
                    ),
                });
            };
            let mem = |e: OpsError| ops_failed(rank, meta.collective, e);
            let mut owned = ctx.ops.alloc(Place::Device(device), meta.bytes()).map_err(mem)?;
            ctx.ops.fill_identity(owned.memory(), meta.dtype, op).map_err(mem)?;
            let buffer = match owned.memory_ref() {
                MemoryRef::Device(ptr, _) => Buffer::Device(ptr),
                // Device operations that allocate host memory (tests' stand-ins for a device).
                MemoryRef::Host(b) => Buffer::Owned(b.to_vec()),
            };
            Ok((buffer, Some(owned)))
        }
        Collective::Allreduce(op) => {
            let mut buf = vec![0u8; meta.bytes()];
            // Host memory: the host operations cannot fail on it.
            let _ = ctx.ops.fill_identity(Memory::Host(&mut buf), meta.dtype, op);
            Ok((Buffer::Owned(buf), None))
        }
        // A barrier carries nothing; nothing else runs while a rank has joined.
        _ => Ok((Buffer::default(), None)),
    }
}

/// The fused allreduce: tensors end to end, in pieces; see the module docs.
fn allreduce(ctx: &mut Ctx<'_>, items: &mut Vec<Item>, op: ReduceOp, done: &mut Vec<Done>) -> Result<()> {
    let rank = ctx.comm.rank();
    let dtype = items[0].ready.meta.dtype;
    let piece = (ctx.piece / dtype.size()).max(1) * dtype.size();
    // Where the bucket lies: the fusion never mixes host and device tensors (a joined rank's
    // stand-ins lie where its own tensors of the kind did: see `stand_in`).
    let place = items.iter().map(|i| i.data.place()).find(|p| p.is_device()).unwrap_or(Place::Host);
    // Average is a sum here, divided by every rank: a joined rank counts as zeros, as in
    // Horovod (a script's learning rate assumes the whole job's size). On device memory the
    // backend divides by every rank itself as it goes (the staged path on its host pieces,
    // NCCL in its kernel), which spares the device a pass over the data. Decided from what
    // the ranks agreed, so that every rank sends the same op.
    let divide_here = op == ReduceOp::Average && !items[0].ready.meta.device;
    let wire = if divide_here { ReduceOp::Sum } else { op };
    if ctx.stage.place() != place || ctx.stage.len() < piece {
        *ctx.stage = ctx.ops.alloc(place, piece).map_err(|e| ops_failed(rank, Collective::Allreduce(op), e))?;
    }
    let mut remaining: Vec<usize> = items.iter().map(|i| i.data.len()).collect();
    let mut staged: Vec<(usize, Range<usize>)> = Vec::new();
    let mut fill = 0;
    for i in 0..items.len() {
        let len = items[i].data.len();
        let mut off = 0;
        while off < len {
            if fill == 0 && len - off >= piece {
                // Every whole piece left in this tensor, in place and in one call: the
                // allreduce cuts the same pieces and streams through them without draining.
                let span = (len - off) / piece * piece;
                let t = Instant::now();
                ctx.comm.allreduce_bytes(items[i].data.memory().range(off, off + span), dtype, wire)?;
                items[i].note(COMM, t, Instant::now());
                remaining[i] -= span;
                off += span;
                continue;
            }
            // Packed when the piece is flushed, into the stage's region or the private piece.
            let n = (len - off).min(piece - fill);
            staged.push((i, off..off + n));
            fill += n;
            off += n;
            if fill == piece {
                flush(ctx, items, &mut staged, &mut remaining, fill, dtype, wire)?;
                fill = 0;
            }
        }
    }
    if fill > 0 {
        flush(ctx, items, &mut staged, &mut remaining, fill, dtype, wire)?;
    }
    for mut item in items.drain(..) {
        if divide_here {
            let n = ctx.comm.size();
            ctx.ops.divide(item.data.memory(), dtype, n).map_err(|e| ops_failed(rank, Collective::Allreduce(op), e))?;
        }
        let (data, in_place) = std::mem::take(&mut item.data).into_result();
        let shape = item.ready.meta.shape.iter().map(|&d| d as usize).collect();
        let out = Output { data, dtype, shape, splits: None, in_place };
        finish(ctx, item, Ok(out), done);
    }
    Ok(())
}

/// Reduces the staged parts of tensors, `fill` bytes end to end: on the shared stage's region
/// when the communicator takes them there, else copied into the private piece, reduced, and
/// copied back.
fn flush(
    ctx: &mut Ctx<'_>,
    items: &mut [Item],
    staged: &mut Vec<(usize, Range<usize>)>,
    remaining: &mut [usize],
    fill: usize,
    dtype: DType,
    wire: ReduceOp,
) -> Result<()> {
    // Decided from what every rank agreed (host memory), so that every rank takes the same path.
    if !items[0].ready.meta.device {
        let t = Instant::now();
        // The staged parts, in order: at most one per tensor, in the tensors' order.
        let mut parts = staged.iter().peekable();
        let mut runs = Vec::with_capacity(staged.len());
        for (i, item) in items.iter_mut().enumerate() {
            if let Some((_, range)) = parts.next_if(|(j, _)| *j == i) {
                let host = item.data.memory().into_host().expect("host tensors: the piece is in host memory");
                runs.push(&mut host[range.clone()]);
            }
        }
        assert_eq!(runs.len(), staged.len(), "a staged part out of order, or two of one tensor");
        let mut packed = crate::algorithms::Runs(runs);
        if let Some(result) = ctx.comm.allreduce_on_stage(fill, dtype, wire, &mut packed) {
            result?;
            let t1 = Instant::now();
            for (i, range) in staged.drain(..) {
                items[i].note(COMM, t, t1);
                remaining[i] -= range.len();
            }
            return Ok(());
        }
    }
    let rank = ctx.comm.rank();
    let mut at = 0;
    for (i, range) in staged.iter() {
        let t = Instant::now();
        let src = items[*i].data.memory_ref().range(range.start, range.end);
        let dst = ctx.stage.memory().into_range(at, at + range.len());
        ctx.ops.copy(dst, src).map_err(|e| ops_failed(rank, Collective::Allreduce(wire), e))?;
        items[*i].note(COPY_IN, t, Instant::now());
        at += range.len();
    }
    let t = Instant::now();
    ctx.comm.allreduce_bytes(ctx.stage.memory().range(0, fill), dtype, wire)?;
    let t1 = Instant::now();
    let mut at = 0;
    for (i, range) in staged.drain(..) {
        let n = range.len();
        let c = Instant::now();
        let mut dst = items[i].data.memory();
        ctx.ops
            .copy(dst.range(range.start, range.end), ctx.stage.memory_ref().range(at, at + n))
            .map_err(|e| ops_failed(ctx.comm.rank(), Collective::Allreduce(wire), e))?;
        items[i].note(COMM, t, t1);
        items[i].note(COPY_OUT, c, Instant::now());
        remaining[i] -= n;
        at += n;
    }
    Ok(())
}

/// Broadcast, allgather, reducescatter or alltoall of one tensor. Results lie where the tensor
/// does: the memory operations allocate them there and copy into them.
fn single(ctx: &mut Ctx<'_>, item: &mut Item, rank: usize) -> Result<Output> {
    let (comm, ops) = (&mut *ctx.comm, &mut *ctx.ops);
    let meta = item.ready.meta.clone();
    let (dtype, collective) = (meta.dtype, meta.collective);
    let rest: Vec<usize> = meta.shape.iter().skip(1).map(|&d| d as usize).collect();
    let with_rows = |rows: usize| std::iter::once(rows).chain(rest.iter().copied()).collect::<Vec<_>>();
    let row_elems = meta.row_elems();
    let row_bytes = row_elems * dtype.size();
    let mem = |e: OpsError| ops_failed(rank, collective, e);
    // Elements per rank from rows per rank, refusing totals that do not fit in memory.
    let elems = |rows: &[usize]| -> Result<Vec<usize>> {
        let counts: Option<Vec<usize>> = rows.iter().map(|&r| r.checked_mul(row_elems)).collect();
        counts
            .filter(|c| {
                c.iter()
                    .try_fold(0usize, |a, &c| a.checked_add(c))
                    .and_then(|t| t.checked_mul(dtype.size()))
                    .is_some_and(|b| b <= isize::MAX as usize)
            })
            .ok_or_else(|| Error::InvalidArgument {
                rank,
                op: collective.into(),
                detail: format!("row counts {rows:?} do not fit in memory"),
            })
    };
    let place = item.data.place();
    match collective {
        Collective::Broadcast(root) => {
            comm.broadcast_bytes(item.data.memory(), dtype, root as usize)?;
            let shape = meta.shape.iter().map(|&d| d as usize).collect();
            let (data, in_place) = std::mem::take(&mut item.data).into_result();
            Ok(Output { data, dtype, shape, splits: None, in_place })
        }
        Collective::Allgather => {
            let rows = pending_rows(item, row_bytes);
            let all_rows = comm.allgather_counts(rows, dtype)?;
            let counts = elems(&all_rows)?;
            let blocks = blocks_from_counts(&counts, dtype.size());
            let mut out = ops.alloc(place, blocks.last().map_or(0, |b| b.end)).map_err(mem)?;
            let mine = blocks[rank].clone();
            ops.copy(out.memory().range(mine.start, mine.end), item.data.memory_ref()).map_err(mem)?;
            comm.allgather_in_place(out.memory(), &counts, dtype)?;
            Ok(Output::owned(out, dtype, with_rows(all_rows.iter().sum()), Some(all_rows)))
        }
        Collective::Reducescatter(op) => {
            let wire = if op == ReduceOp::Average { ReduceOp::Sum } else { op };
            let rows = meta.shape[0] as usize;
            let blocks = even_blocks(rows, comm.size(), row_bytes.max(1));
            let blocks: Vec<Range<usize>> = if row_bytes == 0 { vec![0..0; comm.size()] } else { blocks };
            // The ring reduces in its input: never in memory the caller lent.
            let mut input = match std::mem::take(&mut item.data) {
                Buffer::Owned(v) => Owned::Host(v),
                lent => {
                    let mut copy = ops.alloc(place, lent.len()).map_err(mem)?;
                    ops.copy(copy.memory(), lent.memory_ref()).map_err(mem)?;
                    copy
                }
            };
            comm.reducescatter_bytes(input.memory(), &blocks, dtype, wire)?;
            let mine = blocks[rank].clone();
            let mut share = ops.alloc(place, mine.len()).map_err(mem)?;
            ops.copy(share.memory(), input.memory_ref().range(mine.start, mine.end)).map_err(mem)?;
            if op == ReduceOp::Average {
                ops.divide(share.memory(), dtype, comm.size()).map_err(mem)?;
            }
            let my_rows = mine.len().checked_div(row_bytes).unwrap_or(0);
            Ok(Output::owned(share, dtype, with_rows(my_rows), None))
        }
        Collective::Alltoall => {
            let splits = match item.pending.as_ref().and_then(|p| p.sub.splits.clone()) {
                Some(s) => s,
                None => even_rows(pending_rows(item, row_bytes), comm.size()),
            };
            let total: usize = splits.iter().sum();
            let recv_rows = comm.alltoall_counts(total, &splits, dtype)?;
            let send = elems(&splits)?;
            let recv = elems(&recv_rows)?;
            let mut out = ops.alloc(place, recv.iter().sum::<usize>() * dtype.size()).map_err(mem)?;
            comm.alltoall_into(item.data.memory_ref(), &send, out.memory(), &recv, dtype)?;
            Ok(Output::owned(out, dtype, with_rows(recv_rows.iter().sum()), Some(recv_rows)))
        }
        Collective::Barrier => {
            comm.barrier()?;
            Ok(Output::owned(Owned::default(), dtype, vec![0], None))
        }
        Collective::Allreduce(_) => unreachable!("allreduces run fused"),
    }
}

/// A memory operation that failed: the engine cannot go on with a half-copied bucket.
fn ops_failed(rank: usize, collective: Collective, e: OpsError) -> Error {
    Error::Backend { rank, op: collective.into(), backend: "memory", detail: e.to_string() }
}

/// Rows of this rank's submission (0 for a stand-in).
fn pending_rows(item: &Item, row_bytes: usize) -> usize {
    match &item.pending {
        Some(p) => p.sub.shape[0],
        None if row_bytes == 0 => 0,
        None => item.data.len() / row_bytes,
    }
}

/// Horovod's default all-to-all split: rows as even as possible, the first ranks one more.
fn even_rows(rows: usize, size: usize) -> Vec<usize> {
    (0..size).map(|r| rows / size + usize::from(r < rows % size)).collect()
}

/// Records the tensor's phases and hands its result over (stand-ins have no one to tell).
fn finish(ctx: &mut Ctx<'_>, item: Item, result: Result<Output>, done: &mut Vec<Done>) {
    let Some(p) = item.pending else { return };
    if let Some(tl) = ctx.timeline.as_deref_mut() {
        let name = item.ready.name.as_str();
        let (n0, n1) = ctx.negotiated;
        tl.phase(name, Phase::Queued, p.queued, n0, "");
        tl.phase(name, Phase::Negotiated, n0, n1, "");
        let phases = [Phase::CopyIn, Phase::Communicated, Phase::CopyOut];
        for (span, phase) in item.spans.iter().zip(phases) {
            if let Some((a, b)) = *span {
                tl.phase(name, phase, a, b, "");
            }
        }
        tl.done(name, Instant::now());
    }
    done.push(Done::of(p, result));
}
