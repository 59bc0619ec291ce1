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

from .compression import Compression, Compressor

# The dtypes ferrovod carries (from its one dtype table); everything else is staged through one
# of them.
_CARRIED = set(_arrays.torch_dtypes().values())


def staged(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when ferrovod can work on it in place (CPU, contiguous, a carried dtype), else
    a copy that it can (bool travels as uint8). The caller copies the result back into ``t`` when
    they differ."""
    if t.device.type == "cpu" and t.is_contiguous() and t.dtype in _CARRIED:
        return t
    dtype = torch.uint8 if t.dtype == torch.bool else t.dtype
    if dtype not in _CARRIED:
        raise TypeError(f"ferrovod cannot carry {t.dtype} tensors (it carries {sorted(map(str, _CARRIED))} and bool)")
    return t.detach().to("cpu", dtype, memory_format=torch.contiguous_format, copy=True)


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
    compression: type[Compressor] | Compressor = Compression.none,
) -> Handle:
    """Starts reducing ``tensor`` over every rank, in place; with a compression that casts, the
    compressed copy travels and the result is copied back into ``tensor`` on ``synchronize``."""
    plain = tensor.detach()
    # A compressed copy would hide a read-only tensor from the core, which refuses it.
    compressed, ctx = (plain, None) if _arrays.read_only(plain) else compression.compress(plain)
    inner = _core.allreduce_async_(compressed, average, name, op, prescale_factor, postscale_factor)

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
    compression: type[Compressor] | Compressor = Compression.none,
) -> Handle:
    """Like ``allreduce_async_``, into a new tensor of ``tensor``'s dtype; ``tensor`` is left
    alone."""
    compressed, ctx = compression.compress(tensor.detach())
    inner = _core.allreduce_async(compressed, average, name, op, prescale_factor, postscale_factor)
    return _then(inner, lambda reduced: compression.decompress(reduced, ctx))


def allreduce_(
    tensor: torch.Tensor,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    compression: type[Compressor] | Compressor = Compression.none,
) -> torch.Tensor:
    """Reduces ``tensor`` over every rank, in place, and returns it."""
    return allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor, compression).wait()


def allreduce(
    tensor: torch.Tensor,
    average: bool | None = None,
    name: str | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> torch.Tensor:
    """The reduction of ``tensor`` over every rank, as a new tensor; differentiable for ``Sum``
    and ``Average`` when ``tensor`` requires grad. The parameters are in Horovod's order
    (``compression`` fourth), so positional calls mean the same."""
    reduce_op = resolve_op(op, average)
    if _tracks_grad(tensor):
        return _Allreduce.apply(tensor, name, reduce_op, prescale_factor, postscale_factor, compression)
    return allreduce_async(tensor, None, name, reduce_op, prescale_factor, postscale_factor, compression).wait()


class _Allreduce(torch.autograd.Function):
    """Sum and Average are linear and their own adjoint: the gradient is the same reduction of
    every rank's gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, name: str | None, op: ReduceOp, pre: float, post: float, compression: Any) -> torch.Tensor:
        ctx.args = (name, op, pre, post, compression)
        return allreduce_async(tensor, None, name, op, pre, post, compression).wait()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        name, op, pre, post, compression = ctx.args
        if op not in (Sum, Average):
            raise RuntimeError(f"allreduce with {op!r} has no gradient; only Sum and Average do")
        g = allreduce_async(grad.contiguous(), None, _grad_name(name), op, pre, post, compression).wait()
        return g, None, None, None, None, None


def grouped_allreduce_async_(
    tensors: Sequence[torch.Tensor],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
) -> Handle:
    """Starts reducing ``tensors`` in place as one group (they complete together); compressed
    copies travel where the compression casts."""
    plain = [t.detach() for t in tensors]
    # As in allreduce_async_: the core refuses read-only tensors, so they travel uncompressed.
    packed = [(t, None) if _arrays.read_only(t) else compression.compress(t) for t in plain]
    inner = _core.grouped_allreduce_async_([c for c, _ in packed], average, name, op)

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
    compression: type[Compressor] | Compressor = Compression.none,
) -> Handle:
    """Like ``grouped_allreduce_async_``, into new tensors."""
    packed = [compression.compress(t.detach()) for t in tensors]
    inner = _core.grouped_allreduce_async([c for c, _ in packed], average, name, op)
    return _then(inner, lambda reduced: [compression.decompress(r, ctx) for r, (_, ctx) in zip(reduced, packed)])


def grouped_allreduce_(
    tensors: Sequence[torch.Tensor],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
) -> list[torch.Tensor]:
    return grouped_allreduce_async_(tensors, average, name, op, compression).wait()


def grouped_allreduce(
    tensors: Sequence[torch.Tensor],
    average: bool | None = None,
    name: str | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
    op: ReduceOp | None = None,
) -> list[torch.Tensor]:
    """The reductions of ``tensors``, as one group; parameters in Horovod's order.
    Differentiable for ``Sum`` and ``Average`` (the gradients are the same grouped reduction)."""
    if any(_tracks_grad(t) for t in tensors):
        return list(_GroupedAllreduce.apply(name, resolve_op(op, average), compression, *tensors))
    return grouped_allreduce_async(tensors, average, name, op, compression).wait()


class _GroupedAllreduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, name: str | None, op: ReduceOp, compression: Any, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.name, ctx.op, ctx.compression = name, op, compression
        return tuple(grouped_allreduce_async(list(tensors), None, name, op, compression).wait())

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        if ctx.op not in (Sum, Average):
            raise RuntimeError(f"grouped_allreduce with {ctx.op!r} has no gradient; only Sum and Average do")
        plain = [g.contiguous() for g in grads]
        reduced = grouped_allreduce_async(plain, None, _grad_name(ctx.name), ctx.op, ctx.compression).wait()
        return (None, None, None, *reduced)


# --- allgather, broadcast, reducescatter, alltoall ---------------------------------------------


def allgather(tensor: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along the first dimension (sizes may differ);
    differentiable with Horovod's gradient: the average over the ranks of the output's
    gradient, this rank's rows of it (each rank's loss taken as a share of an averaged one)."""
    if _tracks_grad(tensor):
        return _Allgather.apply(tensor, name)
    return _core.allgather(tensor, name)


class _Allgather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, name: str | None) -> torch.Tensor:
        rows_name = None if name is None else f"{name}.rows"
        rows = _core.allgather(torch.tensor([tensor.shape[0]], dtype=torch.int64), rows_name).tolist()
        ctx.offset, ctx.rows, ctx.name = sum(rows[: _core.rank()]), tensor.shape[0], name
        return _core.allgather(tensor, name)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        total = _core.allreduce(grad.contiguous(), name=_grad_name(ctx.name), op=Average)
        return total.narrow(0, ctx.offset, ctx.rows), None


def broadcast(tensor: torch.Tensor, root_rank: int, name: str | None = None) -> torch.Tensor:
    """``root_rank``'s ``tensor``, as a new tensor on every rank; differentiable with Horovod's
    gradient (the root gets the average of every rank's gradient, the others zero)."""
    if _tracks_grad(tensor):
        return _Broadcast.apply(tensor, root_rank, name)
    return _core.broadcast(tensor, root_rank, name)


class _Broadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, root_rank: int, name: str | None) -> torch.Tensor:
        ctx.root, ctx.name = root_rank, name
        return _core.broadcast(tensor, root_rank, name)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        total = _core.allreduce(grad.contiguous(), name=_grad_name(ctx.name), op=Average)
        return (total if _core.rank() == ctx.root else torch.zeros_like(total)), None, None


def reducescatter(
    tensor: torch.Tensor,
    name: str | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
    op: ReduceOp = Average,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> torch.Tensor:
    """This rank's share of the first dimension of the reduction (``Average`` by default);
    differentiable for ``Sum`` and ``Average``. Parameters in Horovod's order."""
    compressed, ctx = compression.compress(tensor)
    if _tracks_grad(compressed):
        out = _Reducescatter.apply(compressed, op, name, prescale_factor, postscale_factor)
    else:
        out = _reducescatter(compressed, op, name, prescale_factor, postscale_factor)
    return compression.decompress(out, ctx)


def _reducescatter(t: torch.Tensor, op: ReduceOp, name: str | None, pre: float, post: float) -> torch.Tensor:
    if pre != 1.0:
        t = t.detach().clone()
        _arrays.scale(t, pre)
    out = _core.reducescatter(t, op, name)
    _arrays.scale(out, post)
    return out


class _Reducescatter(torch.autograd.Function):
    """Each rank's gradient belongs to its rows of every rank's input: gather them, with
    Horovod's scaling (times the ranks for ``Sum``, not divided for ``Average``, times the
    pre- and post-scale factors)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, op: ReduceOp, name: str | None, pre: float, post: float) -> torch.Tensor:
        ctx.op, ctx.name, ctx.scale = op, name, pre * post
        return _reducescatter(tensor, op, name, pre, post)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        if ctx.op not in (Sum, Average):
            raise RuntimeError(f"reducescatter with {ctx.op!r} has no gradient; only Sum and Average do")
        g = grad.contiguous() * (_core.size() if ctx.op == Sum else 1) * ctx.scale
        return _core.allgather(g, _grad_name(ctx.name)), None, None, None, None


def grouped_allgather(tensors: Sequence[torch.Tensor], name: str | None = None) -> list[torch.Tensor]:
    """``allgather`` of each tensor (named ``<name>.<i>``); differentiable like it."""
    return [allgather(t, None if name is None else f"{name}.{i}") for i, t in enumerate(tensors)]


def grouped_reducescatter(
    tensors: Sequence[torch.Tensor],
    name: str | None = None,
    compression: type[Compressor] | Compressor = Compression.none,
    op: ReduceOp = Average,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> list[torch.Tensor]:
    """``reducescatter`` of each tensor (named ``<name>.<i>``); differentiable like it."""
    return [
        reducescatter(t, None if name is None else f"{name}.{i}", compression, op, prescale_factor, postscale_factor)
        for i, t in enumerate(tensors)
    ]


def alltoall(
    tensor: torch.Tensor, splits: Sequence[int] | torch.Tensor | None = None, name: str | None = None
) -> Any:
    """``splits[j]`` rows of ``tensor`` go to rank j (an even split without ``splits``);
    differentiable in ``tensor``. As in Horovod, the result is the output alone without
    ``splits``, and ``(output, received_splits)`` with them. Without ``splits`` the first
    dimension must divide by the number of ranks, as Horovod requires."""
    if splits is None and tensor.dim() > 0 and tensor.shape[0] % _core.size() != 0:
        raise _core.InvalidArgumentError(
            f"alltoall without splits: the first dimension {tensor.shape[0]} does not divide into {_core.size()} ranks"
        )
    if _tracks_grad(tensor):
        out, received = _Alltoall.apply(tensor, splits, name)
    else:
        out, received = _core.alltoall(tensor, splits, name)
    return out if splits is None else (out, received)


class _Alltoall(torch.autograd.Function):
    """The gradient goes back the way the rows came: an alltoall with the received splits."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, splits: Any, name: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        out, received = _core.alltoall(tensor, splits, name)
        ctx.received, ctx.name = received, name
        ctx.mark_non_differentiable(received)
        return out, received

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _received: Any) -> tuple[Any, ...]:
        g, _ = _core.alltoall(grad.contiguous(), ctx.received, _grad_name(ctx.name))
        return g, None, None
