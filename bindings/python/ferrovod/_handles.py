"""Collectives in flight: ``Handle``, ``poll`` and ``synchronize``, and the names that match
tensors across ranks when the caller gives none."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from . import _ferrovod


class Handle:
    """A collective in flight. ``poll(handle)`` says whether it is done; ``synchronize(handle)``
    waits (without the GIL, Ctrl-C interrupts) and returns its result."""

    __slots__ = ("_finish", "_inner")

    def __init__(self, inner: _ferrovod.Handle, finish: Callable[[Any], Any]) -> None:
        self._inner = inner
        self._finish = finish

    @property
    def name(self) -> str:
        return self._inner.name

    def poll(self) -> bool:
        return self._inner.poll()

    def wait(self) -> Any:
        return self._finish(self._inner.wait())

    def __repr__(self) -> str:
        return f"Handle(name={self.name!r}, done={self.poll()})"


class GroupHandle:
    """Several handles behind one ``Handle``."""

    __slots__ = ("_inners", "name")

    def __init__(self, name: str, inners: list[_ferrovod.Handle]) -> None:
        self.name = name
        self._inners = inners

    def poll(self) -> bool:
        return all(h.poll() for h in self._inners)

    def wait(self) -> list[Any]:
        return [h.wait() for h in self._inners]


class _Waited(threading.local):
    now = False


waited = _Waited()
"""``waited.now`` is true on a thread while it starts a synchronous collective: the handle is
waited for at once, so the engine's thread is not woken for it and the wait runs the engine's
round on this thread where it can (two thread hand-offs fewer per collective)."""


def wait_at_once(start: Callable[[], Handle]) -> Any:
    """Starts a collective with ``start`` (which submits one tensor) and waits for it."""
    waited.now = True
    try:
        handle = start()
    finally:
        waited.now = False
    return handle.wait()


def poll(handle: Handle) -> bool:
    """Whether ``handle``'s collective is done (``synchronize`` will not block)."""
    return handle.poll()


def synchronize(handle: Handle) -> Any:
    """Waits for ``handle`` and returns its result (the output tensor)."""
    return handle.wait()


_counters: dict[tuple[int, str], int] = {}
_counters_lock = threading.RLock()


class tensor_name:  # noqa: N801 (used as a function: ``with tensor_name(...) as name``)
    """Yields ``name``, or ``<kind>.noname.<n>`` in call order when the caller gave none, counted
    per process set (the members of a set make calls the others do not). The count moves on only
    when the block ends without an exception: a call refused on one rank before it submitted (a
    bad argument, a name already in flight) leaves that rank's count where the others' are, so
    the next unnamed calls still pair up across ranks. (A class, not a generator: it is on
    every collective's path, and a generator-based context manager costs a microsecond.)"""

    __slots__ = ("_key", "_n", "_name")

    def __init__(self, kind: str, name: str | None, process_set: int = 0) -> None:
        self._name = name
        self._key = (process_set, kind)
        self._n = 0

    def __enter__(self) -> str:
        if self._name is not None:
            return self._name
        _counters_lock.acquire()
        self._n = _counters.get(self._key, 0)
        return f"{self._key[1]}.noname.{self._n}"

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if self._name is not None:
            return
        try:
            if kind is None:
                _counters[self._key] = self._n + 1
        finally:
            _counters_lock.release()


def reset_names() -> None:
    """Starts automatic names from 0 again: a fresh engine matches names afresh, and every rank
    starts one at the same point (an earlier engine's counts may differ between ranks when a
    call raised on one rank before it submitted)."""
    with _counters_lock:
        _counters.clear()
