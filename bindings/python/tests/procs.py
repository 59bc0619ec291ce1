"""Process checks shared by the Spark tests: pid files written by the ranks, and whether the
processes they name are still alive."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: state first, then the ppid."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting for its reaper is not)."""
    try:
        return stat(pid)[0] != "Z"
    # Gone before the open, or between the open and the read (the read then fails with ESRCH).
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for_pid_files(pid_dir: Path, count: int, running: Callable[[], bool], timeout: float = 120) -> dict[str, str]:
    """The ``rank-N`` files (``"PID PPID"``) ``sparkfns.record_pids_and_sleep`` writes, once
    ``count`` exist; fails when ``running()`` turns false or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while len(list(pid_dir.glob("rank-?"))) < count:
        assert time.monotonic() < deadline and running(), "the ranks did not start"
        time.sleep(0.1)
    return {f.name: f.read_text() for f in sorted(pid_dir.glob("rank-?"))}


def pids_of(files: dict[str, str]) -> list[int]:
    """Every pid in the files: the ranks and their launchers."""
    return [int(p) for text in files.values() for p in text.split()]


def assert_gone_within(pids: list[int], since: float, seconds: float, after: str) -> None:
    """Waits until none of ``pids`` is alive, up to ``seconds`` after the monotonic time ``since``."""
    while any(alive(p) for p in pids) and time.monotonic() - since < seconds:
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    assert not left, f"still alive {seconds:g} s after {after}: {left} (ranks and their launchers: {pids})"


def wait_gone(pid: int, seconds: float) -> None:
    """Waits up to ``seconds`` for ``pid`` to end; fails if it does not."""
    deadline = time.monotonic() + seconds
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive after {seconds:g} s"
        time.sleep(0.05)


def paths_of(pids: list[int]) -> list[str]:
    """Every file path in the command lines of ``pids`` and every file they hold open (pipes,
    sockets and memfds have no path)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out += [a.decode(errors="replace") for a in f.read().split(b"\0") if a.startswith(b"/")]
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/") and not target.startswith("/memfd:"):
                    out.append(target)
        except OSError:
            pass
    return out
