"""Process sets on 4 ranks: every collective within the even and the odd ranks at once (each
set's results are its own ranks' alone), unnamed calls in one set while the other set is idle,
then the whole job again; the torch ops and the optimizer in a set; errors for a set this rank is
not in and for a duplicate; removal. Prints ``rank R: process sets ok``."""

from __future__ import annotations

import sys

import numpy as np
import torch

import ferrovod as fv
import ferrovod.torch as hvd


def check(what: str, got, want) -> None:
    got = np.asarray(got.tolist() if hasattr(got, "tolist") else got)
    if not np.array_equal(got, np.asarray(want)):
        sys.exit(f"rank {fv.rank()}: {what}: got {got.tolist()}, want {np.asarray(want).tolist()}")


def main() -> None:
    fv.init()
    r, n = fv.rank(), fv.size()
    assert n == 4, n
    evens = fv.add_process_set([0, 2])
    odds = fv.add_process_set(fv.ProcessSet([3, 1]))
    mine, others = (evens, odds) if r % 2 == 0 else (odds, evens)
    members = mine.ranks
    assert mine.included() and not others.included() and mine.size() == 2 and mine.rank() == r // 2
    assert fv.global_process_set.size() == 4 and fv.global_process_set.rank() == r

    # Every collective within the set: only its members' values.
    check("allreduce", fv.allreduce(np.full(3, float(r)), op=fv.Sum, process_set=mine), [float(sum(members))] * 3)
    check("grouped", fv.grouped_allreduce([np.full(2, r, np.int32)], op=fv.Max, process_set=mine)[0], [max(members)] * 2)
    check("broadcast", fv.broadcast(np.full(2, r, np.int64), root_rank=members[1], process_set=mine), [members[1]] * 2)
    check("allgather", fv.allgather(np.full((1 + r // 2, 1), r, np.int16), process_set=mine),
          [[m] for m in members for _ in range(1 + m // 2)])
    check("reducescatter", fv.reducescatter(np.arange(4.0) + r, op=fv.Sum, process_set=mine),
          (2 * np.arange(4.0) + sum(members))[2 * (r // 2) : 2 * (r // 2) + 2])
    out, received = fv.alltoall(np.array([r, r], np.float32), process_set=mine)
    check("alltoall", out, [float(m) for m in members])
    fv.barrier(process_set=mine)
    check("broadcast_object", [fv.broadcast_object({"from": r}, root_rank=members[0], process_set=mine)["from"]], [members[0]])
    check("allgather_object", fv.allgather_object(r, process_set=mine), members)

    # Unnamed calls in the evens alone, the odds idle: the job's own names still pair up after.
    if r % 2 == 0:
        for k in range(3):
            check(f"evens only {k}", fv.allreduce(np.full(1, k + r), op=fv.Sum, process_set=evens), [2 * k + 2])
    check("whole job", fv.allreduce(np.full(2, float(r)), op=fv.Sum), [6.0, 6.0])

    # torch: the ops and the optimizer over the set.
    t = torch.full((2,), float(r), requires_grad=True)
    y = hvd.allreduce(t, op=hvd.Sum, process_set=mine)
    y.sum().backward()
    check("torch allreduce", y.detach(), [float(sum(members))] * 2)
    check("torch allreduce grad", t.grad, [2.0, 2.0])
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1.0),
                                   named_parameters=model.named_parameters(), process_set=mine)
    model(torch.full((1, 2), float(r))).sum().backward()
    opt.step()
    mean = sum(members) / 2
    check("optimizer in a set", model.weight.detach(), [[1.0 - mean, 1.0 - mean]])

    # Errors: a set this rank is not in; a duplicate; a set not added.
    for what, call, error in [
        ("not a member", lambda: fv.allreduce(np.ones(1), process_set=others), ValueError),
        ("duplicate", lambda: fv.add_process_set([0, 2]), ValueError),
        ("not added", lambda: fv.allreduce(np.ones(1), process_set=fv.ProcessSet([0, 1])), ValueError),
        ("root outside", lambda: fv.broadcast(np.ones(1), root_rank=others.ranks[0], process_set=mine), ValueError),
    ]:
        try:
            call()
            sys.exit(f"rank {r}: {what}: no error")
        except error:
            pass

    assert fv.remove_process_set(odds) and fv.remove_process_set(evens)
    assert not fv.remove_process_set(evens) and evens.process_set_id is None
    check("after removal", fv.allreduce(np.full(1, 1.0), op=fv.Sum), [4.0])
    print(f"rank {r}: process sets ok", flush=True)
    fv.shutdown()


if __name__ == "__main__":
    main()
