"""One rank of a :class:`ferrovod.Pool`: ``python -m ferrovod._pool_worker --control-fds A,B,...``,
started by the launcher, descriptor i being rank i's end of its control channel; or of a
``ferrovod.spark.Pool``: ``python -m ferrovod._pool_worker --driver HOST:PORT``, the rank
connecting to the driver itself (the job secret in ``FERROVOD_SECRET``).

Unlike a ``ferrovod.run`` rank it runs many functions, one after another, in the same process:
the communicator stays up between them (it is ready before the first one: the function need not
call ``ferrovod.init()``, and doing so is harmless), and ``ferrovod.worker_state`` keeps what
they leave there.

A function that raises ends its call, not the pool: the rank answers with the error and shuts its
engine down at once, so that peers waiting on it in a collective fail now rather than at
``FERROVOD_TIMEOUT``. The driver then asks every rank to start a fresh communicator before the
next call (``restart``). The rank ends when the driver says ``close`` or when the channel
closes (the driver is gone).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from . import _control, _world
from ._worker import execute, failed, line_buffered


#: Seconds a rank of a Spark pool gets to reach the driver.
CONNECT_TIMEOUT_S = 30.0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--driver":
        return from_driver(argv[1])
    if len(argv) != 2 or argv[0] != "--control-fds" or not all(p.isdigit() for p in argv[1].split(",")):
        print(
            "usage: python -m ferrovod._pool_worker --control-fds A,B,... | --driver HOST:PORT "
            "(started by ferrovod.Pool or ferrovod.spark.Pool)",
            file=sys.stderr,
        )
        return 2
    line_buffered()
    fds = [int(p) for p in argv[1].split(",")]
    rank = int(os.environ.get("FERROVOD_RANK", "0"))
    if rank >= len(fds):
        print(f"ferrovod._pool_worker: no control channel for rank {rank}", file=sys.stderr)
        return 2
    # The other ranks' ends must not stay open here: the driver sees a rank's end close only
    # once every holder has closed it.
    for r, fd in enumerate(fds):
        if r != rank:
            _control.close_quietly(fd)
    with socket.socket(fileno=fds[rank]) as channel:
        channel.set_inheritable(False)  # the user's subprocesses must not hold the pool open
        # The driver watches this process through its pid: the launcher also holds this
        # channel's end, so the driver would see no end of stream when a rank leaves.
        _control.send(channel, {"type": "hello", "rank": rank, "pid": os.getpid()})
        return serve(channel)


def from_driver(address: str) -> int:
    """A Spark pool's rank: connects to the driver, says hello, and serves its calls."""
    line_buffered()
    rank = int(os.environ.get("FERROVOD_RANK", "0"))
    try:
        channel = _control.connect_to_driver(address, os.environ.get("FERROVOD_SECRET", ""), CONNECT_TIMEOUT_S)
    except (OSError, ValueError) as e:
        print(f"ferrovod._pool_worker: rank {rank} cannot reach the pool's driver at {address}: {e}", file=sys.stderr)
        return 1
    with channel:
        _control.send(channel, {"type": "hello", "rank": rank, "pid": os.getpid()})
        return serve(channel)


def serve(channel: socket.socket) -> int:
    """Answers calls until ``close`` or the end of the channel."""
    while True:
        try:
            message = _control.receive(channel)
        except _control.ChannelClosed:
            _quietly(_world.shutdown)
            return 0  # the driver is gone: nobody is left to report to
        except (OSError, ValueError) as e:
            print(f"ferrovod._pool_worker: the control channel failed: {e}", file=sys.stderr)
            return 2
        if message["type"] == "close":
            _world.shutdown()
            return 0
        if message["type"] != "call":
            print(f"ferrovod._pool_worker: unknown control message {message['type']!r}", file=sys.stderr)
            return 2
        result = call(message["spec"], bool(message.get("restart")))
        try:
            _control.send(channel, {"type": "result", "id": message.get("id"), "result": result})
        except ValueError as e:  # a result too large for the channel is that call's error
            _control.send(channel, {"type": "result", "id": message.get("id"), "result": failed(e)})
        except OSError:
            _quietly(_world.shutdown)
            return 0


def call(spec: dict[str, Any], restart: bool) -> dict[str, Any]:
    """Runs one function with the communicator ready; shuts the engine down when it raised."""
    try:
        if restart:
            _quietly(_world.shutdown)
        _world.init()
    except Exception as e:
        return failed(e)
    result = execute(spec)
    if not result["ok"]:
        _quietly(_world.shutdown)
    return result


def _quietly(f: Any) -> None:
    """Runs ``f``; its error is already explained by the one that made us call it."""
    try:
        f()
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
