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
        └── RankFailedError         a rank of a job started by ferrovod.run or ferrovod.spark
                                    failed; the message carries its rank and traceback

``CollectiveTimeoutError`` is not Python's builtin ``TimeoutError``: ``except TimeoutError`` does
not catch it; catch it by this name, or as a ``CollectiveError``.
"""

from __future__ import annotations

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
    StalledError,
)

try:
    from ._ferrovod import CollectiveTimeoutError
except ImportError:
    from ._ferrovod import TimeoutError as CollectiveTimeoutError  # TODO(merge): remove once error.rs names it CollectiveTimeoutError

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
    "RankFailedError",
    "StalledError",
]
