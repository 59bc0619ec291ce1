"""The mutual handshake of ferrovod's TCP channels to the driver (the Spark log channel, a Spark
pool's control channel): each side proves it knows the job's secret without sending it.

The server sends ``GREETING NONCE_S`` (32 random bytes in hex); the client answers ``PROOF_C
NONCE_C`` with ``PROOF_C = HMAC-SHA256(secret, CONTEXT + ":client:" + NONCE_S)``; the server
checks it and answers ``PROOF_S = HMAC-SHA256(secret, CONTEXT + ":driver:" + NONCE_C)``, which
the client checks before it sends anything. Fresh nonces on both sides mean a recorded answer
cannot be replayed, and a program that took the server's port learns nothing (and, for the pool,
cannot hand a rank a function to run). Lines are read a byte at a time, so that nothing of what
follows the handshake is read ahead into a buffer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
from dataclasses import dataclass

#: Longest handshake line either side reads.
_MAX_LINE = 256


@dataclass(frozen=True)
class Channel:
    """What names one kind of channel in its handshake: the server's first words, and the
    context mixed into the proofs (so a proof for one channel is worth nothing on another)."""

    greeting: bytes
    context: bytes


def serve(conn: socket.socket, secret: str, channel: Channel) -> bool:
    """The server's side; ``False`` when the client did not prove it knows the secret. The
    caller sets the timeout and closes a refused connection."""
    nonce = secrets.token_hex(32).encode()
    conn.sendall(channel.greeting + nonce + b"\n")
    answer = read_line(conn).split()
    if len(answer) != 2 or not hmac.compare_digest(answer[0], _proof(secret, channel.context + b":client:", nonce)):
        return False
    conn.sendall(_proof(secret, channel.context + b":driver:", answer[1][:128]) + b"\n")
    return True


def connect(sock: socket.socket, secret: str, channel: Channel, address: str) -> None:
    """The client's side; ``ConnectionError`` when the server is not one, or does not prove it
    knows the secret."""
    greeting = read_line(sock)
    if not greeting.startswith(channel.greeting):
        raise ConnectionError(f"{address} is not a ferrovod {channel.greeting.split()[0].decode()} channel")
    nonce = greeting[len(channel.greeting) :].strip()
    mine = secrets.token_hex(32).encode()
    sock.sendall(_proof(secret, channel.context + b":client:", nonce) + b" " + mine + b"\n")
    if not hmac.compare_digest(read_line(sock).strip(), _proof(secret, channel.context + b":driver:", mine)):
        raise ConnectionError(f"{address} did not prove it knows the job secret")


def read_line(sock: socket.socket) -> bytes:
    """One line of at most :data:`_MAX_LINE` bytes, without reading past it; what arrived when
    the peer closed or the limit was reached."""
    line = bytearray()
    while len(line) < _MAX_LINE:
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
        if byte == b"\n":
            break
    return bytes(line)


def _proof(secret: str, context: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret.encode(), context + nonce, hashlib.sha256).hexdigest().encode()
