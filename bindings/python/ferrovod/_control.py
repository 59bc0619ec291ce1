"""The pool's control channel: JSON messages, each behind a 4-byte big-endian length, on a stream
socket that only the two ends hold (a ``socketpair`` the ranks inherit through the launcher, so
nobody else can connect and nothing needs a secret). Nothing is pickled.

A rank first says ``{"type": "hello", "rank", "pid"}``. The driver sends ``{"type": "call", "id",
"spec", "restart"}`` or ``{"type": "close"}``; a rank answers each call with ``{"type": "result",
"id", "result"}``, the result being what ``ferrovod._worker.execute`` returns.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Mapping
from typing import Any

#: Largest message either side accepts: a function's source and JSON arguments, or a result.
MAX_MESSAGE = 64 << 20

_HEADER = struct.Struct(">I")


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
    message = json.loads(read_exactly(sock, length))
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
