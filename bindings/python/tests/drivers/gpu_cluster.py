"""A driver script for ``test_spark_cluster.py``: master ``local-cluster[2,2,1024]`` (two executor
JVMs of two cores) whose workers discover fake GPUs with the script given as argv[1], and a
training function defined here, in ``__main__``, so that it travels as source.

Prints one JSON line: ``{"gpus": ..., "values": [...]}``.
"""

import json
import os
import sys
import time


def report_gpu():
    import os

    import ferrovod as fv

    fv.init()
    out = {
        "rank": fv.rank(),
        "local_rank": fv.local_rank(),
        "local_size": fv.local_size(),
        "cuda": os.environ["CUDA_VISIBLE_DEVICES"],
    }
    fv.shutdown()
    return out


def main() -> None:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    import ferrovod.spark as fs

    discovery = sys.argv[1]
    spark = (
        SparkSession.builder.master("local-cluster[2,2,1024]")
        .appName("ferrovod-gpu-cluster")
        .config("spark.ui.enabled", "false")
        .config("spark.worker.resource.gpu.amount", "2")
        .config("spark.worker.resource.gpu.discoveryScript", discovery)
        .config("spark.executor.resource.gpu.amount", "2")
        .config("spark.executor.resource.gpu.discoveryScript", discovery)
        .config("spark.task.resource.gpu.amount", "1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        start = time.monotonic()
        values = fs.run(report_gpu, num_proc=4)
        print(json.dumps({"values": values, "seconds": time.monotonic() - start}), flush=True)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
