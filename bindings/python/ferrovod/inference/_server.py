"""The inference worker of one host (one per GPU, or ``workers_per_host`` on CPU): loads each
model once, takes the rows of every Spark task that connects, cuts and joins them into batches of
exactly ``batch_size`` rows, and sends each task its predictions in order.

    python -m ferrovod.inference._server --listen-fd L --secret-fd S --lease HOST:PORT [--jvm-pid P]

Started by the first task that finds no worker under its name (``_client``), it outlives that
task; it ends when the driver's lease connection closes (the SparkContext stopped or the driver
died) or the executor's JVM dies. With ``pool=``, the ranks of a ``ferrovod.Pool`` serve instead,
each on a thread (:func:`serve_in_pool`), for as long as the pool lives. Threads: one reader and one writer per task, one per batcher
(receiving overlaps predicting), and the main thread watching the lease and the JVM.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import inspect
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time
from typing import Any

import pyarrow as pa

from .. import _control
from .._worker import call_spec, format_error, line_buffered
from . import _convert, _wire

#: Seconds a batch shorter than ``batch_size`` waits for more rows once a task has ended.
LINGER_S = 0.1

#: Seconds a task gets to say hello before it is dropped.
HELLO_TIMEOUT_S = 10.0


def main(argv: list[str]) -> int:
    options = dict(zip(argv[::2], argv[1::2]))
    if len(argv) % 2 or not {"--listen-fd", "--secret-fd", "--lease"} <= options.keys():
        print(
            "usage: python -m ferrovod.inference._server --listen-fd L --secret-fd S --lease HOST:PORT "
            "[--jvm-pid P] (started by ferrovod.inference)",
            file=sys.stderr,
        )
        return 2
    line_buffered()
    with os.fdopen(int(options["--secret-fd"]), "rb") as f:
        secret = f.read().decode()
    listener = socket.socket(fileno=int(options["--listen-fd"]))
    listener.set_inheritable(False)
    host, _, port = options["--lease"].rpartition(":")
    try:
        lease = socket.create_connection((host, int(port)), timeout=HELLO_TIMEOUT_S)
        _control.send(lease, {"type": "lease", "secret": secret, "pid": os.getpid()})
        lease.settimeout(None)
    except OSError as e:
        print(f"ferrovod.inference: cannot reach the driver's lease at {host}:{port}: {e}", file=sys.stderr)
        return 1
    watched = [lease]
    jvm = options.get("--jvm-pid")
    if jvm:
        try:
            watched.append(os.pidfd_open(int(jvm)))
        except OSError:
            return 0  # the executor is gone already
    Server(secret).accept(listener, watched)
    # The driver's lease closed (its context stopped, or it died) or the JVM exited: leave at
    # once, whatever a model is doing.
    listener.close()
    os._exit(0)


def serve_in_pool(secret: str) -> bool:
    """Run by ``Pool.run`` on every rank: starts serving inference from this rank, on a thread,
    as worker ``rank`` of the secret's name; the models it loads can read
    ``ferrovod.worker_state``. Lives as long as the rank. ``False`` when it serves already."""
    from .. import _world

    name = _wire.worker_name(secret, _world.rank())
    with _in_pool_lock:
        if name in _in_pool:
            return False
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(name)
        listener.listen(128)
        _in_pool.add(name)
    threading.Thread(target=Server(secret).accept, args=(listener, []), name="ferrovod-inference", daemon=True).start()
    return True


_in_pool: set[bytes] = set()
_in_pool_lock = threading.Lock()


class Loaded:
    """What one ``make_predict_fn`` returned, loaded once per worker."""

    def __init__(self, fn: Any) -> None:
        if not callable(fn):
            raise TypeError(f"make_predict_fn returned {type(fn).__qualname__}, not a function")
        self.fn = fn
        self.n_params = len(inspect.signature(fn).parameters)
        self.lock = threading.Lock()  # one call at a time, whichever UDF it serves


class Server:
    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._lock = threading.Lock()
        self._loaded: dict[str, Loaded] = {}
        self._loading: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._batchers: dict[str, Batcher] = {}

    def accept(self, listener: socket.socket, watched: list[Any]) -> None:
        """Serves every task that connects, each on a thread, until one of ``watched`` (file
        objects or descriptors) becomes readable."""
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ, "task")
            for w in watched:
                sel.register(w, selectors.EVENT_READ, "watched")
            while True:
                for key, _ in sel.select():
                    if key.data == "watched":
                        return
                    try:
                        conn, _ = listener.accept()
                    except OSError:
                        continue
                    threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        """One task's connection: hello, then rows until it ends or goes."""
        with conn:
            conn.settimeout(HELLO_TIMEOUT_S)
            try:
                hello, _ = _wire.receive(conn)
                if not _same_user(conn) or not hmac.compare_digest(str(hello.get("secret", "")), self._secret):
                    return
                conn.settimeout(None)
            except (OSError, ValueError, _wire.ChannelClosed):
                return
            try:
                batcher = self._batcher(hello["model"])
            except Exception as e:  # noqa: BLE001 (the task raises it)
                _send_quietly(conn, _error("loading the model", e))
                return
            stream = Stream(conn, batcher)
            _wire.send(conn, {"type": "ready", "window": 2 * batcher.batch_size, "pid": os.getpid()})
            stream.read()

    def _batcher(self, model: dict[str, Any]) -> Batcher:
        key = hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()
        with self._lock:
            batcher = self._batchers.get(key)
        if batcher is not None:
            return batcher
        loaded = self._load(model["spec_key"], model["spec"])
        with self._lock:
            if key not in self._batchers:
                self._batchers[key] = Batcher(loaded, model)
            return self._batchers[key]

    def _load(self, key: str, spec: dict[str, Any]) -> Loaded:
        with self._loading[key]:
            if key not in self._loaded:
                self._loaded[key] = Loaded(call_spec(spec)[1])
            return self._loaded[key]


class Stream:
    """One task's rows on their way through a batcher, and a writer thread for its answers (a
    task that reads slowly must not hold up the model)."""

    def __init__(self, conn: socket.socket, batcher: Batcher) -> None:
        self.conn = conn
        self.batcher = batcher
        self.ended = False
        self.gone = False
        self._out: collections.deque[tuple[dict[str, Any], pa.RecordBatch | None]] = collections.deque()
        self._ready = threading.Condition()
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._writer.start()

    def read(self) -> None:
        batcher = self.batcher
        try:
            while True:
                header, batch = _wire.receive(self.conn)
                if header.get("type") == "rows" and batch is not None:
                    batcher.add(self, batch)
                elif header.get("type") == "end":
                    batcher.end(self)
                else:
                    break
        except (OSError, ValueError, _wire.ChannelClosed):
            pass  # the task went away or broke the protocol: its stream ends here, its rows dropped
        finally:
            batcher.detach(self)
            self.answer({"type": "bye"}, None)
            self._writer.join()

    def answer(self, header: dict[str, Any], batch: pa.RecordBatch | None) -> None:
        with self._ready:
            self._out.append((header, batch))
            self._ready.notify()

    def _write(self) -> None:
        while True:
            with self._ready:
                while not self._out:
                    self._ready.wait()
                header, batch = self._out.popleft()
            if header["type"] == "bye":
                return
            try:
                _wire.send(self.conn, header, batch)
            except (OSError, ValueError):
                self.gone = True  # the reader sees the end of the stream too


class Batcher:
    """One UDF's queue over one loaded model: rows from every task in arrival order, cut into
    model calls of exactly ``batch_size`` rows; a shorter one only when a task whose rows wait
    has ended and for :data:`LINGER_S` no row came and no call ended (a call's answers end
    tasks, and the tasks that take their slots send rows some tens of ms later)."""

    def __init__(self, loaded: Loaded, model: dict[str, Any]) -> None:
        self.loaded = loaded
        self.batch_size = int(model["batch_size"])
        self.return_type = _datatype(model["return_type"])
        self.has_tuple = bool(model["has_tuple"])
        self.shapes = _dense_shapes(model["shapes"], loaded.n_params)
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[Stream, pa.RecordBatch]] = collections.deque()
        self._last = time.monotonic()  # a row came or a call ended: the linger counts from here
        threading.Thread(target=self._run, daemon=True).start()

    def add(self, stream: Stream, batch: pa.RecordBatch) -> None:
        with self._cond:
            if stream.gone:
                return  # its call failed: the task is raising, and its rows are not wanted
            self._queue.append((stream, batch))
            self._last = time.monotonic()
            self._cond.notify()

    def end(self, stream: Stream) -> None:
        with self._cond:
            stream.ended = True
            self._cond.notify()

    def detach(self, stream: Stream) -> None:
        """The task left (done, failed or cancelled): its rows still queued are dropped."""
        with self._cond:
            stream.gone = True
            self._queue = collections.deque(item for item in self._queue if item[0] is not stream)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                take = self._take()
                while take is None:
                    # Until the linger is over (and no longer), or a row or an end comes.
                    left = LINGER_S - (time.monotonic() - self._last)
                    self._cond.wait(max(left, 0.001) if self._queue else None)
                    take = self._take()
            self._predict(take)
            with self._cond:
                self._last = time.monotonic()

    def _take(self) -> list[tuple[Stream, pa.RecordBatch]] | None:
        """The next model call's rows, or ``None`` to wait for more."""
        pending = sum(len(b) for s, b in self._queue)
        if not pending:
            return None
        if pending < self.batch_size:
            # Only a task that has ended waits on a short call; it waits a little for the
            # next task's rows first (on a busy host, tasks start tens of ms apart).
            ended_waiting = any(s.ended for s, _ in self._queue)
            if not ended_waiting or time.monotonic() - self._last < LINGER_S:
                return None
        take, want = [], self.batch_size
        while want and self._queue:
            stream, batch = self._queue.popleft()
            if len(batch) > want:
                self._queue.appendleft((stream, batch.slice(want)))
                batch = batch.slice(0, want)
            take.append((stream, batch))
            want -= len(batch)
        return take

    def _predict(self, take: list[tuple[Stream, pa.RecordBatch]]) -> None:
        rows = sum(len(b) for _, b in take)
        try:
            batch = take[0][1] if len(take) == 1 else pa.concat_batches([b for _, b in take])
            arrays = _convert.inputs(batch, self.loaded.n_params, self.shapes, self.has_tuple)
            with self.loaded.lock:
                preds = self.loaded.fn(*arrays)
            out = _convert.outputs(preds, rows, self.return_type)
        except Exception as e:  # noqa: BLE001 (each task whose rows were in the call raises it)
            error = _error("predicting", e)
            for stream in {s for s, _ in take}:
                self.detach(stream)
                stream.answer(error, None)
            return
        offset = 0
        for stream, piece in take:
            part = pa.RecordBatch.from_arrays([out.slice(offset, len(piece))], names=["p"])
            stream.answer({"type": "preds", "rows": len(piece)}, part)
            offset += len(piece)


def _error(doing: str, e: BaseException) -> dict[str, Any]:
    return {
        "type": "error",
        "doing": doing,
        "error": type(e).__qualname__,
        "message": str(e)[:4096],
        "traceback": format_error(e)[-16384:],
        "pid": os.getpid(),
    }


def _send_quietly(conn: socket.socket, header: dict[str, Any]) -> None:
    try:
        _wire.send(conn, header)
    except (OSError, ValueError):
        pass  # the task is gone


def _same_user(conn: socket.socket) -> bool:
    """Whether the peer runs as this process's user (the socket is abstract: no file mode)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid == os.getuid()


def _datatype(text: str) -> Any:
    from pyspark.sql.types import _parse_datatype_json_string

    return _parse_datatype_json_string(text)


def _dense_shapes(shapes: Any, n_params: int) -> list[list[int] | None] | None:
    """``input_tensor_shapes`` as a list, one entry per parameter, when given as ``{index: shape}``."""
    if isinstance(shapes, dict):
        dense: list[list[int] | None] = [None] * n_params
        for index, shape in shapes.items():
            if not 0 <= int(index) < n_params:
                raise ValueError(f"input_tensor_shapes names input {index}, but the model takes {n_params}")
            dense[int(index)] = shape
        return dense
    return shapes


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
