"""The log channel from the barrier tasks and the ranks to the driver: TCP, one JSON object per
line, and every connection proves it knows the job secret before the driver prints a byte of it.

The handshake is :mod:`ferrovod._auth`'s (mutual: each side proves it knows the job secret).
Then the client sends lines ``{"s": "out" | "err", "t": TEXT}``; the driver writes ``TEXT`` to
its own ``sys.stdout`` or ``sys.stderr``. ``TEXT`` is already tagged with the rank (``ferrovod._launch`` renders a rank's
lines as ``[rank] line``, and ``log_to_driver`` does the same).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

from .. import _auth
from .._launch import write_quietly

_CHANNEL = _auth.Channel(b"ferrovod-log 1 ", b"ferrovod-spark-log")

#: Seconds a client has to connect and answer the challenge.
HANDSHAKE_TIMEOUT_S = 10.0

#: Seconds one send may block before the client gives up on the driver.
SEND_TIMEOUT_S = 30.0

#: Longest line the driver reads; a client truncates its text well below it.
MAX_LINE = 1 << 20
MAX_TEXT = 64 << 10

#: Connections the driver lets handshake at once; more are closed at once (a port scan or a
#: flood must not pile up threads on the driver).
MAX_PENDING = 64


class LogServer:
    """Accepts authenticated log connections on the driver and writes what they send."""

    def __init__(self, secret: str, host: str) -> None:
        self._secret = secret
        self._sock = listen(host)
        bound = self._sock.getsockname()
        self.address = f"[{host}]:{bound[1]}" if ":" in host else f"{host}:{bound[1]}"
        self._lock = threading.Lock()
        self._lines = threading.Lock()  # one line at a time on the driver's streams
        self._conns: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._closed = False
        self.refused = 0
        self._acceptor = threading.Thread(target=self._accept, name="ferrovod-log-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._pending.acquire(blocking=False):
                conn.close()
                with self._lock:
                    self.refused += 1
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
                self._handlers = [t for t in self._handlers if t.is_alive()]
                t = threading.Thread(target=self._serve, args=(conn,), name="ferrovod-log", daemon=True)
                self._handlers.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        pending = True
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            if not _auth.serve(conn, self._secret, _CHANNEL):
                with self._lock:
                    self.refused += 1
                return
            reader = conn.makefile("rb")
            self._pending.release()
            pending = False
            # Authenticated: a rank may stay quiet for as long as it trains; close() unblocks.
            conn.settimeout(None)
            while True:
                line = reader.readline(MAX_LINE)
                if not line:
                    return
                try:
                    msg = json.loads(line)
                    stream, text = msg["s"], msg["t"]
                except (ValueError, KeyError, TypeError):
                    return  # not ours, or cut at MAX_LINE: drop the connection
                if stream in ("out", "err") and isinstance(text, str):
                    self._write(sys.stdout if stream == "out" else sys.stderr, text)
        except OSError:
            pass  # the client went away or timed out in the handshake: nothing more to do
        finally:
            if pending:
                self._pending.release()
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _write(self, out: Any, text: str) -> None:
        """Looks the stream up per line: under pytest or Jupyter it is not a real file, and it
        may be swapped while the job runs."""
        with self._lines:
            write_quietly(out, text if text.endswith("\n") else text + "\n")

    def close(self, drain_s: float = 5.0) -> None:
        """Stops accepting, gives the open connections ``drain_s`` seconds to finish what they
        sent (the job is over, so they are closing), then cuts them."""
        with self._lock:
            self._closed = True
            handlers = list(self._handlers)
        _close_listener(self._sock)
        self._acceptor.join(timeout=2)
        deadline = time.monotonic() + drain_s
        for t in handlers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            _shutdown(c, socket.SHUT_RDWR)
        for t in handlers:
            t.join(timeout=1)


class LogClient:
    """One authenticated connection to the driver's :class:`LogServer`."""

    def __init__(self, address: str, secret: str, timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        host, port = split_host_port(address)
        self._sock = socket.create_connection((host, port), timeout=timeout)
        try:
            _auth.connect(self._sock, secret, _CHANNEL, address)
            self._sock.settimeout(SEND_TIMEOUT_S)
        except BaseException:
            self._sock.close()
            raise
        self._lock = threading.Lock()

    def send(self, stream: str, text: str) -> None:
        """Sends one line (``stream`` is ``"out"`` or ``"err"``); raises ``OSError`` when the
        driver is gone or does not read for :data:`SEND_TIMEOUT_S`."""
        if len(text) > MAX_TEXT:
            text = text[:MAX_TEXT] + " [... cut by ferrovod]"
        data = json.dumps({"s": stream, "t": text}).encode() + b"\n"
        with self._lock:
            self._sock.sendall(data)

    def close(self) -> None:
        _shutdown(self._sock, socket.SHUT_WR)
        self._sock.close()


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as a pair."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def listen(host: str) -> socket.socket:
    """A listening TCP socket on ``host`` (any port), or on every interface when ``host`` is
    not an address of this machine."""
    try:
        return _listen_on(host)
    except OSError:
        return _listen_on(None)


def _listen_on(host: str | None) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _close_listener(sock: socket.socket) -> None:
    """Closes a listening socket so that a thread blocked in ``accept`` wakes up."""
    _shutdown(sock, socket.SHUT_RDWR)
    sock.close()


def _shutdown(sock: socket.socket, how: int) -> None:
    """``shutdown``, for a socket the peer may already have closed."""
    try:
        sock.shutdown(how)
    except OSError:
        pass
