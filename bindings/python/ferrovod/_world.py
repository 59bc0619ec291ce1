"""Joining and leaving the job, and where this process stands in it: ``init``, ``shutdown``,
``rank``, ``size``, the local and cross ranks, and Horovod's ``*_built`` queries."""

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


def mpi_built() -> bool:
    return False


def gloo_built() -> bool:
    return False


def nccl_built() -> bool:
    return False


def mpi_threads_supported() -> bool:
    return False
