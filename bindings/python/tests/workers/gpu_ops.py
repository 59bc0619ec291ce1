"""ferrovod on CUDA tensors (run by tests/test_gpu.py on a machine with a GPU; rank r uses GPU
r mod the GPU count, so several ranks share one GPU on a one-GPU machine, the staged path).
The scenario is argv[1]; each check prints ``ok <name>`` or raises.

- ``collectives``: every collective, dtype and op on CUDA tensors, element by element against
  the result computed on the CPU, results on the tensor's device.
- ``train``: ``DistributedOptimizer`` on a CUDA model, each rank on its shard of the global
  batch; every rank must end with the same parameters, and rank 0's must match one process
  training on the global batches.
- ``kill``: without a launcher (the test starts each rank); rank 2 of 3 SIGKILLs itself between
  two 64 MiB allreduces, and the others must raise ``CollectiveError`` blaming rank 2.
- ``nccl``: ``FERROVOD_GPU_BACKEND=nccl`` with two ranks on one GPU, which NCCL refuses: a
  clear error on every rank, fast.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time

import torch
from torch import nn

import ferrovod as fv
import ferrovod.torch as hvd
from ferrovod.exceptions import CollectiveError, FerrovodError

hvd.init()
R, N = hvd.rank(), hvd.size()
if os.environ.get("GPU_OPS_ON_CPU") == "1":
    DEV = torch.device("cpu")  # the checks themselves, tried on a machine without a GPU
else:
    DEV = torch.device("cuda", R % torch.cuda.device_count())
    torch.cuda.set_device(DEV)

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INTS = [torch.int32, torch.int64, torch.int8, torch.uint8]


def ok(check: str) -> None:
    print(f"ok {check}", flush=True)


def same(what: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.device == DEV, f"{what}: the result is on {got.device}, not {DEV}"
    assert got.dtype == expected.dtype and got.shape == expected.shape, f"{what}: {got.dtype}{tuple(got.shape)}"
    bad = (got.cpu() != expected).nonzero()
    assert bad.numel() == 0, f"{what}: element {bad[0].tolist()} is {got.cpu()[tuple(bad[0])]}, expected {expected[tuple(bad[0])]}"


def values(rank: int, count: int, dtype: torch.dtype, small: bool = False) -> torch.Tensor:
    """Integers, exact in every dtype, that differ by rank; `small`: 1 to 3, so that a product
    over 4 ranks fits int8."""
    if small:
        return ((torch.arange(count) % 2) + 1 + (rank == 0)).to(dtype)
    return ((torch.arange(count) % 5) + rank + 1).to(dtype)


def collectives() -> None:
    for dtype in FLOATS + INTS:
        ops = [fv.Sum, fv.Min, fv.Max, fv.Product] + ([fv.Average] if dtype.is_floating_point else [])
        counts = [1, 7, 4099] + ([3_000_000] if dtype == torch.float32 else [])  # 12 MB: several pieces
        for op in ops:
            for count in counts:
                small = op == fv.Product
                inputs = [values(r, count, dtype, small).double() for r in range(N)]
                stacked = torch.stack(inputs)
                expected = {
                    fv.Sum: stacked.sum(0),
                    fv.Average: stacked.mean(0),
                    fv.Min: stacked.min(0).values,
                    fv.Max: stacked.max(0).values,
                    fv.Product: stacked.prod(0),
                }[op].to(dtype)
                t = values(R, count, dtype, small).to(DEV)
                fv.allreduce_(t, op=op, name=f"ar.{dtype}.{op}.{count}")
                same(f"allreduce_ {dtype} {op} {count}", t, expected)
        ok(f"allreduce {dtype}")

        root = N - 1
        t = values(R, 1000, dtype).to(DEV) if R == root else torch.zeros(1000, dtype=dtype, device=DEV)
        fv.broadcast_(t, root, name=f"bc.{dtype}")
        same(f"broadcast_ {dtype}", t, values(root, 1000, dtype))

        mine = values(R, (R + 1) * 3, dtype).reshape(R + 1, 3).to(DEV)
        gathered = fv.allgather(mine, name=f"ag.{dtype}")
        same(f"allgather {dtype}", gathered, torch.cat([values(r, (r + 1) * 3, dtype).reshape(r + 1, 3) for r in range(N)]))

        rows = 2 * N + 1
        full = [values(r, rows * 3, dtype).reshape(rows, 3).double() for r in range(N)]
        total = torch.stack(full).sum(0).to(dtype)
        base, extra = divmod(rows, N)
        start = R * base + min(R, extra)
        share = fv.reducescatter(values(R, rows * 3, dtype).reshape(rows, 3).to(DEV), op=fv.Sum, name=f"rs.{dtype}")
        same(f"reducescatter {dtype}", share, total[start : start + base + (1 if R < extra else 0)])

        splits = [j + 1 for j in range(N)]
        send = torch.cat([torch.full((j + 1, 2), R * 10 + j, dtype=dtype) for j in range(N)]).to(DEV)
        received, got_splits = fv.alltoall(send, splits=splits, name=f"a2a.{dtype}")
        same(f"alltoall {dtype}", received, torch.cat([torch.full((R + 1, 2), s * 10 + R, dtype=dtype) for s in range(N)]))
        assert got_splits.tolist() == [R + 1] * N, got_splits
        ok(f"broadcast allgather reducescatter alltoall {dtype}")

    group = [values(R, c, torch.float32).to(DEV) for c in (5, 70_000, 3)]
    fv.grouped_allreduce_(group, op=fv.Sum, name="group")
    for t, c in zip(group, (5, 70_000, 3)):
        same("grouped_allreduce_", t, sum(values(r, c, torch.float32) for r in range(N)))
    t = values(R, 4000, torch.float32).to(DEV)
    out = hvd.allreduce(t, op=hvd.Sum, compression=hvd.Compression.fp16, name="fp16")
    same("ferrovod.torch allreduce fp16", out, sum(values(r, 4000, torch.float32) for r in range(N)))
    x = values(R, 6, torch.float32).to(DEV).requires_grad_()
    y = hvd.allreduce(x, op=hvd.Sum, name="grad")
    y.sum().backward()
    same("ferrovod.torch allreduce gradient", x.grad, torch.full((6,), float(N)))
    ok("grouped, compressed and differentiable")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(self, x):
        return self.body(x)


def train() -> None:
    shard, steps = 8, 10
    torch.manual_seed(1234 + R)  # different initial weights per rank: the broadcast must fix them
    model = Net().to(DEV)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    start = copy.deepcopy(model)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    reference = copy.deepcopy(start)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    for i in range(steps):
        g = torch.Generator().manual_seed(500 + i)
        x = torch.randn(shard * N, 16, generator=g).to(DEV)
        y = x.sum(1, keepdim=True).sin().to(DEV)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[R * shard : (R + 1) * shard]), y[R * shard : (R + 1) * shard]).backward()
        opt.step()
        if R == 0:
            ref_opt.zero_grad()
            nn.functional.mse_loss(reference(x), y).backward()
            ref_opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    rows = hvd.allgather(flat.unsqueeze(0), name="final")
    assert rows.device == DEV
    for r in range(N):
        assert torch.equal(rows[r], rows[0]), f"rank {r}'s parameters differ from rank 0's"
    moved = (flat - torch.cat([p.detach().flatten() for p in start.parameters()])).abs().max().item()
    assert moved > 1e-3, f"training did not move the parameters ({moved})"
    if R == 0:
        ref = torch.cat([p.detach().flatten() for p in reference.parameters()])
        diff = (flat - ref).abs().max().item()
        assert diff < 1e-4, f"rank 0 is {diff} from one process training on the global batch"
        ok(f"train maxdiff={diff:.2e}")
    ok("train identical")


def kill() -> None:
    x = torch.ones(16 << 20, dtype=torch.float32, device=DEV)  # 64 MiB
    fv.allreduce_(x, op=fv.Sum, name="first")
    if R == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        fv.allreduce_(x, op=fv.Sum, name="second")
        sys.exit(f"rank {R}: no error after rank 2 died")
    except CollectiveError as e:
        print(f"rank {R}: {type(e).__name__} blamed={e.blamed_ranks}: {e}", flush=True)


def nccl() -> None:
    t0 = time.monotonic()
    try:
        fv.allreduce_(torch.ones(1024, device=DEV), op=fv.Sum, name="nccl")
        sys.exit(f"rank {R}: NCCL ran with two ranks on one GPU")
    except FerrovodError as e:
        print(f"rank {R}: {type(e).__name__} after {time.monotonic() - t0:.2f} s: {e}", flush=True)


{"collectives": collectives, "train": train, "kill": kill, "nccl": nccl}[sys.argv[1]]()
if sys.argv[1] in ("collectives", "train"):
    hvd.shutdown()
