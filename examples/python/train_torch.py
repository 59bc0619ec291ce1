"""A Horovod-style PyTorch training script, run by ferrovod unchanged but for the import.

    ferrovod-run -np 2 -- python examples/python/train_torch.py

(or ``python -m ferrovod -np 2 -- python examples/python/train_torch.py``). Every rank
trains the same small classifier on its shard of a synthetic data set; gradients are averaged
over ranks by ``hvd.DistributedOptimizer``. Rank 0 prints the mean loss of each epoch, averaged
over ranks, and at the end whether every rank holds the same parameters.
"""

import torch
from torch import nn

import ferrovod.torch as hvd

EPOCHS, BATCH, SAMPLES, FEATURES, CLASSES = 5, 32, 2048, 16, 4


def dataset():
    """The same synthetic data on every rank: labels from a fixed random linear map."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, FEATURES, generator=g)
    labels = (x @ torch.randn(FEATURES, CLASSES, generator=g)).argmax(1)
    return x, labels


def main():
    hvd.init()
    torch.set_num_threads(1)
    torch.manual_seed(hvd.rank())  # ranks start apart; the broadcast below fixes that

    x, labels = dataset()
    # This rank's shard: every size()-th sample.
    x, labels = x[hvd.rank() :: hvd.size()], labels[hvd.rank() :: hvd.size()]

    model = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    # The effective batch is size() times larger, so the learning rate is too.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05 * hvd.size(), momentum=0.9)

    # Every rank starts from rank 0's parameters and optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    for epoch in range(EPOCHS):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        total, batches = torch.zeros(()), 0
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
            loss.backward()
            optimizer.step()
            total += loss.detach()
            batches += 1
        mean = hvd.allreduce(total / batches, name=f"epoch.{epoch}.loss")
        if hvd.rank() == 0:
            print(f"epoch {epoch}: loss {mean.item():.4f}", flush=True)

    flat = torch.cat([p.detach().reshape(1, -1) for p in model.parameters()], dim=1)
    every = hvd.allgather(flat, name="final.parameters")
    agree = all(torch.equal(every[0], every[r]) for r in range(hvd.size()))
    if hvd.rank() == 0:
        print(f"parameters agree across {hvd.size()} ranks: {agree}", flush=True)
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
