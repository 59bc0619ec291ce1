"""One task of the barrier stage: learn its place, do the stage's one ``allGather``, run
``ferrovod-run`` with the plan, and hand back its ranks' results as one JSON string.

Every task calls ``allGather`` exactly once, even when something is already wrong on it: a task
that skipped it would leave the others waiting in the barrier. A problem found before the
``allGather`` travels in its record instead, and then no task starts anything.

A rank's failure is not an exception of the task: the task returns the failure as data (the
launcher's structured report, the ranks' tracebacks and last lines), which a failed Spark task
could not carry to the driver.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .. import _launch
from .._detach import jvm_pid, start_detached
from .._ferrovod import __version__, barrier_plan
from .._ship import Exchange
from . import _logs


def barrier_task(job_text: str, _partition: Iterator[Any]) -> Iterator[str]:
    """The function of the barrier stage's ``mapPartitions``. ``job_text`` is the JSON the
    driver wrote (:func:`ferrovod.spark._driver.run_job`)."""
    yield _task(job_text, _run_launcher)


def pool_task(job_text: str, _partition: Iterator[Any]) -> Iterator[str]:
    """The function of the stage that starts a ``ferrovod.spark.Pool``: the same gathering, then
    a launcher host (:mod:`ferrovod.spark._pool_host`) started apart from this task, which ends
    at once while its processes stay and connect to the driver."""

    def start(job: dict[str, Any], index: int, records: list[dict[str, Any]], listener: Any) -> dict[str, Any]:
        _start_pool_host(job, index, records, listener)
        return {"task": index, "host": records[index]["host"]}

    yield _task(job_text, start)


def _task(job_text: str, run: Callable[[dict[str, Any], int, list[dict[str, Any]], Any], dict[str, Any]]) -> str:
    """One task: the gathering, then ``run(job, index, records, listener)``; its answer (or the
    setup errors, or the task's own error) as the JSON the driver reads."""
    job = json.loads(job_text)
    index, host, records, listener, errors = _gather(job)
    if errors:
        return json.dumps({"task": index, "host": host, "setup_errors": errors})
    try:
        answer = run(job, index, records, listener)
    except Exception as e:
        # An answer, not an exception: the driver then names this task's error, not Spark's.
        answer = {"task": index, "host": host, "task_error": f"task {index} on {host}: {type(e).__name__}: {e}"}
    finally:
        if listener is not None:
            listener.close()
    return json.dumps(answer)


def _gather(job: dict[str, Any]) -> tuple[int, str, list[dict[str, Any]], Any, list[str]]:
    """Learns this task's place and does the stage's one ``allGather``: ``(index, host, every
    task's record, task 0's store listener, the setup errors of every task)``. The listener is
    ``None`` on other tasks, and closed when there are errors."""
    from pyspark import BarrierTaskContext

    ctx = BarrierTaskContext.get()
    index = ctx.partitionId()
    host = _host_of(ctx.getTaskInfos()[index].address)
    record: dict[str, Any] = {"host": host, "gpus": [], "port": None, "error": None}
    listener = None
    try:
        if job["version"] != __version__:
            raise RuntimeError(
                f"the driver runs ferrovod {job['version']} but this executor's Python ({sys.executable}) "
                f"has ferrovod {__version__}; install the same version on both"
            )
        if job["gpus_per_task"]:
            record["gpus"] = _task_gpus(ctx, job["gpus_per_task"])
        if index == 0:
            listener = _logs.listen(host)
            listener.set_inheritable(True)
            record["port"] = listener.getsockname()[1]
    except Exception as e:
        record["error"] = f"task {index} on {host}: {e}"

    # The stage's one synchronisation: every task learns every other's host, GPUs and the port.
    records = [json.loads(m) for m in ctx.allGather(json.dumps(record))]
    errors = [r["error"] for r in records if r["error"]]
    if errors and listener is not None:
        listener.close()
        listener = None
    return index, host, records, listener, errors


def _plan(job: dict[str, Any], index: int, records: list[dict[str, Any]]) -> str:
    """The launcher's plan for this task; the launcher's own builder checks it, so Python and
    Rust never disagree on it."""
    per_task = job["processes_per_task"]
    return barrier_plan(
        job["job_id"],
        records[0]["host"],
        records[0]["port"],
        index,
        [(r["host"], r["gpus"], per_task) for r in records],
    )


def _start_pool_host(job: dict[str, Any], index: int, records: list[dict[str, Any]], listener: Any) -> None:
    """Starts this task's launcher host apart from the task, handing it its settings (with the
    secret) through a pipe and task 0's store listener as a descriptor."""
    config = {"job": job, "task": index, "host": records[index]["host"], "plan": _plan(job, index, records)}
    read_fd, write_fd = os.pipe()
    try:
        command = [sys.executable, "-m", "ferrovod.spark._pool_host", "--config-fd", str(read_fd)]
        fds = [read_fd]
        if listener is not None:
            command += ["--listen-fd", str(listener.fileno())]
            fds.append(listener.fileno())
        jvm = jvm_pid()
        if jvm:
            command += ["--jvm-pid", str(jvm)]
        start_detached(command, {**os.environ, "PYTHONUNBUFFERED": "1"}, fds)
    finally:
        os.close(read_fd)
    with os.fdopen(write_fd, "wb") as f:
        f.write(json.dumps(config).encode())


def _run_launcher(job: dict[str, Any], index: int, records: list[dict[str, Any]], listener: Any) -> dict[str, Any]:
    """Starts this task's ``ferrovod-run`` and waits for it; returns what the driver needs."""
    per_task = job["processes_per_task"]
    first_rank = index * per_task
    my_ranks = range(first_rank, first_rank + per_task)
    plan = _plan(job, index, records)
    options = ["--plan", "-"]
    fds: tuple[int, ...] = ()
    if listener is not None:
        options += ["--listen-fd", str(listener.fileno())]
        fds = (listener.fileno(),)
    env = {
        **os.environ,
        **job["env"],
        # Whatever the executor's environment says: the launcher must stop its processes when
        # Spark kills this task.
        "FERROVOD_NO_WATCH_PARENT": "0",
        "FERROVOD_SECRET": job["secret"],
        "FERROVOD_SPARK_LOG": job["log_address"],
        "PYTHONUNBUFFERED": "1",
    }
    client = None
    if job["stream_all"]:
        try:
            client = _logs.LogClient(job["log_address"], job["secret"])
        except OSError as e:
            print(f"ferrovod: cannot stream output to the driver at {job['log_address']}: {e}", file=sys.stderr)
    sink = _ToDriver(client)
    # The function, its arguments and the results stay in memory (memfds the ranks inherit):
    # a cancel SIGKILLs this Python worker, and nothing may be left on disk after it.
    with Exchange(job["spec"], my_ranks) as exchange:
        done = _launch.launch(
            options,
            exchange.command(),
            env,
            sink=sink,
            stdin_text=plan,
            pass_fds=(*fds, *exchange.pass_fds),
            # The launcher has its own copy of the store socket now.
            started=(lambda _: listener.close()) if listener is not None else None,
        )
        results = exchange.results()
    if client is not None:
        client.close()
    return {
        "task": index,
        "host": records[index]["host"],
        "ranks": list(my_ranks),
        "exit": done.code,
        "failure": done.failure,
        "results": results,
        "rank_tails": {r: done.rank_tails.get(r, []) for r in my_ranks},
        "tail": done.launcher_tail,
    }


class _ToDriver:
    """The sink of a task's launcher: the driver's log channel when the job streams everything,
    else the executor's own streams (its log)."""

    def __init__(self, client: _logs.LogClient | None) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __call__(self, stream: str, text: str) -> None:
        if not self._send(stream, text):
            # Not streamed: the executor's log gets it (under a local master, that is the
            # driver's terminal, so a streamed line is not written twice).
            _launch.write_to_caller(stream, text)

    def _send(self, stream: str, text: str) -> bool:
        with self._lock:
            client = self._client
        if client is None:
            return False
        try:
            client.send("out" if stream == "stdout" else "err", text.rstrip("\n"))
            return True
        except OSError as e:
            with self._lock:
                self._client = None
            print(f"ferrovod: stopped streaming output to the driver: {e}", file=sys.stderr)
            return False


def _host_of(address: str) -> str:
    """The host of Spark's ``host:port`` (``[v6]:port``) task address."""
    host = address.rpartition(":")[0] if ":" in address else address
    return host.strip("[]")


def _task_gpus(ctx: Any, expected: int) -> list[int]:
    """The CUDA ids of the GPUs Spark gave this task, checked: as many as each task needs, and
    integers, since they become ``CUDA_VISIBLE_DEVICES``."""
    resource = ctx.resources().get("gpu")
    addresses = list(resource.addresses) if resource is not None else []
    if len(addresses) != expected:
        raise RuntimeError(
            f"Spark gave this task {len(addresses)} GPU(s) ({', '.join(addresses) or 'none'}) "
            f"but each task should have {expected}"
        )
    if not all(a.isdigit() for a in addresses):
        raise RuntimeError(f"GPU addresses {addresses} are not CUDA device ids (non-negative integers)")
    return [int(a) for a in addresses]
