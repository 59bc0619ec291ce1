"""Synchronous collectives run their engine round on the calling thread: two ranks call
``allreduce_`` (numpy and torch), ``broadcast_`` and ``allgather`` in a loop while a second
thread on each rank submits asynchronous allreduces and waits for them, then a group of 600
tensors (a round whose message spills out of its frame); every result is checked element by
element, and each rank prints how many rounds its callers and its engine thread ran."""

from __future__ import annotations

import threading

import numpy as np
import torch

import ferrovod as fv
import ferrovod.torch as hvd


def background(errors: list[str]) -> None:
    try:
        for step in range(30):
            xs = [np.full(100 + i, fv.rank() + i + step, dtype=np.float64) for i in range(3)]
            hs = [fv.allreduce_async_(x, op=fv.Sum, name=f"async.{i}") for i, x in enumerate(xs)]
            for i, (x, h) in enumerate(zip(xs, hs)):
                fv.synchronize(h)
                expect = sum(r + i + step for r in range(fv.size()))
                if not np.all(x == expect):
                    errors.append(f"async.{i} step {step}: {x[:3]} != {expect}")
    except Exception as e:  # reported by the main thread
        errors.append(repr(e))


def main() -> None:
    fv.init()
    hvd.init()
    rank, size = fv.rank(), fv.size()
    errors: list[str] = []
    t = threading.Thread(target=background, args=(errors,))
    t.start()
    for i in range(300):
        x = np.arange(1024, dtype=np.float32) + rank + i
        fv.allreduce_(x, op=fv.Sum, name="sync.np")
        expect = sum(np.arange(1024, dtype=np.float32) + r + i for r in range(size))
        assert np.array_equal(x, expect), f"rank {rank} step {i}: {x[:3]} != {expect[:3]}"
        y = torch.full((17,), float(rank + i))
        hvd.allreduce_(y, op=hvd.Sum, name="sync.torch")
        assert torch.all(y == sum(r + i for r in range(size))), f"rank {rank} step {i}: {y}"
        b = np.full(5, rank * 10 + i, dtype=np.int64)
        fv.broadcast_(b, root_rank=1, name="sync.bcast")
        assert np.all(b == 10 + i), b
        g = fv.allgather(np.full((rank + 1, 2), rank, dtype=np.int32), name="sync.gather")
        assert g.shape == (sum(range(1, size + 1)), 2) and g[-1, 0] == size - 1, g
    t.join()
    assert not errors, errors
    # 600 names announced in one round: the message spills out of its frame (a second step).
    for step in range(2):
        xs = [np.full(3, rank + i + step, dtype=np.int64) for i in range(600)]
        fv.grouped_allreduce_(xs, op=fv.Sum, name="many")
        for i, x in enumerate(xs):
            assert np.all(x == sum(r + i + step for r in range(size))), (step, i, x)
    by_callers, by_thread = fv._ferrovod.engine_rounds()
    print(f"rank {rank}: ok, {by_callers} rounds by callers, {by_thread} by the engine thread", flush=True)
    fv.shutdown()


if __name__ == "__main__":
    main()
