"""``ferrovod.spark`` on master ``local-cluster[2,2,1024]``: two executor JVMs, each with two
fake GPUs handed out by a discovery script. Its own driver process (one SparkContext per
process), whose training function is defined in that script's ``__main__``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import procs

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DRIVER = Path(__file__).resolve().parent / "drivers" / "gpu_cluster.py"


def _discovery_script(tmp: Path) -> Path:
    """A GPU discovery script that gives each caller two ids nobody else got (0,1 then 2,3 ...),
    as the workers of two machines would each see their own GPUs."""
    script = tmp / "gpus.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"exec 9>>{tmp}/gpus.lock\n"
        "flock 9\n"
        f"n=$(cat {tmp}/gpus.next 2>/dev/null || echo 0)\n"
        f"echo $((n+2)) > {tmp}/gpus.next\n"
        'echo "{\\"name\\": \\"gpu\\", \\"addresses\\": [\\"$n\\", \\"$((n+1))\\"]}"\n'
    )
    script.chmod(0o755)
    return script


def test_every_process_sees_its_hosts_gpus(tmp_path):
    script = _discovery_script(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{"))
    values = json.loads(line)["values"]
    assert [v["rank"] for v in values] == [0, 1, 2, 3]
    # Both executors run on this machine: one host of four processes.
    assert all(v["local_size"] == 4 for v in values)
    assert sorted(v["local_rank"] for v in values) == [0, 1, 2, 3]
    # Every process sees the four GPUs Spark handed to the tasks of this host (the ids the
    # discovery script gave the two executors, 0 to 3), listed by local rank, so that
    # `torch.cuda.set_device(hvd.local_rank())` picks the process's own GPU (the launcher's
    # tests check the order itself).
    seen = {v["cuda"] for v in values}
    assert len(seen) == 1, seen
    assert sorted(seen.pop().split(",")) == ["0", "1", "2", "3"]


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "python" / "spark_train.py"


def test_the_spark_example_trains_from_its_own_driver(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--master", "local[2]", "--np", "2"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}"
    out = proc.stdout
    assert "[0] epoch 2: mean loss over ranks" in out
    assert "[0] rank 0 done" in out and "[1] rank 1 done" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("rank 0 returned"))
    weights = json.loads(line.split("returned ", 1)[1].split(" (", 1)[0])
    assert weights == pytest.approx([2.0, -1.0, 0.5, 0.3], abs=0.05)
    scored = next(ln for ln in out.splitlines() if ln.startswith("scored "))
    assert scored.startswith("scored 1000 rows; x = [0.0, 1.0, 0.0] -> y = ")
    y = float(scored.split("-> y = ")[1].split()[0])
    assert y == pytest.approx(weights[1] + weights[3], abs=1e-3)
    # Then a ferrovod.spark.Pool trains and scores with the model its ranks kept in memory.
    line = next(ln for ln in out.splitlines() if ln.startswith("the pool trained "))
    pool_weights = json.loads(line.split("trained ", 1)[1].split(";", 1)[0])
    assert pool_weights == pytest.approx([2.0, -1.0, 0.5, 0.3], abs=0.05)
    scored = next(ln for ln in out.splitlines() if ln.startswith("the pool scored "))
    assert scored.startswith("the pool scored 1000 rows with that model; x = [0.0, 1.0, 0.0] -> y = ")
    # The model is unrounded in the ranks, the printed weights rounded to 3 places.
    assert float(scored.split("-> y = ")[1]) == pytest.approx(pool_weights[1] + pool_weights[3], abs=2e-3)


def test_ctrl_c_in_the_driver_leaves_no_process_alive(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER.parent / "interrupt.py"), str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        pids = procs.pids_of(procs.wait_for_pid_files(tmp_path, 2, lambda: driver.poll() is None))
        assert all(procs.alive(p) for p in pids)
        pressed = time.monotonic()
        driver.send_signal(signal.SIGINT)
        out, _ = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 130, out
    assert "interrupted: KeyboardInterrupt" in out
    procs.assert_gone_within(pids, pressed, 10, "Ctrl-C")
