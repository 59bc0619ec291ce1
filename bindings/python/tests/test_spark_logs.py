"""The log channel from the ranks to the driver (``ferrovod.spark._logs``) over real sockets:
only a client that proves it knows the job secret gets its lines printed."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ferrovod.spark import _logs


def _wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_lines_from_a_client_with_the_secret_reach_the_driver_streams(capsys):
    server = _logs.LogServer("s3cret", "127.0.0.1")
    try:
        client = _logs.LogClient(server.address, "s3cret")
        client.send("out", "[0] to stdout")
        client.send("err", "[1] to stderr\nsecond line")
        client.close()
    finally:
        server.close()
    captured = capsys.readouterr()
    assert captured.out == "[0] to stdout\n"
    assert captured.err == "[1] to stderr\nsecond line\n"
    assert server.refused == 0


def test_a_client_without_the_secret_is_refused_and_printed_nothing(capsys):
    server = _logs.LogServer("s3cret", "127.0.0.1")
    try:
        with pytest.raises(ConnectionError):
            _logs.LogClient(server.address, "guess")
        assert _wait_for(lambda: server.refused == 1)
        # A client that skips the handshake and sends a log line at once is refused too.
        host, port = _logs.split_host_port(server.address)
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.recv(256)
            raw.sendall(b'{"s": "out", "t": "[0] injected"}\n')
        assert _wait_for(lambda: server.refused == 2)
    finally:
        server.close()
    assert "injected" not in capsys.readouterr().out


def test_a_client_sends_nothing_to_a_driver_that_cannot_prove_the_secret():
    # A program that took the driver's port: it greets like the driver, then answers garbage.
    with socket.create_server(("127.0.0.1", 0)) as fake:
        received = []

        def serve():
            conn, _ = fake.accept()
            with conn:
                conn.sendall(b"ferrovod-log 1 " + b"ab" * 32 + b"\n")
                received.append(conn.recv(4096))
                conn.sendall(b"0" * 64 + b"\n")
                received.append(conn.recv(4096))

        t = threading.Thread(target=serve)
        t.start()
        with pytest.raises(ConnectionError, match="did not prove it knows the job secret"):
            _logs.LogClient(f"127.0.0.1:{fake.getsockname()[1]}", "s3cret")
        t.join(timeout=10)
    assert received[1] == b""  # the client closed without sending a line


def test_close_returns_while_a_client_stays_connected():
    server = _logs.LogServer("s3cret", "127.0.0.1")
    client = _logs.LogClient(server.address, "s3cret")
    start = time.monotonic()
    server.close(drain_s=0.5)
    assert time.monotonic() - start < 5
    client.close()
