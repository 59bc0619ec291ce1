"""What travels to the ranks, and back: a function by reference (``module:qualname``) when its
module is importable, or as its source when it is self-contained (the notebook case: imports
inside the body); arguments and results as JSON. Nothing is pickled. Everything that cannot
travel that way is refused here, before any process starts, with an error that names it: a late
failure on N ranks is far harder to read than an early one in the caller.

``ferrovod.run`` and the Spark tasks both use it; the ranks run ``ferrovod._worker``, which reads
the spec and writes its result back through an :class:`Exchange`: anonymous in-memory files
(memfds) that the ranks inherit through the launcher. Nothing touches the disk, so nothing is left
behind however the run ends (Spark SIGKILLs a cancelled task's Python worker, which no ``finally``
survives), and no other user can read the function, its arguments or the results.
"""

from __future__ import annotations

import __future__
import builtins
import dis
import fcntl
import importlib
import inspect
import json
import os
import sys
import textwrap
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

SPEC_VERSION = 2


def prepare(fn: Callable[..., Any], args: Any, kwargs: Any, api: str) -> dict[str, Any]:
    """The worker spec for calling ``fn(*args, **kwargs)`` on the ranks, without its
    ``result_fds`` (an :class:`Exchange` adds them); raises ``TypeError``/``ValueError`` naming
    what cannot travel."""
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


# --- the exchange with the ranks ---------------------------------------------------------------


class Exchange:
    """What one launcher run hands its ranks: the spec, in a sealed memfd, and one memfd per rank
    for its result. The launcher inherits them (``pass_fds``) and its ranks inherit them from
    it; each rank reads the spec, closes every descriptor that is not its own result's, and
    writes its result there (:mod:`ferrovod._worker`). A context manager: the descriptors are
    closed on exit, and the memory goes with the last process that holds them."""

    def __init__(self, spec: Mapping[str, Any], ranks: Iterable[int]) -> None:
        self._results: dict[int, int] = {}
        self.spec_fd = -1
        try:
            for r in ranks:
                self._results[r] = os.memfd_create(f"ferrovod-result-{r}")
            text = json.dumps({**spec, "result_fds": {str(r): fd for r, fd in self._results.items()}})
            self.spec_fd = os.memfd_create("ferrovod-spec", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            _write_all(self.spec_fd, text.encode())
            # Read-only from here on, for the ranks too.
            fcntl.fcntl(
                self.spec_fd,
                fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL,
            )
        except BaseException:
            self.close()
            raise

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The descriptors the launcher must inherit."""
        return (self.spec_fd, *self._results.values())

    def command(self) -> list[str]:
        """The command every rank runs: this Python, calling the spec's function once."""
        return [sys.executable, "-m", "ferrovod._worker", "--spec-fd", str(self.spec_fd)]

    def results(self) -> dict[int, dict[str, Any]]:
        """The result each rank wrote; a rank that wrote none (or was killed while writing) is
        absent."""
        out: dict[int, dict[str, Any]] = {}
        for r, fd in self._results.items():
            raw = _read_all(fd)
            if not raw:
                continue
            try:
                out[r] = json.loads(raw)
            except ValueError:
                pass  # cut short: a JSON object is only complete at its last byte
        return out

    def close(self) -> None:
        for fd in (self.spec_fd, *self._results.values()):
            if fd >= 0:
                os.close(fd)
        self.spec_fd = -1
        self._results = {}

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_spec(fd: int) -> dict[str, Any]:
    """The spec an :class:`Exchange` wrote (read without moving the descriptor's offset, which
    every rank shares)."""
    spec: dict[str, Any] = json.loads(_read_all(fd))
    return spec


def write_result(fd: int, result: Mapping[str, Any]) -> None:
    """Writes a rank's result into its slot."""
    _write_all(fd, json.dumps(result).encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 24), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)
