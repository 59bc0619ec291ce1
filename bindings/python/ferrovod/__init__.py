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
of dtype bool, uint8, int8, int16, int32, int64, float16, bfloat16 (torch), float32 or float64
(bool reduces as logic: sum and max are "or", min and product "and", average is refused). Tensors
are matched across ranks by name; unnamed ones get ``<op>.noname.<n>`` in call order, so ranks must
then call in the same order. Until a handle is synchronized, the array belongs to ferrovod:
reading or writing it meanwhile races with the collective.

``ferrovod.torch`` is the ``horovod.torch`` surface; ``ferrovod.run`` runs a function on N local
processes; ``ferrovod.exceptions`` holds the error classes (re-exported here).
"""

from __future__ import annotations

# This module only re-exports (as polars does); the code lives in private modules:
#   _world        init, shutdown, rank, size, local/cross rank and size, *_built
#   _collectives  allreduce, allgather, reducescatter (grouped too), broadcast, alltoall,
#                 barrier, join; the reduction ops
#   _handles      Handle, poll, synchronize; names for unnamed tensors
#   _process_sets ProcessSet, add/remove_process_set: collectives among some ranks
#   _objects      broadcast_object, allgather_object (as JSON)
#   _arrays       numpy/torch arrays in and out; dtype maps derived from _ferrovod.dtypes()
#   _run          ferrovod.run
#   _pool         ferrovod.Pool: ranks that run one function after another (_pool_worker: a rank;
#                 _control: the channel between them; _auth: the handshake of TCP channels)
#   _detach       processes that outlive their Spark task, and the executor JVM they watch
#   _ship         what travels to the ranks: the function's description, JSON checks, the spec
#   _launch       starting ferrovod-run and reading its events channel (output, failure, report)
#   _outcome      a finished job's result, or the first failing rank's error
#   exceptions    the FerrovodError hierarchy (public: ferrovod.exceptions)

from . import _arrays, _ferrovod, exceptions
from ._collectives import (
    Average,
    Max,
    Min,
    Product,
    ReduceOp,
    Sum,
    allgather,
    allgather_async,
    allreduce,
    allreduce_,
    allreduce_async,
    allreduce_async_,
    alltoall,
    alltoall_async,
    barrier,
    broadcast,
    broadcast_,
    broadcast_async,
    broadcast_async_,
    grouped_allgather,
    grouped_allgather_async,
    grouped_allreduce,
    grouped_allreduce_,
    grouped_allreduce_async,
    grouped_allreduce_async_,
    grouped_reducescatter,
    grouped_reducescatter_async,
    join,
    reducescatter,
    reducescatter_async,
)
from ._handles import Handle, poll, synchronize
from ._objects import allgather_object, broadcast_object
from ._pool import Pool
from ._process_sets import ProcessSet, add_process_set, global_process_set, remove_process_set
from ._run import run
from ._world import (
    ccl_built,
    cross_rank,
    cross_size,
    cuda_built,
    ddl_built,
    gloo_built,
    gloo_enabled,
    init,
    is_homogeneous,
    is_initialized,
    local_rank,
    local_size,
    mpi_built,
    mpi_enabled,
    mpi_threads_supported,
    nccl_built,
    rank,
    rocm_built,
    shutdown,
    size,
    worker_state,
)
from .exceptions import (
    BootstrapError,
    CollectiveError,
    CollectiveTimeoutError,
    ConfigError,
    FerrovodError,
    InvalidArgumentError,
    LaunchError,
    MismatchError,
    NotInitializedError,
    PoolClosedError,
    RankFailedError,
    StalledError,
    UnsupportedError,
)

__version__: str = _ferrovod.__version__

__all__ = [
    "Average",
    "BootstrapError",
    "CollectiveError",
    "CollectiveTimeoutError",
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
    "PoolClosedError",
    "ProcessSet",
    "RankFailedError",
    "ReduceOp",
    "StalledError",
    "UnsupportedError",
    "Sum",
    "add_process_set",
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
    "global_process_set",
    "grouped_allgather",
    "grouped_allgather_async",
    "grouped_allreduce",
    "grouped_allreduce_",
    "grouped_allreduce_async",
    "grouped_allreduce_async_",
    "grouped_reducescatter",
    "grouped_reducescatter_async",
    "init",
    "is_initialized",
    "join",
    "local_rank",
    "local_size",
    "poll",
    "rank",
    "reducescatter",
    "reducescatter_async",
    "remove_process_set",
    "Pool",
    "run",
    "worker_state",
    "shutdown",
    "size",
    "synchronize",
]

# With torch already imported, tensors it makes over read-only memory from here on are known
# (ferrovod.torch does the same when it is imported).
_arrays.watch_torch()
