"""The driver's lease: every inference worker of an application holds a connection to it and
leaves when it closes. It closes when the SparkContext stops (checked twice a second) or the
driver process dies (the kernel closes it), so workers never outlive their application."""

from __future__ import annotations

import hmac
import secrets
import selectors
import socket
import threading
import time
from typing import Any

from .. import _control

#: Seconds between looks at whether the SparkContext is still the active one.
_CHECK_S = 0.5

#: Seconds a worker gets to authenticate after connecting.
_HELLO_S = 5.0

#: Connections being authenticated at once; the oldest is dropped beyond this.
_MAX_HANDSHAKES = 64

_lock = threading.Lock()
_leases: dict[str, Lease] = {}


class Lease:
    """One application's lease: its secret, and the address workers connect to."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self.secret = secrets.token_hex(32)
        host = context.getConf().get("spark.driver.host") or "127.0.0.1"
        self._listener = socket.create_server((host, 0))
        self.address = f"{host}:{self._listener.getsockname()[1]}"
        self.workers: dict[int, socket.socket] = {}  # pid -> its lease
        self._thread = threading.Thread(target=self._run, name="ferrovod-inference-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        handshakes: dict[socket.socket, float] = {}
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ, "accept")
            while _active(self._context):
                for key, _ in sel.select(_CHECK_S):
                    sock = key.fileobj
                    if key.data == "accept":
                        try:
                            conn, _ = self._listener.accept()
                        except OSError:
                            continue
                        if len(handshakes) >= _MAX_HANDSHAKES:
                            oldest = min(handshakes, key=handshakes.__getitem__)
                            sel.unregister(oldest)
                            handshakes.pop(oldest)
                            oldest.close()
                        handshakes[conn] = time.monotonic()
                        sel.register(conn, selectors.EVENT_READ, "hello")
                    elif key.data == "hello":
                        sel.unregister(sock)
                        handshakes.pop(sock, None)
                        self._hello(sock, sel)
                    else:  # a worker's lease ended: the worker left
                        sel.unregister(sock)
                        sock.close()
                        self.workers.pop(key.data, None)
                now = time.monotonic()
                for conn in [c for c, t in handshakes.items() if now - t > _HELLO_S]:
                    sel.unregister(conn)
                    handshakes.pop(conn).close()
        for conn in handshakes:
            conn.close()
        self.close()

    def _hello(self, conn: socket.socket, sel: selectors.BaseSelector) -> None:
        conn.settimeout(_HELLO_S)
        try:
            hello = _control.receive(conn)
        except (OSError, ValueError, _control.ChannelClosed):
            conn.close()
            return
        pid = hello.get("pid")
        if (
            hello.get("type") != "lease"
            or not isinstance(pid, int)
            or not hmac.compare_digest(str(hello.get("secret", "")), self.secret)
        ):
            conn.close()
            return
        conn.settimeout(None)
        self.workers[pid] = conn
        sel.register(conn, selectors.EVENT_READ, pid)

    def close(self) -> None:
        """Ends every worker of the application (they leave when their lease closes)."""
        with _lock:
            for app, lease in list(_leases.items()):
                if lease is self:
                    del _leases[app]
        for conn in list(self.workers.values()):
            conn.close()
        self.workers.clear()
        self._listener.close()


def for_context(context: Any) -> Lease:
    """The application's lease, made on first use."""
    app = context.applicationId
    with _lock:
        lease = _leases.get(app)
        if lease is None:
            lease = _leases[app] = Lease(context)
        return lease


def _active(context: Any) -> bool:
    from pyspark import SparkContext

    return SparkContext._active_spark_context is context
