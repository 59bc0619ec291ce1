#!/usr/bin/env python3
"""The steps of scripts/gpu-check.sh (which installs the carried wheel and runs this), each
with a time limit, logged into one markdown table: ``python3 scripts/gpu_check.py --out DIR``.

Exit status: 0 every check passed; 1 one failed. A measured target missed is a row
"below target", not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASS, FAIL, INFO = "pass", "FAIL", "info"


class Table:
    def __init__(self, out: Path) -> None:
        self.out, self.rows = out, []

    def add(self, check: str, status: str, detail: str, seconds: float | None = None) -> None:
        self.rows.append((check, status, detail.replace("|", "/").replace("\n", " ")[:400], seconds))
        took = "" if seconds is None else f" ({seconds:.1f} s)"
        print(f"[{status}] {check}: {detail}{took}", flush=True)

    def markdown(self) -> str:
        lines = ["| check | result | detail | seconds |", "|---|---|---|---|"]
        for check, status, detail, seconds in self.rows:
            lines.append(f"| {check} | {status} | {detail} | {'' if seconds is None else f'{seconds:.1f}'} |")
        return "\n".join(lines) + "\n"


def run(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Runs `cmd` (with `env` added), its output into `log`; (exit code, output, seconds); 124
    on timeout."""
    t = time.monotonic()
    try:
        full = {**os.environ, **(env or {})}
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full)
        code, text = p.returncode, p.stdout + p.stderr
    except FileNotFoundError as e:
        code, text = 127, str(e)
    except subprocess.TimeoutExpired as e:
        code = 124
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        text += f"\n(timed out after {timeout} s)"
    log.write_text(text)
    return code, text, time.monotonic() - t


def environment(table: Table, out: Path) -> bool:
    code, text, s = run(["nvidia-smi", "-L"], out / "nvidia-smi.log", 30)
    table.add("GPU", INFO if code == 0 else FAIL, text.strip().splitlines()[0] if text.strip() else f"nvidia-smi: {code}", s)
    probe = (
        "import json, torch, ferrovod; c = torch.cuda.is_available(); print(json.dumps(dict("
        "torch=torch.__version__, cuda=torch.version.cuda, available=c, gpus=torch.cuda.device_count(), "
        "name=torch.cuda.get_device_name(0) if c else None, ferrovod_cuda_built=ferrovod.cuda_built())))"
    )
    code, text, s = run([sys.executable, "-c", probe], out / "torch.log", 120)
    try:
        found = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        found = {}
    ok = code == 0 and found.get("available") is True
    table.add("torch sees the GPU; ferrovod imports", PASS if ok else FAIL, json.dumps(found) if found else f"exit {code} (see torch.log)", s)
    return ok


def nccl_loader(table: Table, out: Path) -> None:
    probe = "from ferrovod import _gpu; print(_gpu.nccl_version())"
    code, text, s = run([sys.executable, "-c", probe], out / "nccl-loader.log", 60)
    table.add("NCCL loader finds torch's libnccl.so.2", PASS if code == 0 else FAIL, text.strip().splitlines()[-1] if text.strip() else str(code), s)


def gpu_tests(table: Table, out: Path) -> None:
    tests = ROOT / "bindings" / "python" / "tests" / "test_gpu_cuda.py"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu", "-v", "-rA", str(tests)]
    code, text, s = run(cmd, out / "pytest-gpu.log", 300)
    results = re.findall(r"test_gpu_cuda\.py::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", text)
    if not results:
        table.add("pytest -m gpu", FAIL, f"exit {code}, no results (see pytest-gpu.log)", s)
        return
    for name, verdict in results:
        table.add(f"test {name}", PASS if verdict == "PASSED" else FAIL, verdict)
    table.add("pytest -m gpu", PASS if code == 0 else FAIL, f"exit {code}", s)


def benchmarks(table: Table, out: Path) -> None:
    """ferrovod (staged path) against torch.distributed gloo on the same CUDA tensors."""
    rows = {}
    for np_ in (2, 4):
        for lib, script in (("ferrovod", "ferrovod_torch_bench.py"), ("gloo", "gloo_bench.py")):
            js = out / f"{lib}-allreduce-{np_}.json"
            cmd = [sys.executable, str(ROOT / "benches" / script), "--np", str(np_), "--op", "allreduce",
                   "--sizes", "4KiB,64MiB", "--device", "cuda", "--min-time", "0.5", "--json", str(js), "--timeout", "150"]
            code, text, s = run(cmd, out / f"bench-{lib}-{np_}.log", 170)
            if code != 0 or not js.exists():
                table.add(f"bench {lib} allreduce N={np_} on one GPU", FAIL, f"exit {code} (see bench-{lib}-{np_}.log)", s)
                continue
            for r in json.loads(js.read_text()):
                rows[(lib, np_, r["bytes"])] = r
    for np_ in (2, 4):
        for nbytes in (4096, 64 << 20):
            f, g = rows.get(("ferrovod", np_, nbytes)), rows.get(("gloo", np_, nbytes))
            if not (f and g):
                continue
            ratio = f["busbw_gbs"] / g["busbw_gbs"]
            detail = (f"ferrovod {f['median_s'] * 1e6:.0f} us, {f['busbw_gbs']:.2f} GB/s; gloo {g['median_s'] * 1e6:.0f} us, "
                      f"{g['busbw_gbs']:.2f} GB/s; busbw ratio {ratio:.2f}")
            size = "4 KiB" if nbytes == 4096 else "64 MiB"
            # The target (busbw >= 2x gloo) is stated for bandwidth; 4 KiB is reported.
            status = INFO if nbytes == 4096 else (PASS if ratio >= 2 else "below target")
            table.add(f"staged allreduce N={np_} {size} vs gloo (CUDA tensors)", status, detail)


def nccl_at_one_rank(table: Table, out: Path) -> None:
    """ferrovod on NCCL at N=1 (a device copy) against torch.distributed's nccl at N=1: what
    the engine adds. Targets: at most 1.2x torch's time at 4 KiB, 1.03x at 64 MiB."""
    rows = {}
    for lib, script, extra in (
        ("ferrovod", "ferrovod_torch_bench.py", []),
        ("nccl", "gloo_bench.py", ["--backend", "nccl"]),
    ):
        js = out / f"{lib}-nccl-1.json"
        cmd = [sys.executable, str(ROOT / "benches" / script), "--np", "1", "--op", "allreduce", "--sizes", "4KiB,64MiB",
               "--device", "cuda", "--min-time", "0.5", "--json", str(js), "--timeout", "150", *extra]
        code, text, s = run(cmd, out / f"bench-{lib}-nccl-1.log", 170, env={"FERROVOD_GPU_BACKEND": "nccl"})
        if code != 0 or not js.exists():
            table.add(f"bench {lib} allreduce N=1 (NCCL)", FAIL, f"exit {code} (see bench-{lib}-nccl-1.log)", s)
            return
        for r in json.loads(js.read_text()):
            rows[(lib, r["bytes"])] = r
    for nbytes, target in ((4096, 1.2), (64 << 20, 1.03)):
        f, t = rows[("ferrovod", nbytes)], rows[("nccl", nbytes)]
        ratio = f["median_s"] / t["median_s"]
        size = "4 KiB" if nbytes == 4096 else "64 MiB"
        detail = f"ferrovod {f['median_s'] * 1e6:.1f} us, torch nccl {t['median_s'] * 1e6:.1f} us; time ratio {ratio:.2f} (target <= {target})"
        table.add(f"NCCL allreduce N=1 {size} vs torch nccl", PASS if ratio <= target else "below target", detail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = Table(args.out)
    t = time.monotonic()
    if environment(table, args.out):
        nccl_loader(table, args.out)
        gpu_tests(table, args.out)
        benchmarks(table, args.out)
        nccl_at_one_rank(table, args.out)
    table.add("whole check", INFO, "", time.monotonic() - t)
    md = table.markdown()
    (args.out / "gpu-check.md").write_text(md)
    print("\n" + md)
    return 1 if any(row[1] == FAIL for row in table.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
