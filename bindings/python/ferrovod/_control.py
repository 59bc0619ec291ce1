"""The pool's control channel: JSON messages, each behind a 4-byte big-endian length, on a stream
socket. A local pool's is a ``socketpair`` the ranks inherit through the launcher (only the two
ends hold it, so nothing needs a secret); a Spark pool's is a TCP connection from the rank to the
driver, opened with :mod:`ferrovod._auth`'s mutual handshake (:data:`SPARK_POOL`). Nothing is
pickled.

A rank first says ``{"type": "hello", "rank", "pid"}``. The driver sends ``{"type": "call", "id",
"spec", "restart"}`` or ``{"type": "close"}``; a rank answers each call with ``{"type": "result",
"id", "result"}``, the result being what ``ferrovod._worker.execute`` returns.

A Spark pool's launcher hosts (:mod:`ferrovod.spark._pool_host`) connect the same way and say
``{"type": "host", "task", "pid"}``; the driver may send one ``{"type": "stop"}``, and a host
says ``{"type": "ended", "code", "failure", "tail", "rank_tails"}`` when its launcher ends.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Mapping
from typing import Any

from . import _auth

#: Largest message either side accepts: a function's source and JSON arguments, or a result.
MAX_MESSAGE = 64 << 20

_HEADER = struct.Struct(">I")

#: The handshake of a Spark pool's control connections (ranks and launcher hosts to the driver).
SPARK_POOL = _auth.Channel(b"ferrovod-pool 1 ", b"ferrovod-spark-pool")

#: Keepalive of those connections: a peer whose host vanished (no FIN) is noticed in about 10 s.
_KEEPALIVE = ((socket.TCP_KEEPIDLE, 4), (socket.TCP_KEEPINTVL, 2), (socket.TCP_KEEPCNT, 3))


class ChannelClosed(Exception):
    """The other end closed the channel (or died) before a whole message arrived."""


def send(sock: socket.socket, message: Mapping[str, Any]) -> None:
    """Writes one message; ``ValueError`` when it is larger than :data:`MAX_MESSAGE`."""
    body = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"a control message of {len(body)} bytes is over the limit of {MAX_MESSAGE}")
    sock.sendall(_HEADER.pack(len(body)) + body)


def receive(sock: socket.socket) -> dict[str, Any]:
    """Reads one whole message; :class:`ChannelClosed` at the end of the stream, ``ValueError``
    for a message that is too long or not a JSON object."""
    (length,) = _HEADER.unpack(read_exactly(sock, _HEADER.size))
    if length > MAX_MESSAGE:
        raise ValueError(f"a control message announces {length} bytes, over the limit of {MAX_MESSAGE}")
    body = read_exactly(sock, length)
    try:
        message = json.loads(body)
    except RecursionError:
        # Deep nesting ("[[[[...") exhausts the decoder's stack: a bad message like any other.
        raise ValueError("a control message nests deeper than a JSON decoder can follow") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("a control message is not a JSON object with a type")
    return message


def read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed(f"the channel closed with {left} of {n} bytes still to come")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def close_quietly(fd: int) -> None:
    """Closes ``fd``, which may already be closed."""
    try:
        os.close(fd)
    except OSError:
        pass


def keep_alive(sock: socket.socket) -> None:
    """Turns TCP keepalive on with short probes (:data:`_KEEPALIVE`)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in _KEEPALIVE:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)


def connect_to_driver(address: str, secret: str, timeout: float) -> socket.socket:
    """A Spark pool's control connection to the driver at ``host:port``, authenticated both
    ways; ``OSError`` (``ConnectionError`` for a failed proof) when it cannot be had."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    try:
        _auth.connect(sock, secret, SPARK_POOL, address)
        keep_alive(sock)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock
