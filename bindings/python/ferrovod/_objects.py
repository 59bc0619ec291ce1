"""Python objects through the collectives: ``broadcast_object`` and ``allgather_object``. Objects
travel as JSON (nothing is pickled)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ._collectives import allgather, allgather_async, broadcast_, broadcast_async_
from ._handles import tensor_name
from ._world import rank


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None) -> Any:
    """``root_rank``'s ``obj`` on every rank. It travels as JSON (nothing is pickled), so it
    must be JSON-serialisable on the root: a ``TypeError`` there names what is not."""
    payload = b""
    if rank() == root_rank:
        payload = json_bytes(obj)  # a TypeError here is on the root alone: before the name is taken
    length = np.array([len(payload)], dtype=np.int64)
    with tensor_name("broadcast_object", name) as name:  # only the submission: no wait holds the count
        sent = broadcast_async_(length, root_rank, name=f"{name}.len")
    sent.wait()
    data = np.frombuffer(payload, dtype=np.uint8).copy() if payload else np.zeros(int(length[0]), dtype=np.uint8)
    broadcast_(data, root_rank, name=f"{name}.data")
    return json.loads(data.tobytes().decode("utf-8"))


def allgather_object(obj: Any, name: str | None = None) -> list[Any]:
    """Every rank's JSON-serialisable ``obj``, in rank order."""
    payload = np.frombuffer(json_bytes(obj), dtype=np.uint8)
    with tensor_name("allgather_object", name) as name:  # only the submission: no wait holds the count
        gathered = allgather_async(np.array([len(payload)], dtype=np.int64), name=f"{name}.len")
    lengths = gathered.wait()
    data = allgather(payload, name=f"{name}.data").tobytes()
    out, at = [], 0
    for n in lengths.tolist():
        out.append(json.loads(data[at : at + n].decode("utf-8")))
        at += n
    return out


def json_bytes(obj: Any) -> bytes:
    try:
        return json.dumps(obj, allow_nan=True).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(f"ferrovod sends objects as JSON and this one is not JSON-serialisable: {e}") from None
