"""The exceptions ferrovod raises. The classes are created by the extension module (in Rust) and
re-exported here; ``ferrovod`` re-exports them too. Every one of them is a ``FerrovodError``::

    Exception
    └── FerrovodError               base class of every error ferrovod raises
        ├── ConfigError             a FERROVOD_* variable or argument is missing or malformed
        ├── InvalidArgumentError    an argument cannot work: unsupported dtype, non-contiguous or
        │                           read-only array, bad root or splits
        ├── BootstrapError          joining the job failed: store, authentication, rendezvous
        ├── CollectiveError         a collective failed: a peer died or closed its connection,
        │   │                       or another rank reported a failure
        │   └── CollectiveTimeoutError  a peer sent nothing within FERROVOD_TIMEOUT
        ├── MismatchError           ranks called a collective with different arguments
        │                           (dtype, shape, op, root, kind)
        ├── StalledError            tensors waited for other ranks past FERROVOD_STALL_TIMEOUT
        ├── NotInitializedError     init() was not called, or shutdown() was, or the engine stopped
        ├── LaunchError             ferrovod-run could not start or supervise the job
        ├── RankFailedError         a rank of a job started by ferrovod.run, ferrovod.Pool or
        │                           ferrovod.spark failed; the message carries its rank and
        │                           traceback
        └── PoolClosedError         a ferrovod.Pool takes no more calls: closed, interrupted,
                                    or one of its ranks died (defined in Python)

``CollectiveTimeoutError`` is not Python's builtin ``TimeoutError``: ``except TimeoutError`` does
not catch it; catch it by this name, or as a ``CollectiveError``.

The class follows what happened, whichever rank saw it first: a dead peer is a ``CollectiveError``
on every rank, a silent one a ``CollectiveTimeoutError``, disagreeing ranks a ``MismatchError``.
Every ferrovod exception has four attributes, so that nothing needs to parse its message (None,
or empty, where they do not apply): ``rank`` (the rank raising it), ``blamed_ranks`` (the dead,
silent or disagreeing peers), ``op`` (what was running: ``"allreduce"``, ``"allgather"``,
``"broadcast"``, ``"reducescatter"``, ``"alltoall"``, ``"barrier"``, or the engine's own
``"negotiation"``, ``"waiting"``, ``"join"``) and ``seq`` (the call's sequence number on the
wire, once it had one).
"""

from __future__ import annotations

from ._ferrovod import (
    BootstrapError,
    CollectiveError,
    CollectiveTimeoutError,
    ConfigError,
    FerrovodError,
    InvalidArgumentError,
    LaunchError,
    MismatchError,
    NotInitializedError,
    RankFailedError,
    StalledError,
)


class PoolClosedError(FerrovodError):
    """A :class:`ferrovod.Pool` takes no more calls: it was closed or interrupted, or one of
    its ranks died (the call in flight then raised ``RankFailedError`` naming it)."""

__all__ = [
    "BootstrapError",
    "CollectiveError",
    "CollectiveTimeoutError",
    "ConfigError",
    "FerrovodError",
    "InvalidArgumentError",
    "LaunchError",
    "MismatchError",
    "NotInitializedError",
    "PoolClosedError",
    "RankFailedError",
    "StalledError",
]
