"""Distributed training from a PySpark driver: ``HorovodRunner`` and ``run``.

``HorovodRunner(np=4).run(train, lr=0.1)`` runs ``train(lr=0.1)`` in 4 processes started inside
one Spark barrier stage, with no mpirun, no ssh and no pickle, and returns rank 0's value.
``train`` uses ``ferrovod.torch`` (or the core API) exactly as a script started by
``ferrovod-run`` would. The mechanism:

1. The driver checks what would otherwise fail late (the function and arguments must travel as
   in :func:`ferrovod.run`; enough task slots; no dynamic allocation; whole GPUs per task), then
   submits a barrier stage of one task per process (per ``spark.task.resource.gpu.amount``
   processes on GPU clusters, one per GPU).
2. Task 0 binds the rendezvous socket; every task sends its host, GPUs and (task 0) the port
   through the stage's one ``allGather``; each task then runs ``ferrovod-run`` with the plan,
   which starts, places and supervises its processes.
3. Output streams to the driver over a channel authenticated with the job's secret; rank 0's
   value (every rank's, for :func:`run`) comes back as JSON; the first failing rank's traceback
   is raised on the driver as a :class:`ferrovod.RankFailedError` (a ``FerrovodError``).
4. When the job is cancelled (a job group, ``cancelAllJobs``, Ctrl-C in the driver), Spark kills
   the tasks' Python workers, and each launcher, watching its parent, stops its processes.

Executors must run a Python with the same ferrovod installed (``PYSPARK_PYTHON``).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from . import _logs
from ._pool import Pool

__all__ = ["HorovodRunner", "Pool", "run", "log_to_driver"]

_VERBOSITIES = ("all", "log_callback_only")


class HorovodRunner:
    """Databricks' ``HorovodRunner``, on ferrovod.

    ``np > 0`` runs ``np`` processes as a Spark barrier stage; ``np < 0`` runs ``-np`` processes
    on the driver (as :func:`ferrovod.run`), for trying a function out without a cluster.
    ``driver_log_verbosity="all"`` streams every rank's output to the driver, each line
    prefixed with ``[rank]``; ``"log_callback_only"`` streams only what the function sends with
    :func:`log_to_driver`.
    """

    def __init__(self, np: int, driver_log_verbosity: str = "all") -> None:
        if isinstance(np, bool) or not isinstance(np, int):
            raise TypeError(f"HorovodRunner: np must be an int, not {type(np).__name__}")
        if np == 0:
            raise ValueError(
                "HorovodRunner: np must not be 0: np > 0 runs np processes on the cluster, "
                "np < 0 runs -np processes on the driver"
            )
        if driver_log_verbosity not in _VERBOSITIES:
            raise ValueError(
                f"HorovodRunner: driver_log_verbosity must be one of {', '.join(map(repr, _VERBOSITIES))}, "
                f"not {driver_log_verbosity!r}"
            )
        self.num_processor = np
        self.driver_log_verbosity = driver_log_verbosity

    def run(self, main: Callable[..., Any], **kwargs: Any) -> Any:
        """Runs ``main(**kwargs)`` on every process and returns rank 0's return value (JSON:
        a tuple comes back as a list)."""
        if self.num_processor < 0:
            from .._run import run as run_local

            return run_local(main, (), kwargs, np=-self.num_processor)[0]
        from ._driver import run_job

        values = run_job(
            main, (), kwargs, self.num_processor, None, self.driver_log_verbosity == "all", "HorovodRunner.run"
        )
        return values[0]


def run(
    fn: Callable[..., Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    num_proc: int | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Any]:
    """Runs ``fn(*args, **kwargs)`` on ``num_proc`` processes (default: one per task slot of
    the cluster) as a Spark barrier stage, and returns every rank's value in rank order.
    ``env`` adds environment variables to every process; their output streams to the driver.
    """
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int)):
        raise TypeError(f"ferrovod.spark.run: num_proc must be an int or None, not {type(num_proc).__name__}")
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"ferrovod.spark.run: num_proc must be at least 1, not {num_proc}")
    from ._driver import run_job

    return run_job(fn, args, kwargs, num_proc, env, True, "ferrovod.spark.run")


_client_lock = threading.Lock()
_client: _logs.LogClient | None = None
_client_failed = False


def _forget_client_in_child() -> None:
    """A forked child (a DataLoader worker) must not write into its parent's connection, nor
    wait on a lock the parent held at the fork: it opens its own."""
    global _client_lock, _client, _client_failed
    _client_lock, _client, _client_failed = threading.Lock(), None, False


os.register_at_fork(after_in_child=_forget_client_in_child)


def log_to_driver(message: Any) -> None:
    """Sends ``str(message)`` to the driver's output, prefixed with this process's ``[rank]``,
    whatever the ``driver_log_verbosity``. Outside a Spark job (``np < 0``, ``ferrovod-run``)
    it prints to standard output, which the launcher already forwards with the rank."""
    global _client, _client_failed
    address = os.environ.get("FERROVOD_SPARK_LOG")
    secret = os.environ.get("FERROVOD_SECRET")
    with _client_lock:
        if address and secret and not _client_failed:
            text = f"[{os.environ.get('FERROVOD_RANK', '?')}] {message}"
            try:
                if _client is None:
                    _client = _logs.LogClient(address, secret)
                _client.send("out", text)
                return
            except OSError as e:
                if _client is not None:
                    _client.close()
                _client, _client_failed = None, True
                print(f"ferrovod: log_to_driver cannot reach the driver at {address} ({e}); printing instead",
                      file=sys.stderr, flush=True)
    print(message, flush=True)  # the launcher's prefix tags it with the rank
