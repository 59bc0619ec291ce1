"""Shared pytest helpers: running a worker script on N ranks through the real launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
WORKERS = TESTS / "workers"


def launch(np_: int, script: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``tests/workers/<script>`` on ``np_`` ranks with ``ferrovod-run`` (the console script
    of the installed package, through ``python -m ferrovod``) and returns the finished
    launcher: exit code, and every rank's output prefixed with ``[rank]``."""
    cmd = [sys.executable, "-m", "ferrovod", "-np", str(np_), "--", sys.executable, str(WORKERS / script), *args]
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def without_launcher(np_: int, script: str, *args: str, timeout_s: int = 20) -> list[subprocess.Popen[str]]:
    """Starts ``tests/workers/<script>`` as ``np_`` ranks without a launcher (rank 0 serves the
    store itself), with ``FERROVOD_TIMEOUT=timeout_s``: nothing ends the others when one rank
    dies, so a test sees what each survivor does. Each process's output is one pipe."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(np_):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERROVOD_")}
        env.update(
            FERROVOD_RANK=str(r),
            FERROVOD_SIZE=str(np_),
            FERROVOD_RENDEZVOUS=f"127.0.0.1:{port}",
            FERROVOD_SECRET="test-secret",
            FERROVOD_HOST_STORE="1",
            FERROVOD_TIMEOUT=str(timeout_s),
        )
        cmd = [sys.executable, str(WORKERS / script), *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def check(proc: subprocess.CompletedProcess[str]) -> str:
    """The launcher's output, after asserting it succeeded (showing everything if not)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def world1():
    """This process as rank 0 of 1 (no launcher environment)."""
    import ferrovod as fv

    for k in [k for k in os.environ if k.startswith("FERROVOD_")]:
        os.environ.pop(k)
    fv.init()
    yield
    fv.shutdown()


@pytest.fixture
def ranks():
    """``ranks(np, script, *args)``: run a worker on ``np`` ranks and return its checked stdout."""

    def go(np_: int, script: str, *args: str, timeout: float = 120) -> str:
        return check(launch(np_, script, *args, timeout=timeout))

    return go


@pytest.fixture(scope="session")
def spark():
    """One local[4] SparkSession for every Spark test; its Python workers import the tests'
    modules (Spark's own UDFs, the baseline some tests compare with, ship functions by reference)."""
    os.environ["PYSPARK_PYTHON"] = sys.executable  # executors run this venv's Python
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[4]")
        .appName("ferrovod-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
