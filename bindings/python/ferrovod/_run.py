"""``ferrovod.run``: run a function on N local processes and collect every rank's return value.

Nothing is pickled. The function travels by reference (``module:qualname``) when its module is
importable, or as its source when it is self-contained (the notebook case: imports inside the
body); arguments and results travel as JSON. Everything that cannot travel that way is refused
here, before any process starts, with an error that names it: a late failure on N ranks is far
harder to read than an early one in the caller.

The ranks are started by the real launcher (``ferrovod-run -np N -- python -m ferrovod._worker
SPEC``), so ``run`` gets the launcher's behaviour for free: ``[rank]``-prefixed output, every
rank stopped on the first failure, and signals passed on.
"""

from __future__ import annotations

import __future__
import builtins
import collections
import dis
import importlib
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from . import _launcher
from ._ferrovod import RankFailedError

SPEC_VERSION = 1

#: Lines of launcher output kept for the error of a rank that died without reporting one.
_TAIL_LINES = 40

#: Seconds to wait for the launcher to stop its ranks after Ctrl-C before killing it; above the
#: launcher's default grace period (10 s), so it gets to SIGKILL its ranks itself.
_INTERRUPT_WAIT_S = 20.0


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

    workdir = tempfile.mkdtemp(prefix="ferrovod-run-")
    try:
        spec_path = os.path.join(workdir, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump({**call, "result_dir": workdir}, f)
        cmd = [*_launcher.command(), "-np", str(np), "--", *worker_command(spec_path)]
        code, tail = _launch(cmd, {**os.environ, **extra_env})
        return outcome(load_results(workdir, range(np)), np, code, tail)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def prepare(fn: Callable[..., Any], args: Any, kwargs: Any, api: str) -> dict[str, Any]:
    """The worker spec for calling ``fn(*args, **kwargs)`` on the ranks, without its
    ``result_dir``; raises ``TypeError``/``ValueError`` naming what cannot travel."""
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"{api}: args must be a tuple or a list, not {type_name(args)}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"{api}: kwargs must be a dict, not {type_name(kwargs)}")
    kwargs = dict(kwargs)
    check_json(list(args), "args")
    check_json(kwargs, "kwargs")
    target = describe(fn, api)
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{api}: {fn.__qualname__}() cannot be called with these arguments: {e}") from None
    return {
        "version": SPEC_VERSION,
        "function": target,
        "args": list(args),
        "kwargs": kwargs,
        "sys_path": [os.path.abspath(p) for p in sys.path if isinstance(p, str)],
    }


def worker_command(spec_path: str) -> list[str]:
    """The command every rank runs: this Python, calling the spec's function once."""
    return [sys.executable, "-m", "ferrovod._worker", spec_path]


# --- what can travel ---------------------------------------------------------------------------


def describe(fn: Any, api: str = "ferrovod.run") -> dict[str, Any]:
    """How ``fn`` travels to the ranks: ``{"module", "qualname"}`` when importing its module and
    walking its qualname finds this very function, else ``{"source", "name", "filename",
    "firstlineno", "flags"}`` when it is self-contained. Raises ``TypeError`` naming why it can do
    neither."""
    if inspect.ismethod(fn):
        raise TypeError(
            f"{api} cannot send the bound method {fn.__qualname__} (its object would have to be "
            "pickled): pass a module-level function and give it the object's data as JSON arguments"
        )
    if not inspect.isfunction(fn):
        raise TypeError(
            f"{api} needs a function defined with def, not {type_name(fn)} ({fn!r:.80})"
        )
    name = fn.__qualname__
    if fn.__name__ == "<lambda>":
        raise TypeError(
            f"{api} cannot send the lambda {name} defined in {fn.__module__}: a lambda has no "
            "name to import and no source of its own; define it with def at the top level"
        )
    if fn.__module__ != "__main__" and _resolves(fn):
        return {"module": fn.__module__, "qualname": name}
    # By source: the function must rebuild from its text alone.
    if hasattr(fn, "__wrapped__"):
        raise TypeError(
            f"{api} cannot send the decorated function {name} from {fn.__module__}: the wrapper "
            "cannot be rebuilt from source; remove the decorator or move the function into an "
            "importable module"
        )
    if "<locals>" in name or fn.__closure__:
        free = ", ".join(fn.__code__.co_freevars)
        what = f"closes over local variables ({free})" if free else "is defined inside another function"
        raise TypeError(
            f"{api} cannot send {name}: it {what}, which would have to be pickled; define it "
            "at the top level of a module and pass what it needs as arguments"
        )
    try:
        lines, firstlineno = inspect.getsourcelines(fn)
    except (OSError, TypeError) as e:
        raise TypeError(
            f"{api} cannot send {name}: its module {fn.__module__} cannot be imported by the "
            f"ranks and its source is not available ({e}); define it in a file or a notebook cell"
        ) from None
    source = textwrap.dedent("".join(lines))
    if source.lstrip().startswith("@"):
        raise TypeError(
            f"{api} cannot send the decorated function {name} from {fn.__module__}: its source "
            "would run without the decorator's effect; remove the decorator or move the function "
            "into an importable module"
        )
    # Compile as its module did: under ``from __future__ import annotations`` its annotations
    # are strings, and must not be evaluated on the ranks.
    flags = fn.__code__.co_flags & __future__.annotations.compiler_flag
    try:
        code = compile(source, fn.__code__.co_filename, "exec", flags=flags, dont_inherit=True)
    except SyntaxError as e:
        raise TypeError(f"{api} cannot send {name}: its source does not compile alone ({e})") from None
    missing = sorted(_free_globals(code))
    if missing:
        raise TypeError(
            f"{api} cannot send {name} from {fn.__module__}: it uses module-level names that will "
            f"not exist on the ranks ({', '.join(missing)}); import them inside the function body, or "
            "move the function into an importable module"
        )
    return {
        "source": source,
        "name": fn.__name__,
        "filename": fn.__code__.co_filename,
        "firstlineno": firstlineno,
        "flags": flags,
    }


def _resolves(fn: types.FunctionType) -> bool:
    """Whether importing ``fn.__module__`` and walking ``fn.__qualname__`` gives ``fn`` back: only
    then can a rank find the same function by name."""
    if "<locals>" in fn.__qualname__:
        return False
    try:
        obj: Any = importlib.import_module(fn.__module__)
        for part in fn.__qualname__.split("."):
            obj = getattr(obj, part)
    except Exception:
        return False
    return obj is fn


def _free_globals(code: types.CodeType) -> set[str]:
    """The global names that ``code`` (a function's source compiled as a module) reads and that
    neither builtins nor the source itself define: the names the function borrows from the
    module it was defined in, which will not exist on the ranks. Walks the nested code objects
    too (the body, default values, comprehensions, inner functions and classes)."""
    defined: set[str] = set()
    read: set[str] = set()

    def walk(co: types.CodeType, is_module: bool) -> None:
        stores, loads = set(), set()
        for ins in dis.get_instructions(co):
            if ins.opname == "STORE_GLOBAL":
                defined.add(ins.argval)
            elif ins.opname == "STORE_NAME":
                stores.add(ins.argval)
            elif ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"):
                loads.add(ins.argval)
        if is_module:
            defined.update(stores)  # the function's own name: recursion is fine
        else:
            loads -= stores  # a class body reads the names it stored with LOAD_NAME
        read.update(loads)
        for const in co.co_consts:
            if isinstance(const, types.CodeType):
                walk(const, False)

    walk(code, True)
    return {n for n in read - defined if not hasattr(builtins, n)}


def check_json(value: Any, where: str) -> None:
    """Raises ``TypeError`` naming the first place in ``value`` that JSON cannot carry, as a
    path like ``kwargs['opt'][2]: set is not JSON``. Dict keys must be strings (JSON would turn
    others into strings silently, and the value would not come back as it went)."""
    active: set[int] = set()

    def visit(v: Any, path: str) -> None:
        if v is None or isinstance(v, (bool, int, float, str)):
            return
        if isinstance(v, (list, tuple, dict)):
            if id(v) in active:
                raise ValueError(f"{path}: refers to itself, which JSON cannot carry")
            active.add(id(v))
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, str):
                        raise TypeError(f"{path}: key {k!r} is a {type_name(k)}; JSON keys are strings")
                    visit(item, f"{path}[{k!r}]")
            else:
                for i, item in enumerate(v):
                    visit(item, f"{path}[{i}]")
            active.discard(id(v))
            return
        hint = " (use .tolist() or .item())" if hasattr(v, "tolist") else ""
        raise TypeError(f"{path}: {type_name(v)} is not JSON{hint}")

    visit(value, where)


def check_env(env: Mapping[str, str] | None, api: str) -> dict[str, str]:
    """``env`` as a dict of str to str, or a ``TypeError``/``ValueError`` naming the bad entry."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"{api}: env must be a dict of str to str, not {type_name(env)}")
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"{api}: env[{k!r}]: keys and values must be str, not {type_name(k)} -> {type_name(v)}")
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ValueError(f"{api}: env[{k!r}] is not a valid environment variable")
    return dict(env)


def type_name(v: Any) -> str:
    t = type(v)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# --- starting the launcher ---------------------------------------------------------------------


def _launch(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Runs the launcher in the caller's cwd (a by-reference module may be found relative to
    it), forwarding its output live, and returns its exit code and the tail of its output. On
    Ctrl-C, asks it to stop (it stops its ranks), waits for it, and re-raises."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    lock = threading.Lock()
    with subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=os.getcwd(),
        env=env,
        text=True,
        encoding="utf-8",
        errors="replace",
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            threading.Thread(target=_forward, args=(proc.stdout, "stdout", tail, lock), daemon=True),
            threading.Thread(target=_forward, args=(proc.stderr, "stderr", tail, lock), daemon=True),
        ]
        for t in readers:
            t.start()
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise
        finally:
            for t in readers:
                t.join(timeout=5)
    return code, "".join(tail)


def _forward(stream: IO[str], name: str, tail: collections.deque[str], lock: threading.Lock) -> None:
    """Copies the launcher's ``stream`` line by line to the caller's ``sys.stdout`` or
    ``sys.stderr``, looked up at each line: under pytest capture or in Jupyter they are not
    real files, and they may be swapped while the job runs."""
    for line in stream:
        with lock:
            tail.append(line)
        write_quietly(getattr(sys, name), line)


def write_quietly(out: Any, text: str) -> None:
    """Writes and flushes ``text``; a closed or broken stream (a caller's, the driver's) must
    not stop whoever forwards a job's output, or the job behind the pipe."""
    try:
        out.write(text)
        out.flush()
    except Exception:
        pass


def _stop(proc: subprocess.Popen[str]) -> None:
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


# --- results -----------------------------------------------------------------------------------


def load_results(result_dir: str, ranks: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The ``rank-{r}.json`` files the ranks of ``ranks`` wrote into ``result_dir``; a rank
    that wrote none is absent."""
    results: dict[int, dict[str, Any]] = {}
    for r in ranks:
        try:
            with open(os.path.join(result_dir, f"rank-{r}.json"), encoding="utf-8") as f:
                results[r] = json.load(f)
        except FileNotFoundError:
            pass
    return results


def outcome(
    results: Mapping[int, dict[str, Any]],
    np: int,
    code: int,
    tail: str,
    hosts: Mapping[int, str] | None = None,
    rank_tails: Mapping[int, str] | None = None,
) -> list[Any]:
    """Every rank's value when the job succeeded; otherwise a ``RankFailedError`` for the rank
    that failed first. A rank that reported an error recorded when; the earliest is the cause,
    the others failed because it stopped (the launcher's "first to exit" is not the cause: a
    rank that raised still shuts down its engine while its peers fail fast). But a rank the
    launcher names that reported nothing died without raising (a signal, ``os._exit``): that
    death is the cause, and the others' errors follow from it. ``hosts`` names each rank's host
    in the message, and ``rank_tails`` (each rank's last ``[rank]``-prefixed output lines) adds
    what the failing rank printed last."""
    missing = [r for r in range(np) if r not in results]
    errors = {r: res for r, res in results.items() if not res["ok"]}
    if code == 0 and not missing and not errors:
        return [results[r]["value"] for r in range(np)]

    def who(r: int) -> str:
        return f"rank {r} on {hosts[r]}" if hosts and r in hosts else f"rank {r}"

    named = re.findall(r"^ferrovod-run: job failed: rank (\d+) ", tail, re.MULTILINE)
    first = int(named[-1]) if named else None
    if (first is None or first in errors) and errors:
        first = min(errors, key=lambda r: (errors[r]["time_ns"], r))
    if first in errors:
        res = errors[first]
        message = f"{who(first)} failed: {res['type']}: {res['message']}\n\n{res['traceback']}"
        message += _last_output(first, rank_tails, res["traceback"])
        raise _rank_failed(message, first, res["traceback"])
    if first is not None or missing:
        whom = who(first) if first is not None else f"rank(s) {', '.join(map(str, missing))}"
        why = (
            f": {whom} ended without reporting an error (killed by a signal, or exited without "
            "returning from the function)"
        )
    else:
        why = ""
    message = f"the job failed (launcher exit status {code}){why}. The launcher's last output:\n{tail}"
    if first is not None:
        message += _last_output(first, rank_tails, "")
    raise _rank_failed(message, first, None)


def _last_output(rank: int, rank_tails: Mapping[int, str] | None, traceback: str) -> str:
    """The rank's last output lines, less those of its traceback (already in the message)."""
    if not rank_tails or not rank_tails.get(rank):
        return ""
    prefix = f"[{rank}] "
    shown = set(traceback.splitlines())
    lines = [ln for ln in rank_tails[rank].splitlines() if ln.removeprefix(prefix) not in shown]
    if not lines:
        return ""
    return f"\nLast output of rank {rank}:\n" + "\n".join(lines[-10:]) + "\n"


def _rank_failed(message: str, rank: int | None, tb: str | None) -> RankFailedError:
    """The error, with the failing rank and its traceback text also as attributes (``None``
    when the launcher did not say which rank, or the rank left no traceback)."""
    err = RankFailedError(message)
    err.rank = rank  # type: ignore[attr-defined]  # not declared in _ferrovod.pyi
    err.traceback = tb  # type: ignore[attr-defined]
    return err
