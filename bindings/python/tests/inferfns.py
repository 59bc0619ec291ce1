"""Models for ``test_inference.py``: each ``make_*`` is a ``make_predict_fn`` (for ferrovod's
predict_batch_udf and Spark's alike)."""

from __future__ import annotations

import os
import signal

import numpy as np


def make_scale(count_file: str | None = None):
    """x * 2 (scalar) or each row's sum (tensor); appends its pid to ``count_file`` per load."""
    if count_file:
        with open(count_file, "a") as f:
            f.write(f"{os.getpid()}\n")

    def predict(x):
        return x.sum(axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x * 2.0

    return predict


def make_scale_again(count_file: str | None = None):
    """``make_scale`` under another name: a different function loading the same model."""
    return make_scale(count_file)


def make_double_rows():
    """Each tensor row times two: an array output."""
    return lambda x: x.reshape(len(x), -1) * 2.0


def make_two_sums():
    """Two tensor inputs to a struct, from a dict of columns."""

    def predict(x1, x2):
        return {"s1": x1.sum(axis=1), "s2": x2.sum(axis=1), "x2": x2 * 2.0}

    return predict


def make_row_dicts():
    """Two tensor inputs to a struct, from a list of row dicts."""

    def predict(x1, x2):
        return [{"s1": float(x1[i].sum()), "s2": float(x2[i].sum())} for i in range(len(x1))]

    return predict


def make_batch_size():
    """Each row's output is the size of the model call it was in."""
    return lambda x: np.full(len(x), len(x), dtype=np.int64)


def make_pid():
    """Each row's output is the pid of the process that ran the model."""
    return lambda x: np.full(len(x), os.getpid(), dtype=np.int64)


def make_is_positive():
    """A boolean output."""
    return lambda x: x > 0


def make_writable_flag():
    """Whether the model's input array is writable (``torch.from_numpy`` warns when not)."""
    return lambda x: np.full(len(x), x.flags.writeable)


def make_raising():
    def predict(x):
        raise ValueError(f"bad input of {len(x)} rows")

    return predict


def make_dying_once(marker: str):
    """The first worker to predict is killed (SIGKILL) in its first call; later ones score x * 2."""

    def predict(x):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return x * 2.0
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    return predict


def make_from_state():
    """The model a pool's training left in ``ferrovod.worker_state`` (``poolfns.train``), and the
    pid of the process that trained it."""
    import ferrovod as fv

    w, pid = fv.worker_state["model"], fv.worker_state["trained_by"]
    return lambda x: {"y": x @ w, "pid": np.full(len(x), pid, dtype=np.int64)}


def make_slow(started: str):
    """x * 2, a tenth of a second per call; the first call creates ``started``."""
    import time

    def predict(x):
        open(started, "a").close()
        time.sleep(0.1)
        return x * 2.0

    return predict
