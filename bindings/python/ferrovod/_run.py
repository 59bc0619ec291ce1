"""``ferrovod.run``: run a function on N local processes and collect every rank's return value.

Nothing is pickled: the function and its arguments travel as :mod:`ferrovod._ship` describes,
the ranks are started by the real launcher through :mod:`ferrovod._launch` (``ferrovod-run -np N
-- python -m ferrovod._worker --spec-fd FD``, the spec and the results in memory: nothing is
written to disk), so ``run`` gets the launcher's behaviour for free (every
rank stopped on the first failure, signals passed on), and :mod:`ferrovod._outcome` turns the
results and the launcher's report into values or one error.
"""

from __future__ import annotations

import os
import subprocess  # noqa: F401  (tests patch ferrovod._run.subprocess.Popen to see that nothing starts)
from collections.abc import Callable, Mapping
from typing import Any

from ._launch import launch
from ._outcome import outcome
from ._ship import Exchange, check_env, prepare, type_name


def run(
    fn: Callable[..., Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    np: int = 2,
    env: Mapping[str, str] | None = None,
) -> list[Any]:
    """Runs ``fn(*args, **kwargs)`` on ``np`` local processes and returns every rank's return
    value, in rank order.

    ``fn`` calls ``ferrovod.init()`` itself, as a script started by ``ferrovod-run`` would.
    ``args``, ``kwargs`` and the return values travel as JSON (a tuple comes back as a list).
    ``env`` adds environment variables to every rank's environment.

    Raises ``TypeError``/``ValueError`` before starting anything when ``fn`` or an argument cannot
    travel, and ``ferrovod.RankFailedError`` when a rank fails: its message carries the rank, the
    exception and the rank's traceback, also found in the ``.rank`` and ``.traceback``
    attributes.
    """
    if isinstance(np, bool) or not isinstance(np, int):
        raise TypeError(f"ferrovod.run: np must be an int, not {type_name(np)}")
    if np < 1:
        raise ValueError(f"ferrovod.run: np must be at least 1, not {np}")
    call = prepare(fn, args, kwargs, "ferrovod.run")
    extra_env = check_env(env, "ferrovod.run")

    with Exchange(call, range(np)) as exchange:
        done = launch(["-np", str(np)], exchange.command(), {**os.environ, **extra_env}, pass_fds=exchange.pass_fds)
        results = exchange.results()
    return outcome(results, np, done.code, done.failure, done.launcher_tail, rank_tails=done.rank_tails)
