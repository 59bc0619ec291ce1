"""Joining and leaving the job, and where this process stands in it: ``init``, ``shutdown``,
``rank``, ``size``, the local and cross ranks, and Horovod's ``*_built`` and ``*_enabled``
queries. Those answer for ferrovod as it is: its own collectives over TCP, no MPI, no Gloo, no
NCCL or other GPU library yet, so a script that picks its code path from them picks the CPU
path."""

from __future__ import annotations

import atexit
from typing import Any

from . import _ferrovod, _handles

_atexit_registered = False

#: What functions run by a :class:`ferrovod.Pool` leave for the next one in the same process (a
#: model, a data loader): a plain per-process dict that nothing in ferrovod reads or clears.
worker_state: dict[str, Any] = {}


def init() -> None:
    """Joins the job the launcher described in the environment (rank 0 of 1 without one) and
    starts the engine. Idempotent."""
    global _atexit_registered
    if not _ferrovod.is_initialized():
        _handles.reset_names()
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


def is_homogeneous() -> bool:
    """Whether every host runs the same number of ranks."""
    return _ferrovod.world()[6]


def mpi_built() -> bool:
    """False: ferrovod does not use MPI."""
    return False


def mpi_enabled() -> bool:
    """False: ferrovod does not use MPI."""
    return False


def mpi_threads_supported() -> bool:
    """False: ferrovod does not use MPI (its collectives may be called from any thread)."""
    return False


def gloo_built() -> bool:
    """False: ferrovod's collectives are its own, not Gloo's."""
    return False


def gloo_enabled() -> bool:
    """False: ferrovod's collectives are its own, not Gloo's."""
    return False


def nccl_built() -> bool:
    """False: ferrovod has no GPU backend yet; tensors are CPU tensors."""
    return False


def cuda_built() -> bool:
    """False: ferrovod has no GPU backend yet."""
    return False


def rocm_built() -> bool:
    """False."""
    return False


def ddl_built() -> bool:
    """False."""
    return False


def ccl_built() -> bool:
    """False."""
    return False
