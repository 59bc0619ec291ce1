"""Joining and leaving the job, and where this process stands in it: ``init``, ``shutdown``,
``rank``, ``size``, the local and cross ranks, and Horovod's ``*_built`` and ``*_enabled``
queries. Those answer for ferrovod as it is: its own collectives over TCP, no MPI, no Gloo, no
NCCL or other GPU library yet, so a script that picks its code path from them picks the CPU
path."""

from __future__ import annotations

import atexit
from collections.abc import Callable, Sequence
from typing import Any

from . import _ferrovod, _handles, _process_sets
from ._process_sets import ProcessSet

_atexit_registered = False

#: What functions run by a :class:`ferrovod.Pool` leave for the next one in the same process (a
#: model, a data loader): a plain per-process dict that nothing in ferrovod reads or clears.
worker_state: dict[str, Any] = {}


def init(comm: Any = None, process_sets: Sequence[ProcessSet] | None = None) -> None:
    """Joins the job the launcher described in the environment (rank 0 of 1 without one) and
    starts the engine, then adds ``process_sets`` (as Horovod's ``init``). Idempotent. ``comm``
    is Horovod's MPI communicator argument: ferrovod has no MPI, so only ``None`` is taken."""
    global _atexit_registered
    if comm is not None:
        raise ValueError("init: comm (an MPI communicator) is not supported: ferrovod does not use MPI")
    if not _ferrovod.is_initialized():
        _handles.reset_names()
        _process_sets.reset()
    _ferrovod.init()
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True
    for ps in process_sets or ():
        if ps.process_set_id is None:
            _process_sets.add_process_set(ps)


def shutdown() -> None:
    """Stops the engine on every rank; pending requests fail. ``init`` may be called again."""
    _ferrovod.shutdown()
    _process_sets.reset()


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


def is_homogeneous() -> bool:
    """Whether every host runs the same number of ranks."""
    return _ferrovod.world()[6]


def _false(name: str, why: str) -> Callable[[], bool]:
    """A Horovod build query that answers False, saying why in its docstring."""

    def query() -> bool:
        return False

    query.__name__ = query.__qualname__ = name
    query.__doc__ = f"False: {why}."
    return query


_NO_MPI = "ferrovod does not use MPI"
_NO_GLOO = "ferrovod's collectives are its own, not Gloo's"

mpi_built = _false("mpi_built", _NO_MPI)
mpi_enabled = _false("mpi_enabled", _NO_MPI)
mpi_threads_supported = _false("mpi_threads_supported", _NO_MPI + " (its collectives may be called from any thread)")
gloo_built = _false("gloo_built", _NO_GLOO)
gloo_enabled = _false("gloo_enabled", _NO_GLOO)
rocm_built = _false("rocm_built", "ferrovod does not support ROCm")


def cuda_built() -> bool:
    """True: ferrovod takes CUDA tensors, loading CUDA's driver at run time."""
    return True


def nccl_built() -> bool:
    """True: ferrovod runs GPU collectives on NCCL, loaded at run time (torch's copy), where
    every rank holds a GPU of its own; through host memory otherwise."""
    return True
ddl_built = _false("ddl_built", "ferrovod does not use IBM DDL")
ccl_built = _false("ccl_built", "ferrovod does not use oneCCL")
