"""The inference worker's batcher on its own, over real socket pairs in this process: how it cuts
the rows of several tasks into model calls."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pyarrow as pa

from ferrovod.inference import _server, _wire


def rows(n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(np.ones(n, np.float32))], names=["x"])


class Task:
    """A task's end of the channel: sends rows, then reads its answers on a thread."""

    def __init__(self, batcher: _server.Batcher) -> None:
        self.mine, self.theirs = socket.socketpair()
        self.stream = _server.Stream(self.theirs, batcher)
        self.served = threading.Thread(target=self._serve, daemon=True)
        self.served.start()
        self.answered = 0
        self.done = threading.Event()

    def _serve(self) -> None:
        with self.theirs:  # the worker's end, as the server holds it
            self.stream.read()

    def send(self, n: int) -> None:
        _wire.send(self.mine, {"type": "rows"}, rows(n))
        _wire.send(self.mine, {"type": "end"})
        self.want = n
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while self.answered < self.want:
            header, batch = _wire.receive(self.mine)
            assert header["type"] == "preds", header
            self.answered += header["rows"]
        self.done.set()
        self.mine.close()


def queued_rows(batcher: _server.Batcher, n: int) -> None:
    deadline = time.monotonic() + 10
    while sum(len(b) for _, b in batcher._queue) < n:
        assert time.monotonic() < deadline, "the rows never reached the batcher"
        time.sleep(0.001)


def test_a_short_call_waits_for_the_rows_of_a_task_that_an_answer_let_start(monkeypatch):
    """Two tasks of 3 rows, batch_size 4: the first call takes 4 rows and answers the first task.
    In Spark its slot then goes to a third task, whose rows come some time after the call ended.
    The 2 rows left must wait for them (one call of 4), however long the first call took: the
    linger counts from the end of the call, not from when the last row came."""
    monkeypatch.setattr(_server, "LINGER_S", 1.0)
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        time.sleep(1.2)  # longer than the linger
        return x * 2

    loaded = _server.Loaded(predict)
    batcher = _server.Batcher(loaded, {"batch_size": 4, "return_type": "\"float\"", "has_tuple": False, "shapes": None})
    a, b, c = Task(batcher), Task(batcher), Task(batcher)
    a.send(3)
    queued_rows(batcher, 3)  # a's rows first, so that the first call answers all of a
    b.send(3)
    assert a.done.wait(10), "the first task was not answered"
    c.send(2)  # the task that takes the first one's slot
    assert b.done.wait(10) and c.done.wait(10), f"not answered; calls {calls}"
    for task in (a, b, c):
        task.served.join(10)
    assert calls == [4, 4], calls
