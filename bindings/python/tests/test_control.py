"""The pool's control channel decoder (``ferrovod._control.receive``) on malformed frames; the
rest of its behaviour is exercised by the pool tests. ``fuzz/control_fuzz.py`` fuzzes it."""

from __future__ import annotations

import socket
import struct

import pytest

from ferrovod import _control


def _receive(data: bytes) -> dict:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        return _control.receive(b)


def test_deeply_nested_json_is_a_value_error():
    # Found by fuzz/control_fuzz.py: json.loads raised RecursionError, which every caller of
    # receive (catching OSError, ValueError, ChannelClosed) let through.
    body = b"[" * 100_000
    with pytest.raises(ValueError, match="nests deeper"):
        _receive(struct.pack(">I", len(body)) + body)


def test_bad_frames_are_value_errors_or_closed():
    with pytest.raises(ValueError, match="over the limit"):
        _receive(struct.pack(">I", _control.MAX_MESSAGE + 1))
    with pytest.raises(ValueError, match="not a JSON object"):
        _receive(struct.pack(">I", 2) + b"[]")
    with pytest.raises(_control.ChannelClosed):
        _receive(struct.pack(">I", 10) + b"{}")
    assert _receive(struct.pack(">I", 13) + b'{"type":"x"} ') == {"type": "x"}
