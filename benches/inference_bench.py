#!/usr/bin/env python3
"""Batch inference on Spark: ``pyspark.ml.functions.predict_batch_udf`` against
``ferrovod.inference.predict_batch_udf``, same model file, same batch size. Model threads:
Spark one per Python worker (``local[N]`` workers); ferrovod one worker of min(N, cores)
threads (``--ferrovod-threads``; more torch threads than cores thrash).

    .venv/bin/python benches/inference_bench.py [--master local[2]] [--runs 5] [--rows 200000]

Every (scenario, system) pair runs in a fresh driver process of its own, so that one system's
cached models and Python workers never count against the other. The sink is
``write.format("noop")``. Scenarios:

- ``steady-mlp``, ``steady-big``: the UDF built once, one warm-up, then ``--runs`` timed runs
  over a transport-bound MLP (64-256-256-16) and a compute-bound one (64-4096-4096-16, 67 MB);
  rows/s (median), the peak summed RSS of every Python process but the driver, and the share of
  the timed runs' wall time during which ferrovod's one worker was not in a model call (the hop
  to the worker and everything else that is not the model: the "hop share");
- ``five-jobs``, ``five-jobs-big``: five short jobs (``--rows``/10 rows each of the MLP, or
  ``--big-rows``/2 of the big model), the UDF re-created for each as a notebook does; wall time
  of all five and model loads;
- ``ragged``: ``--ragged-partitions`` (default 40) partitions of 2,500 rows with ``batch_size``
  4096; mean rows per model call. With 40 the best mean is 4,000 exactly (100,000 rows in 25
  calls), so any extra short call falls below it; more partitions show the steady state.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--big-rows", type=int, default=10_000)
    ap.add_argument("--ragged-partitions", type=int, default=40)
    ap.add_argument("--ferrovod-threads", type=int, help="the worker's torch threads (default: min(slots, cores))")
    ap.add_argument("--only", help="run these scenarios (comma-separated)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # scenario:system, in a child
    args = ap.parse_args()
    if args.one:
        scenario, system = args.one.split(":")
        print("RESULT " + json.dumps(run_one(scenario, system, args)), flush=True)
        return
    rows = []
    scenarios = args.only.split(",") if args.only else ["steady-mlp", "steady-big", "five-jobs", "five-jobs-big", "ragged"]
    for scenario in scenarios:
        pair = {}
        for system in ("spark", "ferrovod"):
            child = subprocess.run(
                [sys.executable, __file__, "--one", f"{scenario}:{system}", "--master", args.master,
                 *(["--ferrovod-threads", str(args.ferrovod_threads)] if args.ferrovod_threads else []),
                 "--runs", str(args.runs), "--rows", str(args.rows), "--big-rows", str(args.big_rows),
                 "--ragged-partitions", str(args.ragged_partitions)],
                capture_output=True, text=True, timeout=3600,
                env={**os.environ, "PYTHONPATH": HERE, "PYSPARK_PYTHON": sys.executable},
            )
            line = [ln for ln in child.stdout.splitlines() if ln.startswith("RESULT ")]
            if child.returncode or not line:
                sys.exit(f"{scenario} on {system} failed ({child.returncode}):\n{child.stderr[-4000:]}")
            pair[system] = json.loads(line[0][7:])
            print(f"# {scenario} {system}: {pair[system]}", file=sys.stderr, flush=True)
        rows.append((scenario, pair))
    table(rows, args)


def table(rows: list, args: argparse.Namespace) -> None:
    threads = args.ferrovod_threads or min(int(args.master[len("local["):-1]), os.cpu_count() or 1)
    print(f"\n{args.master}, runs {args.runs}, steady-mlp {args.rows} rows, steady-big {args.big_rows} rows, "
          f"ragged {args.ragged_partitions} × 2,500 rows, ferrovod's worker {threads} torch threads\n")
    print("| scenario | measure | Spark predict_batch_udf | ferrovod | ferrovod / Spark |")
    print("|---|---|---:|---:|---:|")
    for scenario, pair in rows:
        s, f = pair["spark"], pair["ferrovod"]
        for key, label in (("rows_s", "rows/s (median)"), ("wall_s", "wall s (all five)"),
                           ("rss_mb", "peak RSS, Python workers, MB"), ("loads", "model loads"),
                           ("mean_batch", "mean rows per model call"),
                           ("hop_share", "share of wall not in a model call (ferrovod's one worker)")):
            if key == "hop_share" and key in f:
                print(f"| {scenario} | {label} | | {f[key]:.3f} | |")
            elif key in s:
                ratio = f[key] / s[key] if s[key] else float("nan")
                print(f"| {scenario} | {label} | {fmt(s[key])} | {fmt(f[key])} | {ratio:.2f} |")


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def run_one(scenario: str, system: str, args: argparse.Namespace) -> dict:
    from pyspark.ml.functions import predict_batch_udf as spark_udf
    from pyspark.sql import SparkSession
    from pyspark.sql.types import ArrayType, FloatType

    import inference_models
    from ferrovod.inference import predict_batch_udf as ferrovod_udf

    slots = int(args.master[len("local["):-1])
    spark = (
        SparkSession.builder.master(args.master).config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "2g").getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    tmp = tempfile.mkdtemp(prefix="ferrovod-infer-bench-")
    big = scenario in ("steady-big", "five-jobs-big")
    model = os.path.join(tmp, "model.npz")
    inference_models.write_model(model, [64, 4096, 4096, 16] if big else [64, 256, 256, 16])
    loads, sizes = os.path.join(tmp, "loads"), os.path.join(tmp, "sizes")
    threads = 1 if system == "spark" else (args.ferrovod_threads or min(slots, os.cpu_count() or 1))

    def make_udf(batch_size: int):
        make = functools.partial(inference_models.make_mlp, model, threads, loads, sizes)
        if system == "spark":
            return spark_udf(make, return_type=ArrayType(FloatType()), batch_size=batch_size, input_tensor_shapes=[[64]])
        return ferrovod_udf(make, return_type=ArrayType(FloatType()), batch_size=batch_size,
                            input_tensor_shapes=[[64]], workers_per_host=1)

    def frame(n: int, partitions: int):
        cols = ", ".join(f"cast(rand({i}) as float)" for i in range(64))
        return spark.range(n, numPartitions=partitions).selectExpr(f"array({cols}) as x")

    def score(df, udf) -> float:
        start = time.perf_counter()
        df.select(udf("x").alias("p")).write.format("noop").mode("overwrite").save()
        return time.perf_counter() - start

    out: dict = {}
    if scenario.startswith("steady"):
        n = args.big_rows if big else args.rows
        df, udf = frame(n, slots * 2), make_udf(1024)
        score(df, udf)  # warm-up: workers, imports, the model
        before = len(model_calls(sizes))
        with RssPeak() as rss:
            times = [score(df, udf) for _ in range(args.runs)]
        out = {"rows_s": n / statistics.median(times), "rss_mb": rss.peak_mb}
        if system == "ferrovod":  # one worker: its model seconds against the wall
            busy = sum(t for _, t in model_calls(sizes)[before:])
            out["hop_share"] = max(0.0, 1.0 - busy / sum(times))
    elif scenario.startswith("five-jobs"):
        n = max(args.big_rows // 2 if big else args.rows // 10, 1000)
        start = time.perf_counter()
        for _ in range(5):
            score(frame(n, slots * 2), make_udf(1024))
        out = {"wall_s": time.perf_counter() - start}
    else:
        score(frame(args.ragged_partitions * 2500, args.ragged_partitions), make_udf(4096))
    calls = [rows for rows, _ in model_calls(sizes)]
    with open(loads) as f:
        out["loads"] = len(f.read().split())
    if scenario == "ragged":
        out["mean_batch"] = statistics.mean(calls)
    spark.stop()
    shutil.rmtree(tmp)
    return out


def model_calls(sizes: str) -> list[tuple[int, float]]:
    """Every model call so far: its rows and seconds."""
    with open(sizes) as f:
        return [(int(rows), float(secs)) for rows, secs in (line.split() for line in f if line.strip())]


class RssPeak:
    """The peak, sampled every 0.2 s, of the summed RSS of every Python process of this user
    but this one (Spark's Python workers and daemon, ferrovod's inference workers)."""

    def __enter__(self) -> RssPeak:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me, uid = os.getpid(), os.getuid()
        while not self._stop.wait(0.2):
            total = 0
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if int(pid) == me or os.stat(f"/proc/{pid}").st_uid != uid:
                        continue
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().split(b"\0")
                    if not cmd or b"python" not in os.path.basename(cmd[0]):
                        continue
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1]) * 1024
                except (OSError, ValueError):
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)


if __name__ == "__main__":
    main()
