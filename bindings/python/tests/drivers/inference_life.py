"""A driver script for ``test_inference.py``: scores a DataFrame on ``local[2]``, prints the
inference workers' pids (``pids P...``), then waits; SIGUSR1 makes it stop its SparkContext and
wait on, so that the test can see the workers leave while the driver and its JVM live.

    python inference_life.py
"""

import os
import signal
import sys
import time


def main() -> int:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    import inferfns
    from ferrovod.inference import predict_batch_udf

    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    stop = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(True))
    df = spark.range(1000, numPartitions=4).selectExpr("cast(id as double) as x")
    udf = predict_batch_udf(inferfns.make_pid, return_type="long", batch_size=100, workers_per_host=2)
    pids = sorted({r.p for r in df.withColumn("p", udf("x")).select("p").distinct().collect()})
    print("pids", *pids, flush=True)
    while not stop:
        time.sleep(0.05)
    spark.stop()
    time.sleep(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
