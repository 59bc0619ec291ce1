"""Structure-aware random fuzzing of the pool's control channel decoder
(``bindings/python/ferrovod/_control.py``: ``receive``), which is Python and so out of reach of
cargo fuzz.

Each case builds the bytes a peer could send: a well-formed message of one of the channel's
kinds (hello, call, result, close, host, stop, ended), then mutated at the level of the frame
(length word too large, too small, over the cap, cut short) or of the JSON (bytes flipped,
inserted, deleted, deep nesting, non-objects, a missing or non-string ``type``, other encodings,
NaN, huge numbers, duplicate keys). The bytes are handed to ``receive`` through a socket
stand-in that returns them in random pieces (and, for a sample of cases, through a real
``socketpair``).

Checks:
- ``receive`` returns a dict with a string ``type``, or raises ``ValueError`` (bad message) or
  ``ChannelClosed`` (short stream); any other exception is a failure;
- a frame whose length word is over ``MAX_MESSAGE`` is refused before any of its body is read;
- an unmutated message sent with ``send`` is received equal to what was sent.

Usage: ``python fuzz/control_fuzz.py [--seconds N] [--seed S] [--cases C]``; exits 1 on the first failure,
after writing the failing input to ``fuzz/artifacts/control/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import socket
import struct
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_control() -> types.ModuleType:
    """``_control`` from the source tree, without the package's native extension: a bare
    package holding it and ``_auth``, its one import."""
    src = ROOT / "bindings" / "python" / "ferrovod"
    package = types.ModuleType("ferrovod_src")
    package.__path__ = [str(src)]
    sys.modules["ferrovod_src"] = package
    for name in ("_auth", "_control"):
        spec = importlib.util.spec_from_file_location(f"ferrovod_src.{name}", src / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["ferrovod_src._control"]


_control = load_control()

HEADER = struct.Struct(">I")


class FakeSocket:
    """Gives out ``data`` in pieces of random size, then b"" (the peer closed)."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        self.data, self.at, self.rng, self.read = data, 0, rng, 0

    def recv(self, n: int) -> bytes:
        piece = self.data[self.at : self.at + self.rng.randint(1, max(1, n))][:n]
        self.at += len(piece)
        self.read += len(piece)
        return piece


def text(rng: random.Random) -> str:
    alphabet = ["a", "Z", "0", " ", "\n", '"', "\\", "é", "\u2028", "\x00", "\ud7ff", "😀", "{", "]"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randint(0, 7 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**63), 10**30, rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, 5e-324, rng.random()])
    if kind == 4:
        return text(rng)
    if kind in (5, 6):
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text(rng): value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def message(rng: random.Random) -> dict:
    """A well-formed message of one of the channel's kinds."""
    kind = rng.choice(["hello", "call", "result", "close", "host", "stop", "ended"])
    if kind == "hello":
        return {"type": kind, "rank": rng.randint(0, 64), "pid": rng.randint(1, 2**22)}
    if kind == "call":
        spec = {"fn": text(rng), "args": value(rng), "kwargs": {text(rng): value(rng)}}
        return {"type": kind, "id": rng.randint(0, 2**40), "spec": spec, "restart": rng.random() < 0.5}
    if kind == "result":
        return {"type": kind, "id": rng.randint(0, 2**40), "result": value(rng)}
    if kind == "host":
        return {"type": kind, "task": rng.randint(0, 64), "pid": rng.randint(1, 2**22)}
    if kind == "ended":
        return {
            "type": kind,
            "code": rng.randint(-255, 255),
            "failure": value(rng),
            "tail": text(rng),
            "rank_tails": {str(rng.randint(0, 8)): text(rng)},
        }
    return {"type": kind}


def mutate_body(body: bytes, rng: random.Random) -> bytes:
    choice = rng.randint(0, 13)
    b = bytearray(body)
    if choice == 0 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif choice == 1:
        at = rng.randint(0, len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif choice == 2 and b:
        at = rng.randrange(len(b))
        del b[at : at + rng.randint(1, 8)]
    elif choice == 3:
        depth = rng.choice([10, 500, 5000, 100_000])
        opener = rng.choice(["[", '{"a":', '{"type":"x","v":['])
        return (opener * depth).encode()
    elif choice == 4:
        return json.dumps(value(rng)).encode()
    elif choice == 5:
        return json.dumps({"type": value(rng), "x": 1}).encode()
    elif choice == 6:
        return body.decode().encode(rng.choice(["utf-16", "utf-32", "utf-16-be", "latin-1"]), "replace")
    elif choice == 7:
        return rng.choice([b"NaN", b'{"type":"x","v":NaN}', b'{"type":"x","v":-Infinity}'])
    elif choice == 8:
        return b'{"type":"x","n":' + b"9" * rng.choice([100, 5000, 100_000]) + b"}"
    elif choice == 9:
        return b'{"type":"a","type":"b"}'
    elif choice == 10:
        return b'\xef\xbb\xbf' + body
    elif choice == 11:
        return b'{"type":"x","s":"' + bytes(rng.randrange(256) for _ in range(8)) + b'"}'
    elif choice == 12:
        return body + b" " + body
    else:
        return b"" if rng.random() < 0.5 else b"   "
    return bytes(b)


def frame(body: bytes, rng: random.Random) -> tuple[bytes, int]:
    """The frame, and the length its header claims."""
    choice = rng.randint(0, 9)
    if choice == 0:
        claimed = rng.choice([_control.MAX_MESSAGE + 1, 2**32 - 1, 2**31])
    elif choice == 1:
        claimed = max(0, len(body) - rng.randint(1, 4))
    elif choice == 2:
        claimed = len(body) + rng.randint(1, 4)
    else:
        claimed = len(body)
    data = HEADER.pack(claimed) + body
    if rng.random() < 0.05:
        data = data[: rng.randint(0, len(data))]
    return data, claimed


def check(data: bytes, claimed: int, sent: dict | None, rng: random.Random, real_socket: bool) -> None:
    if real_socket:
        a, b = socket.socketpair()
        try:
            a.sendall(data)
            a.shutdown(socket.SHUT_WR)
            try:
                got = _control.receive(b)
            except (ValueError, _control.ChannelClosed):
                got = None
        finally:
            a.close()
            b.close()
        read = None
    else:
        sock = FakeSocket(data, rng)
        try:
            got = _control.receive(sock)  # type: ignore[arg-type]
        except ValueError as e:
            assert str(e), "a ValueError with no message"
            got = None
        except _control.ChannelClosed:
            got = None
        read = sock.read
    if claimed > _control.MAX_MESSAGE and len(data) >= 4:
        assert got is None, "a frame over the cap was accepted"
        assert read in (None, 4), f"{read} bytes read of a frame over the cap"
    if got is not None:
        assert isinstance(got, dict) and isinstance(got.get("type"), str), repr(got)[:200]
    if sent is not None:
        assert got == sent, f"sent {sent!r:.200}, received {got!r:.200}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--cases", type=int, default=None, help="stop after this many cases (the long runs)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    start, cases = time.monotonic(), 0
    while time.monotonic() - start < args.seconds and (args.cases is None or cases < args.cases):
        msg = message(rng)
        pristine = rng.random() < 0.2
        body = json.dumps(msg, allow_nan=False, separators=(",", ":")).encode()
        if pristine:
            data, claimed = HEADER.pack(len(body)) + body, len(body)
        else:
            data, claimed = frame(mutate_body(body, rng), rng)
        real = cases % 64 == 0 and len(data) <= 32 << 10  # fits the socket buffer: one thread
        try:
            check(data, claimed, msg if pristine else None, rng, real)
        except BaseException as e:  # noqa: BLE001 (every other outcome is the finding)
            out = ROOT / "fuzz" / "artifacts" / "control"
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"crash-seed{seed}-case{cases}.bin"
            path.write_bytes(data)
            print(f"control: case {cases} (seed {seed}) failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
            print(f"control: input written to {path}", file=sys.stderr)
            return 1
        cases += 1
    took = time.monotonic() - start
    print(f"control: {cases} cases in {took:.1f} s ({cases / took:.0f}/s), seed {seed}, no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
