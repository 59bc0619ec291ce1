"""Distributed training from a PySpark driver, as in a notebook: ``HorovodRunner`` on a local
Spark (master ``local[2]`` unless ``--master`` says otherwise), then scoring a DataFrame with the
trained weights through ``ferrovod.inference.predict_batch_udf``; then the same with a
``ferrovod.spark.Pool``, whose processes train and then serve the model they hold in memory.

    python examples/python/spark_train.py [--master local[2]] [--np 2]

The training function is defined here, in ``__main__``, and imports what it needs inside its
body, so it travels to the executors as its source (nothing is pickled). It is a Horovod
script's loop with ``import ferrovod.torch as hvd``. Every rank's output streams to this driver
with its ``[rank]`` prefix; the loss goes through ``log_to_driver``; rank 0's return value comes
back here. The weights then travel to the inference worker as the JSON arguments of
``make_predict_fn`` (a ``functools.partial``): no checkpoint file, nothing pickled; the worker
loads the model once and sees batches of exactly ``batch_size`` rows. With the pool, nothing
travels at all: training leaves the model in ``ferrovod.worker_state`` and the pool's ranks
score with it.
"""

import argparse
import os
import sys


def train(epochs=3, lr=0.05, keep=False):
    import torch

    import ferrovod
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
    if keep:  # in a pool, this process serves the model next
        ferrovod.worker_state["model"] = model
    return weights


def make_predict_fn(weights):
    """The model the training returned, as a numpy function of a batch of 3-feature rows."""
    import numpy as np

    w, b = np.array(weights[:3]), weights[3]
    return lambda x: x @ w + b


def make_predict_fn_from_state():
    """The model a pool's training left in this process."""
    import torch

    import ferrovod

    model = ferrovod.worker_state["model"]
    return lambda x: model(torch.from_numpy(x).float()).detach().numpy()[:, 0].astype("float64")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--np", type=int, default=2)
    cli = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this Python
    from pyspark.sql import SparkSession

    import functools

    from ferrovod.inference import predict_batch_udf
    from ferrovod.spark import HorovodRunner, Pool

    spark = SparkSession.builder.master(cli.master).appName("ferrovod-example").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        weights = HorovodRunner(np=cli.np).run(train, epochs=3)
        print(f"rank 0 returned {weights} (the truth is [2.0, -1.0, 0.5, 0.3])")
        score = predict_batch_udf(
            functools.partial(make_predict_fn, weights), return_type="double", batch_size=256,
            input_tensor_shapes=[[3]],
        )
        df = spark.range(1000, numPartitions=4).selectExpr("array(cast(id % 3 as double), 1.0, 0.0) as x")
        rows = df.withColumn("y", score("x")).orderBy("y").collect()
        print(f"scored {len(rows)} rows; x = {list(rows[0].x)} -> y = {rows[0].y:.3f} (expect about -0.7)")

        with Pool(cli.np) as pool:  # processes on the executors, outliving the stage that started them
            weights = pool.run(train, epochs=3, keep=True)
            print(f"the pool trained {weights}; its ranks keep the model in ferrovod.worker_state")
            score = predict_batch_udf(
                make_predict_fn_from_state, return_type="double", batch_size=256, input_tensor_shapes=[[3]], pool=pool
            )
            rows = df.withColumn("y", score("x")).orderBy("y").collect()
            print(f"the pool scored {len(rows)} rows with that model; x = {list(rows[0].x)} -> y = {rows[0].y:.3f}")
    finally:
        spark.stop()
