"""Values that plain JSON cannot carry: numpy arrays, torch tensors (a model's ``state_dict``),
tuples, sets, and dicts whose keys are not strings. ``encode`` turns such a value into bytes in the
safetensors format: the arrays are its tensors, and the structure around them is JSON in its
``__metadata__``. ``decode`` turns those bytes back into the value. Nothing is pickled, and
anything else a value holds (a module, an object) is refused with its path named.

The structure tags every container, so nothing a user's dict holds can be mistaken for a tag:
a dict is ``{"d": [[key, value], ...]}`` (keys encoded like values, order kept), a list
``{"l": [...]}``, a tuple ``{"t": [...]}``, a set ``{"s": [...]}`` (a frozenset ``{"f": [...]}``), an array ``{"numpy": "<tensor name>"}`` (``"scalar":
true`` for a numpy scalar) or ``{"torch": "<tensor name>"}``. None, booleans, ints, floats and
strings stand as themselves.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from typing import Any

import numpy as np

#: The metadata key that holds the structure.
_STRUCTURE = "ferrovod.structure"

#: numpy / torch dtype names to safetensors' names.
_DTYPES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def result(value: Any, what: str) -> dict[str, Any]:
    """A function's successful result for the driver: ``{"ok": true, "value": v}`` when plain JSON
    carries ``value`` exactly (no tuple, no key that is not a string, no array), else
    ``{"ok": true, "tagged": <base64 of its encoding>}``."""
    enc = _Encoder()
    structure = enc.skeleton(value, what)
    if enc.plain:
        return {"ok": True, "value": value}
    return {"ok": True, "tagged": base64.b64encode(enc.blob(structure)).decode()}


def value_of(result: dict[str, Any]) -> Any:
    """The value in a successful ``result``."""
    if "tagged" in result:
        return decode(base64.b64decode(result["tagged"]))
    return result["value"]


def encode(value: Any, what: str = "value") -> bytes:
    """``value`` as safetensors bytes; a ``TypeError`` names the first part that cannot travel
    (a ``ValueError`` a container that holds itself)."""
    enc = _Encoder()
    return enc.blob(enc.skeleton(value, what))


def decode(blob: bytes) -> Any:
    """The value ``encode`` wrote."""
    if len(blob) < 8:
        raise ValueError("not a ferrovod value: shorter than a safetensors header")
    (size,) = struct.unpack_from("<Q", blob)
    if 8 + size > len(blob):
        raise ValueError(f"not a ferrovod value: a header of {size} bytes in {len(blob)}")
    header = json.loads(blob[8 : 8 + size])
    data = memoryview(blob)[8 + size :]
    structure = json.loads(header.pop("__metadata__")[_STRUCTURE])
    return _rebuild(structure, header, data)


class _Encoder:
    """One walk over a value: its tagged structure, its arrays, and whether plain JSON would
    have carried it exactly."""

    def __init__(self) -> None:
        self.arrays: list[tuple[str, str, list[int], bytes]] = []
        self.plain = True
        self._active: set[int] = set()

    def blob(self, structure: Any) -> bytes:
        header: dict[str, Any] = {"__metadata__": {_STRUCTURE: json.dumps(structure, allow_nan=True)}}
        offset = 0
        for name, dtype, shape, data in self.arrays:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
            offset += len(data)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        return b"".join([struct.pack("<Q", len(text)), text, *(data for *_, data in self.arrays)])

    def skeleton(self, v: Any, path: str) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (dict, list, tuple, set, frozenset)):
            if id(v) in self._active:
                raise ValueError(f"{path}: refers to itself, which cannot travel")
            self._active.add(id(v))
            try:
                return self._container(v, path)
            finally:
                self._active.discard(id(v))
        self.plain = False
        return self._array(v, path)

    def _container(self, v: Any, path: str) -> Any:
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                self.plain = False
            return {"d": [[self.skeleton(k, f"{path} key {k!r}"), self.skeleton(x, f"{path}[{k!r}]")] for k, x in v.items()]}
        items = [self.skeleton(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, (tuple, set, frozenset)):
            self.plain = False
            return {"t" if isinstance(v, tuple) else "s" if isinstance(v, set) else "f": items}
        return {"l": items}

    def _array(self, v: Any, path: str) -> Any:
        if isinstance(v, (np.ndarray, np.generic)):
            a = np.asarray(v)
            if a.dtype.name not in _DTYPES or a.dtype.byteorder == ">" or a.dtype.byteorder == "<" and sys.byteorder == "big":
                raise TypeError(f"{path}: a numpy array of dtype {a.dtype} cannot travel (dtypes: {', '.join(_DTYPES)})")
            name = str(len(self.arrays))
            self.arrays.append((name, _DTYPES[a.dtype.name], list(a.shape), np.ascontiguousarray(a).tobytes()))
            return {"numpy": name, "scalar": True} if isinstance(v, np.generic) else {"numpy": name}
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(v, torch.Tensor):
            dtype = str(v.dtype).removeprefix("torch.")
            if dtype not in _DTYPES or v.is_sparse:
                raise TypeError(f"{path}: a torch tensor of dtype {v.dtype}{' (sparse)' if v.is_sparse else ''} cannot travel")
            t = v.detach().cpu().contiguous()
            name = str(len(self.arrays))
            self.arrays.append((name, _DTYPES[dtype], list(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()))
            return {"torch": name}
        raise TypeError(
            f"{path}: a {type(v).__module__}.{type(v).__qualname__} cannot travel (values travel as None, bools, "
            "numbers, strings, numpy arrays, torch tensors, and dicts, lists, tuples and sets of them)"
        )


def _rebuild(s: Any, header: dict[str, Any], data: memoryview) -> Any:
    if not isinstance(s, dict):
        return s
    if "d" in s:
        return {_rebuild(k, header, data): _rebuild(v, header, data) for k, v in s["d"]}
    if "t" in s:
        return tuple(_rebuild(v, header, data) for v in s["t"])
    if "s" in s or "f" in s:
        items = [_rebuild(v, header, data) for v in s.get("s", s.get("f"))]
        return set(items) if "s" in s else frozenset(items)
    if "l" in s:
        return [_rebuild(v, header, data) for v in s["l"]]
    kind = "numpy" if "numpy" in s else "torch"
    entry = header[s[kind]]
    begin, end = entry["data_offsets"]
    raw, shape, dtype = bytes(data[begin:end]), entry["shape"], _NAMES[entry["dtype"]]
    if kind == "torch":
        import torch

        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        return flat.view(getattr(torch, dtype)).reshape(shape)
    a = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    return a[()] if s.get("scalar") else a
