#!/usr/bin/env python3
"""Open MPI (btl vader, shared memory) collective benchmark, a baseline for ferrovod-bench.

    mpirun --oversubscribe -np 4 --mca btl self,vader --mca pml ob1 \\
        .venv/bin/python benches/mpi_bench.py --op allreduce --sizes 4KiB,1MiB,64MiB --json out.json

(add --allow-run-as-root when running as root). Or let the script start mpirun itself
with exactly those flags:

    .venv/bin/python benches/mpi_bench.py --np 4 --op allreduce --sizes 4KiB,1MiB,64MiB

mpi4py with numpy buffers through the user-buffer API (Allreduce, Bcast, Allgather,
Reduce_scatter_block, Alltoall). Allreduce is MPI_IN_PLACE on one buffer, so every
iteration rewrites its input, as ferrovod's in-place allreduce does.

Method (identical to benches/gloo_bench.py and ferrovod-bench, so that benches/compare.py
can join them):
  * dtype f32; `bytes` is the allreduce/broadcast buffer, the allgather *output*,
    the reducescatter *input* and the per-rank alltoall send buffer (nccl-tests);
  * per size: one correctness check (same data as gloo_bench.py), then zeroed inputs
    (sums stay finite), 2 warm-up iterations, the median of 5 timed iterations as the
    estimate (MAX over ranks), iters = clamp(enough for >= --min-time seconds,
    --min-iters, 100000);
  * each timed iteration is `Barrier(); t0; op; t1` on every rank; the iteration's
    time is the MAX over ranks, the reported time is the MEDIAN over iterations;
  * algbw = bytes / time, busbw = algbw * factor(op, np) as in nccl-tests; GB = 1e9 B.

Rank 0 prints the table and writes the JSON (impl "openmpi-vader"). A failed check or
any other exception on one rank aborts the whole job (MPI_Abort), so no rank hangs.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Shared with the gloo baseline so both parse sizes and scale busbw the same way
# (gloo_bench imports only the standard library at module level).
from gloo_bench import F32, MAX_ITERS, OPS, WARMUP, bus_factor, parse_sizes  # noqa: E402

IMPL = "openmpi-vader"
MPIRUN_FLAGS = ["--oversubscribe", "--mca", "btl", "self,vader", "--mca", "pml", "ob1"]


def bad_sizes(op, n, sizes):
    """Sizes that do not split into whole f32 elements (and whole per-rank chunks)."""
    unit = F32 if op in ("allreduce", "broadcast") else F32 * n
    return unit, [b for b in sizes if b <= 0 or b % unit]


def under_mpirun():
    return "OMPI_COMM_WORLD_SIZE" in os.environ or "PMIX_RANK" in os.environ


def relaunch(args, argv):
    """Not started by mpirun but given --np: exec mpirun with the baseline's flags."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        sys.exit("mpi_bench: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)")
    cmd = [mpirun, *MPIRUN_FLAGS, "-np", str(args.np)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += [sys.executable, os.path.abspath(__file__), *argv]
    print("mpi_bench: " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execv(mpirun, cmd)


# --------------------------------------------------------------------------- worker

def worker(args, MPI, np):
    comm = MPI.COMM_WORLD
    rank, n = comm.Get_rank(), comm.Get_size()
    if args.np is not None and args.np != n:
        raise SystemExit(f"mpi_bench: --np {args.np} but mpirun started {n} ranks")
    unit, bad = bad_sizes(args.op, n, args.sizes)
    if bad:
        raise SystemExit(f"mpi_bench: sizes {bad} are not positive multiples of {unit} B "
                         f"for {args.op} at np={n}")

    btl = os.environ.get("OMPI_MCA_btl", "(default)")
    pml = os.environ.get("OMPI_MCA_pml", "(default)")
    if rank == 0:
        if sorted(btl.split(",")) != ["self", "vader"] or pml != "ob1":
            print(f"mpi_bench: WARNING: btl={btl} pml={pml}, not the baseline's "
                  f"'--mca btl self,vader --mca pml ob1'; the rows are still labelled {IMPL}",
                  file=sys.stderr, flush=True)
        lib = MPI.Get_library_version().splitlines()[0].split(",")[0].strip()
        import mpi4py
        print(f"# {lib} (mpi4py {mpi4py.__version__}) btl {btl} pml {pml}, np={n}, "
              f"op={args.op}, dtype=f32, min-time {args.min_time}s; "
              f"time = median over iters of max over ranks")
        print(f"#{'size(B)':>12} {'count':>11} {'type':>5} {'op':>14} {'np':>4} {'iters':>7} "
              f"{'time(us)':>11} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12}", flush=True)

    rows = []
    for nbytes in args.sizes:
        count = nbytes // F32
        run, check, inputs = make_op(args.op, count, rank, n, MPI, comm, np)

        run()
        check()  # raises on a wrong result; main() then aborts the job
        inputs[...] = 0  # in-place allreduce sums would otherwise grow to inf

        for _ in range(WARMUP):
            run()
        # The estimate: median of 5 timed iterations (each the MAX over ranks, so all ranks
        # agree on iters); one iteration alone is too noisy to size the run.
        t_est = statistics.median(timed_iterations(run, 5, MPI, comm, np))
        iters = min(MAX_ITERS, max(args.min_iters, math.ceil(args.min_time / max(t_est, 1e-7))))
        times = timed_iterations(run, iters, MPI, comm, np)

        median_s = statistics.median(times)
        algbw = nbytes / median_s / 1e9
        busbw = algbw * bus_factor(args.op, n)
        if rank == 0:
            print(f" {nbytes:>12} {count:>11} {'f32':>5} {args.op:>14} {n:>4} {iters:>7} "
                  f"{median_s * 1e6:>11.2f} {algbw:>12.3f} {busbw:>12.3f}", flush=True)
        rows.append({"impl": IMPL, "op": args.op, "np": n, "dtype": "f32",
                     "bytes": nbytes, "iters": iters, "median_s": median_s,
                     "algbw_gbs": algbw, "busbw_gbs": busbw})
        del run, check, inputs  # free the buffers before allocating the next size

    comm.Barrier()
    if rank == 0 and args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")


def timed_iterations(run, iters, MPI, comm, np):
    """Run `iters` x (Barrier; time op) and return each iteration's time as the
    MAX over ranks (the slowest rank finishes the collective)."""
    times = np.empty(iters, dtype=np.float64)
    for i in range(iters):
        comm.Barrier()
        t0 = time.perf_counter()
        run()
        times[i] = time.perf_counter() - t0
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return times.tolist()


def make_op(name, count, rank, n, MPI, comm, np):
    """Return (run, check, inputs): run() does one collective on preallocated
    buffers, check() verifies the result of a single run() on the initial data,
    inputs is the array the collective reads.

    The data are gloo_bench.py's: small integers (exact in f32) depending on rank
    and index, so a wrong sum, a misplaced chunk or a missed rank all show up. The
    index is computed in int64 and only the values are cast to f32, so it stays exact
    above 2**24 elements (a float32 arange does not).
    """
    idx = np.arange(count, dtype=np.int64)
    chunk = count // n
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731

    if name == "allreduce":
        buf = f32((rank + 1) + idx % 13)
        expected = f32(n * (n + 1) // 2 + n * (idx % 13))
        run = lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)  # noqa: E731
        inputs = result = buf
    elif name == "broadcast":
        expected = f32(1 + idx % 251)
        buf = expected.copy() if rank == 0 else np.full(count, -1.0, dtype=np.float32)
        run = lambda: comm.Bcast(buf, root=0)  # noqa: E731
        inputs = result = buf
    elif name == "allgather":
        inp = f32(rank * 1000 + idx[:chunk] % 97)
        out = np.empty(count, dtype=np.float32)
        expected = f32((idx // chunk) * 1000 + (idx % chunk) % 97)
        run = lambda: comm.Allgather(inp, out)  # noqa: E731
        inputs, result = inp, out
    elif name == "reducescatter":
        inp = f32((rank + 1) + idx % 13)
        out = np.empty(chunk, dtype=np.float32)
        expected = f32(n * (n + 1) // 2 + n * (idx[rank * chunk:(rank + 1) * chunk] % 13))
        run = lambda: comm.Reduce_scatter_block(inp, out, op=MPI.SUM)  # noqa: E731
        inputs, result = inp, out
    elif name == "alltoall":
        # chunk j of rank r's send buffer goes to rank j: value r*1000 + j*10 + (i%7)
        # (distinct per (src, dst) pair for n < 100), so rank r receives from rank s
        # s*1000 + r*10 + (i%7) in chunk s.
        inp = f32(rank * 1000 + (idx // chunk) * 10 + (idx % chunk) % 7)
        out = np.empty(count, dtype=np.float32)
        expected = f32((idx // chunk) * 1000 + rank * 10 + (idx % chunk) % 7)
        run = lambda: comm.Alltoall(inp, out)  # noqa: E731
        inputs, result = inp, out
    else:
        raise ValueError(name)
    del idx

    def check():
        if not np.array_equal(result, expected):
            bad = int(np.flatnonzero(result != expected)[0])
            raise RuntimeError(
                f"rank {rank}: {name} of {count * F32} B at np={n} is WRONG: "
                f"element {bad} = {result[bad]}, expected {expected[bad]}")

    return run, check, inputs


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int,
                    help="number of ranks: under mpirun only checked against the job size; "
                         "otherwise the script starts mpirun with this many ranks")
    ap.add_argument("--op", choices=OPS, required=True)
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes("4KiB,1MiB,64MiB"),
                    help="comma list of bytes, KiB/MiB/GiB suffixes allowed (default 4KiB,1MiB,64MiB)")
    ap.add_argument("--json", help="write result rows to this JSON file (rank 0)")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="minimum measured seconds per size (default 1)")
    ap.add_argument("--min-iters", type=int, default=5, help="minimum iterations per size (default 5)")
    argv = sys.argv[1:]
    args = ap.parse_args(argv)
    if args.np is not None and args.np < 1:
        ap.error("--np must be >= 1")
    if args.np is not None and not under_mpirun():
        unit, bad = bad_sizes(args.op, args.np, args.sizes)
        if bad:
            ap.error(f"sizes {bad} are not positive multiples of {unit} B for {args.op} at np={args.np}")
        relaunch(args, argv)  # does not return

    import numpy as np
    from mpi4py import MPI

    try:
        worker(args, MPI, np)
    except SystemExit as e:  # a usage error every rank sees the same: exit together
        if MPI.COMM_WORLD.Get_rank() == 0 and e.code not in (None, 0):
            print(e.code, file=sys.stderr, flush=True)
        return 2
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)  # the other ranks may be waiting in a collective
    return 0


if __name__ == "__main__":
    sys.exit(main())
