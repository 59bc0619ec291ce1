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
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The harness shared with the gloo baseline, so both measure and report alike
# (standard library only, so relaunching mpirun loads neither numpy nor MPI).
import bench_harness as harness  # noqa: E402

IMPL = "openmpi-vader"
MPIRUN_FLAGS = ["--oversubscribe", "--mca", "btl", "self,vader", "--mca", "pml", "ob1"]


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

class Mpi:
    """The backend bench_harness measures through (see its docstring)."""

    def __init__(self, MPI, np):
        self.MPI, self.np, self.comm = MPI, np, MPI.COMM_WORLD

    def index(self, count):
        return self.np.arange(count, dtype=self.np.int64)

    def f32(self, a):
        return self.np.ascontiguousarray(a, dtype=self.np.float32)

    def empty(self, count):
        return self.np.empty(count, dtype=self.np.float32)

    def bind(self, op, send, out):
        MPI, comm = self.MPI, self.comm
        return {
            "allreduce": lambda: comm.Allreduce(MPI.IN_PLACE, send, op=MPI.SUM),
            "broadcast": lambda: comm.Bcast(send, root=0),
            "allgather": lambda: comm.Allgather(send, out),
            "reducescatter": lambda: comm.Reduce_scatter_block(send, out, op=MPI.SUM),
            "alltoall": lambda: comm.Alltoall(send, out),
        }[op]

    def first_mismatch(self, result, expected):
        if self.np.array_equal(result, expected):
            return None
        return int(self.np.flatnonzero(result != expected)[0])

    def barrier(self):
        self.comm.Barrier()

    def max_over_ranks(self, times):
        t = self.np.array(times, dtype=self.np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, t, op=self.MPI.MAX)
        return t.tolist()


def worker(args, MPI, np):
    comm = MPI.COMM_WORLD
    rank, n = comm.Get_rank(), comm.Get_size()
    if args.np is not None and args.np != n:
        raise SystemExit(f"mpi_bench: --np {args.np} but mpirun started {n} ranks")
    unit, bad = harness.bad_sizes(args.op, n, args.sizes)
    if bad:
        raise SystemExit(f"mpi_bench: sizes {bad} are not positive multiples of {unit} B "
                         f"for {args.op} at np={n}")

    btl = os.environ.get("OMPI_MCA_btl", "(default)")
    pml = os.environ.get("OMPI_MCA_pml", "(default)")
    label = ""
    if rank == 0:
        if sorted(btl.split(",")) != ["self", "vader"] or pml != "ob1":
            print(f"mpi_bench: WARNING: btl={btl} pml={pml}, not the baseline's "
                  f"'--mca btl self,vader --mca pml ob1'; the rows are still labelled {IMPL}",
                  file=sys.stderr, flush=True)
        lib = MPI.Get_library_version().splitlines()[0].split(",")[0].strip()
        import mpi4py
        label = f"{lib} (mpi4py {mpi4py.__version__}) btl {btl} pml {pml}"

    rows = harness.measure(args, rank, n, IMPL, label, Mpi(MPI, np))
    if rank == 0 and args.json:
        harness.write_json(args.json, rows)


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int,
                    help="number of ranks: under mpirun only checked against the job size; "
                         "otherwise the script starts mpirun with this many ranks")
    harness.add_args(ap, json_help="write result rows to this JSON file (rank 0)")
    argv = sys.argv[1:]
    args = ap.parse_args(argv)
    if args.np is not None and args.np < 1:
        ap.error("--np must be >= 1")
    if args.np is not None and not under_mpirun():
        unit, bad = harness.bad_sizes(args.op, args.np, args.sizes)
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
