"""The exceptions ferrovod raises, defined here (the extension module raises these very classes);
``ferrovod`` re-exports them. Every one of them is a ``FerrovodError``, and also the builtin
class that Horovod raises in the same situation, so that code catching Horovod's errors catches
ferrovod's: ``RuntimeError`` for a failed or mismatched collective (Horovod's
``HorovodInternalError`` is a ``RuntimeError``; ``ferrovod.torch.HorovodInternalError`` is
``CollectiveError``), ``ValueError`` for a bad argument or a call before ``init()``::

    Exception
    └── FerrovodError               base class of every error ferrovod raises
        ├── ConfigError             (ValueError) a FERROVOD_* variable or argument is missing or
        │                           malformed
        ├── InvalidArgumentError    (ValueError) an argument cannot work: unsupported dtype,
        │                           non-contiguous or read-only array, bad root or splits
        ├── BootstrapError          (RuntimeError) joining the job failed: store,
        │                           authentication, rendezvous
        ├── CollectiveError         (RuntimeError) a collective failed: a peer died or closed its
        │   │                       connection, or another rank reported a failure
        │   └── CollectiveTimeoutError  a peer sent nothing within FERROVOD_TIMEOUT
        ├── MismatchError           (RuntimeError) ranks called a collective with different
        │                           arguments (dtype, shape, op, root, kind, memory)
        ├── StalledError            (RuntimeError) tensors waited for other ranks past
        │                           FERROVOD_STALL_TIMEOUT
        ├── UnsupportedError        (RuntimeError) an allgather, broadcast, alltoall or
        │                           reducescatter while a rank has joined, as in Horovod
        ├── NotInitializedError     (ValueError) init() was not called, or shutdown() was, or the
        │                           engine stopped
        ├── LaunchError             (RuntimeError) ferrovod-run could not start or supervise the job
        ├── RankFailedError         (RuntimeError) a rank of a job started by ferrovod.run,
        │                           ferrovod.Pool or ferrovod.spark failed; the message carries
        │                           its rank and traceback
        └── PoolClosedError         (RuntimeError) a ferrovod.Pool takes no more calls: closed,
                                    interrupted, or one of its ranks died

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


class FerrovodError(Exception):
    """Base class of every error ferrovod raises."""

    #: The rank raising it (None where no rank applies).
    rank: int | None = None
    #: The dead, silent or disagreeing peers.
    blamed_ranks: tuple[int, ...] | list[int] = ()
    #: What was running: a collective's name, or ``negotiation``, ``waiting``, ``join``.
    op: str | None = None
    #: The call's sequence number on the wire, once it had one.
    seq: int | None = None


class ConfigError(FerrovodError, ValueError):
    """A FERROVOD_* variable or argument is missing or malformed."""


class InvalidArgumentError(FerrovodError, ValueError):
    """An argument cannot work: unsupported dtype, non-contiguous or read-only array, bad root or
    splits."""


class BootstrapError(FerrovodError, RuntimeError):
    """Joining the job failed: store, authentication, rendezvous."""


class CollectiveError(FerrovodError, RuntimeError):
    """A collective failed: a peer died or closed its connection, or another rank reported a
    failure."""


class CollectiveTimeoutError(CollectiveError):
    """A peer sent nothing within FERROVOD_TIMEOUT (named so as not to shadow the builtin
    TimeoutError)."""


class MismatchError(FerrovodError, RuntimeError):
    """Ranks called a collective with different arguments (dtype, shape, op, root, kind, memory)."""


class StalledError(FerrovodError, RuntimeError):
    """Tensors waited for other ranks past FERROVOD_STALL_TIMEOUT."""


class UnsupportedError(FerrovodError, RuntimeError):
    """Every rank submitted a collective that cannot run now: an allgather, broadcast, alltoall
    or reducescatter while a rank has joined (Horovod's error in the same case). The ranks go on
    with their next collectives."""


class NotInitializedError(FerrovodError, ValueError):
    """ferrovod is not initialized (call init()), or was shut down, or its engine stopped."""


class LaunchError(FerrovodError, RuntimeError):
    """ferrovod-run could not start or supervise the job."""


class RankFailedError(FerrovodError, RuntimeError):
    """A rank of a job started by ferrovod.run, ferrovod.Pool or ferrovod.spark failed; carries
    its rank and traceback."""


class PoolClosedError(FerrovodError, RuntimeError):
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
    "UnsupportedError",
]
