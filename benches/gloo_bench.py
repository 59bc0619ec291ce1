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
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_harness as harness  # noqa: E402  (stdlib only: the launcher never loads torch)


def check_sizes(op, n, sizes):
    unit, bad = harness.bad_sizes(op, n, sizes)
    if bad:
        sys.exit(f"gloo_bench: sizes {bad} are not positive multiples of {unit} B for {op} at np={n}")


# --------------------------------------------------------------------------- worker

class Gloo(harness.TorchArrays):
    """The backend bench_harness measures through (see its docstring)."""

    def __init__(self, torch, dist, device="cpu"):
        super().__init__(torch, device)
        self.dist = dist

    def bind(self, op, send, out):
        dist = self.dist
        run = {
            "allreduce": lambda: dist.all_reduce(send),
            "broadcast": lambda: dist.broadcast(send, src=0),
            "allgather": lambda: dist.all_gather_into_tensor(out, send),
            "reducescatter": lambda: dist.reduce_scatter_tensor(out, send),
            "alltoall": lambda: dist.all_to_all_single(out, send),
        }[op]
        if self.device == "cpu":
            return run
        # On CUDA a collective may return once queued: time it to the end of its work, as
        # ferrovod's (which returns once its device work is done).
        synchronize = self.torch.cuda.synchronize
        return lambda: (run(), synchronize())

    def barrier(self):
        self.dist.barrier()

    def max_over_ranks(self, times):
        t = self.torch.tensor(times, dtype=self.torch.float64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return t.tolist()


def worker(args):
    import warnings
    # The PyPI torch wheel warns at import when numpy is absent; we do not use numpy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # small machines run several ranks per core
    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = "cpu"
    if args.device == "cuda":
        device = f"cuda:{rank % torch.cuda.device_count()}"
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend, init_method="env://", rank=rank, world_size=n,
                            timeout=timedelta(seconds=args.timeout),
                            device_id=torch.device(device) if args.backend == "nccl" else None)
    label = f"torch {torch.__version__} {args.backend} on {args.device} tensors"
    rows = harness.measure(args, rank, n, args.backend, label, Gloo(torch, dist, device))
    dist.destroy_process_group()
    if rank == 0 and args.json:
        harness.write_json(args.json, rows)


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
    harness.add_args(ap, json_help="write result rows to this JSON file")
    ap.add_argument("--timeout", type=float, default=600.0, help="whole-run timeout in seconds")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the tensors lie (cuda: rank r on GPU r mod the GPU count)")
    ap.add_argument("--backend", choices=("gloo", "nccl"), default="gloo",
                    help="torch.distributed's backend (nccl: CUDA tensors, one GPU per rank)")
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
