"""Distributed training from a PySpark driver, as in a notebook: ``HorovodRunner`` on a local
Spark (master ``local[2]`` unless ``--master`` says otherwise).

    python examples/python/spark_train.py [--master local[2]] [--np 2]

The training function is defined here, in ``__main__``, and imports what it needs inside its
body, so it travels to the executors as its source (nothing is pickled). It is a Horovod
script's loop with ``import ferrovod.torch as hvd``. Every rank's output streams to this driver
with its ``[rank]`` prefix; the loss goes through ``log_to_driver``; rank 0's return value comes
back here.
"""

import argparse
import os
import sys


def train(epochs=3, lr=0.05):
    import torch

    import ferrovod.torch as hvd
    from ferrovod.spark import log_to_driver

    hvd.init()
    torch.manual_seed(1234)
    # Each rank has its own shard of a noisy linear problem: y = x @ [2, -1, 0.5] + 0.3.
    gen = torch.Generator().manual_seed(hvd.rank())
    x = torch.randn(256, 3, generator=gen)
    y = x @ torch.tensor([2.0, -1.0, 0.5]) + 0.3 + 0.01 * torch.randn(256, generator=gen)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr * hvd.size())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    for epoch in range(epochs):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[i : i + 32]).squeeze(1), y[i : i + 32])
            loss.backward()
            opt.step()
        avg = hvd.allreduce(loss.detach(), name="loss").item()
        if hvd.rank() == 0:
            log_to_driver(f"epoch {epoch}: mean loss over ranks {avg:.5f}")
    weights = [round(w, 3) for w in model.weight.detach().flatten().tolist()] + [round(model.bias.item(), 3)]
    print(f"rank {hvd.rank()} done, weights {weights}")
    return weights


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--np", type=int, default=2)
    cli = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this Python
    from pyspark.sql import SparkSession

    from ferrovod.spark import HorovodRunner

    spark = SparkSession.builder.master(cli.master).appName("ferrovod-example").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        weights = HorovodRunner(np=cli.np).run(train, epochs=3)
        print(f"rank 0 returned {weights} (the truth is [2.0, -1.0, 0.5, 0.3])")
    finally:
        spark.stop()
