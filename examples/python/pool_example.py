"""Trains a small torch model on two pool processes, then scores data with the model training
left in memory: first with a pool call, then a Spark DataFrame through
``ferrovod.inference.predict_batch_udf(..., pool=pool)`` on a local Spark, whose tasks hand their
rows to the same two processes. No checkpoint is written in between.

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


def make_predict_fn():
    """Runs in each pool process when Spark's tasks first send it rows: the trained model, as
    a function of a numpy batch."""
    import torch

    import ferrovod as fv

    model = fv.worker_state["model"]

    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(x).float().unsqueeze(1)).squeeze(1).numpy()

    return predict


def score_on_spark(pool):
    import os
    import sys

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from ferrovod.inference import predict_batch_udf

    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        score = predict_batch_udf(make_predict_fn, return_type="float", batch_size=64, pool=pool)
        df = spark.range(1000, numPartitions=4).selectExpr("cast(id as double) / 1000 as x")
        rows = df.withColumn("y", score("x")).orderBy("x").collect()
        worst = max(abs(r.y - (3 * r.x - 1)) for r in rows)
        print(f"scored {len(rows)} rows on Spark with the pool's model; largest error against 3x - 1: {worst:.3f}")
    finally:
        spark.stop()


if __name__ == "__main__":
    with ferrovod.Pool(2) as pool:
        print("final loss:", pool.run(train, epochs=200, seed=0))
        score_on_spark(pool)
        print("scores of [0, 0.5, 1, 0.25], rank 0's share then rank 1's (expect 3x - 1):", pool.run(predict, [0.0, 0.5, 1.0, 0.25]))
