"""The driver side of a Spark launch: check early what would otherwise fail late, submit one
barrier stage, stream the ranks' output, and turn the tasks' answers into values or one error.

What crosses to the executors: the stage's task function is ``ferrovod.spark._task.barrier_task``,
which PySpark ships by name (it is importable), bound to one JSON string (the job). The user's
function travels inside that JSON by reference or as source, its arguments and results as JSON,
exactly as in ``ferrovod.run``: nothing of the user's is pickled.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .. import _ship
from .._ferrovod import __version__
from ..exceptions import FerrovodError, LaunchError
from .._outcome import outcome
from . import _logs, _task

#: Seconds to wait for a cluster's executors to register enough task slots before refusing the
#: job (a local master has all its slots at once), unless FERROVOD_SPARK_SLOT_WAIT says otherwise.
SLOT_WAIT_S = 10.0


def run_job(
    fn: Callable[..., Any],
    args: Any,
    kwargs: Any,
    np: int | None,
    env: Mapping[str, str] | None,
    stream_all: bool,
    api: str,
) -> list[Any]:
    """Runs ``fn`` on ``np`` processes (``None``: one per task slot) as a barrier stage of the
    active SparkContext and returns every rank's value in rank order."""
    call = _ship.prepare(fn, args, kwargs, api)
    extra_env = _ship.check_env(env, api)
    sc = context(api)
    np, tasks, per_task, gpus_per_task = stage_shape(sc, np, api)
    secret = secrets.token_hex(32)
    server = _logs.LogServer(secret, driver_host(sc))
    job = {
        **job_header(secret, server.address, extra_env, per_task, gpus_per_task),
        "spec": call,
        "stream_all": stream_all,
    }
    task_fn = functools.partial(_task.barrier_task, json.dumps(job))
    try:
        with description(sc, f"ferrovod: {fn.__qualname__} on {np} processes"):
            try:
                outputs = sc.parallelize(range(tasks), tasks).barrier().mapPartitions(task_fn).collect()
            except Exception as e:
                raise stage_failed(e, api, sc) from e
    finally:
        server.close()
    return _results([json.loads(o) for o in outputs], np, api)


def stage_shape(sc: Any, np: int | None, api: str) -> tuple[int, int, int, int]:
    """``(np, tasks, processes per task, GPUs per task)`` of a barrier stage running ``np``
    processes (``None``: one per task slot); ``LaunchError`` when the cluster cannot run it."""
    _check_dynamic_allocation(sc, api)
    gpus_per_task = _gpus_per_task(sc, api)
    per_task = gpus_per_task or 1
    wait = _slot_wait(api)
    if np is None:
        np = _wait_for_slots(sc, 1, wait) * per_task
        if np == 0:
            raise LaunchError(f"{api}: no executor of {sc.master} registered a task slot within {wait:g} s")
    if np % per_task:
        raise LaunchError(
            f"{api}: np={np} processes do not split into tasks of {per_task} GPUs each "
            f"(spark.task.resource.gpu.amount={per_task}); ask for a multiple of {per_task}"
        )
    tasks = np // per_task
    slots = _wait_for_slots(sc, tasks, wait)
    if tasks > slots:
        unit = f"tasks of {per_task} GPU(s)" if gpus_per_task else "tasks"
        raise LaunchError(
            f"{api}: np={np} needs {tasks} {unit} running at once, but the cluster ({sc.master}) has "
            f"{slots} task slot(s); a barrier stage cannot start with fewer (Spark would retry for "
            "minutes). Ask for fewer processes or add executors."
        )
    return np, tasks, per_task, gpus_per_task


def job_header(secret: str, log_address: str, env: dict[str, str], per_task: int, gpus_per_task: int) -> dict[str, Any]:
    """What every task of a job needs, whatever it runs."""
    return {
        "version": __version__,
        "job_id": f"spark-{uuid.uuid4().hex[:16]}",
        "env": env,
        "secret": secret,
        "log_address": log_address,
        "gpus_per_task": gpus_per_task,
        "processes_per_task": per_task,
    }


def driver_host(sc: Any) -> str:
    """The address executors reach the driver at."""
    return sc.getConf().get("spark.driver.host") or socket.gethostname()


def context(api: str) -> Any:
    try:
        from pyspark import SparkContext
    except ImportError:
        raise LaunchError(f"{api} needs pyspark, which is not installed in {sys.executable}") from None
    sc = SparkContext._active_spark_context
    if sc is None:
        raise LaunchError(
            f"{api} needs an active SparkContext: create a SparkSession first "
            "(a Spark Connect session cannot run barrier stages)"
        )
    return sc


def _check_dynamic_allocation(sc: Any, api: str) -> None:
    """Barrier stages and dynamic allocation do not mix; Spark's own test, asked directly."""
    try:
        enabled = bool(sc._jvm.org.apache.spark.util.Utils.isDynamicAllocationEnabled(sc._jsc.sc().conf()))
    except Exception:
        enabled = sc.getConf().get("spark.dynamicAllocation.enabled", "false").lower() == "true" and not _is_local(sc)
    if enabled:
        raise LaunchError(
            f"{api}: dynamic allocation is enabled (spark.dynamicAllocation.enabled=true), and barrier "
            "stages need a fixed set of executors; disable it for this cluster"
        )


def _gpus_per_task(sc: Any, api: str) -> int:
    """GPUs per task from ``spark.task.resource.gpu.amount`` (0: a CPU job)."""
    raw = sc.getConf().get("spark.task.resource.gpu.amount")
    if raw is None:
        return 0
    try:
        amount = float(raw)
    except ValueError:
        raise LaunchError(f"{api}: spark.task.resource.gpu.amount={raw!r} is not a number") from None
    if not 1 <= amount < 1e6 or amount != int(amount):
        raise LaunchError(
            f"{api}: spark.task.resource.gpu.amount={raw}, but ferrovod starts one process per GPU and "
            "needs whole GPUs per task (1, 2, ...)"
        )
    return int(amount)


def _is_local(sc: Any) -> bool:
    master = str(sc.master)
    return master == "local" or master.startswith("local[")


def _slots(sc: Any) -> int:
    """How many tasks of the default resource profile the cluster can run at once: the number
    Spark's own barrier check compares against."""
    try:
        jsc = sc._jsc.sc()
        return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:
        return int(sc.defaultParallelism)


def _slot_wait(api: str) -> float:
    raw = os.environ.get("FERROVOD_SPARK_SLOT_WAIT")
    if raw is None:
        return SLOT_WAIT_S
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait < 1e6:
        raise LaunchError(f"{api}: FERROVOD_SPARK_SLOT_WAIT={raw!r} is not a number of seconds")
    return wait


def _wait_for_slots(sc: Any, needed: int, wait: float) -> int:
    """The slot count, after waiting up to ``wait`` seconds for executors still registering."""
    slots = _slots(sc)
    if _is_local(sc):
        return slots
    deadline = time.monotonic() + wait
    while slots < needed and time.monotonic() < deadline:
        time.sleep(0.2)
        slots = _slots(sc)
    return slots


@contextlib.contextmanager
def description(sc: Any, text: str) -> Iterator[None]:
    """Names the job in the Spark UI for this thread, and puts back what was there."""
    key = "spark.job.description"
    before = sc.getLocalProperty(key)
    sc.setLocalProperty(key, text)
    try:
        yield
    finally:
        sc.setLocalProperty(key, before)


def stage_failed(e: Exception, api: str, sc: Any) -> FerrovodError:
    """The error to raise when Spark itself failed the stage: the task code never ran (ferrovod
    missing on an executor), the job was cancelled, or a task's Python worker died."""
    text = str(e)
    if "No module named 'ferrovod" in text:
        return LaunchError(
            f"{api}: ferrovod is not installed in the Python the executors run "
            f"(spark.pyspark.python / PYSPARK_PYTHON, {sc.pythonExec!r}); install it there"
        )
    if "cancelled" in text:
        return FerrovodError(
            f"{api}: the Spark job was cancelled; its processes are being stopped with their tasks"
        )
    lines = [ln for ln in text.splitlines() if ln.strip()][:20]
    return FerrovodError(f"{api}: the barrier stage failed:\n" + "\n".join(lines))


def check_tasks(parts: list[dict[str, Any]], api: str, what: str) -> None:
    """Raises the setup errors (``LaunchError``) or the tasks' own errors of a stage's answers.
    A task that failed itself (not its ranks) ran nothing, or stopped its launcher: that is the
    cause whatever the ranks of the other tasks then reported."""
    setup = list(dict.fromkeys(e for p in parts for e in p.get("setup_errors", [])))
    if setup:
        raise LaunchError(f"{api}: the {what} could not start:\n" + "\n".join(setup))
    task_errors = [p["task_error"] for p in parts if "task_error" in p]
    if task_errors:
        raise FerrovodError(f"{api}: the {what} failed:\n" + "\n".join(task_errors))


def _results(parts: list[dict[str, Any]], np: int, api: str) -> list[Any]:
    """Every rank's value, or the first failing rank's error, from the tasks' answers."""
    check_tasks(parts, api, "job")
    results: dict[int, dict[str, Any]] = {}
    hosts: dict[int, str] = {}
    rank_tails: dict[int, list[str]] = {}
    for p in parts:
        results.update({int(r): res for r, res in p["results"].items()})
        rank_tails.update({int(r): t for r, t in p["rank_tails"].items()})
        hosts.update({r: p["host"] for r in p["ranks"]})
    # The report of the first task whose launcher failed: every launcher of a job reports the
    # same first failure, agreed through the store.
    failed = next((p for p in sorted(parts, key=lambda p: p["task"]) if p["exit"] != 0), None)
    code, failure, tail = (failed["exit"], failed["failure"], failed["tail"]) if failed else (0, None, "")
    return outcome(results, np, code, failure, tail, hosts, rank_tails)
