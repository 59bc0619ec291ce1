"""A driver script for ``test_spark_cluster.py``: runs a job that sleeps until cancelled on
master ``local[2]``, so that the test can press Ctrl-C (SIGINT) in this driver.

    python interrupt.py PID_DIR

Exits 130 after a ``KeyboardInterrupt``, printing ``interrupted: <the error>``.
"""

import os
import sys


def main() -> int:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    import ferrovod.spark as fs
    import sparkfns

    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        fs.HorovodRunner(np=2).run(sparkfns.record_pids_and_sleep, pid_dir=sys.argv[1])
    except KeyboardInterrupt as e:
        print(f"interrupted: {e!r}", flush=True)
        return 130
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
