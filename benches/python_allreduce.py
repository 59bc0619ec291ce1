#!/usr/bin/env python3
"""`ferrovod.allreduce_` from Python against `ferrovod-bench` (Rust, no engine) for the same op.

    .venv/bin/python benches/python_allreduce.py [--np 2] [--sizes 4KiB,64MiB] [--repeat 2]

Both sides use the same method: per iteration a barrier, then the timed allreduce (sum, f32) on
every rank; an iteration's time is the slowest rank's; each run reports the median. The two
sides alternate `--repeat` times in one invocation, and the table shows each pair and the median
over pairs: the Python time over the Rust time, and the difference in microseconds. The Python
side goes through the engine (name matching, the response cache, fusion), the Rust side calls the
communicator directly, so the difference is what the engine and the binding cost together.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "target" / "release" / "ferrovod-bench"


def parse_size(s: str) -> int:
    for unit, mult in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if s.endswith(unit):
            return int(s[: -len(unit)]) * mult
    return int(s)


def worker(sizes: list[int], min_time: float, out: str) -> None:
    """One rank: time `allreduce_` at each size, write the rows (rank 0)."""
    import numpy as np

    import ferrovod as fv

    fv.init()
    rows = []
    for nbytes in sizes:
        x = np.ones(nbytes // 4, dtype=np.float32)
        name = f"bench.{nbytes}"
        for _ in range(3):  # warm up (and fill the response cache)
            fv.allreduce_(x, op=fv.Sum, name=name)
        t = time.perf_counter()
        fv.allreduce_(x, op=fv.Sum, name=name)
        est = max(time.perf_counter() - t, 1e-7)
        iters = int(min(max(min_time / est, 5), 100_000))
        # Every rank must run the same count: take rank 0's.
        iters = int(fv.broadcast(np.array([iters], dtype=np.int64), 0, name=f"iters.{nbytes}")[0])
        times = np.zeros(iters, dtype=np.float64)
        for i in range(iters):
            fv.barrier()
            t = time.perf_counter()
            fv.allreduce_(x, op=fv.Sum, name=name)
            times[i] = time.perf_counter() - t
        fv.allreduce_(times, op=fv.Max, name=f"times.{nbytes}")
        rows.append({"bytes": nbytes, "iters": iters, "median_s": float(np.median(times))})
    if fv.rank() == 0:
        Path(out).write_text(json.dumps(rows))
    fv.shutdown()


def run_python(np_: int, sizes: str, min_time: float, tmp: Path) -> dict[int, float]:
    out = tmp / "py.json"
    cmd = [sys.executable, "-m", "ferrovod", "-np", str(np_), "--", sys.executable, __file__,
           "--worker", "--sizes", sizes, "--min-time", str(min_time), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return {r["bytes"]: r["median_s"] for r in json.loads(out.read_text())}


def run_rust(np_: int, sizes: str, min_time: float, tmp: Path) -> dict[int, float]:
    out = tmp / "rs.json"
    cmd = [str(BENCH), "--np", str(np_), "--op", "allreduce", "--sizes", sizes,
           "--min-time", str(min_time), "--json", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return {r["bytes"]: r["median_s"] for r in json.loads(out.read_text())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--sizes", default="4KiB,64MiB")
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    if a.worker:
        worker(sizes, a.min_time, a.out)
        return
    if not BENCH.exists():
        sys.exit(f"{BENCH} is missing: run `cargo build --release --workspace` first")
    pairs: dict[int, list[tuple[float, float]]] = {s: [] for s in sizes}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(a.repeat):
            rust = run_rust(a.np, a.sizes, a.min_time, Path(d))
            py = run_python(a.np, a.sizes, a.min_time, Path(d))
            for s in sizes:
                pairs[s].append((rust[s], py[s]))
    print(f"# ferrovod.allreduce_ (Python, numpy f32, sum) vs ferrovod-bench (Rust), np={a.np}, {time.strftime('%Y-%m-%d')}")
    print(f"{'size':>10} {'run':>4} {'bench(us)':>11} {'python(us)':>11} {'ratio':>7} {'diff(us)':>9}")
    for s in sizes:
        for i, (r, q) in enumerate(pairs[s]):
            print(f"{s:>10} {i + 1:>4} {r * 1e6:>11.1f} {q * 1e6:>11.1f} {q / r:>7.3f} {(q - r) * 1e6:>9.1f}")
        r = statistics.median(x for x, _ in pairs[s])
        q = statistics.median(y for _, y in pairs[s])
        print(f"{s:>10} {'med':>4} {r * 1e6:>11.1f} {q * 1e6:>11.1f} {q / r:>7.3f} {(q - r) * 1e6:>9.1f}")


if __name__ == "__main__":
    main()
