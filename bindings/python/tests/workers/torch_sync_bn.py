"""``hvd.SyncBatchNorm`` against one process's ``BatchNorm`` on the concatenated batch. Every rank
builds the whole batch from one seed, normalises its own slice with SyncBatchNorm, and computes
the single-process reference itself: outputs, input gradients, running statistics, and (summed
over the ranks) the weight and bias gradients must agree. Rank r has r+2 rows (unequal batches)."""

import torch

import ferrovod.torch as hvd

torch.set_num_threads(1)
hvd.init()
R, N = hvd.rank(), hvd.size()
C = 3


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"rank {R}: {what}: {a} vs {b}"


for shape in [(C,), (C, 5), (C, 2, 3)]:
    rows = [r + 2 for r in range(N)]
    gen = torch.Generator().manual_seed(7)
    full = torch.randn(sum(rows), *shape, generator=gen) * 3 + 1
    seen = torch.randn(sum(rows), *shape, generator=gen)  # d(loss)/d(output)
    start = sum(rows[:R])
    mine = slice(start, start + rows[R])

    sync = hvd.SyncBatchNorm(C, momentum=0.3)
    ref = torch.nn.BatchNorm1d(C, momentum=0.3) if len(shape) < 3 else torch.nn.BatchNorm2d(C, momentum=0.3)
    with torch.no_grad():
        for m in (sync, ref):
            m.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    x = full[mine].clone().requires_grad_(True)
    y = sync(x)
    (y * seen[mine]).sum().backward()

    xr = full.clone().requires_grad_(True)
    yr = ref(xr)
    (yr * seen).sum().backward()

    tag = f"shape {shape}"
    close(y, yr[mine], f"{tag}: output")
    close(x.grad, xr.grad[mine], f"{tag}: input gradient")
    close(sync.running_mean, ref.running_mean, f"{tag}: running mean")
    close(sync.running_var, ref.running_var, f"{tag}: running var")
    close(hvd.allreduce(sync.weight.grad, op=hvd.Sum, name=f"w{len(shape)}"), ref.weight.grad, f"{tag}: weight grad summed")
    close(hvd.allreduce(sync.bias.grad, op=hvd.Sum, name=f"b{len(shape)}"), ref.bias.grad, f"{tag}: bias grad summed")

    # Evaluation: the running statistics, no communication.
    sync.eval()
    ref.eval()
    close(sync(full[mine]), ref(full)[mine], f"{tag}: eval output")
    print(f"ok {tag}", flush=True)

try:
    hvd.SyncBatchNorm(C)(torch.ones(4))
    raise AssertionError("a 1-d input was not refused")
except ValueError as e:
    assert "at least 2 dimensions" in str(e), e
print("ok all", flush=True)
hvd.shutdown()
