"""Module-level training functions for ``test_spark.py``: importable, so ``ferrovod.spark`` sends
them by reference, as it would a user's function from a package."""

from __future__ import annotations

import os
import time

import numpy as np

import ferrovod as fv
from ferrovod.spark import log_to_driver


def numpy_train(steps: int = 3, lr: float = 0.5) -> dict:
    """A data-parallel least-squares fit with numpy: each rank computes the gradient on its own
    shard, the gradients are averaged with ``allreduce_``, and every rank takes the same step.
    Returns the rank, the world and the final weights (equal on every rank)."""
    fv.init()
    rng = np.random.default_rng(fv.rank())
    x = rng.normal(size=(64, 3))
    y = x @ np.array([1.0, -2.0, 0.5])
    w = np.zeros(3)
    for step in range(steps):
        grad = 2 * x.T @ (x @ w - y) / len(x)
        fv.allreduce_(grad, op=fv.Average, name="grad")
        w -= lr * grad
        print(f"step {step} loss {float(np.mean((x @ w - y) ** 2)):.4f}")
    log_to_driver(f"done after {steps} steps")
    out = {"rank": fv.rank(), "size": fv.size(), "local_size": fv.local_size(), "w": w.tolist()}
    fv.shutdown()
    return out


def torch_train(epochs: int = 2, return_state: bool = False) -> dict:
    """A Horovod script's training loop, unchanged but for the import: a linear model, the
    optimizer wrapped in ``DistributedOptimizer``, the initial state broadcast from rank 0.
    With ``return_state``, the model's ``state_dict`` comes back too (tensors: no JSON)."""
    import torch

    import ferrovod.torch as hvd

    hvd.init()
    torch.manual_seed(hvd.rank())  # different initial weights: broadcast must make them equal
    model = torch.nn.Linear(4, 1)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    gen = torch.Generator().manual_seed(100 + hvd.rank())
    for _ in range(epochs):
        x = torch.randn(32, 4, generator=gen)
        y = x.sum(dim=1, keepdim=True)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    out = {"rank": hvd.rank(), "weight": model.weight.detach().flatten().tolist(), "bias": model.bias.item()}
    if return_state:
        out["state"] = model.state_dict()
    hvd.shutdown()
    return out


def whoami(tag: str = "") -> dict:
    """The process's place and what it was given: rank, sizes, GPUs, one variable of ``env``."""
    fv.init()
    out = {
        "rank": fv.rank(),
        "size": fv.size(),
        "local_rank": fv.local_rank(),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "var": os.environ.get("SPARKFNS_VAR"),
        "tag": tag,
    }
    fv.shutdown()
    return out


def chatty() -> int:
    """Prints one line and sends one with ``log_to_driver``."""
    rank = int(os.environ["FERROVOD_RANK"])
    print(f"printed by {rank}", flush=True)
    log_to_driver(f"sent by {rank}")
    return rank


def fail_on_rank_1(wait_s: float = 120.0) -> str:
    """Rank 1 prints a line and raises; rank 0 waits in a barrier that cannot complete, until
    the launcher stops it."""
    fv.init()
    if fv.rank() == 1:
        print("rank 1 is about to fail", flush=True)
        raise ValueError("boom from rank 1")
    time.sleep(0.1)
    fv.barrier()
    time.sleep(wait_s)
    return "unreachable"


def record_pids_and_sleep(pid_dir: str, seconds: float = 300.0) -> None:
    """Writes this process's pid and its launcher's (its parent's) into ``pid_dir``, then
    sleeps: the job only ends when it is cancelled."""
    rank = os.environ["FERROVOD_RANK"]
    path = os.path.join(pid_dir, f"rank-{rank}")
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {os.getppid()}")
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
