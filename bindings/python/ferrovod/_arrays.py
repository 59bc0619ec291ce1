"""Arrays in and out: numpy arrays, torch tensors and anything with the buffer protocol.

Rust borrows the memory of whatever it is given (buffer protocol or DLPack); this module only
makes the copies an out-of-place collective needs and wraps results in the caller's array type.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _ferrovod

# The dtypes ferrovod carries, from the one table in Rust (`DType::TABLE`): short name (as
# results name their dtype), numpy/torch name, item size.
DTYPES: list[tuple[str, str, int]] = _ferrovod.dtypes()

# ferrovod's dtype names to numpy; bfloat16 has no numpy dtype.
NUMPY_DTYPES: dict[str, Any] = {name: getattr(np, long) for name, long, _ in DTYPES if hasattr(np, long)}


def _torch() -> Any:
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    """Whether `x` is a torch tensor (without importing torch)."""
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def torch_dtypes() -> dict[str, Any]:
    """ferrovod's dtype names to torch dtypes (torch must be imported)."""
    torch = _torch()
    return {name: getattr(torch, long) for name, long, _ in DTYPES}


def lendable(x: Any) -> Any:
    """What to hand to Rust for `x`: a torch tensor without autograd (same memory), else `x`."""
    if is_torch(x) and x.requires_grad:
        return x.detach()
    return x


def copy(x: Any) -> Any:
    """A contiguous, writable copy of `x` in the same kind of array (numpy for plain buffers)."""
    if is_torch(x):
        return x.detach().clone(memory_format=_torch().contiguous_format)
    return np.array(x, copy=True, order="C")


def wrap(result: tuple[Any, str, tuple[int, ...], Any], like: Any) -> Any:
    """A result buffer from Rust as an array of the same kind as `like`, without a copy."""
    buf, dtype, shape, _splits = result
    if is_torch(like):
        torch = _torch()
        tdtype = torch_dtypes()[dtype]
        if len(buf) == 0:
            return torch.empty(shape, dtype=tdtype)
        return torch.frombuffer(buf, dtype=tdtype).reshape(shape)
    if dtype not in NUMPY_DTYPES:
        raise TypeError(f"numpy has no {dtype} dtype")
    return np.frombuffer(buf, dtype=NUMPY_DTYPES[dtype]).reshape(shape)


def scale(x: Any, factor: float) -> None:
    """Multiplies `x` by `factor` in place (a no-op for 1)."""
    if factor == 1.0:
        return
    if is_torch(x):
        x.mul_(factor)
    else:
        np.multiply(x, factor, out=x, casting="unsafe")
