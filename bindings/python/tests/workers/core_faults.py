"""A failing job seen from Python: the exception's class and attributes say what happened,
whichever rank saw it first. The scenario is argv[1].

- ``kill``: run without a launcher (``FERROVOD_HOST_STORE=1``, the test starts each rank);
  rank 2 of 3 SIGKILLs itself before the second allreduce, and the others must raise
  ``CollectiveError`` blaming rank 2.
- ``timeout``: under the launcher, with ``FERROVOD_TIMEOUT`` short; rank 1's whole process
  stops (SIGSTOP, resumed by a helper after three timeouts), and rank 0 must raise
  ``CollectiveTimeoutError`` blaming rank 1. (A rank whose Python thread is merely busy is not
  silent: its engine thread still answers, and its tensors stall instead, see
  ``FERROVOD_STALL_TIMEOUT``.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

import ferrovod as fv
from ferrovod.exceptions import CollectiveError, CollectiveTimeoutError, FerrovodError


def report(e: FerrovodError) -> None:
    print(f"rank {fv.rank()}: {type(e).__name__} rank={e.rank} blamed={e.blamed_ranks} op={e.op} seq={e.seq}: {e}", flush=True)


def kill() -> None:
    x = np.ones(1 << 16, np.float32)
    fv.allreduce_(x, op=fv.Sum, name="first")
    if fv.rank() == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        fv.allreduce_(x, op=fv.Sum, name="second")
        sys.exit(f"rank {fv.rank()}: no error after rank 2 died")
    except CollectiveError as e:
        report(e)
    # Later calls fail with the same cause, not with "not initialized".
    try:
        fv.allreduce(np.ones(2, np.float32), name="third")
        sys.exit(f"rank {fv.rank()}: no error on a later call")
    except CollectiveError as e:
        print(f"rank {fv.rank()}: later: {type(e).__name__} blamed={e.blamed_ranks}", flush=True)


def timeout() -> None:
    if fv.rank() == 1:
        wait = float(os.environ["FERROVOD_TIMEOUT"]) * 3
        subprocess.Popen(["sh", "-c", f"sleep {wait}; kill -CONT {os.getpid()}"])
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        # Submit only once rank 1 is stopped: a round that found its engine thread still
        # running would leave the tensor waiting (a stall), not a silent peer.
        time.sleep(1.0)
    try:
        fv.allreduce(np.ones(4, np.float32), name="late")
        sys.exit(f"rank {fv.rank()}: no error")
    except CollectiveError as e:
        report(e)


if __name__ == "__main__":
    fv.init()
    {"kill": kill, "timeout": timeout}[sys.argv[1]]()
    fv.shutdown()
