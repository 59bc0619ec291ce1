#!/usr/bin/env python3
"""The wake-up floor of this machine: a blocking round trip between two processes over a Unix
socketpair (two sleeps and two wake-ups, no ferrovod code). A collective that never spins cannot
finish faster than about half of this per message it waits for.

    python3 benches/pingpong.py
"""
import os
import socket
import time

N = 20000


def main():
    a, b = socket.socketpair()
    if os.fork() == 0:
        for _ in range(N):
            b.recv(8)
            b.send(b"x")
        os._exit(0)
    t = time.perf_counter()
    for _ in range(N):
        a.send(b"x")
        a.recv(8)
    dt = (time.perf_counter() - t) / N
    os.wait()
    print(f"blocking round trip over a Unix socketpair: {dt * 1e6:.1f} us ({N} iterations)")


if __name__ == "__main__":
    main()
