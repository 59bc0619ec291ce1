"""The collectives on arrays: allreduce (single and grouped), broadcast, allgather,
reducescatter, alltoall, barrier and join, each with its in-place (``_``) and asynchronous
(``_async``) forms, and the reduction ops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _arrays, _ferrovod
from ._ferrovod import ReduceOp
from ._handles import GroupHandle, Handle, tensor_name, wait_at_once, waited
from ._process_sets import ProcessSet, global_process_set, root_in, set_id

Average = ReduceOp.Average
Sum = ReduceOp.Sum
Min = ReduceOp.Min
Max = ReduceOp.Max
Product = ReduceOp.Product


def resolve_op(op: ReduceOp | None, average: bool | None) -> ReduceOp:
    """The op Horovod's ``op=``/``average=`` pair means (``Average`` when neither is given)."""
    if op is not None and average is not None:
        raise ValueError("give op or average, not both")
    if average is not None:
        return Average if average else Sum
    return Average if op is None else op


# --- allreduce ---------------------------------------------------------------------------------


def allreduce_async_(
    tensor: Any,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> Handle:
    """Starts reducing ``tensor`` over every rank, in place. ``op`` defaults to ``Average``."""
    inner = _start_allreduce(tensor, resolve_op(op, average), name, prescale_factor, process_set, waited.now)

    def finish(_: Any) -> Any:
        _arrays.scale(tensor, postscale_factor)
        return tensor

    return Handle(inner, finish)


def allreduce_async(
    tensor: Any,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> Handle:
    """Like ``allreduce_async_``, into a copy; ``tensor`` is left alone."""
    return allreduce_async_(_arrays.copy(tensor), average, name, op, prescale_factor, postscale_factor, process_set)


def allreduce_(
    tensor: Any,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> Any:
    """Reduces ``tensor`` over every rank, in place, and returns it."""
    # The synchronous path without a Handle: it is the small-message latency Python sees.
    _start_allreduce(tensor, resolve_op(op, average), name, prescale_factor, process_set, True).wait()
    _arrays.scale(tensor, postscale_factor)
    return tensor


def _start_allreduce(
    tensor: Any, reduce_op: ReduceOp, name: str | None, prescale_factor: float, process_set: ProcessSet, waited: bool
) -> _ferrovod.Handle:
    """Submits ``tensor`` for an in-place allreduce; ``waited``: the caller waits at once."""
    ps = set_id(process_set)
    if name is None:
        with tensor_name("allreduce", None, ps) as auto:
            return _submit_allreduce(tensor, reduce_op, auto, prescale_factor, ps, waited)
    # A given name needs no counter: no `with` on the small-message path.
    return _submit_allreduce(tensor, reduce_op, name, prescale_factor, ps, waited)


def _submit_allreduce(
    tensor: Any, reduce_op: ReduceOp, name: str, prescale_factor: float, ps: int, waited: bool
) -> _ferrovod.Handle:
    lent = _arrays.in_place(tensor, "allreduce", name)  # a read-only torch tensor: refused before the prescale
    _arrays.scale(tensor, prescale_factor)
    return _ferrovod.allreduce_async_(lent, name, reduce_op, ps, waited)


def allreduce(
    tensor: Any,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> Any:
    """The reduction of ``tensor`` over every rank, as a new array of the same kind."""
    return wait_at_once(lambda: allreduce_async(tensor, average, name, op, prescale_factor, postscale_factor, process_set))


def grouped_allreduce_async_(
    tensors: Sequence[Any],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> Handle:
    """Starts reducing ``tensors`` in place, as one group: they run in the same round and
    complete together. The handle's result is the list of tensors."""
    reduce_op = resolve_op(op, average)
    ps = set_id(process_set)
    with tensor_name("grouped_allreduce", name, ps) as base:
        names = [f"{base}.{i}" for i in range(len(tensors))]
        lent = [_arrays.in_place(t, "allreduce", n) for t, n in zip(tensors, names)]  # before any prescale
        for t in tensors:
            _arrays.scale(t, prescale_factor)
        inners = _ferrovod.grouped_allreduce_async_(lent, names, reduce_op, ps)
    result = list(tensors)

    def finish(_: Any) -> Any:
        for t in result:
            _arrays.scale(t, postscale_factor)
        return result

    return Handle(GroupHandle(base, inners), finish)


def grouped_allreduce_async(
    tensors: Sequence[Any],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> Handle:
    """Like ``grouped_allreduce_async_``, into copies."""
    return grouped_allreduce_async_([_arrays.copy(t) for t in tensors], average, name, op, prescale_factor, postscale_factor, process_set)


def grouped_allreduce_(
    tensors: Sequence[Any],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> list[Any]:
    return grouped_allreduce_async_(tensors, average, name, op, prescale_factor, postscale_factor, process_set).wait()


def grouped_allreduce(
    tensors: Sequence[Any],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: ProcessSet = global_process_set,
) -> list[Any]:
    return grouped_allreduce_async(tensors, average, name, op, prescale_factor, postscale_factor, process_set).wait()


# --- broadcast ---------------------------------------------------------------------------------


def broadcast_async_(tensor: Any, root_rank: int, name: str | None = None, process_set: ProcessSet = global_process_set) -> Handle:
    """Starts copying ``root_rank``'s ``tensor`` into every rank's ``tensor`` (``root_rank`` is
    a global rank, in ``process_set``)."""
    ps = set_id(process_set)
    root = root_in(process_set, root_rank)
    with tensor_name("broadcast", name, ps) as name:
        inner = _ferrovod.broadcast_async_(_arrays.in_place(tensor, "broadcast", name), name, root, ps, waited.now)
    return Handle(inner, lambda _: tensor)


def broadcast_async(tensor: Any, root_rank: int, name: str | None = None, process_set: ProcessSet = global_process_set) -> Handle:
    return broadcast_async_(_arrays.copy(tensor), root_rank, name, process_set)


def broadcast_(tensor: Any, root_rank: int, name: str | None = None, process_set: ProcessSet = global_process_set) -> Any:
    return wait_at_once(lambda: broadcast_async_(tensor, root_rank, name, process_set))


def broadcast(tensor: Any, root_rank: int, name: str | None = None, process_set: ProcessSet = global_process_set) -> Any:
    return wait_at_once(lambda: broadcast_async(tensor, root_rank, name, process_set))


# --- allgather, reducescatter, alltoall --------------------------------------------------------


def allgather_async(tensor: Any, name: str | None = None, process_set: ProcessSet = global_process_set) -> Handle:
    """Starts concatenating every rank's ``tensor`` along the first dimension (which may differ
    between ranks)."""
    ps = set_id(process_set)
    with tensor_name("allgather", name, ps) as name:
        inner = _ferrovod.allgather_async(_arrays.readable(tensor), name, ps, waited.now)
    return Handle(inner, lambda r: _arrays.wrap(r, tensor))


def allgather(tensor: Any, name: str | None = None, process_set: ProcessSet = global_process_set) -> Any:
    return wait_at_once(lambda: allgather_async(tensor, name, process_set))


def reducescatter_async(
    tensor: Any, op: ReduceOp | None = None, name: str | None = None, process_set: ProcessSet = global_process_set
) -> Handle:
    """Starts reducing ``tensor`` over every rank and keeping this rank's share of the first
    dimension (the first ranks get one row more when it does not divide)."""
    reduce_op = Average if op is None else op
    ps = set_id(process_set)
    with tensor_name("reducescatter", name, ps) as name:
        inner = _ferrovod.reducescatter_async(_arrays.readable(tensor), name, reduce_op, ps, waited.now)
    return Handle(inner, lambda r: _arrays.wrap(r, tensor))


def reducescatter(tensor: Any, op: ReduceOp | None = None, name: str | None = None, process_set: ProcessSet = global_process_set) -> Any:
    return wait_at_once(lambda: reducescatter_async(tensor, op, name, process_set))


def grouped_allgather_async(tensors: Sequence[Any], name: str | None = None, process_set: ProcessSet = global_process_set) -> Handle:
    """Starts ``allgather`` of each of ``tensors`` (named ``<name>.<i>``) as one group: they run
    in the same round and complete together. The handle's result is the list of outputs."""
    ps = set_id(process_set)
    with tensor_name("grouped_allgather", name, ps) as base:
        names = [f"{base}.{i}" for i in range(len(tensors))]
        inners = _ferrovod.grouped_allgather_async([_arrays.readable(t) for t in tensors], names, ps)
    return Handle(GroupHandle(base, inners), lambda results: [_arrays.wrap(r, t) for r, t in zip(results, tensors)])


def grouped_allgather(tensors: Sequence[Any], name: str | None = None, process_set: ProcessSet = global_process_set) -> list[Any]:
    return grouped_allgather_async(tensors, name, process_set).wait()


def grouped_reducescatter_async(
    tensors: Sequence[Any], op: ReduceOp | None = None, name: str | None = None, process_set: ProcessSet = global_process_set
) -> Handle:
    """Starts ``reducescatter`` of each of ``tensors`` (named ``<name>.<i>``) as one group: they
    run in the same round and complete together. The handle's result is the list of shares."""
    reduce_op = Average if op is None else op
    ps = set_id(process_set)
    with tensor_name("grouped_reducescatter", name, ps) as base:
        names = [f"{base}.{i}" for i in range(len(tensors))]
        inners = _ferrovod.grouped_reducescatter_async([_arrays.readable(t) for t in tensors], names, reduce_op, ps)
    return Handle(GroupHandle(base, inners), lambda results: [_arrays.wrap(r, t) for r, t in zip(results, tensors)])


def grouped_reducescatter(
    tensors: Sequence[Any], op: ReduceOp | None = None, name: str | None = None, process_set: ProcessSet = global_process_set
) -> list[Any]:
    return grouped_reducescatter_async(tensors, op, name, process_set).wait()


def alltoall_async(
    tensor: Any, splits: Sequence[int] | Any | None = None, name: str | None = None, process_set: ProcessSet = global_process_set
) -> Handle:
    """Starts sending ``splits[j]`` rows of ``tensor`` to rank j (an even split without
    ``splits``). The result is ``(output, received_splits)``."""
    split_list = _splits(splits)
    ps = set_id(process_set)
    with tensor_name("alltoall", name, ps) as name:
        inner = _ferrovod.alltoall_async(_arrays.readable(tensor), name, split_list, ps, waited.now)

    def finish(r: Any) -> Any:
        received = np.asarray(r[3], dtype=np.int32)
        if _arrays.is_torch(tensor):
            received = _arrays._torch().from_numpy(received)
        return _arrays.wrap(r, tensor), received

    return Handle(inner, finish)


def _splits(splits: Any) -> list[int] | None:
    """``splits`` as a list of row counts; ``ValueError`` for anything but non-negative integers
    (a float tensor of splits included, as Horovod refuses it)."""
    if splits is None:
        return None
    values = splits.tolist() if hasattr(splits, "tolist") else list(splits)
    if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(f"alltoall: splits must be non-negative integers (one per rank), not {values!r}"[:300])
    return values


def alltoall(
    tensor: Any, splits: Sequence[int] | Any | None = None, name: str | None = None, process_set: ProcessSet = global_process_set
) -> Any:
    """``(output, received_splits)``: see ``alltoall_async``."""
    return wait_at_once(lambda: alltoall_async(tensor, splits, name, process_set))


# --- barrier, join -----------------------------------------------------------------------------


def barrier(process_set: ProcessSet = global_process_set) -> None:
    """Returns once every rank (of ``process_set``) has called it: a barrier collective of the
    engine, matched across ranks by its call count like an unnamed tensor. The GIL is free
    meanwhile, and Ctrl-C interrupts the wait."""
    ps = set_id(process_set)
    with tensor_name("barrier", None, ps) as name:
        inner = _ferrovod.barrier_async(name, ps, True)  # waited for at once
    inner.wait()


def join(device: int = -1) -> int:
    """Says this rank has no more data: until every rank has joined, it contributes the identity
    to the others' reductions (zeros to sums; an average still divides by every rank, as
    Horovod's). Blocks until every rank has joined and
    returns the rank that joined last.

    ``device`` is Horovod's: where the stand-ins for the others' tensors live (-1: the CPU). Until
    ferrovod has a GPU backend its tensors are CPU tensors, so the stand-ins are too, whatever
    ``device`` says (as in a CPU-only Horovod)."""
    if isinstance(device, bool) or not isinstance(device, int):
        raise TypeError(f"join: device must be an int, not {type(device).__name__}")
    return Handle(_ferrovod.join_async(), lambda r: int(np.frombuffer(r[0], dtype=np.int64)[0])).wait()
