"""``ferrovod.spark.Pool``: a :class:`ferrovod.Pool` whose ranks run on the cluster's executors.

One barrier stage starts them (its tasks gather as :func:`ferrovod.spark.run`'s do, then each
starts a launcher host, :mod:`ferrovod.spark._pool_host`, apart from itself, and ends); the
processes then outlive the stage. Every rank and every launcher host connects back to the driver
over TCP, proving the job's secret (:mod:`ferrovod._auth`, both ways: a rank runs only what the
driver that started it sends). The driver then runs functions as ``ferrovod.Pool`` does.

Their life is bound to the driver: ``close()``, the SparkContext stopping (looked at twice a
second), or the driver dying (the connections close; TCP keepalive when its host vanished) ends
them; so does their executor's JVM dying (each launcher host watches it). The task slots the
stage used are free again once it ends: Spark may run other tasks next to a pool's processes.
"""

from __future__ import annotations

import functools
import json
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from .. import _auth, _control
from .._launch import Launched
from .._pool import LAUNCHER_GRACE_S, Pool as LocalPool, RankLost
from ..exceptions import LaunchError, PoolClosedError
from . import _driver, _logs, _task

#: Seconds every rank and launcher host gets to connect once the stage has ended.
START_TIMEOUT_S = 60.0

#: Seconds a connection gets to finish its handshake and hello.
HELLO_TIMEOUT_S = 10.0

#: Seconds ``close`` waits for the ranks to leave before asking the hosts to stop them, and then
#: for the hosts to report.
_LEAVE_WAIT_S = 3.0
_STOP_WAIT_S = 6.0

#: Seconds between looks at whether the SparkContext is still the active one.
_CHECK_S = 0.5


class Pool(LocalPool):
    """``np`` processes on the cluster's executors that run one function after another, keeping
    their communicator and ``ferrovod.worker_state``: ``pool.run(fn, **kwargs)`` has
    ``HorovodRunner.run``'s semantics and may be called many times. ``env`` adds environment
    variables to every rank. Needs an active SparkContext; use it as a context manager, or call
    :meth:`close`. GPU clusters get one process per GPU, as ``HorovodRunner`` does."""

    _api = "ferrovod.spark.Pool"

    def _start(self, np: int, extra_env: dict[str, str]) -> Any:
        return _SparkRanks(np, extra_env, self._api)


class _SparkRanks:
    """The ranks' and hosts' connections to the driver, and what the hosts reported."""

    def __init__(self, np: int, env: Mapping[str, str], api: str) -> None:
        sc = _driver.context(api)
        np, tasks, per_task, gpus_per_task = _driver.stage_shape(sc, np, api)
        self._api = api
        self._sc = sc
        self._secret = secrets.token_hex(32)
        self.channels: list[socket.socket] = []
        self.hosts: dict[int, str] = {}  # rank -> its host
        self._host_conns: dict[int, socket.socket] = {}  # task -> its launcher host
        self._reports: dict[int, dict[str, Any]] = {}  # task -> how its launcher ended
        self._gone: str | None = None  # why the pool ended under its owner
        self._stopped = threading.Event()
        host = _driver.driver_host(sc)
        self._logs = _logs.LogServer(self._secret, host)
        self._listener = _logs.listen(host)
        port = self._listener.getsockname()[1]
        job = {
            **_driver.job_header(self._secret, self._logs.address, dict(env), per_task, gpus_per_task),
            "pool_address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        }
        try:
            parts = self._start_stage(sc, job, np, tasks, api)
            # The plan gives task i ranks i * per_task onwards.
            self.hosts = {r: parts[r // per_task]["host"] for r in range(np)}
            self._accept(np, tasks)
        except BaseException:
            self._close_all()
            raise
        finally:
            self._listener.close()  # nobody else is expected
        self._watcher = threading.Thread(target=self._watch_context, name="ferrovod-pool-context", daemon=True)
        self._watcher.start()

    def _start_stage(self, sc: Any, job: dict[str, Any], np: int, tasks: int, api: str) -> list[dict[str, Any]]:
        """Runs the stage that starts the launcher hosts; every task's answer, in task order."""
        task_fn = functools.partial(_task.pool_task, json.dumps(job))
        with _driver.description(sc, f"ferrovod: a pool of {np} processes"):
            try:
                outputs = sc.parallelize(range(tasks), tasks).barrier().mapPartitions(task_fn).collect()
            except Exception as e:
                raise _driver.stage_failed(e, api, sc) from e
        parts = [json.loads(o) for o in outputs]
        _driver.check_tasks(parts, api, "pool")
        return sorted(parts, key=lambda p: p["task"])

    def _accept(self, np: int, tasks: int) -> None:
        """Takes every rank's and host's connection; ``LaunchError`` when a launcher ends first or
        they are not all there within :data:`START_TIMEOUT_S`."""
        ranks: dict[int, socket.socket] = {}
        deadline = time.monotonic() + START_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ, None)
            while len(ranks) < np or len(self._host_conns) < tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [r for r in range(np) if r not in ranks]
                    raise LaunchError(
                        f"{self._api}: rank(s) {', '.join(map(str, missing)) or 'none'} and "
                        f"{tasks - len(self._host_conns)} launcher host(s) did not connect to the driver within "
                        f"{START_TIMEOUT_S:g} s (their errors are in the executors' stderr)"
                    )
                for key, _ in sel.select(min(left, 1.0)):
                    if key.data is not None:  # a host spoke before the pool started: its launcher ended
                        task = key.data
                        report = self._read_report(task)
                        sel.unregister(key.fileobj)
                        raise LaunchError(
                            f"{self._api}: the launcher of task {task} ended as the pool started: {_report_text(report)}"
                        )
                    hello, conn = self._hello()
                    if hello is None:
                        continue
                    task = _index(hello.get("task"), tasks) if hello["type"] == "host" else None
                    rank = _index(hello.get("rank"), np) if hello["type"] == "hello" else None
                    if task is not None and task not in self._host_conns:
                        self._host_conns[task] = conn
                        sel.register(conn, selectors.EVENT_READ, task)
                    elif rank is not None and rank not in ranks:
                        ranks[rank] = conn
                    else:
                        conn.close()  # a duplicate, or not ours
            for conn in self._host_conns.values():
                sel.unregister(conn)
        self.channels = [ranks[r] for r in range(np)]

    def _hello(self) -> tuple[dict[str, Any] | None, socket.socket]:
        conn, _ = self._listener.accept()
        conn.settimeout(HELLO_TIMEOUT_S)
        try:
            if _auth.serve(conn, self._secret, _control.SPARK_POOL):
                hello = _control.receive(conn)
                if hello["type"] in ("host", "hello"):
                    _control.keep_alive(conn)
                    conn.settimeout(None)
                    return hello, conn
        except (OSError, ValueError, _control.ChannelClosed):
            pass  # not ours, or gone during the handshake: dropped below
        conn.close()
        return None, conn

    def call(self, message: dict[str, Any]) -> dict[int, dict[str, Any]] | None:
        """As :meth:`ferrovod._pool._Ranks.call`: every rank's result, ``None`` when a launcher
        ended (its report says why), :class:`RankLost` when a rank's connection closed and no
        launcher reported; :class:`PoolClosedError` when the pool ended under the call."""
        if self._gone is not None:
            raise PoolClosedError(f"{self._api}: the pool is closed ({self._gone})")
        for channel in self.channels:
            try:
                _control.send(channel, message)
            except OSError:
                pass  # that rank is gone: its connection's end says so below
        results: dict[int, dict[str, Any]] = {}
        lost: dict[int, float] = {}  # rank -> when its connection closed
        with selectors.DefaultSelector() as sel:
            for rank, channel in enumerate(self.channels):
                sel.register(channel, selectors.EVENT_READ, ("rank", rank))
            for task, conn in self._host_conns.items():
                if task not in self._reports:
                    sel.register(conn, selectors.EVENT_READ, ("host", task))
            while len(results) < len(self.channels):
                events = sel.select(_CHECK_S)
                if self._gone is not None:  # the connections were cut under the call
                    raise PoolClosedError(f"{self._api}: the pool is closed ({self._gone})")
                for rank, since in lost.items():
                    if time.monotonic() - since > LAUNCHER_GRACE_S:
                        raise RankLost(rank, f"its connection to the driver closed; it ran on {self.hosts[rank]}")
                for key, _ in events:
                    what, index = key.data
                    if what == "host":
                        sel.unregister(key.fileobj)
                        self._read_report(index)
                        return None  # a launcher ended during a call: its report is the account
                    try:
                        reply = _control.receive(self.channels[index])
                    except (_control.ChannelClosed, OSError, ValueError):
                        sel.unregister(key.fileobj)
                        if index not in results:
                            lost[index] = time.monotonic()
                        continue
                    if reply.get("type") == "result" and reply.get("id") == message["id"]:
                        results[index] = reply["result"]
        return results

    def _read_report(self, task: int) -> dict[str, Any]:
        """Reads how task ``task``'s launcher ended (a report, or its connection's end)."""
        conn = self._host_conns[task]
        conn.settimeout(HELLO_TIMEOUT_S)
        try:
            report = _control.receive(conn)
        except (OSError, ValueError, _control.ChannelClosed):
            report = {"type": "ended", "code": None}
        self._reports[task] = report
        return report

    def ended(self) -> Launched:
        """How the pool's launchers ended: the first failing one's account, once every host has
        reported (or its connection closed)."""
        deadline = time.monotonic() + _STOP_WAIT_S + LAUNCHER_GRACE_S
        self._collect_reports(deadline)
        failing = [t for t in sorted(self._reports) if self._reports[t].get("code") != 0]
        if not failing:
            return Launched(1, None, None, [], {}, "every launcher of the pool ended without a failure")
        report = self._reports[failing[0]]
        if report.get("code") is None:
            return Launched(
                1, None, None, [], {},
                f"the launcher host of task {failing[0]} ended without a report: its executor died, or it was killed",
            )
        failure = report.get("failure")
        tails = report.get("rank_tails") if isinstance(report.get("rank_tails"), dict) else {}
        return Launched(
            int(report["code"]),
            {"failure": failure} if isinstance(failure, dict) else None,
            None,
            [],
            {int(r): list(t) for r, t in tails.items()},
            str(report.get("tail", "")),
        )

    def _collect_reports(self, deadline: float) -> None:
        with selectors.DefaultSelector() as sel:
            for task, conn in self._host_conns.items():
                if task not in self._reports:
                    sel.register(conn, selectors.EVENT_READ, task)
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                    sel.unregister(key.fileobj)
                    self._read_report(key.data)

    def stop(self) -> None:
        """Says ``close`` to every rank; asks the hosts still running after a moment to stop their
        launchers; waits for their reports, then closes every connection (which alone ends them)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for channel in self.channels:
            try:
                _control.send(channel, {"type": "close"})
            except OSError:
                pass  # that rank is gone already
        self._collect_reports(time.monotonic() + _LEAVE_WAIT_S)
        for task, conn in self._host_conns.items():
            if task not in self._reports:
                try:
                    _control.send(conn, {"type": "stop"})
                except OSError:
                    pass  # that host is gone already: its report (or its end) is collected below
        self._collect_reports(time.monotonic() + _STOP_WAIT_S)
        self._close_all()

    def _close_all(self) -> None:
        self._stopped.set()
        for sock in [*self.channels, *self._host_conns.values()]:
            _logs._shutdown(sock, socket.SHUT_RDWR)
            sock.close()
        self._logs.close(drain_s=1.0)

    def _watch_context(self) -> None:
        """Ends the pool when its SparkContext stops: the connections are cut, so every rank and
        host sees their end and leaves, and a call in flight raises ``PoolClosedError``."""
        from pyspark import SparkContext

        while not self._stopped.wait(_CHECK_S):
            if SparkContext._active_spark_context is not self._sc:
                self._gone = "its SparkContext stopped"
                for sock in [*self.channels, *self._host_conns.values()]:
                    _logs._shutdown(sock, socket.SHUT_RDWR)
                return


def _index(value: Any, n: int) -> int | None:
    """``value`` when it is an index below ``n``, else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n else None


def _report_text(report: dict[str, Any]) -> str:
    failure = report.get("failure")
    if isinstance(failure, dict):
        return str(failure.get("message") or failure.get("kind"))
    if report.get("code") is None:
        return "its host ended without a report"
    return f"exit status {report.get('code')}\n{report.get('tail', '')}"
