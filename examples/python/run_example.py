"""Runs a function on two local processes with ``ferrovod.run`` and prints what each returned.

    python examples/python/run_example.py

The function imports what it needs inside its body, so it travels to the ranks as its source,
as a notebook cell's function would; it calls ``fv.init()`` itself, like a script started by
``ferrovod-run``.
"""

import ferrovod


def mean_of_ranks(length):
    """Averages a rank-valued vector over every rank: each rank returns the same mean."""
    import numpy as np

    import ferrovod as fv

    fv.init()
    x = np.full(length, float(fv.rank()), dtype=np.float32)
    avg = fv.allreduce(x, op=fv.Average)
    print(f"rank {fv.rank()} of {fv.size()}: {avg.tolist()}")
    return {"rank": fv.rank(), "mean": avg.tolist()}


if __name__ == "__main__":
    for result in ferrovod.run(mean_of_ranks, args=(4,), np=2):
        print(result)
