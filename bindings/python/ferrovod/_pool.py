"""``ferrovod.Pool``: N local processes that outlive one function and run the next.

The ranks are started once, through the real launcher (``ferrovod-run -np N -- python -m
ferrovod._pool_worker``), and each gets one end of a ``socketpair`` as its control channel
(:mod:`ferrovod._control`). ``run`` sends the function (by reference or source, JSON arguments,
as :mod:`ferrovod._ship` describes) to every rank and returns rank 0's value, as
``HorovodRunner.run`` does; the processes keep their communicator and ``ferrovod.worker_state``
between calls.

- A function that raises fails that call with the first failing rank's error and traceback (as
  ``ferrovod.run``); the pool stays usable, and the next call starts on a fresh communicator.
- A rank that dies fails the call in flight naming it; the launcher stops the others, and the
  pool is closed (a later ``run`` says why).
- The pool's life is bound to this process: ``close()`` (or leaving the ``with`` block) ends it,
  and when this process dies the ranks read the end of their channel and exit.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from . import _control
from ._launch import Launched, launch
from ._outcome import rank_failed, outcome
from ._ship import check_env, prepare, type_name
from .exceptions import PoolClosedError

#: Seconds ``close`` waits for the ranks to leave before stopping the launcher.
_CLOSE_WAIT_S = 10.0

#: Seconds the launcher gets to stop its ranks after SIGINT before it is killed.
_STOP_WAIT_S = 20.0

#: Seconds the launcher gets to report a rank that ended during a call before the pool names it.
LAUNCHER_GRACE_S = 2.0


class RankLost(Exception):
    """A rank's process ended during a call without answering, and its launcher went on; ``why``
    says what was seen."""

    def __init__(self, rank: int, why: str) -> None:
        super().__init__(rank, why)
        self.rank = rank
        self.why = why


class Pool:
    """``np`` local processes that run one function after another.

    ``env`` adds environment variables to every rank's environment. Use it as a context manager,
    or call :meth:`close`.
    """

    #: The name errors give the class.
    _api = "ferrovod.Pool"

    def __init__(self, np: int = 2, env: Mapping[str, str] | None = None) -> None:
        if isinstance(np, bool) or not isinstance(np, int):
            raise TypeError(f"{self._api}: np must be an int, not {type_name(np)}")
        if np < 1:
            raise ValueError(f"{self._api}: np must be at least 1, not {np}")
        extra_env = check_env(env, self._api)
        self.np = np
        self._calls = 0
        self._restart = False
        self._closed: str | None = None
        self._lock = threading.Lock()  # one call at a time
        self._inference_secret: str | None = None  # names the ranks' sockets once they serve inference
        self._ranks = self._start(np, extra_env)
        # Closed with this object when the caller forgets to; the ranks also end with this process.
        self._finalizer = weakref.finalize(self, self._ranks.stop)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs ``fn(*args, **kwargs)`` on every rank, with the communicator ready, and returns
        rank 0's value. Arguments and values travel as JSON; ``fn`` by reference or source.

        Raises ``TypeError``/``ValueError`` before sending anything when ``fn`` or an argument
        cannot travel, ``ferrovod.RankFailedError`` when a rank raised or died (naming it, with
        its traceback), and :class:`PoolClosedError` once the pool is closed. Ctrl-C closes the
        pool (its ranks may be anywhere in the function) and re-raises."""
        spec = prepare(fn, args, kwargs, f"{self._api}.run")
        with self._lock:
            if self._closed is not None:
                raise PoolClosedError(f"{self._api}: the pool is closed ({self._closed})")
            self._calls += 1
            message = {"type": "call", "id": self._calls, "spec": spec, "restart": self._restart}
            try:
                results = self._ranks.call(message)
            except KeyboardInterrupt:
                self._closed = "interrupted"
                self._finalizer()
                raise
            except PoolClosedError as e:  # closed under the call: the ranks' owner went
                self._closed = str(e)
                self._finalizer()
                raise
            except RankLost as lost:
                self._closed = f"rank {lost.rank} ended during a call"
                self._finalizer()
                raise rank_failed(
                    f"rank {lost.rank} ended during the call without returning from the function "
                    f"({lost.why}); the pool is closed",
                    lost.rank,
                    None,
                ) from None
            if results is None:
                try:
                    done = self._ranks.ended()
                finally:
                    self._closed = "its launcher ended"
                    self._finalizer()
                self._closed = _describe(done)
                outcome(
                    {}, self.np, done.code or 1, done.failure, done.launcher_tail, self._ranks.hosts, done.rank_tails
                )
                raise AssertionError("unreachable: outcome raises for a failed job")
            failed = any(not r["ok"] for r in results.values())
            self._restart = failed
            return outcome(results, self.np, 1 if failed else 0, None, "")[0]

    def _start(self, np: int, extra_env: dict[str, str]) -> Any:
        """Starts the ranks; what it returns has ``call``, ``ended``, ``stop`` and ``hosts``
        as :class:`_Ranks` has."""
        return _Ranks(np, {**os.environ, **extra_env})

    def close(self) -> None:
        """Asks every rank to leave, waits for them (at most 10 s, then stops the launcher, which
        stops them), and frees everything. Idempotent."""
        with self._lock:
            if self._closed is None:
                self._closed = "closed by its owner"
            self._finalizer()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._closed is None else f"closed: {self._closed}"
        return f"{self._api}(np={self.np}, {state})"


class _Ranks:
    """The launcher, run by a thread of its own, and the driver's ends of the control channels.
    Holds no reference to the :class:`Pool`, so that a forgotten pool can be collected (and
    stopped)."""

    #: Every rank runs on this host: messages need not name it.
    hosts = None

    def __init__(self, np: int, env: dict[str, str]) -> None:
        pairs = [socket.socketpair() for _ in range(np)]
        self.channels = [mine for mine, _ in pairs]
        theirs = [t for _, t in pairs]
        for t in theirs:
            t.set_inheritable(True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched: Launched | None = None
        self.error: BaseException | None = None
        self._ended_r, ended_w = os.pipe()
        self._pidfds: dict[int, int] = {}
        started = threading.Event()

        def on_start(proc: subprocess.Popen[bytes]) -> None:
            self.proc = proc
            for t in theirs:
                t.close()  # the ranks have theirs: a rank's end closes when it exits
            started.set()

        fds = ",".join(str(t.fileno()) for t in theirs)
        command = [sys.executable, "-m", "ferrovod._pool_worker", "--control-fds", fds]

        def supervise() -> None:
            try:
                self.launched = launch(
                    ["-np", str(np)], command, env, pass_fds=[t.fileno() for t in theirs], started=on_start
                )
            except BaseException as e:  # noqa: BLE001 (raised by the constructor or the next call)
                self.error = e
            finally:
                for t in theirs:
                    t.close()
                started.set()
                os.close(ended_w)

        self._thread = threading.Thread(target=supervise, name="ferrovod-pool", daemon=True)
        self._thread.start()
        started.wait()
        if self.error is not None:
            self._thread.join()
            self._free()
            raise self.error

    def call(self, message: dict[str, Any]) -> dict[int, dict[str, Any]] | None:
        """Sends ``message`` to every rank and returns each rank's result for it, or ``None``
        when the launcher ended first (a rank failed: the launcher stopped the others). Raises
        :class:`RankLost` when a rank's process ended without answering and the launcher, which
        sees no failure in a rank that exits with status 0, goes on."""
        for channel in self.channels:
            try:
                _control.send(channel, message)
            except OSError:
                pass  # that rank is gone: the launcher's report says which
        results: dict[int, dict[str, Any]] = {}
        with selectors.DefaultSelector() as sel:
            for rank, channel in enumerate(self.channels):
                sel.register(channel, selectors.EVENT_READ, ("channel", rank))
            for rank, pidfd in self._pidfds.items():
                sel.register(pidfd, selectors.EVENT_READ, ("exited", rank))
            sel.register(self._ended_r, selectors.EVENT_READ, ("launcher", None))
            while len(results) < len(self.channels):
                for key, _ in sel.select():
                    what, rank = key.data
                    if what == "launcher":
                        return None
                    if what == "exited":
                        sel.unregister(key.fileobj)
                        if rank not in results:
                            self._lost(rank)
                        continue
                    try:
                        reply = _control.receive(self.channels[rank])
                    except (_control.ChannelClosed, OSError, ValueError):
                        sel.unregister(key.fileobj)  # the rank died: the launcher will say so
                        continue
                    if reply.get("type") == "hello" and rank not in self._pidfds:
                        pidfd = self._watch(rank, reply.get("pid"))
                        if pidfd is not None:
                            sel.register(pidfd, selectors.EVENT_READ, ("exited", rank))
                    elif reply.get("type") == "result" and reply.get("id") == message["id"]:
                        results[rank] = reply["result"]
        return results

    def _watch(self, rank: int, pid: object) -> int | None:
        """A pidfd for the rank's process, which said hello with its pid; ``None`` when it has
        gone already (the launcher then reports it) or the pid is not a number."""
        if isinstance(pid, bool) or not isinstance(pid, int):
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        self._pidfds[rank] = pidfd
        return pidfd

    def _lost(self, rank: int) -> None:
        """The rank's process ended during a call without answering. When the launcher saw a
        failure it ends soon and its report names the cause; otherwise the rank left with
        status 0 (``os._exit(0)``, ``sys.exit()`` in a thread) and nothing else would end the call."""
        if select.select([self._ended_r], [], [], LAUNCHER_GRACE_S)[0]:
            return  # the launcher's report is the better account
        raise RankLost(rank, "its process exited with no error: os._exit, or sys.exit in a thread")

    def ended(self) -> Launched:
        """How the launcher ended, once it has."""
        self._thread.join()
        if self.launched is None:
            raise PoolClosedError(f"ferrovod.Pool: the launcher failed: {self.error}")
        return self.launched

    def stop(self) -> None:
        """Says ``close`` to every rank and waits for the launcher; stops it when they linger."""
        for channel in self.channels:
            try:
                _control.send(channel, {"type": "close"})
            except OSError:
                pass  # that rank is gone already
        self._thread.join(timeout=_CLOSE_WAIT_S)
        if self._thread.is_alive() and self.proc is not None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._thread.join()
        self._free()

    def _free(self) -> None:
        for channel in self.channels:
            channel.close()
        _control.close_quietly(self._ended_r)
        for pidfd in self._pidfds.values():
            _control.close_quietly(pidfd)


def _describe(done: Launched) -> str:
    failure = done.failure
    if failure is None:
        return f"its launcher ended with status {done.code}"
    rank = failure.get("rank")
    who = f"rank {rank}" if isinstance(rank, int) else "the job"
    return f"{who} failed: {failure.get('message') or failure.get('kind')}"
