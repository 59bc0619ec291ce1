#!/usr/bin/env python3
"""ferrovod's Python API on torch tensors (CPU or CUDA), measured exactly as gloo_bench.py
measures torch.distributed (the Method in its docstring, through bench_harness), so that
benches/compare.py joins the two.

    python benches/ferrovod_torch_bench.py --np 2 --op allreduce --sizes 4KiB,64MiB --device cuda --json out.json

The ranks are started by ``ferrovod-run`` (``python -m ferrovod``); with ``--device cuda`` rank r
uses GPU r mod the GPU count, so several ranks share one GPU on a one-GPU machine (the staged
path; NCCL refuses two ranks on one GPU). Every collective goes through the engine, by name, as
a training script's would.
"""
import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_harness as harness  # noqa: E402


class Ferrovod(harness.TorchArrays):
    """The backend bench_harness measures through (see its docstring)."""

    def __init__(self, torch, fv, device):
        super().__init__(torch, device)
        self.fv = fv

    def bind(self, op, send, out):
        fv = self.fv
        name = f"bench.{op}.{send.numel()}"
        if op == "allreduce":
            return lambda: fv.allreduce_(send, op=fv.Sum, name=name)
        if op == "broadcast":
            return lambda: fv.broadcast_(send, 0, name=name)
        if op == "allgather":
            return lambda: out.copy_(fv.allgather(send, name=name))
        if op == "reducescatter":
            return lambda: out.copy_(fv.reducescatter(send, op=fv.Sum, name=name))
        return lambda: out.copy_(fv.alltoall(send, name=name)[0])

    def barrier(self):
        self.fv.barrier()

    def max_over_ranks(self, times):
        t = self.torch.tensor(times, dtype=self.torch.float64)
        return self.fv.allreduce(t, op=self.fv.Max, name="bench.times").tolist()


def worker(args):
    import torch

    import ferrovod as fv

    torch.set_num_threads(1)
    fv.init()
    device = "cpu"
    if args.device == "cuda":
        device = f"cuda:{fv.rank() % torch.cuda.device_count()}"
        torch.cuda.set_device(device)
    label = f"ferrovod (Python, torch {torch.__version__}) on {args.device} tensors"
    rows = harness.measure(args, fv.rank(), fv.size(), "ferrovod", label, Ferrovod(torch, fv, device))
    for r in rows:
        r["transport"] = f"python {args.device}"
    if fv.rank() == 0 and args.json:
        harness.write_json(args.json, rows)
    fv.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int, required=True, help="number of ranks (processes)")
    harness.add_args(ap, json_help="write result rows to this JSON file")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the tensors lie")
    ap.add_argument("--timeout", type=float, default=600.0, help="whole-run timeout in seconds")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    unit, bad = harness.bad_sizes(args.op, args.np, args.sizes)
    if bad:
        ap.error(f"sizes {bad} are not positive multiples of {unit} B for {args.op} at np={args.np}")
    cmd = [sys.executable, "-m", "ferrovod", "-np", str(args.np), "--",
           sys.executable, os.path.abspath(__file__), "--worker", *argv]
    try:
        return subprocess.run(cmd, timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"ferrovod_torch_bench: timeout after {args.timeout} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
