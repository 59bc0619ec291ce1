"""ferrovod: Horovod-style collectives implemented in Rust.

Usage, in every process of a job started by ``ferrovod-run -np N -- python train.py``::

    import numpy as np
    import ferrovod as fv

    fv.init()
    x = np.ones(1024, dtype=np.float32) * fv.rank()
    fv.allreduce_(x, op=fv.Sum)          # in place, no copy in or out
    h = fv.allreduce_async_(x, name="x")  # starts it; the GIL is free meanwhile
    fv.synchronize(h)

Arrays are numpy arrays, torch CPU tensors, or anything with the buffer protocol, C-contiguous,
of dtype uint8, int8, int32, int64, float16, bfloat16 (torch), float32 or float64. Tensors are
matched across ranks by name; unnamed ones get ``<op>.noname.<n>`` in call order, so ranks must
then call in the same order. Until a handle is synchronized, the array belongs to ferrovod:
reading or writing it meanwhile races with the collective.

``ferrovod.torch`` is the ``horovod.torch`` surface; ``ferrovod.run`` runs a function on N local
processes.
"""

from __future__ import annotations

import atexit
import itertools
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _arrays, _ferrovod
from ._ferrovod import (
    BootstrapError,
    CollectiveError,
    ConfigError,
    FerrovodError,
    InvalidArgumentError,
    LaunchError,
    MismatchError,
    NotInitializedError,
    RankFailedError,
    ReduceOp,
    StalledError,
    TimeoutError,
)
from ._run import run

__version__: str = _ferrovod.__version__

Average = ReduceOp.Average
Sum = ReduceOp.Sum
Min = ReduceOp.Min
Max = ReduceOp.Max
Product = ReduceOp.Product

__all__ = [
    "Average",
    "BootstrapError",
    "CollectiveError",
    "ConfigError",
    "FerrovodError",
    "Handle",
    "InvalidArgumentError",
    "LaunchError",
    "Max",
    "Min",
    "MismatchError",
    "NotInitializedError",
    "Product",
    "RankFailedError",
    "ReduceOp",
    "StalledError",
    "Sum",
    "TimeoutError",
    "allgather",
    "allgather_async",
    "allgather_object",
    "allreduce",
    "allreduce_",
    "allreduce_async",
    "allreduce_async_",
    "alltoall",
    "alltoall_async",
    "barrier",
    "broadcast",
    "broadcast_",
    "broadcast_async",
    "broadcast_async_",
    "broadcast_object",
    "cross_rank",
    "cross_size",
    "grouped_allreduce",
    "grouped_allreduce_",
    "grouped_allreduce_async",
    "grouped_allreduce_async_",
    "init",
    "is_initialized",
    "join",
    "local_rank",
    "local_size",
    "poll",
    "rank",
    "reducescatter",
    "reducescatter_async",
    "run",
    "shutdown",
    "size",
    "synchronize",
]


# --- lifecycle and the world -------------------------------------------------------------------

_atexit_registered = False


def init() -> None:
    """Joins the job the launcher described in the environment (rank 0 of 1 without one) and
    starts the engine. Idempotent."""
    global _atexit_registered
    _ferrovod.init()
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True


def shutdown() -> None:
    """Stops the engine on every rank; pending requests fail. ``init`` may be called again."""
    _ferrovod.shutdown()


def is_initialized() -> bool:
    return _ferrovod.is_initialized()


def rank() -> int:
    return _ferrovod.world()[0]


def size() -> int:
    return _ferrovod.world()[1]


def local_rank() -> int:
    return _ferrovod.world()[2]


def local_size() -> int:
    return _ferrovod.world()[3]


def cross_rank() -> int:
    return _ferrovod.world()[4]


def cross_size() -> int:
    return _ferrovod.world()[5]


def mpi_built() -> bool:
    return False


def gloo_built() -> bool:
    return False


def nccl_built() -> bool:
    return False


def mpi_threads_supported() -> bool:
    return False


# --- handles -----------------------------------------------------------------------------------


class Handle:
    """A collective in flight. ``poll(handle)`` says whether it is done; ``synchronize(handle)``
    waits (without the GIL, Ctrl-C interrupts) and returns its result."""

    __slots__ = ("_finish", "_inner")

    def __init__(self, inner: _ferrovod.Handle, finish: Callable[[Any], Any]) -> None:
        self._inner = inner
        self._finish = finish

    @property
    def name(self) -> str:
        return self._inner.name

    def poll(self) -> bool:
        return self._inner.poll()

    def wait(self) -> Any:
        return self._finish(self._inner.wait())

    def __repr__(self) -> str:
        return f"Handle(name={self.name!r}, done={self.poll()})"


def poll(handle: Handle) -> bool:
    """Whether ``handle``'s collective is done (``synchronize`` will not block)."""
    return handle.poll()


def synchronize(handle: Handle) -> Any:
    """Waits for ``handle`` and returns its result (the output tensor)."""
    return handle.wait()


_counters: dict[str, itertools.count[int]] = {}
_counters_lock = threading.Lock()


def _name(kind: str, name: str | None) -> str:
    if name is not None:
        return name
    with _counters_lock:
        n = next(_counters.setdefault(kind, itertools.count()))
    return f"{kind}.noname.{n}"


def _op(op: ReduceOp | None, average: bool | None) -> ReduceOp:
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
) -> Handle:
    """Starts reducing ``tensor`` over every rank, in place. ``op`` defaults to ``Average``."""
    reduce_op = _op(op, average)
    _arrays.scale(tensor, prescale_factor)
    inner = _ferrovod.allreduce_async_(_arrays.lendable(tensor), _name("allreduce", name), reduce_op)

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
) -> Handle:
    """Like ``allreduce_async_``, into a copy; ``tensor`` is left alone."""
    return allreduce_async_(_arrays.copy(tensor), average, name, op, prescale_factor, postscale_factor)


def allreduce_(
    tensor: Any,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> Any:
    """Reduces ``tensor`` over every rank, in place, and returns it."""
    return allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor).wait()


def allreduce(
    tensor: Any,
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> Any:
    """The reduction of ``tensor`` over every rank, as a new array of the same kind."""
    return allreduce_async(tensor, average, name, op, prescale_factor, postscale_factor).wait()


def grouped_allreduce_async_(
    tensors: Sequence[Any],
    average: bool | None = None,
    name: str | None = None,
    op: ReduceOp | None = None,
) -> Handle:
    """Starts reducing ``tensors`` in place, as one group: they run in the same round and
    complete together. The handle's result is the list of tensors."""
    base = _name("grouped_allreduce", name)
    names = [f"{base}.{i}" for i in range(len(tensors))]
    lent = [_arrays.lendable(t) for t in tensors]
    inners = _ferrovod.grouped_allreduce_async_(lent, names, _op(op, average))
    result = list(tensors)

    def finish(_: Any) -> Any:
        for h in inners:
            h.wait()
        return result

    return Handle(_GroupHandle(base, inners), finish)


class _GroupHandle:
    """Several handles behind one ``Handle``."""

    __slots__ = ("_inners", "name")

    def __init__(self, name: str, inners: list[_ferrovod.Handle]) -> None:
        self.name = name
        self._inners = inners

    def poll(self) -> bool:
        return all(h.poll() for h in self._inners)

    def wait(self) -> None:
        for h in self._inners:
            h.wait()


def grouped_allreduce_async(
    tensors: Sequence[Any], average: bool | None = None, name: str | None = None, op: ReduceOp | None = None
) -> Handle:
    """Like ``grouped_allreduce_async_``, into copies."""
    return grouped_allreduce_async_([_arrays.copy(t) for t in tensors], average, name, op)


def grouped_allreduce_(
    tensors: Sequence[Any], average: bool | None = None, name: str | None = None, op: ReduceOp | None = None
) -> list[Any]:
    return grouped_allreduce_async_(tensors, average, name, op).wait()


def grouped_allreduce(
    tensors: Sequence[Any], average: bool | None = None, name: str | None = None, op: ReduceOp | None = None
) -> list[Any]:
    return grouped_allreduce_async(tensors, average, name, op).wait()


# --- broadcast ---------------------------------------------------------------------------------


def broadcast_async_(tensor: Any, root_rank: int, name: str | None = None) -> Handle:
    """Starts copying ``root_rank``'s ``tensor`` into every rank's ``tensor``."""
    inner = _ferrovod.broadcast_async_(_arrays.lendable(tensor), _name("broadcast", name), root_rank)
    return Handle(inner, lambda _: tensor)


def broadcast_async(tensor: Any, root_rank: int, name: str | None = None) -> Handle:
    return broadcast_async_(_arrays.copy(tensor), root_rank, name)


def broadcast_(tensor: Any, root_rank: int, name: str | None = None) -> Any:
    return broadcast_async_(tensor, root_rank, name).wait()


def broadcast(tensor: Any, root_rank: int, name: str | None = None) -> Any:
    return broadcast_async(tensor, root_rank, name).wait()


# --- allgather, reducescatter, alltoall --------------------------------------------------------


def allgather_async(tensor: Any, name: str | None = None) -> Handle:
    """Starts concatenating every rank's ``tensor`` along the first dimension (which may differ
    between ranks)."""
    inner = _ferrovod.allgather_async(_arrays.lendable(tensor), _name("allgather", name))
    return Handle(inner, lambda r: _arrays.wrap(r, tensor))


def allgather(tensor: Any, name: str | None = None) -> Any:
    return allgather_async(tensor, name).wait()


def reducescatter_async(tensor: Any, op: ReduceOp | None = None, name: str | None = None) -> Handle:
    """Starts reducing ``tensor`` over every rank and keeping this rank's share of the first
    dimension (the first ranks get one row more when it does not divide)."""
    reduce_op = Average if op is None else op
    inner = _ferrovod.reducescatter_async(_arrays.lendable(tensor), _name("reducescatter", name), reduce_op)
    return Handle(inner, lambda r: _arrays.wrap(r, tensor))


def reducescatter(tensor: Any, op: ReduceOp | None = None, name: str | None = None) -> Any:
    return reducescatter_async(tensor, op, name).wait()


def alltoall_async(tensor: Any, splits: Sequence[int] | Any | None = None, name: str | None = None) -> Handle:
    """Starts sending ``splits[j]`` rows of ``tensor`` to rank j (an even split without
    ``splits``). The result is ``(output, received_splits)``."""
    split_list = None if splits is None else [int(s) for s in (splits.tolist() if hasattr(splits, "tolist") else splits)]
    inner = _ferrovod.alltoall_async(_arrays.lendable(tensor), _name("alltoall", name), split_list)

    def finish(r: Any) -> Any:
        received = np.asarray(r[3], dtype=np.int32)
        if _arrays.is_torch(tensor):
            received = _arrays._torch().from_numpy(received)
        return _arrays.wrap(r, tensor), received

    return Handle(inner, finish)


def alltoall(tensor: Any, splits: Sequence[int] | Any | None = None, name: str | None = None) -> Any:
    """``(output, received_splits)``: see ``alltoall_async``."""
    return alltoall_async(tensor, splits, name).wait()


# --- barrier, join, objects --------------------------------------------------------------------


def barrier() -> None:
    """Returns once every rank has called it."""
    allreduce_(np.zeros(1, dtype=np.uint8), name=_name("barrier", None), op=Sum)


def join() -> int:
    """Says this rank has no more data: until every rank has joined, it contributes the identity
    to the others' reductions (nothing to averages). Blocks until every rank has joined and
    returns the rank that joined last."""
    return Handle(_ferrovod.join_async(), lambda r: int(np.frombuffer(r[0], dtype=np.int64)[0])).wait()


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None) -> Any:
    """``root_rank``'s ``obj`` on every rank. It travels as JSON (nothing is pickled), so it
    must be JSON-serialisable on the root: a ``TypeError`` there names what is not."""
    name = _name("broadcast_object", name)
    payload = b""
    if rank() == root_rank:
        payload = _json_bytes(obj)
    length = np.array([len(payload)], dtype=np.int64)
    broadcast_(length, root_rank, name=f"{name}.len")
    data = np.frombuffer(payload, dtype=np.uint8).copy() if payload else np.zeros(int(length[0]), dtype=np.uint8)
    broadcast_(data, root_rank, name=f"{name}.data")
    return json.loads(data.tobytes().decode("utf-8"))


def allgather_object(obj: Any, name: str | None = None) -> list[Any]:
    """Every rank's JSON-serialisable ``obj``, in rank order."""
    name = _name("allgather_object", name)
    payload = np.frombuffer(_json_bytes(obj), dtype=np.uint8)
    lengths = allgather(np.array([len(payload)], dtype=np.int64), name=f"{name}.len")
    data = allgather(payload, name=f"{name}.data").tobytes()
    out, at = [], 0
    for n in lengths.tolist():
        out.append(json.loads(data[at : at + n].decode("utf-8")))
        at += n
    return out


def _json_bytes(obj: Any) -> bytes:
    try:
        return json.dumps(obj, allow_nan=True).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(f"ferrovod sends objects as JSON and this one is not JSON-serialisable: {e}") from None
