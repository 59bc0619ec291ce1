"""The launcher host of one task of a ``ferrovod.spark.Pool``:

    python -m ferrovod.spark._pool_host --config-fd C [--listen-fd L] [--jvm-pid P]

Started apart from the task (in a session of its own) by :func:`ferrovod.spark._task.pool_task`,
it outlives the barrier stage. It runs this task's ``ferrovod-run`` with the plan, its ranks
being ``python -m ferrovod._pool_worker --driver ADDRESS``, streams their output to the driver's
log channel, and holds a control connection of its own to the driver, on which it reports how
the launcher ended (``{"type": "ended", ...}``).

The pool's life is bound to the driver and the executor: when the driver's connection closes
(``close()``, the SparkContext stopped, the driver died) or says ``stop``, or the executor's JVM
dies, this host stops its launcher, which stops its ranks; and the launcher watches this host, so
killing it stops them too.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from .. import _control, _launch
from .._launch import Launched
from . import _logs
from ._task import _ToDriver

#: Seconds the launcher gets to stop its ranks: a pool is gone within 10 s of its end.
GRACE_PERIOD_S = 5

#: Seconds to reach the driver.
CONNECT_TIMEOUT_S = 30.0


def main(argv: list[str]) -> int:
    options = dict(zip(argv[::2], argv[1::2]))
    if len(argv) % 2 or "--config-fd" not in options or not all(v.isdigit() for v in options.values()):
        print(
            "usage: python -m ferrovod.spark._pool_host --config-fd C [--listen-fd L] [--jvm-pid P] "
            "(started by ferrovod.spark.Pool)",
            file=sys.stderr,
        )
        return 2
    with os.fdopen(int(options["--config-fd"]), "rb") as f:
        config = json.loads(f.read())
    job, task = config["job"], config["task"]
    listener = socket.socket(fileno=int(options["--listen-fd"])) if "--listen-fd" in options else None
    try:
        driver = _control.connect_to_driver(job["pool_address"], job["secret"], CONNECT_TIMEOUT_S)
    except (OSError, ValueError) as e:
        print(f"ferrovod.spark.Pool: task {task} cannot reach the driver at {job['pool_address']}: {e}", file=sys.stderr)
        return 1
    _control.send(driver, {"type": "host", "task": task, "pid": os.getpid()})
    watched: list[Any] = [driver]
    if "--jvm-pid" in options:
        try:
            watched.append(os.pidfd_open(int(options["--jvm-pid"])))
        except OSError:
            return 0  # the executor is gone already
    host = Host(job, config["plan"], listener)
    done = host.wait(watched)
    try:
        _control.send(driver, ended(done))
    except (OSError, ValueError):
        pass  # the driver is gone: nobody is left to tell
    driver.close()
    return 0


def ended(done: Launched | None) -> dict[str, Any]:
    """The report the driver gets: how the launcher ended, with what it needs for the error."""
    if done is None:
        return {"type": "ended", "code": 1, "failure": None, "tail": "the launcher did not start", "rank_tails": {}}
    return {
        "type": "ended",
        "code": done.code,
        "failure": done.failure,
        "tail": done.launcher_tail[-(64 << 10) :],
        "rank_tails": {str(r): t for r, t in done.rank_tails.items()},
    }


class Host:
    """This task's launcher, run by a thread, and the means to stop it."""

    def __init__(self, job: dict[str, Any], plan: str, listener: socket.socket | None) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._done: Launched | None = None
        self._ended_r, self._ended_w = os.pipe()
        client = None
        try:
            client = _logs.LogClient(job["log_address"], job["secret"])
        except OSError as e:
            print(f"ferrovod: cannot stream output to the driver at {job['log_address']}: {e}", file=sys.stderr)
        self._client = client
        options = ["--plan", "-", "--grace-period", str(GRACE_PERIOD_S)]
        fds: tuple[int, ...] = ()
        if listener is not None:
            options += ["--listen-fd", str(listener.fileno())]
            fds = (listener.fileno(),)
        env = {
            **os.environ,
            **job["env"],
            "FERROVOD_NO_WATCH_PARENT": "0",  # the launcher ends with this host
            "FERROVOD_SECRET": job["secret"],
            "FERROVOD_SPARK_LOG": job["log_address"],
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "ferrovod._pool_worker", "--driver", job["pool_address"]]

        def started(proc: subprocess.Popen[bytes]) -> None:
            self._proc = proc
            if listener is not None:
                listener.close()  # the launcher has its own copy now

        def run() -> None:
            try:
                self._done = _launch.launch(
                    options, command, env, sink=_ToDriver(client), stdin_text=plan, pass_fds=fds, started=started
                )
            except Exception as e:  # noqa: BLE001 (reported to the driver as a launcher that did not start)
                print(f"ferrovod.spark.Pool: the launcher did not start: {e}", file=sys.stderr)
            finally:
                os.close(self._ended_w)

        self._thread = threading.Thread(target=run, name="ferrovod-pool-launcher", daemon=True)
        self._thread.start()

    def wait(self, watched: list[Any]) -> Launched | None:
        """Waits for the launcher to end, stopping it first when something in ``watched`` (the
        driver's connection, the JVM's pidfd) ends or the driver says ``stop``."""
        with selectors.DefaultSelector() as sel:
            sel.register(self._ended_r, selectors.EVENT_READ)
            for w in watched:
                sel.register(w, selectors.EVENT_READ)
            self._until_stop_needed(sel)
        self._stop()
        self._thread.join()
        if self._client is not None:
            self._client.close()
        return self._done

    def _until_stop_needed(self, sel: selectors.BaseSelector) -> None:
        """Blocks until the launcher ended, the driver went or said ``stop``, or the JVM exited."""
        while True:
            for key, _ in sel.select():
                if key.fileobj == self._ended_r:
                    return
                if isinstance(key.fileobj, socket.socket):
                    try:
                        message = _control.receive(key.fileobj)
                    except (OSError, ValueError, _control.ChannelClosed):
                        return  # the driver is gone
                    if message["type"] == "stop":
                        return
                    continue  # nothing else is sent to a host
                return  # the JVM exited

    def _stop(self) -> None:
        """Asks the launcher to stop its ranks (it kills them after its grace period) and waits."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=GRACE_PERIOD_S + 5)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
