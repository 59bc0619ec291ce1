#!/usr/bin/env python3
"""Launch time of a trivial function on a Spark barrier stage: ferrovod's ``HorovodRunner``
against Spark's own ``TorchDistributor``, in the same Spark session.

    .venv/bin/python benches/spark_launch.py [--np 2] [--master local[4]] [--repeat 2]

Each round times, on the driver, ``HorovodRunner(np).run(trivial)`` and
``TorchDistributor(num_processes=np, local_mode=False, use_gpu=False).run(trivial)``, in
alternating order, from the call to the return value. ``trivial`` returns a number and touches
nothing else, so the times are what the launches cost: stage scheduling, the barrier
synchronisation, starting the launchers and the processes, the rendezvous, and bringing the
value back. One untimed warm-up of each comes first (Python workers, JIT, imports). The table
shows every round, the best and the median of each, and ferrovod's time over TorchDistributor's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def trivial() -> int:
    return 7


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--master", default="local[4]")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.ml.torch.distributor import TorchDistributor
    from pyspark.sql import SparkSession

    import ferrovod.spark as fs

    spark = SparkSession.builder.master(args.master).config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")

    def ferrovod_launch() -> int:
        return fs.HorovodRunner(np=args.np, driver_log_verbosity="log_callback_only").run(trivial)

    def torch_launch() -> int:
        return TorchDistributor(num_processes=args.np, local_mode=False, use_gpu=False).run(trivial)

    def timed(f) -> float:
        start = time.perf_counter()
        value = f()
        elapsed = time.perf_counter() - start
        assert value == 7, value
        return elapsed

    timed(ferrovod_launch)
    timed(torch_launch)
    rounds: list[tuple[float, float]] = []
    for i in range(args.repeat):
        if i % 2 == 0:
            fv = timed(ferrovod_launch)
            td = timed(torch_launch)
        else:
            td = timed(torch_launch)
            fv = timed(ferrovod_launch)
        rounds.append((fv, td))
    spark.stop()

    print(f"\nlaunch of a trivial function, np={args.np}, master {args.master}, pyspark {spark.version}")
    print(f"{'round':>7} {'ferrovod (s)':>13} {'TorchDistributor (s)':>21} {'ratio':>7}")
    for i, (fv, td) in enumerate(rounds):
        print(f"{i + 1:>7} {fv:>13.2f} {td:>21.2f} {fv / td:>7.2f}")
    fvs, tds = [r[0] for r in rounds], [r[1] for r in rounds]
    print(f"{'best':>7} {min(fvs):>13.2f} {min(tds):>21.2f} {min(fvs) / min(tds):>7.2f}")
    print(f"{'median':>7} {statistics.median(fvs):>13.2f} {statistics.median(tds):>21.2f} "
          f"{statistics.median(fvs) / statistics.median(tds):>7.2f}")


if __name__ == "__main__":
    main()
