"""Module-level functions for ``test_run.py``: importable, so ``ferrovod.run`` sends them by
reference (``runfns:name``), as it would a user's training function in a package."""

from __future__ import annotations

import os

import numpy as np

import ferrovod as fv


def allreduce_rank() -> dict:
    """Sums ``[rank, 1]`` over the ranks: every rank should see ``[n(n-1)/2, n]``."""
    fv.init()
    total = fv.allreduce(np.array([fv.rank(), 1], dtype=np.float64), op=fv.Sum)
    return {"rank": fv.rank(), "size": fv.size(), "sum": total.tolist()}


def arrays_and_tensors() -> dict:
    """What JSON alone cannot carry: arrays of every dtype, torch tensors (bfloat16, 0-d,
    empty), a numpy scalar, tuples, int and tuple keys."""
    import torch

    r = int(os.environ["FERROVOD_RANK"])
    return {
        "rank": r,
        "numpy": {str(d): np.arange(6).reshape(2, 3).astype(d) + r for d in ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")},
        "torch": [torch.full((2,), 1.5 + r, dtype=torch.bfloat16), torch.tensor(7 + r), torch.empty(0, 3)],
        "scalar": np.float32(0.25),
        (1, "pair"): (r, None, "x"),
        3: [float("inf"), -0.0],
    }


def echo(a, b, *rest, scale=1, opts=None) -> dict:
    """Returns its arguments as the rank received them, with the rank and one environment
    variable the caller passed through ``env``."""
    return {
        "rank": int(os.environ["FERROVOD_RANK"]),
        "a": a * scale,
        "b": b,
        "rest": list(rest),
        "opts": opts,
        "env": os.environ.get("RUNFNS_VAR"),
    }


def fail_on_rank_1() -> str:
    """Rank 1 raises; the others wait in a collective that can never complete, until the
    launcher stops them."""
    fv.init()
    if fv.rank() == 1:
        raise ValueError("boom from rank 1")
    fv.barrier()
    return "unreachable"


def exit_silently_on_rank_1() -> int:
    """Rank 1 dies without reporting an error, as a rank killed by a signal would."""
    if os.environ["FERROVOD_RANK"] == "1":
        os._exit(7)
    return 0


def return_complex() -> object:
    """A value that cannot travel: neither JSON nor arrays and containers of them."""
    return {"ok": [1, 2 + 3j]}


def say_hello() -> int:
    """Prints a line that should reach the caller, prefixed with the rank."""
    print(f"hello from rank {os.environ['FERROVOD_RANK']}")
    return 0


class Holder:
    """For the bound-method refusal."""

    def method(self) -> int:
        return 1
