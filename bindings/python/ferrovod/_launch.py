"""Starting ``ferrovod-run`` from Python and learning how the job went: the one place that does.

The launcher gets a pipe as ``--events-fd`` with ``--events-output``: it writes every failure,
its final report (or the error that stopped it) and each rank's output lines there as JSON lines
(the schema is in the runner crate's ``events`` module). Nothing here reads the launcher's
text: its own stdout and stderr are copied to the caller as they come, and kept only to be
shown in an error message.

``ferrovod.run`` and the Spark tasks both start the launcher through :func:`launch`; where
the output goes (the caller's streams, the driver's log channel) is the caller's ``sink``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from . import _launcher

#: The events schema version this package reads.
EVENTS_VERSION = 1

#: Longest events line the launcher writes (``MAX_EVENT_LINE`` in the runner's ``events``).
MAX_EVENT_LINE = 256 << 10

#: Lines kept per rank, and of the launcher's own output, for error messages.
TAIL_LINES = 60

#: Seconds to wait for the launcher to stop its ranks after Ctrl-C before killing it; above the
#: launcher's default grace period (10 s), so it gets to SIGKILL its ranks itself.
_INTERRUPT_WAIT_S = 20.0

#: Seconds to wait, once the launcher exited, for the readers to reach the end of its pipes.
_DRAIN_S = 10.0

#: Where output goes: ``sink(stream, text)`` with ``stream`` ``"stdout"`` or ``"stderr"`` and
#: ``text`` one or more whole lines.
Sink = Callable[[str, str], None]


@dataclasses.dataclass
class Launched:
    """How one launcher run went, as the launcher said it through its events."""

    #: The launcher's exit status.
    code: int
    #: The ``report`` event, or ``None`` when the launcher ended without one (killed, or it
    #: refused the job: see ``error``).
    report: dict[str, Any] | None
    #: The ``error`` event when the launcher could not run the job.
    error: dict[str, Any] | None
    #: The ``failure`` of every ``failure`` event, in order.
    failures: list[dict[str, Any]]
    #: Each rank's last output lines (without their newline).
    rank_tails: dict[int, list[str]]
    #: The launcher's own last output (text, only for showing).
    launcher_tail: str
    #: Lines of the channel that were not understood (a newer launcher, a cut line).
    unreadable: int = 0

    @property
    def failure(self) -> dict[str, Any] | None:
        """The job's first failure: the report's, or the first one seen when there is no
        report."""
        if self.report is not None:
            return self.report.get("failure")
        return self.failures[0] if self.failures else None


def launch(
    options: Iterable[str],
    command: Iterable[str],
    env: Mapping[str, str],
    *,
    sink: Sink | None = None,
    stdin_text: str | None = None,
    pass_fds: Iterable[int] = (),
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Launched:
    """Runs ``ferrovod-run OPTIONS --events-fd FD --events-output -- COMMAND`` in the caller's cwd
    (a by-reference module may be found relative to it) and waits for it. Each rank's lines go to
    ``sink`` as ``[rank] line`` (default: the caller's ``sys.stdout``/``sys.stderr``, looked up
    at each line), and so does the launcher's own output. ``stdin_text`` is written to its
    standard input (the plan), ``pass_fds`` are inherited (the store socket), ``started`` runs
    once it has started, with its process (to close the caller's copies, or to stop it later). On Ctrl-C, asks the launcher to stop
    (it stops its ranks), waits for it, and re-raises."""
    out: Sink = sink or write_to_caller
    read_fd, write_fd = os.pipe()
    pump = _Pump(out)
    cmd = [
        *_launcher.command(),
        *options,
        "--events-fd",
        str(write_fd),
        "--events-output",
        "--",
        *command,
    ]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(write_fd, *pass_fds),
            cwd=os.getcwd(),
            env=dict(env),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the launcher has its own copy: its exit ends the channel
    with proc:
        if started is not None:
            started(proc)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            threading.Thread(target=pump.events, args=(read_fd,), name="ferrovod-events", daemon=True),
            threading.Thread(target=pump.text, args=(proc.stdout, "stdout"), name="ferrovod-out", daemon=True),
            threading.Thread(target=pump.text, args=(proc.stderr, "stderr"), name="ferrovod-err", daemon=True),
        ]
        for t in readers:
            t.start()
        try:
            if stdin_text is not None and proc.stdin is not None:
                try:
                    proc.stdin.write(stdin_text.encode())
                    proc.stdin.close()
                except OSError:
                    pass  # it exited before reading; its events say why
            code = proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise
        finally:
            for t in readers:
                t.join(timeout=_DRAIN_S)
    return pump.result(code)


class _Pump:
    """Reads the events channel and the launcher's own streams, sends output to the sink, and
    keeps what the caller needs afterwards."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._failures: list[dict[str, Any]] = []
        self._rank_tails: dict[int, collections.deque[str]] = {}
        self._launcher_tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._unreadable = 0

    def events(self, fd: int) -> None:
        with open(fd, "rb") as f:
            while True:
                raw = f.readline(MAX_EVENT_LINE + 1)
                if not raw:
                    return
                if not raw.endswith(b"\n") and len(raw) > MAX_EVENT_LINE:
                    while raw and not raw.endswith(b"\n"):  # skip the rest of a line too long
                        raw = f.readline(MAX_EVENT_LINE + 1)
                    self._count_unreadable()
                    continue
                self._event(raw)

    def _event(self, raw: bytes) -> None:
        try:
            ev = json.loads(raw)
            kind = ev["event"]
            if ev["v"] != EVENTS_VERSION:
                raise ValueError(f"events version {ev['v']}")
        except (ValueError, KeyError, TypeError):
            self._count_unreadable()
            return
        if kind == "output":
            rank, stream, line = ev.get("rank"), ev.get("stream"), ev.get("line")
            if not isinstance(rank, int) or stream not in ("stdout", "stderr") or not isinstance(line, str):
                self._count_unreadable()
                return
            with self._lock:
                tail = self._rank_tails.setdefault(rank, collections.deque(maxlen=TAIL_LINES))
                tail.append(line)
            self._sink(stream, f"[{rank}] {line}\n")
            return
        with self._lock:
            if kind == "failure" and isinstance(ev.get("failure"), dict):
                self._failures.append(ev["failure"])
            elif kind == "report":
                self._report = ev
            elif kind == "error":
                self._error = ev
            # Other kinds are for newer readers: skipped.

    def _count_unreadable(self) -> None:
        with self._lock:
            self._unreadable += 1

    def text(self, stream: IO[bytes], name: str) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace")
            with self._lock:
                self._launcher_tail.append(line)
            self._sink(name, line)

    def result(self, code: int) -> Launched:
        with self._lock:
            return Launched(
                code=code,
                report=self._report,
                error=self._error,
                failures=list(self._failures),
                rank_tails={r: list(t) for r, t in self._rank_tails.items()},
                launcher_tail="".join(self._launcher_tail),
                unreadable=self._unreadable,
            )


def write_to_caller(stream: str, text: str) -> None:
    """The default sink: the caller's ``sys.stdout`` or ``sys.stderr``, looked up at each line
    (under pytest capture or in Jupyter they are not real files, and they may be swapped while
    the job runs)."""
    write_quietly(sys.stdout if stream == "stdout" else sys.stderr, text)


def write_quietly(out: Any, text: str) -> None:
    """Writes and flushes ``text``; a closed or broken stream (a caller's, the driver's) must
    not stop whoever forwards a job's output, or the job behind the pipe."""
    try:
        out.write(text)
        out.flush()
    except Exception:
        pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Asks the launcher to stop its ranks and waits for it; kills it when it takes longer
    than its own grace period."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=_INTERRUPT_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting politely
        proc.send_signal(signal.SIGTERM)
        proc.wait()
