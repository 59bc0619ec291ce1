#!/usr/bin/env python3
"""torch.distributed "gloo" (CPU) collective benchmark, the baseline for ferrovod-bench.

    python benches/gloo_bench.py --np 4 --op allreduce --sizes 4KiB,1MiB,64MiB --json out.json

Method (identical to ferrovod-bench, so that benches/compare.py can join both):
  * dtype f32; `bytes` is the allreduce/broadcast buffer, the allgather *output*,
    the reducescatter *input* and the per-rank alltoall send buffer (nccl-tests);
  * per size: one correctness check, then zeroed inputs (sums stay finite),
    2 warm-up iterations, the median of 5 timed iterations as the estimate (MAX over ranks),
    iters = clamp(enough for >= --min-time seconds, --min-iters, 100000);
  * each timed iteration is `barrier(); t0; op; t1` on every rank; the iteration's
    time is the MAX over ranks, the reported time is the MEDIAN over iterations;
  * algbw = bytes / time, busbw = algbw * factor(op, np) as in nccl-tests; GB = 1e9 B.

The launcher starts --np copies of this script with the hidden --worker flag and
the env:// rendezvous variables (no multiprocessing, no pickle). Rank 0 prints the
table and writes the JSON; any worker failure or the --timeout kills the rest.
"""
import argparse
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import time

OPS = ("allreduce", "broadcast", "allgather", "reducescatter", "alltoall")
F32 = 4  # bytes per element
WARMUP = 2
MAX_ITERS = 100_000


def parse_size(text):
    m = re.fullmatch(r"(\d+)\s*(KiB|MiB|GiB)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 4096, 4KiB, 1MiB, 1GiB)")
    shift = {None: 0, "kib": 10, "mib": 20, "gib": 30}[m.group(2) and m.group(2).lower()]
    return int(m.group(1)) << shift


def parse_sizes(text):
    return [parse_size(s) for s in text.split(",") if s.strip()]


def bus_factor(op, n):
    """nccl-tests busbw factor: busbw = algbw * factor."""
    if op == "allreduce":
        return 2 * (n - 1) / n
    if op == "broadcast":
        return 1.0
    return (n - 1) / n  # allgather, reducescatter, alltoall


def check_sizes(op, n, sizes):
    """Every size must split into whole f32 elements (and whole per-rank chunks)."""
    unit = F32 if op in ("allreduce", "broadcast") else F32 * n
    bad = [b for b in sizes if b <= 0 or b % unit]
    if bad:
        sys.exit(f"gloo_bench: sizes {bad} are not positive multiples of {unit} B for {op} at np={n}")


# --------------------------------------------------------------------------- worker

def worker(args):
    import warnings
    # The PyPI torch wheel warns at import when numpy is absent; we do not use numpy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # small machines run several ranks per core
    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=n,
                            timeout=timedelta(seconds=args.timeout))

    rows = []
    if rank == 0:
        print(f"# torch {torch.__version__} gloo, np={n}, op={args.op}, dtype=f32, "
              f"min-time {args.min_time}s; time = median over iters of max over ranks")
        print(f"#{'size(B)':>12} {'count':>11} {'type':>5} {'op':>14} {'np':>4} {'iters':>7} "
              f"{'time(us)':>11} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12}", flush=True)

    for nbytes in args.sizes:
        count = nbytes // F32
        run, check, inputs = make_op(args.op, count, rank, n, torch, dist)

        run()
        check()  # raises on a wrong result; the launcher then kills the others
        inputs.zero_()  # in-place allreduce sums would otherwise grow to inf

        for _ in range(WARMUP):
            run()
        # The estimate: median of 5 timed iterations (each the MAX over ranks, so all ranks
        # agree on iters); one iteration alone is too noisy to size the run.
        t_est = statistics.median(timed_iterations(run, 5, dist, torch))
        iters = min(MAX_ITERS, max(args.min_iters, math.ceil(args.min_time / max(t_est, 1e-7))))
        times = timed_iterations(run, iters, dist, torch)

        median_s = statistics.median(times)
        algbw = nbytes / median_s / 1e9
        busbw = algbw * bus_factor(args.op, n)
        if rank == 0:
            print(f" {nbytes:>12} {count:>11} {'f32':>5} {args.op:>14} {n:>4} {iters:>7} "
                  f"{median_s * 1e6:>11.2f} {algbw:>12.3f} {busbw:>12.3f}", flush=True)
        rows.append({"impl": "gloo", "op": args.op, "np": n, "dtype": "f32",
                     "bytes": nbytes, "iters": iters, "median_s": median_s,
                     "algbw_gbs": algbw, "busbw_gbs": busbw})
        del run, check, inputs  # free the buffers before allocating the next size

    dist.barrier()
    dist.destroy_process_group()
    if rank == 0 and args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")


def timed_iterations(run, iters, dist, torch):
    """Run `iters` x (barrier; time op) and return each iteration's time as the
    MAX over ranks (the slowest rank finishes the collective)."""
    times = torch.empty(iters, dtype=torch.float64)
    for i in range(iters):
        dist.barrier()
        t0 = time.perf_counter()
        run()
        times[i] = time.perf_counter() - t0
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    return times.tolist()


def make_op(name, count, rank, n, torch, dist):
    """Return (run, check, inputs): run() does one collective on preallocated
    buffers, check() verifies the result of a single run() on the initial data,
    inputs is the tensor the collective reads.

    Inputs are small integers (exact in f32) depending on rank and index, so a
    wrong sum, a misplaced chunk or a missed rank all show up.
    """
    idx = torch.arange(count, dtype=torch.float32)
    chunk = count // n

    if name == "allreduce":
        buf = (rank + 1) + idx % 13
        expected = n * (n + 1) / 2 + n * (idx % 13)
        run = lambda: dist.all_reduce(buf)
        inputs = result = buf
    elif name == "broadcast":
        expected = 1 + idx % 251
        buf = expected.clone() if rank == 0 else torch.full((count,), -1.0)
        run = lambda: dist.broadcast(buf, src=0)
        inputs = result = buf
    elif name == "allgather":
        inp = rank * 1000 + idx[:chunk] % 97
        out = torch.empty(count)
        expected = (idx // chunk) * 1000 + (idx % chunk) % 97
        run = lambda: dist.all_gather_into_tensor(out, inp)
        inputs, result = inp, out
    elif name == "reducescatter":
        inp = (rank + 1) + idx % 13
        out = torch.empty(chunk)
        expected = n * (n + 1) / 2 + n * (idx[rank * chunk:(rank + 1) * chunk] % 13)
        run = lambda: dist.reduce_scatter_tensor(out, inp)
        inputs, result = inp, out
    elif name == "alltoall":
        # chunk j of rank r's send buffer goes to rank j: value r*1000 + j*10 + (i%7)
        # (distinct per (src, dst) pair for n < 100), so rank r receives from rank s
        # s*1000 + r*10 + (i%7) in chunk s.
        inp = rank * 1000 + (idx // chunk) * 10 + (idx % chunk) % 7
        out = torch.empty(count)
        expected = (idx // chunk) * 1000 + rank * 10 + (idx % chunk) % 7
        run = lambda: dist.all_to_all_single(out, inp)
        inputs, result = inp, out
    else:
        raise ValueError(name)

    def check():
        if not torch.equal(result, expected):
            bad = (result != expected).nonzero()[0].item()
            raise RuntimeError(
                f"rank {rank}: {name} of {count * F32} B at np={n} is WRONG: "
                f"element {bad} = {result[bad].item()}, expected {expected[bad].item()}")

    return run, check, inputs


# --------------------------------------------------------------------------- launcher

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, argv):
    port = free_port()
    procs = []
    for rank in range(args.np):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(args.np),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", *argv],
                                      env=env))

    deadline = time.monotonic() + args.timeout
    failure = None
    try:
        while failure is None:
            codes = [p.poll() for p in procs]
            if all(c == 0 for c in codes):
                return 0
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failure = f"rank {bad[0][0]} exited with code {bad[0][1]}"
            elif time.monotonic() > deadline:
                failure = f"timeout after {args.timeout} s"
            else:
                time.sleep(0.05)
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        for p in procs:  # no-op for exited ones; kills the rest on failure/interrupt
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
    print(f"gloo_bench: FAILED: {failure}; killed the remaining workers", file=sys.stderr)
    return 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int, required=True, help="number of ranks (processes)")
    ap.add_argument("--op", choices=OPS, required=True)
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes("4KiB,1MiB,64MiB"),
                    help="comma list of bytes, KiB/MiB/GiB suffixes allowed (default 4KiB,1MiB,64MiB)")
    ap.add_argument("--json", help="write result rows to this JSON file")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="minimum measured seconds per size (default 1)")
    ap.add_argument("--min-iters", type=int, default=5, help="minimum iterations per size (default 5)")
    ap.add_argument("--timeout", type=float, default=600.0, help="whole-run timeout in seconds")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = ap.parse_args(argv)

    if args.worker:
        worker(args)
        return 0
    if args.np < 1:
        ap.error("--np must be >= 1")
    check_sizes(args.op, args.np, args.sizes)
    return launch(args, argv)


if __name__ == "__main__":
    sys.exit(main())
