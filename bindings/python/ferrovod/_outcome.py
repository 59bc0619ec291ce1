"""Turning a finished job into values or one error: every rank's return value when it
succeeded, else a ``RankFailedError`` for the rank that failed first, from the ranks' result
files and the launcher's structured report (never from its text)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._tagged import value_of
from .exceptions import RankFailedError

#: Output lines of the failing rank shown in its error.
_SHOWN_LINES = 10


def outcome(
    results: Mapping[int, dict[str, Any]],
    np: int,
    code: int,
    failure: Mapping[str, Any] | None,
    launcher_tail: str,
    hosts: Mapping[int, str] | None = None,
    rank_tails: Mapping[int, Sequence[str]] | None = None,
) -> list[Any]:
    """Every rank's value when the job succeeded; otherwise a ``RankFailedError`` for the rank
    that failed first. A rank that reported an error recorded when; the earliest is the cause,
    the others failed because it stopped (the launcher's "first to exit" is not the cause: a
    rank that raised still shuts down its engine while its peers fail fast). But a rank the
    launcher's ``failure`` names (the report's, from its events) that reported nothing died
    without raising (a signal, ``os._exit``): that death is the cause, and the others' errors
    follow from it. ``hosts`` names each rank's host in the message, and ``rank_tails`` (each
    rank's last output lines) adds what the failing rank printed last; ``launcher_tail`` (the
    launcher's own output) is shown when no rank explains the failure."""
    missing = [r for r in range(np) if r not in results]
    errors = {r: res for r, res in results.items() if not res["ok"]}
    if code == 0 and not missing and not errors:
        return [value_of(results[r]) for r in range(np)]

    def who(r: int) -> str:
        return f"rank {r} on {hosts[r]}" if hosts and r in hosts else f"rank {r}"

    named = failure.get("rank") if failure and failure.get("kind") in ("rank", "start") else None
    first = named if isinstance(named, int) else None
    if (first is None or first in errors) and errors:
        first = min(errors, key=lambda r: (errors[r]["time_ns"], r))
    if first in errors:
        res = errors[first]
        message = f"{who(first)} failed: {res['type']}: {res['message']}\n\n{res['traceback']}"
        message += _last_output(first, rank_tails, res["traceback"])
        raise rank_failed(message, first, res["traceback"])
    if first is not None or missing:
        whom = who(first) if first is not None else f"rank(s) {', '.join(map(str, missing))}"
        why = (
            f": {whom} ended without reporting an error (killed by a signal, or exited without "
            "returning from the function)"
        )
    else:
        why = ""
    message = f"the job failed (launcher exit status {code}){why}. The launcher's last output:\n{launcher_tail}"
    if first is not None:
        message += _last_output(first, rank_tails, "")
    raise rank_failed(message, first, None)


def _last_output(rank: int, rank_tails: Mapping[int, Sequence[str]] | None, traceback: str) -> str:
    """The rank's last output lines, less those of its traceback (already in the message)."""
    if not rank_tails or not rank_tails.get(rank):
        return ""
    shown = set(traceback.splitlines())
    lines = [f"[{rank}] {ln}" for ln in rank_tails[rank] if ln not in shown]
    if not lines:
        return ""
    return f"\nLast output of rank {rank}:\n" + "\n".join(lines[-_SHOWN_LINES:]) + "\n"


def rank_failed(message: str, rank: int | None, tb: str | None) -> RankFailedError:
    """The error, with the failing rank and its traceback text also as attributes (``None``
    when the launcher did not say which rank, or the rank left no traceback)."""
    err = RankFailedError(message)
    err.rank = rank  # type: ignore[attr-defined]  # not declared in _ferrovod.pyi
    err.traceback = tb  # type: ignore[attr-defined]
    return err
