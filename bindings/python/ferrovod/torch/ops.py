"""Collectives on torch tensors: the core ones, with gradient compression for the allreduces, and
differentiable when their input requires grad.

Gradients follow one convention: the objective is the sum of every rank's loss. So the gradient
of an allreduce is the same allreduce of the gradients, the gradient of an allgather is this
rank's rows of the summed gradients, and only the root of a broadcast gets a gradient. With
``DistributedOptimizer`` averaging parameter gradients on top, that is the gradient of the mean
loss, which is what a user training through these ops expects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

import ferrovod as _core
from ferrovod import Average, Handle, ReduceOp, Sum
from ferrovod import _arrays
from ferrovod._collectives import resolve_op
from ferrovod._handles import wait_at_once
from ferrovod._process_sets import ProcessSet, global_process_set

from .compression import Compression, Compressor

# The dtypes ferrovod carries (from its one dtype table); everything else is staged through one
# of them.
_CARRIED = set(_arrays.torch_dtypes().values())


def staged(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when ferrovod can work on it in place (CPU or CUDA, contiguous, a carried
    dtype), else a copy that it can, on the same device (bool travels as uint8; other devices
    through the CPU). The caller copies the result back into ``t`` when they differ."""
    if t.device.type in ("cpu", "cuda") and t.is_contiguous() and t.dtype in _CARRIED:
        return t
    dtype = torch.uint8 if t.dtype == torch.bool else t.dtype
    if dtype not in _CARRIED:
        raise TypeError(f"ferrovod cannot carry {t.dtype} tensors (it carries {sorted(map(str, _CARRIED))} and bool)")
    device = t.device if t.device.type == "cuda" else "cpu"
    return t.detach().to(device, dtype, memory_format=torch.contiguous_format, copy=True)


def _then(handle: Handle, finish: Callable[[Any], Any]) -> Handle:
    """A handle whose result is ``finish`` of ``handle``'s: a ``Handle`` wraps anything with
    ``name``, ``poll`` and ``wait``, a core one included."""
    return Handle(handle, finish)  # type: ignore[arg-type]


def _tracks_grad(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.requires_grad and torch.is_grad_enabled()


def _grad_name(name: str | None) -> str | None:
    return None if name is None else f"{name}.grad"


# --- allreduce ---------------------------------------------------------------------------------


def allreduce_async_(
    tensor: torch.Tensor,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
    compression: type[Compressor] | Compressor = Compression.none,
) -> Handle:
    """Starts reducing ``tensor`` over every rank, in place; with a compression that casts, the
    compressed copy travels and the result is copied back into ``tensor`` on ``synchronize``."""
    plain = tensor.detach()
    # A compressed copy would hide a read-only tensor from the core, which refuses it.
    compressed, ctx = (plain, None) if _arrays.read_only(plain) else compression.compress(plain)
    inner = _core.allreduce_async_(compressed, average, name, op, prescale_factor, postscale_factor, process_set)

    def finish(reduced: torch.Tensor) -> torch.Tensor:
        out = compression.decompress(reduced, ctx)
        if out is not plain:
            plain.copy_(out)
        return tensor

    return _then(inner, finish)


def allreduce_async(
    tensor: torch.Tensor,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
    compression: type[Compressor] | Compressor = Compression.none,
) -> Handle:
    """Like ``allreduce_async_``, into a new tensor of ``tensor``'s dtype; ``tensor`` is left
    alone."""
    compressed, ctx = compression.compress(tensor.detach())
    inner = _core.allreduce_async(compressed, average, name, op, prescale_factor, postscale_factor, process_set)
    return _then(inner, lambda reduced: compression.decompress(reduced, ctx))


def allreduce_(
    tensor: torch.Tensor,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
    compression: type[Compressor] | Compressor = Compression.none,
) -> torch.Tensor:
    """Reduces ``tensor`` over every rank, in place, and returns it."""
    return wait_at_once(
        lambda: allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor, process_set, compression)
    )


def allreduce(
    tensor: torch.Tensor,
    average: bool | None = None,
    name: str | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> torch.Tensor:
    """The reduction of ``tensor`` over every rank, as a new tensor; differentiable for ``Sum``
    and ``Average`` when ``tensor`` requires grad. The parameters are in Horovod's order
    (``compression`` fourth), so positional calls mean the same."""
    reduce_op = resolve_op(op, average)
    if _tracks_grad(tensor):
        return _Allreduce.apply(tensor, name, reduce_op, prescale_factor, postscale_factor, compression, process_set)
    return wait_at_once(
        lambda: allreduce_async(tensor, None, name, reduce_op, prescale_factor, postscale_factor, process_set, compression)
    )


class _Allreduce(torch.autograd.Function):
    """Sum and Average are linear and their own adjoint: the gradient is the same reduction of
    every rank's gradient."""

    @staticmethod
    def forward(
        ctx: Any, tensor: torch.Tensor, name: str | None, op: ReduceOp, pre: float, post: float, compression: Any, ps: Any
    ) -> torch.Tensor:
        ctx.args = (name, op, pre, post, ps, compression)
        return wait_at_once(lambda: allreduce_async(tensor, None, name, op, pre, post, ps, compression))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        name, op, pre, post, ps, compression = ctx.args
        if op not in (Sum, Average):
            raise RuntimeError(f"allreduce with {op!r} has no gradient; only Sum and Average do")
        g = wait_at_once(lambda: allreduce_async(grad.contiguous(), None, _grad_name(name), op, pre, post, ps, compression))
        return g, None, None, None, None, None, None


def grouped_allreduce_async_(
    tensors: Sequence[torch.Tensor],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
    compression: type[Compressor] | Compressor = Compression.none,
) -> Handle:
    """Starts reducing ``tensors`` in place as one group (they complete together); compressed
    copies travel where the compression casts."""
    plain = [t.detach() for t in tensors]
    # As in allreduce_async_: the core refuses read-only tensors, so they travel uncompressed.
    packed = [(t, None) if _arrays.read_only(t) else compression.compress(t) for t in plain]
    inner = _core.grouped_allreduce_async_(
        [c for c, _ in packed], average, name, op, prescale_factor, postscale_factor, process_set
    )

    def finish(reduced: list[torch.Tensor]) -> list[torch.Tensor]:
        for t, r, (_, ctx) in zip(plain, reduced, packed):
            out = compression.decompress(r, ctx)
            if out is not t:
                t.copy_(out)
        return list(tensors)

    return _then(inner, finish)


def grouped_allreduce_async(
    tensors: Sequence[torch.Tensor],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
    compression: type[Compressor] | Compressor = Compression.none,
) -> Handle:
    """Like ``grouped_allreduce_async_``, into new tensors."""
    packed = [compression.compress(t.detach()) for t in tensors]
    inner = _core.grouped_allreduce_async(
        [c for c, _ in packed], average, name, op, prescale_factor, postscale_factor, process_set
    )
    return _then(inner, lambda reduced: [compression.decompress(r, ctx) for r, (_, ctx) in zip(reduced, packed)])


def grouped_allreduce_(
    tensors: Sequence[torch.Tensor],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
    compression: type[Compressor] | Compressor = Compression.none,
) -> list[torch.Tensor]:
    return grouped_allreduce_async_(
        tensors, average, name, op, prescale_factor, postscale_factor, process_set, compression
    ).wait()


def grouped_allreduce(
    tensors: Sequence[torch.Tensor],
    average: bool | None = None,
    name: str | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> list[torch.Tensor]:
    """The reductions of ``tensors``, as one group; parameters in Horovod's order.
    Differentiable for ``Sum`` and ``Average`` (the gradients are the same grouped reduction)."""
    scales = (prescale_factor, postscale_factor)
    if any(_tracks_grad(t) for t in tensors):
        return list(_GroupedAllreduce.apply(name, resolve_op(op, average), compression, scales, process_set, *tensors))
    return grouped_allreduce_async(tensors, average, name, op, *scales, process_set, compression).wait()


class _GroupedAllreduce(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, name: str | None, op: ReduceOp, compression: Any, scales: tuple[float, float], ps: Any, *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        ctx.name, ctx.op, ctx.compression, ctx.scales, ctx.ps = name, op, compression, scales, ps
        return tuple(grouped_allreduce_async(list(tensors), None, name, op, *scales, ps, compression).wait())

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        if ctx.op not in (Sum, Average):
            raise RuntimeError(f"grouped_allreduce with {ctx.op!r} has no gradient; only Sum and Average do")
        plain = [g.contiguous() for g in grads]
        reduced = grouped_allreduce_async(
            plain, None, _grad_name(ctx.name), ctx.op, *ctx.scales, ctx.ps, ctx.compression
        ).wait()
        return (None, None, None, None, None, *reduced)


# --- allgather, broadcast, reducescatter, alltoall ---------------------------------------------


def allgather(tensor: torch.Tensor, name: str | None = None, process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along the first dimension (sizes may differ);
    differentiable with Horovod's gradient: the average over the ranks of the output's
    gradient, this rank's rows of it (each rank's loss taken as a share of an averaged one)."""
    if _tracks_grad(tensor):
        return _Allgather.apply(tensor, name, process_set)
    return _core.allgather(tensor, name, process_set)


class _Allgather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, name: str | None, ps: Any) -> torch.Tensor:
        rows_name = None if name is None else f"{name}.rows"
        rows = _core.allgather(torch.tensor([tensor.shape[0]], dtype=torch.int64), rows_name, ps).tolist()
        ctx.offset, ctx.rows, ctx.name, ctx.ps = sum(rows[: ps.rank()]), tensor.shape[0], name, ps
        return _core.allgather(tensor, name, ps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        total = _core.allreduce(grad.contiguous(), name=_grad_name(ctx.name), op=Average, process_set=ctx.ps)
        return total.narrow(0, ctx.offset, ctx.rows), None, None


def broadcast(tensor: torch.Tensor, root_rank: int, name: str | None = None, process_set: ProcessSet = global_process_set) -> torch.Tensor:
    """``root_rank``'s ``tensor``, as a new tensor on every rank; differentiable with Horovod's
    gradient (the root gets the average of every rank's gradient, the others zero)."""
    if _tracks_grad(tensor):
        return _Broadcast.apply(tensor, root_rank, name, process_set)
    return _core.broadcast(tensor, root_rank, name, process_set)


class _Broadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, root_rank: int, name: str | None, ps: Any) -> torch.Tensor:
        ctx.root, ctx.name, ctx.ps = root_rank, name, ps
        return _core.broadcast(tensor, root_rank, name, ps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        total = _core.allreduce(grad.contiguous(), name=_grad_name(ctx.name), op=Average, process_set=ctx.ps)
        return (total if _core.rank() == ctx.root else torch.zeros_like(total)), None, None, None


def reducescatter(
    tensor: torch.Tensor,
    name: str | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
    op: ReduceOp = Average,
    process_set: ProcessSet = global_process_set,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> torch.Tensor:
    """This rank's share of the first dimension of the reduction (``Average`` by default);
    differentiable for ``Sum`` and ``Average``. Parameters in Horovod's order."""
    compressed, ctx = compression.compress(tensor)
    if _tracks_grad(compressed):
        out = _Reducescatter.apply(compressed, op, name, prescale_factor, postscale_factor, process_set)
    else:
        out = _reducescatter(compressed, op, name, prescale_factor, postscale_factor, process_set)
    return compression.decompress(out, ctx)


def reducescatter_async(
    tensor: torch.Tensor,
    name: str | None = None,
    op: ReduceOp = Average,
    process_set: ProcessSet = global_process_set,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> Handle:
    """Starts ``reducescatter``; parameters in Horovod's order."""
    inner = _core.reducescatter_async(_prescaled(tensor, prescale_factor), op, name, process_set)
    return _then(inner, lambda out: _postscaled(out, postscale_factor))


def _reducescatter(t: torch.Tensor, op: ReduceOp, name: str | None, pre: float, post: float, ps: Any) -> torch.Tensor:
    return reducescatter_async(t, name, op, ps, pre, post).wait()


def _prescaled(t: torch.Tensor, pre: float) -> torch.Tensor:
    """``t`` times ``pre``, in a copy when ``pre`` is not 1 (the input is the caller's)."""
    if pre == 1.0:
        return t.detach()
    t = t.detach().clone()
    _arrays.scale(t, pre)
    return t


def _postscaled(t: torch.Tensor, post: float) -> torch.Tensor:
    _arrays.scale(t, post)
    return t


class _Reducescatter(torch.autograd.Function):
    """Each rank's gradient belongs to its rows of every rank's input: gather them, with
    Horovod's scaling (times the ranks for ``Sum``, not divided for ``Average``, times the
    pre- and post-scale factors)."""

    @staticmethod
    def forward(
        ctx: Any, tensor: torch.Tensor, op: ReduceOp, name: str | None, pre: float, post: float, ps: Any
    ) -> torch.Tensor:
        ctx.op, ctx.name, ctx.scale, ctx.ps = op, name, pre * post, ps
        return _reducescatter(tensor, op, name, pre, post, ps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        if ctx.op not in (Sum, Average):
            raise RuntimeError(f"reducescatter with {ctx.op!r} has no gradient; only Sum and Average do")
        g = grad.contiguous() * (ctx.ps.size() if ctx.op == Sum else 1) * ctx.scale
        return _core.allgather(g, _grad_name(ctx.name), ctx.ps), None, None, None, None, None


def sparse_allreduce_async(
    tensor: torch.Tensor, name: str, op: ReduceOp, process_set: ProcessSet = global_process_set
) -> Callable[[], torch.Tensor]:
    """Starts reducing a sparse tensor by gathering every rank's indices and values (which costs
    what the nonzeros cost, not the dense size); returns a function that waits and gives the
    coalesced sum (divided by the ranks for ``Average``), as Horovod's does. ``Sum`` and
    ``Average`` only."""
    if op not in (Sum, Average):
        raise ValueError(f"sparse_allreduce_async reduces with Sum or Average, not {op!r}")
    t = tensor.coalesce()
    values = _core.allgather_async(t.values().contiguous(), name=f"{name}.values", process_set=process_set)
    indices = _core.allgather_async(t.indices().t().contiguous(), name=f"{name}.indices", process_set=process_set)

    def wait() -> torch.Tensor:
        # Checked: the indices came from other processes.
        summed = torch.sparse_coo_tensor(indices.wait().t(), values.wait(), t.shape, check_invariants=True).coalesce()
        return summed / (process_set.size() or 1) if op == Average else summed

    return wait


def grouped_allgather(
    tensors: Sequence[torch.Tensor], name: str | None = None, process_set: ProcessSet = global_process_set
) -> list[torch.Tensor]:
    """``allgather`` of each tensor (named ``<name>.<i>``) as one group of the engine: they run
    in the same round and complete together. Differentiable like ``allgather``."""
    if any(_tracks_grad(t) for t in tensors):
        return list(_GroupedAllgather.apply(name, process_set, *tensors))
    return _core.grouped_allgather(tensors, name, process_set)


class _GroupedAllgather(torch.autograd.Function):
    """``_Allgather`` for a group: each tensor's gradient is its rows of the average of the
    outputs' gradients, reduced as one group."""

    @staticmethod
    def forward(ctx: Any, name: str | None, ps: Any, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows_name = None if name is None else f"{name}.rows"
        counts = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64).reshape(1, -1)
        rows = _core.allgather(counts, rows_name, ps)
        ctx.offsets = rows[: ps.rank()].sum(dim=0).tolist()
        ctx.rows, ctx.name, ctx.ps = [t.shape[0] for t in tensors], name, ps
        return tuple(_core.grouped_allgather(list(tensors), name, ps))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        totals = _core.grouped_allreduce([g.contiguous() for g in grads], name=_grad_name(ctx.name), op=Average, process_set=ctx.ps)
        return (None, None, *(t.narrow(0, o, r) for t, o, r in zip(totals, ctx.offsets, ctx.rows)))


def grouped_reducescatter_async(
    tensors: Sequence[torch.Tensor],
    name: str | None = None,
    op: ReduceOp = Average,
    process_set: ProcessSet = global_process_set,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> Handle:
    """Starts ``reducescatter`` of each tensor (named ``<name>.<i>``) as one group of the
    engine; the result is the list of shares. Parameters in Horovod's order."""
    inputs = [_prescaled(t, prescale_factor) for t in tensors]
    inner = _core.grouped_reducescatter_async(inputs, op, name, process_set)
    return _then(inner, lambda outs: [_postscaled(o, postscale_factor) for o in outs])


def grouped_reducescatter(
    tensors: Sequence[torch.Tensor],
    name: str | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
    op: ReduceOp = Average,
    process_set: ProcessSet = global_process_set,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> list[torch.Tensor]:
    """``reducescatter`` of each tensor (named ``<name>.<i>``) as one group of the engine: they
    run in the same round and complete together. Differentiable like ``reducescatter``;
    parameters in Horovod's order."""
    packed = [compression.compress(t) for t in tensors]
    compressed = [c for c, _ in packed]
    if any(_tracks_grad(c) for c in compressed):
        outs = _GroupedReducescatter.apply(op, name, prescale_factor, postscale_factor, process_set, *compressed)
    else:
        outs = grouped_reducescatter_async(compressed, name, op, process_set, prescale_factor, postscale_factor).wait()
    return [compression.decompress(o, ctx) for o, (_, ctx) in zip(outs, packed)]


class _GroupedReducescatter(torch.autograd.Function):
    """``_Reducescatter`` for a group: the gradients are gathered as one group."""

    @staticmethod
    def forward(
        ctx: Any, op: ReduceOp, name: str | None, pre: float, post: float, ps: Any, *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        ctx.op, ctx.name, ctx.scale, ctx.ps = op, name, pre * post, ps
        return tuple(grouped_reducescatter_async(list(tensors), name, op, ps, pre, post).wait())

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        if ctx.op not in (Sum, Average):
            raise RuntimeError(f"reducescatter with {ctx.op!r} has no gradient; only Sum and Average do")
        factor = (ctx.ps.size() if ctx.op == Sum else 1) * ctx.scale
        gathered = _core.grouped_allgather([g.contiguous() * factor for g in grads], _grad_name(ctx.name), ctx.ps)
        return (None, None, None, None, None, *gathered)


def alltoall(
    tensor: torch.Tensor,
    splits: Sequence[int] | torch.Tensor | None = None,
    name: str | None = None,
    process_set: ProcessSet = global_process_set,
) -> Any:
    """``splits[j]`` rows of ``tensor`` go to rank j (an even split without ``splits``);
    differentiable in ``tensor``. As in Horovod, the result is the output alone without
    ``splits``, and ``(output, received_splits)`` with them. Without ``splits`` the first
    dimension must divide by the number of ranks, as Horovod requires."""
    ranks = process_set.size() or _core.size()
    if splits is None and tensor.dim() > 0 and tensor.shape[0] % ranks != 0:
        raise _core.InvalidArgumentError(
            f"alltoall without splits: the first dimension {tensor.shape[0]} does not divide into {ranks} ranks"
        )
    if _tracks_grad(tensor):
        out, received = _Alltoall.apply(tensor, splits, name, process_set)
    else:
        out, received = _core.alltoall(tensor, splits, name, process_set)
    return out if splits is None else (out, received)


class _Alltoall(torch.autograd.Function):
    """The gradient goes back the way the rows came: an alltoall with the received splits."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, splits: Any, name: str | None, ps: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out, received = _core.alltoall(tensor, splits, name, ps)
        ctx.received, ctx.name, ctx.ps = received, name, ps
        ctx.mark_non_differentiable(received)
        return out, received

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _received: Any) -> tuple[Any, ...]:
        g, _ = _core.alltoall(grad.contiguous(), ctx.received, _grad_name(ctx.name), ctx.ps)
        return g, None, None, None
