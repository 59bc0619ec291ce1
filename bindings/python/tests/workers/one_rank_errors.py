"""Errors raised on one rank only, before it submits anything or after, must not make the ranks
drift apart: after each, every rank runs ten unnamed collectives (whose automatic names must
still pair up) and checks their values. Run on 2 ranks."""

from __future__ import annotations

import sys

import numpy as np
import torch

import ferrovod as fv


def on_one_rank(who: int, what: str, call, error) -> None:
    if fv.rank() == who:
        try:
            call()
            sys.exit(f"rank {who}: {what}: no error")
        except error:
            pass
    still_paired(what, who)


def still_paired(what: str, who: int) -> None:
    r, n = fv.rank(), fv.size()
    for k in range(10):
        got = fv.allreduce(np.full(3, float(r + k), np.float32), op=fv.Sum)
        want = np.full(3, float(sum(range(n)) + n * k), np.float32)
        if not np.array_equal(got, want):
            sys.exit(f"rank {r}: after {what!r} on rank {who}: allreduce {k} is {got}, want {want}")
    # The other collectives' names too.
    got = fv.allgather(np.full((1, 2), r, np.int64))
    if got.tolist() != [[i, i] for i in range(n)]:
        sys.exit(f"rank {r}: after {what!r}: allgather {got.tolist()}")
    if fv.broadcast(np.array([r], np.int32), 1).tolist() != [1]:
        sys.exit(f"rank {r}: after {what!r}: broadcast")
    print(f"rank {r}: ok after {what}", flush=True)


def main() -> None:
    fv.init()
    read_only = np.arange(3, dtype=np.float32)
    read_only.flags.writeable = False
    cases = [
        (0, "an unsupported dtype", lambda: fv.allreduce(np.zeros(3, np.complex64)), fv.InvalidArgumentError),
        (1, "a read-only array in place", lambda: fv.allreduce_(read_only), fv.InvalidArgumentError),
        (0, "a scalar to allgather", lambda: fv.allgather(np.float32(1.0) * np.ones(())), fv.InvalidArgumentError),
        (1, "splits that do not sum", lambda: fv.alltoall(np.ones(4), splits=[1, 2]), fv.InvalidArgumentError),
        (0, "a bool average", lambda: fv.allreduce(np.ones(2, bool), op=fv.Average), fv.InvalidArgumentError),
        (1, "a name given twice in one group",
         lambda: fv._ferrovod.grouped_allreduce_async_([np.ones(1), np.ones(1)], ["same", "same"], fv.Sum),
         fv.InvalidArgumentError),
        (0, "a torch tensor of an unsupported dtype", lambda: fv.broadcast(torch.zeros(2, dtype=torch.complex64), 0),
         fv.InvalidArgumentError),
        (0, "op and average together", lambda: fv.allreduce(np.ones(2), average=True, op=fv.Sum), ValueError),
        (1, "a device to join that is not an int", lambda: fv.join("cuda"), TypeError),
    ]
    for who, what, call, error in cases:
        on_one_rank(who, what, call, error)
    after_submitting()
    fv.shutdown()


def after_submitting() -> None:
    """Errors on one rank while its own submissions are in flight."""
    r, n = fv.rank(), fv.size()
    ones = np.ones(3, np.float32)
    # A name submitted again while in flight: refused on rank 0; the first still runs. Rank 1
    # submits the name only after rank 0 has tried twice (the allreduce "go" orders them), so the
    # first cannot have finished before the second try.
    if r == 0:
        first = fv.allreduce_async(ones, name="in.flight", op=fv.Sum)
        try:
            fv.allreduce_async(ones, name="in.flight", op=fv.Sum)
            sys.exit("rank 0: a name in flight submitted twice: no error")
        except fv.InvalidArgumentError as e:
            assert "already in flight" in str(e), e
        fv.allreduce(ones, name="go", op=fv.Sum)
    else:
        fv.allreduce(ones, name="go", op=fv.Sum)
        first = fv.allreduce_async(ones, name="in.flight", op=fv.Sum)
    if fv.synchronize(first).tolist() != [float(n)] * 3:
        sys.exit(f"rank {r}: the first of the names in flight")
    still_paired("a name in flight submitted twice", 0)

    # An exception on rank 1 between submitting and synchronizing: its handle is dropped, the
    # collective still runs, and rank 0 gets the full sum.
    def step() -> np.ndarray:
        handle = fv.allreduce_async(np.full(2, 7.0, np.float32), op=fv.Sum)
        if r == 1:
            raise KeyError("a failure in the training step")
        return fv.synchronize(handle)

    try:
        got = step()
        if got.tolist() != [7.0 * n] * 2:
            sys.exit(f"rank {r}: allreduce beside a dropped handle is {got}")
    except KeyError:
        assert r == 1
    still_paired("an exception after submitting, its handle dropped", 1)


if __name__ == "__main__":
    main()
