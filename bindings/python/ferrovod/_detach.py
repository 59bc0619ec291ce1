"""Processes that outlive the Spark task that starts them (an executor's inference worker, a
Spark pool's launcher host), and the executor JVM they watch instead of their parent."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence


def start_detached(command: Sequence[str], env: Mapping[str, str], pass_fds: Sequence[int]) -> None:
    """Starts ``command`` in a session of its own, its stdin ``/dev/null`` and its stdout sent to
    the caller's stderr (the executor's log). ``sh`` starts it in the background and exits, so it
    belongs to no task's process tree and no task is left holding a zombie."""
    subprocess.run(
        ["/bin/sh", "-c", 'exec "$@" </dev/null >&2 &', "sh", *command],
        pass_fds=tuple(pass_fds), env=dict(env), start_new_session=True, check=True, timeout=30,
    )


def jvm_pid() -> int | None:
    """The executor's JVM: the nearest ``java`` above this Python worker (``None`` when there is
    none, as on a driver running tasks itself)."""
    pid = os.getppid()
    for _ in range(8):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return None
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm == "java":
            return pid
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if pid <= 1:
            return None
    return None
