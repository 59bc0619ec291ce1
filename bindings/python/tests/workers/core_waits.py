"""Waiting from Python: the GIL is free while a rank waits for a slow peer, Ctrl-C interrupts
the wait and leaves the handle usable, and a dtype that differs between ranks fails on every
rank. Two ranks; the scenario is argv[1]."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np

import ferrovod as fv


def gil() -> None:
    """Rank 1 submits a second late; rank 0's Python thread keeps counting meanwhile."""
    if fv.rank() == 1:
        time.sleep(1.0)
    count = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal count
        while not stop.is_set():
            count += 1

    t = threading.Thread(target=spin)
    t.start()
    start = time.monotonic()
    fv.allreduce_(np.ones(4, np.float32), name="late")
    waited = time.monotonic() - start
    stop.set()
    t.join()
    print(f"rank {fv.rank()}: waited {waited:.2f} s, counted {count}")
    if fv.rank() == 0 and (waited < 0.5 or count < 100_000):
        sys.exit(f"the other thread did not run while waiting: {count} in {waited:.2f} s")


def interrupt() -> None:
    """Rank 0 gets SIGINT while waiting for rank 1 (which submits 3 s late); the wait raises
    KeyboardInterrupt at once, and waiting on the same handle again then succeeds."""
    x = np.full(4, fv.rank() + 1.0, np.float32)
    if fv.rank() == 1:
        time.sleep(3.0)
        fv.allreduce_(x, op=fv.Sum, name="slow")
        print(f"rank 1: {x.tolist()}")
        return
    h = fv.allreduce_async_(x, op=fv.Sum, name="slow")
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    try:
        fv.synchronize(h)
        sys.exit("the wait was not interrupted")
    except KeyboardInterrupt:
        print(f"rank 0: interrupted after {time.monotonic() - start:.2f} s")
    fv.synchronize(h)
    print(f"rank 0: then completed: {x.tolist()}")


def mismatch() -> None:
    """Rank 1 sends float64 where rank 0 sends float32."""
    dtype = np.float32 if fv.rank() == 0 else np.float64
    try:
        fv.allreduce(np.ones(3, dtype), name="w")
        sys.exit("no error")
    except fv.MismatchError as e:
        print(f"rank {fv.rank()}: MismatchError: {e}")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fv.init()
    {"gil": gil, "interrupt": interrupt, "mismatch": mismatch}[sys.argv[1]]()
    fv.shutdown()
