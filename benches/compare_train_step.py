"""The tch example's training step at N ranks against the same model trained from Python, with
ferrovod.torch and with torch DDP over gloo, in one run (issue 17's benchmark).

Each configuration runs the three trainers in turn (every one fails if its training diverged), `--runs` times interleaved (the host is
noisy); a trainer's figure is the slowest rank's median step, and the table gives the median
over runs and the ratios Rust/Python and Rust/DDP. Every trainer uses one intra-op thread per
rank, the same MLP, batch, optimizer and step (zero_grad, forward, backward, step).

    .venv/bin/python benches/compare_train_step.py [--np 2] [--runs 2] [--json out.json]

Needs target/release/ferrovod-run and tch/target/release/tch_train (scripts/tch.sh builds it).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "target/release/ferrovod-run")
TCH = os.path.join(ROOT, "tch/target/release/tch_train")
PY_STEP = os.path.join(ROOT, "benches/train_step.py")
LINE = re.compile(r"rank (\d+): median step ([0-9.]+) ms")

# (name, hidden width, layers, rows per rank, learning rate): overhead-bound, and
# gradient-heavy (a smaller rate: at 0.05 the wide model diverges to NaN).
CONFIGS = [("mlp-64x2", 64, 2, 32, 0.05), ("mlp-1024x3", 1024, 3, 32, 0.005)]


def params(hidden, layers):
    n, width = 0, 16
    for _ in range(layers):
        n += width * hidden + hidden
        width = hidden
    return n + width + 1


def slowest_median(cmd, np_):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    medians = {int(r): float(ms) for r, ms in LINE.findall(out.stdout)}
    if sorted(medians) != list(range(np_)):
        sys.exit(f"{' '.join(cmd)}: expected a median from each of {np_} ranks:\n{out.stdout}")
    return max(medians.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    launch = [RUN, "-np", str(args.np), "--no-prefix", "--"]
    rows = []
    for name, hidden, layers, batch, lr in CONFIGS:
        shape = ["--epochs", str(args.epochs), "--steps", str(args.steps), "--batch", str(batch),
                 "--hidden", str(hidden), "--layers", str(layers), "--lr", str(lr)]
        trainers = {
            "rust": launch + [TCH, "--time"] + shape,
            "python": launch + [sys.executable, PY_STEP, "--backend", "ferrovod"] + shape,
            "ddp": launch + [sys.executable, PY_STEP, "--backend", "ddp-gloo"] + shape,
        }
        times = {k: [] for k in trainers}
        for _ in range(args.runs):
            for k, cmd in trainers.items():
                times[k].append(slowest_median(cmd, args.np))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"model": name, "params": params(hidden, layers), "np": args.np, "batch": batch,
                     "runs": {k: v for k, v in times.items()},
                     "rust_ms": med["rust"], "python_ms": med["python"], "ddp_ms": med["ddp"],
                     "rust_over_python": med["rust"] / med["python"],
                     "rust_over_ddp": med["rust"] / med["ddp"]})
    print(f"| model | params | N | batch/rank | Rust tch (ms) | Python ferrovod.torch (ms) | DDP gloo (ms) "
          f"| Rust/Python | Rust/DDP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['np']} | {r['batch']} | {r['rust_ms']:.3f} "
              f"| {r['python_ms']:.3f} | {r['ddp_ms']:.3f} | {r['rust_over_python']:.2f} "
              f"| {r['rust_over_ddp']:.2f} |")
    print(f"(each: the slowest rank's median step; median of {args.runs} interleaved runs: "
          + "; ".join(f"{r['model']} " + ", ".join(f"{k} {[round(x, 3) for x in v]}" for k, v in r["runs"].items())
                      for r in rows) + ")")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
