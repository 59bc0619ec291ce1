"""Frames between a Spark task and its host's inference worker: a JSON header on the control
framing (``ferrovod._control``) followed by ``nbytes`` of payload, an Arrow IPC stream holding one
record batch. Nothing is pickled."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from .. import _control

#: Largest payload accepted: one frame carries at most ``batch_size`` rows.
MAX_PAYLOAD = 1 << 30

ChannelClosed = _control.ChannelClosed


def worker_name(secret: str, index: int) -> bytes:
    """The abstract Unix socket name of inference worker ``index`` of the secret's application
    (or pool): nothing on disk, and unguessable without the secret."""
    digest = hashlib.sha256(secret.encode()).hexdigest()[:32]
    return f"\0ferrovod-inference-{digest}-{index}".encode()


def send(sock: socket.socket, header: Mapping[str, Any], batch: pa.RecordBatch | None = None) -> None:
    """Writes a header and, when given, one record batch after it."""
    payload = b"" if batch is None else encode(batch)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a batch of {len(payload)} bytes is over the limit of {MAX_PAYLOAD}; lower batch_size")
    _control.send(sock, {**header, "nbytes": len(payload)})
    if payload:
        sock.sendall(payload)


def receive(sock: socket.socket) -> tuple[dict[str, Any], pa.RecordBatch | None]:
    """Reads one header and its batch (``None`` when it carries none); :class:`ChannelClosed` at
    the end of the stream, ``ValueError`` for a malformed frame."""
    header = _control.receive(sock)
    nbytes = header.get("nbytes", 0)
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes <= MAX_PAYLOAD:
        raise ValueError(f"a frame announces {nbytes!r} payload bytes")
    if not nbytes:
        return header, None
    return header, decode(_control.read_exactly(sock, nbytes))


def encode(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode(data: bytes) -> pa.RecordBatch:
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            batches = list(reader)
    except pa.ArrowInvalid as e:
        raise ValueError(f"a frame's payload is not an Arrow stream: {e}") from None
    if len(batches) != 1:
        raise ValueError(f"a frame's payload holds {len(batches)} record batches, not 1")
    return batches[0]
