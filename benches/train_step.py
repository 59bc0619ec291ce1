"""One rank of the tch example's model trained from Python: with ferrovod.torch's
DistributedOptimizer, or with torch DDP over gloo. Run under `ferrovod-run -np N` (it sets the
torchrun variables DDP's env:// reads). Prints `rank R: median step X ms over S steps`, as
examples/tch_train does with --time, for benches/compare_train_step.py.

Same model, data shapes, optimizer and step as the tch example: an MLP of `--layers` tanh
layers `--hidden` wide on 16 inputs, MSE, SGD with momentum 0.9, one intra-op thread; a step is
zero_grad, forward, backward, step.
"""
import argparse
import statistics
import time

import torch

INPUTS = 16


def mlp(hidden, layers):
    mods, width = [], INPUTS
    for _ in range(layers):
        mods += [torch.nn.Linear(width, hidden), torch.nn.Tanh()]
        width = hidden
    mods.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*mods)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("ferrovod", "ddp-gloo"), required=True)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(100)
    model = mlp(args.hidden, args.layers)
    sgd = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    if args.backend == "ferrovod":
        import ferrovod.torch as hvd
        hvd.init()
        rank, size = hvd.rank(), hvd.size()
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = hvd.DistributedOptimizer(sgd, named_parameters=model.named_parameters())
        net = model
    else:
        import torch.distributed as dist
        dist.init_process_group("gloo")
        rank, size = dist.get_rank(), dist.get_world_size()
        net = torch.nn.parallel.DistributedDataParallel(model)
        opt = sgd

    torch.manual_seed(7 + rank)
    rows = args.steps * args.batch
    x = torch.randn(rows, INPUTS)
    y = torch.sin(x.sum(dim=1, keepdim=True) / 4) + 0.05 * torch.randn(rows, 1)
    times, loss = [], None
    for _ in range(args.epochs):
        for step in range(args.steps):
            started = time.perf_counter()
            opt.zero_grad()
            xb = x[step * args.batch:(step + 1) * args.batch]
            yb = y[step * args.batch:(step + 1) * args.batch]
            loss = ((net(xb) - yb) ** 2).mean()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - started)
    if not torch.isfinite(loss):
        raise SystemExit(f"rank {rank}: the loss is {loss.item()}: training diverged (lower --lr)")
    print(f"rank {rank}: median step {statistics.median(times) * 1e3:.3f} ms over {len(times)} steps",
          flush=True)
    if args.backend == "ferrovod":
        hvd.shutdown()
    else:
        # Both ranks are done before either tears gloo down: without it one rank's
        # destroy_process_group was seen to hang for good after the other had left.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    del size


if __name__ == "__main__":
    main()
