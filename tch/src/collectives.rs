//! Collectives on `tch::Tensor`s: blocking ones on a [`Communicator`], named asynchronous ones on
//! an [`Engine`]. A contiguous CPU tensor is reduced where it lies, with no copy; any other CPU
//! tensor through a contiguous copy.

use ferrovod::engine::Collective;
use ferrovod::error::Operation;
use ferrovod::memory::Owned;
use ferrovod::{Communicator, Engine, Error, Handle, ReduceOp, Result, Submission};
use tch::Tensor;

use crate::lend::{Lent, kind_of, lend, torch_failed};

/// Reduces `tensor` over all ranks, in place.
pub fn allreduce(comm: &mut Communicator, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
    let collective = Collective::Allreduce(op);
    in_place(comm.rank(), collective, tensor, |lent| {
        // SAFETY: `lend` checked that these bytes are the tensor's own contiguous storage, and
        // the tensor is borrowed mutably for the call.
        let bytes = unsafe { std::slice::from_raw_parts_mut(lent.ptr.as_ptr(), lent.len) };
        comm.allreduce_bytes(bytes, lent.dtype, op)
    })
}

/// Copies `root`'s `tensor` into every rank's, in place. Every rank's must have the same shape
/// and kind.
pub fn broadcast(comm: &mut Communicator, tensor: &mut Tensor, root: usize) -> Result<()> {
    let collective = Collective::Broadcast(root as u32);
    in_place(comm.rank(), collective, tensor, |lent| {
        // SAFETY: as in `allreduce`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(lent.ptr.as_ptr(), lent.len) };
        comm.broadcast_bytes(bytes, lent.dtype, root)
    })
}

/// Concatenates every rank's `tensor` along the first dimension, which may differ by rank; the
/// other dimensions must agree (a rank whose do not is named on every rank).
pub fn allgather(comm: &mut Communicator, tensor: &Tensor) -> Result<Tensor> {
    let rank = comm.rank();
    let op = Operation::Collective(Collective::Allgather);
    let input = contiguous(tensor, rank, op.clone())?;
    let lent = lend(&input, rank, op.clone())?;
    let Some((&rows, rest)) = lent.shape.split_first() else {
        return Err(Error::InvalidArgument { rank, op, detail: "a scalar has no first dimension to join".into() });
    };
    let row: usize = rest.iter().product();
    // Every rank learns every row length first, so that all of them refuse a disagreement.
    let row_lengths = comm.allgather_counts(row, lent.dtype)?;
    if let Some(other) = row_lengths.iter().position(|&r| r != row) {
        return Err(Error::InvalidArgument {
            rank,
            op,
            detail: format!("rows of {row} elements here ({rest:?}) but of {} on rank {other}", row_lengths[other]),
        });
    }
    let counts = comm.allgather_counts(rows * row, lent.dtype)?;
    let total_rows: usize = counts.iter().sum::<usize>() / row.max(1);
    let mut shape: Vec<i64> = vec![total_rows as i64];
    shape.extend(rest.iter().map(|&d| d as i64));
    let output = Tensor::f_empty(shape.as_slice(), (input.kind(), input.device()))
        .map_err(|e| torch_failed(rank, op.clone(), e))?;
    let out = lend(&output, rank, op)?;
    // SAFETY: `output` is a fresh contiguous tensor of `out.len` bytes that nothing else holds,
    // and `input` is a distinct tensor read for `lent.len` bytes.
    let (src, dst) = unsafe {
        (
            std::slice::from_raw_parts(lent.ptr.as_ptr(), lent.len),
            std::slice::from_raw_parts_mut(out.ptr.as_ptr(), out.len),
        )
    };
    comm.allgatherv_into(src, dst, &counts, lent.dtype)?;
    Ok(output)
}

/// Runs `run` on the tensor's bytes: its own when contiguous, else a contiguous copy's, copied
/// back afterwards.
fn in_place(
    rank: usize,
    collective: Collective,
    tensor: &mut Tensor,
    run: impl FnOnce(&Lent) -> Result<()>,
) -> Result<()> {
    let op = Operation::Collective(collective);
    if tensor.defined() && !tensor.is_contiguous() {
        let mut work = contiguous(tensor, rank, op.clone())?;
        in_place(rank, collective, &mut work, run)?;
        // Outside autograd: a leaf that requires grad takes the result too.
        return tch::no_grad(|| tensor.f_copy_(&work)).map_err(|e| torch_failed(rank, op, e));
    }
    run(&lend(tensor, rank, op)?)
}

/// The tensor itself if contiguous, else a contiguous copy.
fn contiguous(tensor: &Tensor, rank: usize, op: Operation) -> Result<Tensor> {
    if !tensor.defined() || tensor.is_contiguous() {
        return Ok(tensor.shallow_clone());
    }
    tensor.f_contiguous().map_err(|e| torch_failed(rank, op, e))
}

/// Submits `tensor` to the engine under `name` for an allreduce; the result replaces its
/// contents when the handle is waited for.
pub fn allreduce_async(engine: &Engine, name: &str, tensor: &Tensor, op: ReduceOp) -> Result<TensorHandle> {
    submit(engine, name, tensor, Collective::Allreduce(op))
}

/// Submits `tensor` to the engine under `name` for a broadcast from `root`.
pub fn broadcast_async(engine: &Engine, name: &str, tensor: &Tensor, root: usize) -> Result<TensorHandle> {
    submit(engine, name, tensor, Collective::Broadcast(root as u32))
}

/// Submits `tensor` to the engine under `name` for an allgather; the handle's tensor is the
/// concatenation.
pub fn allgather_async(engine: &Engine, name: &str, tensor: &Tensor) -> Result<TensorHandle> {
    submit(engine, name, tensor, Collective::Allgather)
}

fn submit(engine: &Engine, name: &str, tensor: &Tensor, collective: Collective) -> Result<TensorHandle> {
    let rank = engine.rank();
    let op = Operation::Collective(collective);
    let work = contiguous(tensor, rank, op.clone())?;
    let lent = lend(&work, rank, op)?;
    // SAFETY: `work` shares the lent storage and lives in the handle until the engine is done
    // with it (`TensorHandle` waits in its drop if nobody did).
    let sub = unsafe { Submission::borrowed(name, collective, lent.dtype, &lent.shape, lent.ptr, lent.len) };
    let handle = engine.submit(sub)?;
    Ok(TensorHandle { handle: Some(handle), target: tensor.shallow_clone(), work, rank, collective })
}

/// A tensor collective in flight. Its memory belongs to the engine until [`TensorHandle::wait`]
/// returns; dropping the handle unwaited waits (the engine may still be writing).
pub struct TensorHandle {
    handle: Option<Handle>,
    /// The caller's tensor, which gets the result of an in-place collective.
    target: Tensor,
    /// What the engine reads and writes: the target itself, or a contiguous copy of it.
    work: Tensor,
    rank: usize,
    collective: Collective,
}

impl TensorHandle {
    /// Whether the result is ready (then `wait` does not block).
    pub fn poll(&self) -> bool {
        self.handle.as_ref().is_none_or(Handle::poll)
    }

    /// Waits for the result: the submitted tensor, now holding it (allreduce, broadcast), or a
    /// new tensor (allgather).
    pub fn wait(mut self) -> Result<Tensor> {
        let handle = self.handle.take().expect("a handle is waited for once");
        let output = handle.wait()?;
        let op = Operation::Collective(self.collective);
        if self.collective == Collective::Allgather {
            let Owned::Host(bytes) = &output.data else {
                return Err(Error::InvalidArgument {
                    rank: self.rank,
                    op,
                    detail: "the allgather's result is not in host memory".into(),
                });
            };
            let shape: Vec<i64> = output.shape.iter().map(|&d| d as i64).collect();
            return Tensor::f_from_data_size(bytes, &shape, kind_of(output.dtype))
                .map_err(|e| torch_failed(self.rank, op, e));
        }
        if self.work.data_ptr() != self.target.data_ptr() {
            let (target, work) = (&mut self.target, &self.work);
            tch::no_grad(|| target.f_copy_(work)).map_err(|e| torch_failed(self.rank, op, e))?;
        }
        Ok(self.target.shallow_clone())
    }
}

impl Drop for TensorHandle {
    fn drop(&mut self) {
        // The engine may still write into `work`: keep it alive until it is done.
        if let Some(handle) = self.handle.take() {
            let _ = handle.wait();
        }
    }
}

impl std::fmt::Debug for TensorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.handle.as_ref().map(Handle::name);
        f.debug_struct("TensorHandle").field("name", &name).field("collective", &self.collective).finish()
    }
}
