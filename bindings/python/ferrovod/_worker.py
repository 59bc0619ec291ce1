"""One rank of ``ferrovod.run``: ``python -m ferrovod._worker --spec-fd FD``, started by the
launcher.

Reads the JSON spec the caller put in the inherited descriptor FD (:class:`ferrovod._ship.Exchange`),
closes every descriptor of the exchange but its own result's (the function must not inherit them),
finds the function (by importing it, or by running its source in a fresh namespace), calls it with
the JSON arguments and writes its result into the descriptor of ``FERROVOD_RANK``:
``{"ok": true, "value": ...}``, or ``{"ok": false, "type", "message", "traceback"}``. It does not call ``ferrovod.init()``: the
function does, as a script started by ``ferrovod-run`` would, so the same function runs either
way.
"""

from __future__ import annotations

import builtins
import importlib
import linecache
import os
import sys
import traceback
import time
import types
from typing import Any

from . import _tagged
from ._control import close_quietly
from ._ship import SPEC_VERSION, read_spec, write_result


def main(argv: list[str]) -> int:
    """Runs the spec's function once; the exit code tells the launcher whether it failed."""
    if len(argv) != 2 or argv[0] != "--spec-fd" or not argv[1].isdigit():
        print("usage: python -m ferrovod._worker --spec-fd FD (started by ferrovod.run)", file=sys.stderr)
        return 2
    line_buffered()
    spec_fd = int(argv[1])
    try:
        spec = read_spec(spec_fd)
    except (OSError, ValueError) as e:
        print(f"ferrovod._worker: cannot read the spec from descriptor {spec_fd}: {e}", file=sys.stderr)
        return 2
    if spec.get("version") != SPEC_VERSION:
        print(f"ferrovod._worker: spec version {spec.get('version')!r}, expected {SPEC_VERSION}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("FERROVOD_RANK", "0"))
    fds = {int(r): fd for r, fd in spec["result_fds"].items()}
    mine = fds.pop(rank, None)
    for fd in (spec_fd, *fds.values()):
        close_quietly(fd)
    if mine is None:
        print(f"ferrovod._worker: the spec has no result slot for rank {rank}", file=sys.stderr)
        return 2
    os.set_inheritable(mine, False)
    result = execute(spec)
    write_result(mine, result)
    os.close(mine)
    return 0 if result["ok"] else 1


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """Calls the spec's function and returns its result: ``{"ok": true, "value": ...}``, or
    ``{"ok": false, "type", "message", "traceback", "time_ns"}`` (the traceback is also printed
    to stderr). Used by one-shot ranks and by pool ranks alike."""
    try:
        fn, value = call_spec(spec)
        try:
            return _tagged.result(value, "return value")
        except (TypeError, ValueError) as e:
            raise type(e)(f"{fn.__qualname__} returned a value that cannot travel back: {e}") from None
    except (Exception, SystemExit) as e:
        return failed(e)


def call_spec(spec: dict[str, Any]) -> tuple[Any, Any]:
    """The spec's function and what it returned, called with the spec's arguments."""
    _extend_path(spec["sys_path"])
    fn = _resolve(spec["function"])
    return fn, fn(*spec["args"], **spec["kwargs"])


def failed(e: BaseException) -> dict[str, Any]:
    """The result of a call that raised ``e``; prints the traceback to stderr."""
    tb = format_error(e)
    print(tb, end="", file=sys.stderr)
    return {
        "ok": False,
        "type": type(e).__qualname__,
        "message": str(e),
        "traceback": tb,
        "time_ns": time.time_ns(),  # the earliest error is the cause; later ones follow from it
    }


def line_buffered() -> None:
    """Output goes to the launcher through a pipe: flush every line so it is forwarded live."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)


#: This package's files that call the user's function: their frames are cut from tracebacks.
_OWN_FILES = {
    __file__,
    os.path.join(os.path.dirname(__file__), "_pool_worker.py"),
    os.path.join(os.path.dirname(__file__), "inference", "_server.py"),
}


def format_error(e: BaseException) -> str:
    """``e``'s traceback from the user's code on: this file's frames say nothing to them."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES and tb.tb_next is not None:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


def _extend_path(entries: list[str]) -> None:
    """Puts the caller's ``sys.path`` entries this process lacks in front of its own, in the
    caller's order, so that a module the caller imported resolves here too."""
    have = set(sys.path)
    sys.path[:0] = [p for p in entries if p not in have]


def _resolve(target: dict[str, Any]) -> Any:
    """The function the spec names: imported by reference, or rebuilt from its source."""
    if "module" in target:
        obj: Any = importlib.import_module(target["module"])
        for part in target["qualname"].split("."):
            obj = getattr(obj, part)
        return obj
    # Pad to the original line numbers and register the text, so tracebacks show the caller's
    # file, line and code even where that file does not exist (a notebook cell).
    filename = target["filename"]
    text = "\n" * (target["firstlineno"] - 1) + target["source"]
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    module = types.ModuleType("__ferrovod_main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__ferrovod_main__"] = module
    exec(compile(text, filename, "exec", flags=target["flags"], dont_inherit=True), module.__dict__)
    return module.__dict__[target["name"]]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
