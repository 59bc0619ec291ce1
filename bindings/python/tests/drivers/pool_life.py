"""A driver script for ``test_spark_pool.py``: starts a ``ferrovod.spark.Pool(2)`` on MASTER, runs
one call, prints every process the pool holds (``pids P...``: the ranks, their launchers, the
launcher hosts) and, under local-cluster, the executor JVMs the hosts watch (``jvms P...``), then
waits. SIGUSR1 makes it stop its SparkContext and wait on, so that the test can see the pool leave
while the driver lives.

    python pool_life.py MASTER
"""

import os
import signal
import sys
import time


def main(master: str) -> int:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    import poolfns
    from ferrovod.spark import Pool

    spark = SparkSession.builder.master(master).config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    stop = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(True))
    pool = Pool(2)
    pids = sorted({p for triple in pool.run(poolfns.lineage) for p in triple})
    print("pids", *pids, flush=True)
    jvms = set()
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        if b"--jvm-pid" in args:
            jvms.add(int(args[args.index(b"--jvm-pid") + 1]))
    print("jvms", *sorted(jvms), flush=True)
    while not stop:
        time.sleep(0.05)
    spark.stop()
    time.sleep(60)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
