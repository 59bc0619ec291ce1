"""The measuring harness of gloo_bench.py and mpi_bench.py: the Method in gloo_bench.py's
docstring, the check data, the printed table and the JSON rows, written once so that
both baselines measure and report exactly alike (benches/compare.py joins their JSON).

A script passes a backend object with what is specific to its library:
  index(count)       int64 arange(count) of the library's array type;
  f32(a)             a new contiguous float32 array of a's values;
  empty(count)       a new float32 array;
  bind(op, send, out)   a no-argument callable doing one collective `op` on these buffers
                     (`out` is `send` for the in-place allreduce and broadcast);
  first_mismatch(result, expected)   index of the first unequal element, or None;
  barrier();  max_over_ranks(list of float) -> list of float (elementwise MAX).

Standard library only at import time: the scripts import it before their library.
"""
import argparse
import json
import math
import os
import re
import statistics
import time

OPS = ("allreduce", "broadcast", "allgather", "reducescatter", "alltoall")
F32 = 4  # bytes per element
WARMUP = 2
ESTIMATE_ITERS = 5
MAX_ITERS = 100_000


def parse_size(text):
    m = re.fullmatch(r"(\d+)\s*(KiB|MiB|GiB)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 4096, 4KiB, 1MiB, 1GiB)")
    shift = {None: 0, "kib": 10, "mib": 20, "gib": 30}[m.group(2) and m.group(2).lower()]
    return int(m.group(1)) << shift


def parse_sizes(text):
    return [parse_size(s) for s in text.split(",") if s.strip()]


def add_args(ap, json_help):
    """The options both scripts share, after their own --np (the order --help shows)."""
    ap.add_argument("--op", choices=OPS, required=True)
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes("4KiB,1MiB,64MiB"),
                    help="comma list of bytes, KiB/MiB/GiB suffixes allowed (default 4KiB,1MiB,64MiB)")
    ap.add_argument("--json", help=json_help)
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="minimum measured seconds per size (default 1)")
    ap.add_argument("--min-iters", type=int, default=5, help="minimum iterations per size (default 5)")


def bus_factor(op, n):
    """nccl-tests busbw factor: busbw = algbw * factor."""
    if op == "allreduce":
        return 2 * (n - 1) / n
    if op == "broadcast":
        return 1.0
    return (n - 1) / n  # allgather, reducescatter, alltoall


def bad_sizes(op, n, sizes):
    """(unit, sizes that do not split into whole f32 elements and whole per-rank chunks)."""
    unit = F32 if op in ("allreduce", "broadcast") else F32 * n
    return unit, [b for b in sizes if b <= 0 or b % unit]


def make_op(op, count, rank, n, lib):
    """(run, inputs, result, expected): run() does one `op` on preallocated buffers,
    inputs is what it reads, expected is `result` after one run() on the initial data.

    Inputs are small integers (exact in f32) depending on rank and index, so a wrong sum,
    a misplaced chunk or a missed rank all show up. The index is int64 and only the values
    are cast to f32: a float32 index is not exact above 2**24 elements.
    """
    idx = lib.index(count)
    chunk = count // n
    if op == "allreduce":
        send = out = lib.f32((rank + 1) + idx % 13)
        expected = lib.f32(n * (n + 1) // 2 + n * (idx % 13))
    elif op == "broadcast":
        expected = lib.f32(1 + idx % 251)
        send = out = lib.empty(count)
        send[...] = expected if rank == 0 else -1
    elif op == "allgather":
        send = lib.f32(rank * 1000 + idx[:chunk] % 97)
        out = lib.empty(count)
        expected = lib.f32((idx // chunk) * 1000 + (idx % chunk) % 97)
    elif op == "reducescatter":
        send = lib.f32((rank + 1) + idx % 13)
        out = lib.empty(chunk)
        expected = lib.f32(n * (n + 1) // 2 + n * (idx[rank * chunk:(rank + 1) * chunk] % 13))
    elif op == "alltoall":
        # chunk j of rank r's send buffer goes to rank j: value r*1000 + j*10 + (i%7)
        # (distinct per (src, dst) pair for n < 100), so rank r receives from rank s
        # s*1000 + r*10 + (i%7) in chunk s.
        send = lib.f32(rank * 1000 + (idx // chunk) * 10 + (idx % chunk) % 7)
        out = lib.empty(count)
        expected = lib.f32((idx // chunk) * 1000 + rank * 10 + (idx % chunk) % 7)
    else:
        raise ValueError(op)
    return lib.bind(op, send, out), send, out, expected


def timed_iterations(run, iters, lib):
    """Run `iters` x (barrier; time op) and return each iteration's time as the
    MAX over ranks (the slowest rank finishes the collective)."""
    times = [0.0] * iters
    for i in range(iters):
        lib.barrier()
        t0 = time.perf_counter()
        run()
        times[i] = time.perf_counter() - t0
    return lib.max_over_ranks(times)


def measure(args, rank, n, impl, label, lib):
    """Check and time args.op at every size of args.sizes; rank 0 prints the table
    (`label` names the library in its first line). Returns the JSON rows. A wrong
    result raises: the script's failure path then stops the other ranks."""
    if rank == 0:
        print(f"# {label}, np={n}, op={args.op}, dtype=f32, "
              f"min-time {args.min_time}s; time = median over iters of max over ranks")
        print(f"#{'size(B)':>12} {'count':>11} {'type':>5} {'op':>14} {'np':>4} {'iters':>7} "
              f"{'time(us)':>11} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12}", flush=True)

    rows = []
    for nbytes in args.sizes:
        count = nbytes // F32
        run, inputs, result, expected = make_op(args.op, count, rank, n, lib)

        run()
        bad = lib.first_mismatch(result, expected)
        if bad is not None:
            raise RuntimeError(
                f"rank {rank}: {args.op} of {nbytes} B at np={n} is WRONG: "
                f"element {bad} = {float(result[bad])}, expected {float(expected[bad])}")
        del result, expected
        inputs[...] = 0  # in-place allreduce sums would otherwise grow to inf

        for _ in range(WARMUP):
            run()
        # The estimate is a median of MAXes over ranks, so all ranks agree on iters;
        # one iteration alone is too noisy to size the run.
        t_est = statistics.median(timed_iterations(run, ESTIMATE_ITERS, lib))
        iters = min(MAX_ITERS, max(args.min_iters, math.ceil(args.min_time / max(t_est, 1e-7))))
        times = timed_iterations(run, iters, lib)

        median_s = statistics.median(times)
        algbw = nbytes / median_s / 1e9
        busbw = algbw * bus_factor(args.op, n)
        if rank == 0:
            print(f" {nbytes:>12} {count:>11} {'f32':>5} {args.op:>14} {n:>4} {iters:>7} "
                  f"{median_s * 1e6:>11.2f} {algbw:>12.3f} {busbw:>12.3f}", flush=True)
        rows.append({"impl": impl, "op": args.op, "np": n, "dtype": "f32",
                     "bytes": nbytes, "iters": iters, "median_s": median_s,
                     "algbw_gbs": algbw, "busbw_gbs": busbw})
        del run, inputs  # free the buffers before allocating the next size

    lib.barrier()  # no rank finishes (or rank 0 writes) while others still measure
    return rows


class TorchArrays:
    """The array half of a backend for torch tensors on `device` (`torch` passed in: this
    module imports no library); a script's backend adds bind, barrier and max_over_ranks."""

    def __init__(self, torch, device="cpu"):
        self.torch, self.device = torch, device

    def index(self, count):
        return self.torch.arange(count, dtype=self.torch.int64, device=self.device)

    def f32(self, a):
        return a.to(self.torch.float32).contiguous()

    def empty(self, count):
        return self.torch.empty(count, dtype=self.torch.float32, device=self.device)

    def first_mismatch(self, result, expected):
        if self.torch.equal(result, expected):
            return None
        return (result != expected).nonzero()[0].item()


def write_json(path, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
