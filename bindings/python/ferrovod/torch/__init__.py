"""The ``horovod.torch`` surface: ``import ferrovod.torch as hvd`` runs a Horovod PyTorch script.

Usage, in every process of ``ferrovod-run -np N -- python train.py``::

    import ferrovod.torch as hvd

    hvd.init()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * hvd.size())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    # ... loss.backward(); optimizer.step() as usual: gradients are averaged over ranks.

Everything of ``ferrovod`` is here too. The allreduces (grouped too) take ``compression=`` as well, and
``allreduce``, ``allgather``, ``broadcast``, ``reducescatter`` and ``alltoall`` are
differentiable when their input requires grad. Tensors are CPU tensors.
"""

from __future__ import annotations

import ferrovod as _core
from ferrovod import *  # noqa: F403  (the core API, re-exported as it is)
from ferrovod import (
    _arrays,
    ccl_built,
    cuda_built,
    ddl_built,
    gloo_built,
    gloo_enabled,
    is_homogeneous,
    mpi_built,
    mpi_enabled,
    mpi_threads_supported,
    nccl_built,
    rocm_built,
)

from .compression import Compression, Compressor, FP16Compressor, NoneCompressor
from .functions import broadcast_optimizer_state, broadcast_parameters
from .ops import (
    allgather,
    allreduce,
    allreduce_,
    allreduce_async,
    allreduce_async_,
    alltoall,
    broadcast,
    grouped_allreduce,
    grouped_allreduce_,
    grouped_allreduce_async,
    grouped_allreduce_async_,
    grouped_allgather,
    grouped_reducescatter,
    grouped_reducescatter_async,
    reducescatter,
    reducescatter_async,
    sparse_allreduce_async,
)
from .optimizer import DistributedOptimizer
from .sync_batch_norm import SyncBatchNorm

#: Horovod's name for a collective that failed (a RuntimeError there, and here).
HorovodInternalError = _core.CollectiveError

# Tensors torch makes over read-only memory from here on are known, and refused in place.
_arrays.watch_torch()

__all__ = [
    *_core.__all__,
    "Compression",
    "Compressor",
    "DistributedOptimizer",
    "FP16Compressor",
    "HorovodInternalError",
    "NoneCompressor",
    "SyncBatchNorm",
    "broadcast_optimizer_state",
    "broadcast_parameters",
    "sparse_allreduce_async",
    "ccl_built",
    "cuda_built",
    "ddl_built",
    "gloo_built",
    "gloo_enabled",
    "is_homogeneous",
    "mpi_built",
    "mpi_enabled",
    "mpi_threads_supported",
    "nccl_built",
    "rocm_built",
]
