"""What travels to the ranks, and back: a function by reference (``module:qualname``) when its
module is importable, or as its source when it is self-contained (the notebook case: imports
inside the body); arguments and results as JSON. Nothing is pickled. Everything that cannot
travel that way is refused here, before any process starts, with an error that names it: a late
failure on N ranks is far harder to read than an early one in the caller.

``ferrovod.run`` and the Spark tasks both use it; the ranks run ``ferrovod._worker``, which reads
the spec written here and writes ``rank-{r}.json`` back (:func:`load_results`).
"""

from __future__ import annotations

import __future__
import builtins
import dis
import importlib
import inspect
import json
import os
import sys
import textwrap
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

SPEC_VERSION = 1


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
