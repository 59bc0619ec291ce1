"""The Spark task's side: finds its host's inference worker (starting it when it is the first),
streams the task's rows to it as Arrow and yields the predictions back in order.

A worker is found by name: an abstract Unix socket (nothing on disk to leave behind) named after
the application's secret and the worker's index. The first task to bind the name starts the
worker on that bound socket, so two tasks never start two workers. A task keeps at most a window
of rows unanswered, and resends them once to a new worker when its worker dies.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from .._detach import jvm_pid, start_detached
from . import _wire

#: Workers a task tries when each dies while it says hello.
_HELLO_ATTEMPTS = 3

#: Seconds a task waits for a worker to start (a model to load is not counted: see the timeout).
START_TIMEOUT_S = 60.0


class WorkerLost(Exception):
    """The worker's connection ended while rows were unanswered."""


def predict(data: Iterator[Any], config: dict[str, Any]) -> Iterator[pa.Array]:
    """The body of the Arrow UDF: Spark's Arrow batches in, Arrow predictions out (no pandas on
    either side), same rows in the same order (Spark checks the total, not the boundaries)."""
    link: Link | None = None
    try:
        for frame in data:
            columns, has_tuple = _columns(frame)
            batch = pa.RecordBatch.from_arrays(columns, names=[f"c{i}" for i in range(len(columns))])
            if link is None:
                link = Link(config, has_tuple)
            size = config["model"]["batch_size"]
            for start in range(0, len(batch), size):
                link.submit(batch.slice(start, size))
                while link.unanswered >= link.window:
                    yield link.take()
            while link.ready():
                yield link.take()
        if link is not None:
            link.finish()
            while link.unanswered:
                yield link.take()
    finally:
        if link is not None:
            link.close()


def _columns(frame: Any) -> tuple[list[pa.Array], bool]:
    """The input columns of one Arrow batch, and whether they came as separate columns (Spark
    gives one array per column, a tuple of them for several)."""
    if isinstance(frame, tuple):
        return [_array(c) for c in frame], True
    frame = _array(frame)
    if pa.types.is_struct(frame.type):  # one struct column: its fields, as Spark's own takes them
        return frame.flatten(), False
    return [frame], False


def _array(column: Any) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


class Link:
    """The connection to this task's worker, with the rows it has not answered yet."""

    def __init__(self, config: dict[str, Any], has_tuple: bool) -> None:
        self._config = config
        self._model = {**config["model"], "has_tuple": has_tuple}
        self._timeout = float(config["timeout_s"])
        self._unanswered: deque[pa.RecordBatch] = deque()
        self.unanswered = 0
        self._finished = False
        self._retried = False
        self._sock: socket.socket | None = None
        self.pid = 0
        self.window = 1
        self._connect()

    def submit(self, batch: pa.RecordBatch) -> None:
        self._unanswered.append(batch)
        self.unanswered += len(batch)
        self._send({"type": "rows"}, batch)

    def finish(self) -> None:
        self._finished = True
        self._send({"type": "end"})

    def ready(self) -> bool:
        """Whether an answer can be read without waiting."""
        if not self.unanswered:
            return False
        self._sock.setblocking(False)
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return False
        except OSError:
            return True  # reading says what happened
        finally:
            self._sock.setblocking(True)
            self._sock.settimeout(self._timeout)

    def take(self) -> pa.Array:
        """The next answered rows; raises the worker's error for a failed call."""
        header, batch = self._receive()
        if header.get("type") == "error":
            raise _worker_error(header)
        rows = header.get("rows")
        if header.get("type") != "preds" or batch is None or rows != len(batch) or not 0 < rows <= self.unanswered:
            raise RuntimeError(f"ferrovod.inference: the worker sent an unexpected frame: {header}")
        self._answered(rows)
        return batch.column(0)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _answered(self, rows: int) -> None:
        self.unanswered -= rows
        while rows:
            first = self._unanswered[0]
            if len(first) <= rows:
                self._unanswered.popleft()
                rows -= len(first)
            else:
                self._unanswered[0] = first.slice(rows)
                rows = 0

    def _send(self, header: dict[str, Any], batch: pa.RecordBatch | None = None) -> None:
        try:
            _wire.send(self._sock, header, batch)
        except TimeoutError:
            raise self._silent() from None
        except OSError as e:
            self._replace(e)  # what this sent is resent with the rest

    def _receive(self) -> tuple[dict[str, Any], pa.RecordBatch | None]:
        while True:
            try:
                return _wire.receive(self._sock)
            except TimeoutError:
                raise self._silent() from None
            except (OSError, _wire.ChannelClosed) as e:
                self._replace(e)

    def _silent(self) -> TimeoutError:
        return TimeoutError(
            f"ferrovod.inference: the inference worker (pid {self.pid}) answered nothing for "
            f"{self._timeout:g} s (FERROVOD_INFERENCE_TIMEOUT)"
        )

    def _replace(self, e: BaseException) -> None:
        """The worker is gone: resends the unanswered rows to a new one, once per task."""
        if self._retried:
            raise RuntimeError(
                f"ferrovod.inference: the inference worker (pid {self.pid}) died with "
                f"{self.unanswered} rows of this task unanswered, after one retry on a new worker: {e}"
            ) from None
        self._retried = True
        lost = self.pid
        self.close()
        self._connect()
        print(
            f"ferrovod.inference: the inference worker (pid {lost}) died; {self.unanswered} rows "
            f"go to a new worker (pid {self.pid})",
            file=sys.stderr,
        )
        for batch in self._unanswered:
            _wire.send(self._sock, {"type": "rows"}, batch)
        if self._finished:
            _wire.send(self._sock, {"type": "end"})

    def _connect(self) -> None:
        for attempt in range(_HELLO_ATTEMPTS):
            sock = _find_or_start(self._config)
            sock.settimeout(self._timeout)
            try:
                _wire.send(sock, {"type": "hello", "secret": self._config["secret"], "model": self._model})
                header, _ = _wire.receive(sock)
                break
            except TimeoutError:
                sock.close()
                raise
            except (OSError, _wire.ChannelClosed) as e:
                # The worker died as this task said hello (no rows of it lost): find or start
                # the next one.
                sock.close()
                if attempt == _HELLO_ATTEMPTS - 1:
                    raise RuntimeError(
                        f"ferrovod.inference: {_HELLO_ATTEMPTS} inference workers in a row closed "
                        f"the connection during its hello: {e}"
                    ) from None
        if header.get("type") == "error":
            sock.close()
            raise _worker_error(header)
        if header.get("type") != "ready":
            sock.close()
            raise RuntimeError(f"ferrovod.inference: the worker answered hello with {header}")
        self._sock, self.pid, self.window = sock, int(header["pid"]), int(header["window"])


def _worker_error(header: dict[str, Any]) -> RuntimeError:
    return RuntimeError(
        f"ferrovod.inference: {header.get('doing')} failed on the inference worker "
        f"(pid {header.get('pid')}): {header.get('error')}: {header.get('message')}\n\n"
        f"{header.get('traceback')}"
    )


# --- finding the worker ------------------------------------------------------------------------


def _find_or_start(config: dict[str, Any]) -> socket.socket:
    index = _worker_index(config)
    if config["pool"]:
        return _find_in_pool(config, index)
    name = _wire.worker_name(config["secret"], index)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(name)
            return sock
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
        _claim_and_start(name, config, index)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"ferrovod.inference: no inference worker {index} started within {START_TIMEOUT_S:g} s "
                "(its errors are in this executor's stderr)"
            )
        time.sleep(0.05)


def _find_in_pool(config: dict[str, Any], first: int) -> socket.socket:
    """A rank of the serving pool on this host, from rank ``first`` on: a rank's name exists only
    in its host's (network namespace's) abstract socket namespace, so the ranks elsewhere refuse."""
    ranks = config["workers_per_host"]
    for index in [(first + i) % ranks for i in range(ranks)]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(_wire.worker_name(config["secret"], index))
            return sock
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
    raise RuntimeError(
        "ferrovod.inference: no rank of the pool serving this UDF serves on this host (the pool "
        "was closed, or none of its ranks runs where this task does)"
    )


def _claim_and_start(name: bytes, config: dict[str, Any], index: int) -> None:
    """Binds the worker's name (only one task can) and starts the worker on it."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(name)
    except OSError as e:
        listener.close()
        if e.errno == errno.EADDRINUSE:
            return  # another task is starting it
        raise
    with listener:
        listener.listen(128)
        secret_r, secret_w = os.pipe()
        os.write(secret_w, config["secret"].encode())
        os.close(secret_w)
        env = dict(os.environ)
        gpus = _gpus()
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        command = [
            sys.executable, "-m", "ferrovod.inference._server",
            "--listen-fd", str(listener.fileno()), "--secret-fd", str(secret_r), "--lease", config["lease"],
        ]
        jvm = jvm_pid()
        if jvm:
            command += ["--jvm-pid", str(jvm)]
        try:
            start_detached(command, env, (listener.fileno(), secret_r))
        finally:
            os.close(secret_r)


def _worker_index(config: dict[str, Any]) -> int:
    from pyspark import TaskContext

    workers = config.get("workers_per_host") or max(1, len(_gpus()))
    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    return partition % workers


def _gpus() -> list[str]:
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return []
    gpu = context.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []
