"""Trains a small torch model on two pool processes, then scores data with the model training
left in memory: no checkpoint is written in between.

    python examples/python/pool_example.py

``ferrovod.Pool`` keeps its processes, their communicator and ``ferrovod.worker_state`` between
calls. The functions import what they need inside their bodies, so they travel as their source.
"""

import ferrovod


def train(epochs, seed):
    """Fits y = 3x - 1 with data split across the ranks; gradients are averaged by ferrovod.
    Leaves the model in worker_state and returns rank 0's final loss."""
    import torch

    import ferrovod as fv
    import ferrovod.torch as hvd

    torch.manual_seed(seed + fv.rank())
    x = torch.rand(256, 1)
    y = 3 * x - 1
    model = torch.nn.Linear(1, 1)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), named_parameters=model.named_parameters())
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    fv.worker_state["model"] = model
    return loss.item()


def predict(xs):
    """Scores this rank's share of ``xs`` with the model the last training left here, and
    gathers every share on every rank."""
    import torch

    import ferrovod as fv

    model = fv.worker_state["model"]
    mine = xs[fv.rank() :: fv.size()]
    with torch.no_grad():
        out = model(torch.tensor(mine).unsqueeze(1)).squeeze(1).tolist()
    return [round(v, 3) for part in fv.allgather_object(out) for v in part]


if __name__ == "__main__":
    with ferrovod.Pool(2) as pool:
        print("final loss:", pool.run(train, epochs=200, seed=0))
        print("scores of [0, 0.5, 1, 0.25], rank 0's share then rank 1's (expect 3x - 1):", pool.run(predict, [0.0, 0.5, 1.0, 0.25]))
