"""Module-level functions for ``test_pool.py``: importable, so ``ferrovod.Pool.run`` sends them
by reference, as it would a user's functions in a package."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

import ferrovod as fv


def where() -> dict:
    """This rank's pid and place in the job (the communicator is ready: no init here)."""
    return {"pid": os.getpid(), "rank": fv.rank(), "size": fv.size()}


def pids() -> list:
    """Every rank's pid, gathered through the communicator."""
    return fv.allgather_object(os.getpid())


def train(steps: int) -> float:
    """Leaves a 'model' (a weight vector averaged over the ranks each step) in worker_state."""
    w = np.full(4, float(fv.rank()), dtype=np.float64)
    for _ in range(steps):
        w = fv.allreduce(w + 1.0, op=fv.Average)
    fv.worker_state["model"] = w
    fv.worker_state["trained_by"] = os.getpid()
    return float(w.sum())


def predict(x: list) -> dict:
    """Uses the model the previous call left in this process, with no file in between."""
    w = fv.worker_state["model"]
    return {"y": float(np.dot(w, np.asarray(x, dtype=np.float64))), "same_process": fv.worker_state["trained_by"] == os.getpid()}


def raise_on(rank: int) -> str:
    """``rank`` raises before the collective; the others are left waiting in it."""
    if fv.rank() == rank:
        raise ValueError(f"boom from rank {rank}")
    fv.allreduce(np.ones(8), op=fv.Sum)
    return "unreachable"


def raise_in_the_middle() -> str:
    """Every rank runs a few collectives; rank 1 raises after the second, while the others are
    already waiting in the third."""
    for i in range(5):
        fv.allreduce(np.ones(1024), op=fv.Sum, name=f"mid.{i}")
        if i == 1 and fv.rank() == 1:
            raise RuntimeError("rank 1 gives up")
    return "unreachable"


def allreduce_sum(n: int) -> list:
    return fv.allreduce(np.arange(n, dtype=np.float64) + fv.rank(), op=fv.Sum).tolist()


def die_on(rank: int) -> int:
    """``rank`` dies without a word, as a rank killed by the OOM killer would."""
    if fv.rank() == rank:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
    return 0


def exit_on(rank: int) -> int:
    """``rank`` leaves with status 0 in the middle of the call (the launcher sees no failure);
    the others wait for it in a barrier."""
    if fv.rank() == rank:
        os._exit(0)
    fv.barrier()
    return 0


def shut_down() -> int:
    """A function that shuts the communicator down itself, as Horovod scripts often end."""
    fv.shutdown()
    return 0


def not_json() -> object:
    return 1 + 2j


def lineage() -> list:
    """Every rank's pid, its launcher's and the launcher's parent's (a Spark pool's launcher
    host), gathered: every process a pool holds on a host."""
    launcher = os.getppid()
    with open(f"/proc/{launcher}/stat") as f:
        host = int(f.read().rsplit(")", 1)[1].split()[1])
    return fv.allgather_object([os.getpid(), launcher, host])
