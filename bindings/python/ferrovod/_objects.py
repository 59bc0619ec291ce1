"""Python objects through the collectives: ``broadcast_object`` and ``allgather_object``. Objects
travel in the tagged encoding of :mod:`ferrovod._tagged` (JSON for the structure, safetensors
for arrays and tensors; nothing is pickled), so what Horovod scripts pass arrives as it left:
int and tuple keys, tuples, nested containers, numpy arrays and torch tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _tagged
from ._collectives import allgather, allgather_async, broadcast_, broadcast_async_
from ._handles import tensor_name
from ._process_sets import ProcessSet, global_process_set, set_id
from ._world import rank


def broadcast_object(
    obj: Any, root_rank: int = 0, name: str | None = None, process_set: ProcessSet = global_process_set
) -> Any:
    """``root_rank``'s ``obj`` on every rank (of ``process_set``). What cannot travel is refused
    on the root with a ``TypeError`` naming it."""
    ps = set_id(process_set)
    payload = b""
    if rank() == root_rank:
        payload = _tagged.encode(obj, "broadcast_object")  # refused on the root alone: before the name is taken
    length = np.array([len(payload)], dtype=np.int64)
    with tensor_name("broadcast_object", name, ps) as name:  # only the submission: no wait holds the count
        sent = broadcast_async_(length, root_rank, name=f"{name}.len", process_set=process_set)
    sent.wait()
    data = np.frombuffer(payload, dtype=np.uint8).copy() if payload else np.zeros(int(length[0]), dtype=np.uint8)
    broadcast_(data, root_rank, name=f"{name}.data", process_set=process_set)
    return _tagged.decode(data.tobytes())


def allgather_object(obj: Any, name: str | None = None, process_set: ProcessSet = global_process_set) -> list[Any]:
    """Every rank's ``obj`` (of ``process_set``), in rank order."""
    ps = set_id(process_set)
    payload = np.frombuffer(_tagged.encode(obj, "allgather_object"), dtype=np.uint8)
    with tensor_name("allgather_object", name, ps) as name:  # only the submission: no wait holds the count
        gathered = allgather_async(np.array([len(payload)], dtype=np.int64), name=f"{name}.len", process_set=process_set)
    lengths = gathered.wait()
    data = allgather(payload, name=f"{name}.data", process_set=process_set).tobytes()
    out, at = [], 0
    for n in lengths.tolist():
        out.append(_tagged.decode(data[at : at + n]))
        at += n
    return out
