"""Arrays in and out: numpy arrays, torch tensors and anything with the buffer protocol.

Rust borrows the memory of whatever it is given (buffer protocol or DLPack); this module only
makes the copies an out-of-place collective needs, wraps results in the caller's array type, and
knows which torch tensors are read-only.

Read-only tensors: an in-place collective writes into the memory it is given. Rust refuses a
read-only buffer, and a DLPack 1.x tensor flagged read-only; but torch (2.13) has no read-only
tensors: ``torch.from_numpy`` of a non-writable array, or ``torch.frombuffer`` of ``bytes``, shares
the memory, only warns, and exports it through DLPack without the flag. So :func:`watch_torch`
wraps those two constructors to mark the storage of a tensor they made over read-only memory
(views share the storage, and torch keeps a storage's Python object, so the mark stays), and the
in-place collectives refuse a marked tensor as Rust refuses a read-only numpy array
(:func:`refuse_read_only`). Tensors made before ``ferrovod`` (or ``ferrovod.torch``) was imported,
or through ``torch.as_tensor``/``torch.asarray``/``torch.from_dlpack`` (left alone: TorchScript
resolves those by identity), are not known.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from . import _ferrovod
from .exceptions import InvalidArgumentError

# The dtypes ferrovod carries, from the one table in Rust (`DType::TABLE`): short name (as
# results name their dtype), numpy/torch name, item size.
DTYPES: list[tuple[str, str, int]] = _ferrovod.dtypes()

def _numpy_dtype(long: str) -> Any:
    try:
        return np.dtype(long).type
    except TypeError:
        return None


# ferrovod's dtype names to numpy; bfloat16 has no numpy dtype.
NUMPY_DTYPES: dict[str, Any] = {
    name: t for name, long, _ in DTYPES if (t := _numpy_dtype(long)) is not None
}


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
    _refuse_none(x)
    if is_torch(x) and x.requires_grad:
        return x.detach()
    return x


def in_place(x: Any, collective: str, name: str) -> Any:
    """What to hand to Rust for an in-place collective on `x`: :func:`lendable`, after
    :func:`refuse_read_only`. A numpy array goes as it is, at once (Rust checks its buffer,
    read-only flag included): this is every small numpy collective's path."""
    if type(x) is np.ndarray:
        return x
    refuse_read_only(x, collective, name)
    return lendable(x)


def readable(x: Any) -> Any:
    """What to hand to Rust for a collective that returns a new array (allgather,
    reducescatter, alltoall): as :func:`lendable`, but a CUDA tensor's host copy. The engine
    returns results in host memory only for now, so these collectives run on GPU tensors
    through torch's own copies (``.cpu()`` orders itself after the tensor's stream), and
    :func:`wrap` puts the result back on the tensor's device. In-place collectives (allreduce,
    broadcast) take CUDA memory directly."""
    x = lendable(x)
    if is_torch(x) and x.is_cuda:
        return x.cpu()
    return x


def _refuse_none(x: Any) -> None:
    """``None`` (a parameter's ``.grad`` before any backward, typically) is no tensor: say so,
    rather than let numpy make an object array of it."""
    if x is None:
        raise TypeError("a collective needs a tensor or an array, not None (a .grad before any backward?)")


def copy(x: Any) -> Any:
    """A contiguous, writable copy of `x` in the same kind of array (numpy for plain buffers)."""
    _refuse_none(x)
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
            out = torch.empty(shape, dtype=tdtype)
        else:
            out = torch.frombuffer(buf, dtype=tdtype).reshape(shape)
        return out.to(like.device) if like.is_cuda else out
    if dtype not in NUMPY_DTYPES:
        raise TypeError(f"numpy has no {dtype} dtype")
    return np.frombuffer(buf, dtype=NUMPY_DTYPES[dtype]).reshape(shape)


def scale(x: Any, factor: float) -> None:
    """Multiplies `x` by `factor` in place (a no-op for 1). Integers are scaled in float64 and
    truncated back, as Horovod scales them."""
    if factor == 1.0:
        return
    if is_torch(x):
        if x.dtype.is_floating_point:
            x.mul_(factor)
        else:
            x.copy_(x.double().mul_(factor).to(x.dtype))
    else:
        np.multiply(x, factor, out=x, casting="unsafe")


# --- read-only torch tensors -------------------------------------------------------------------

#: What Rust says of a read-only array given to an in-place collective (`READ_ONLY` in array.rs).
READ_ONLY = "the array is read-only and this operation writes its result into it"

#: The attribute that marks a torch storage over read-only memory.
_MARK = "_ferrovod_read_only"

#: The constructors watched, with the name of the argument that gives the memory.
_WATCHED = {"from_numpy": "ndarray", "frombuffer": "buffer"}


def watch_torch() -> None:
    """Wraps ``torch.from_numpy`` and ``torch.frombuffer`` (once) so that a tensor they make over
    read-only memory is known to be read-only. Does nothing until torch is imported."""
    torch = _torch()
    if torch is None:
        return
    for fn_name, arg in _WATCHED.items():
        original = getattr(torch, fn_name, None)
        if original is None or getattr(original, "_ferrovod_watch", False):
            continue
        setattr(torch, fn_name, _watching(original, arg))


def _watching(original: Any, arg: str) -> Any:
    @functools.wraps(original)
    def make(*args: Any, **kwargs: Any) -> Any:
        tensor = original(*args, **kwargs)
        source = args[0] if args else kwargs.get(arg)
        _mark_if_read_only(source, tensor)
        return tensor

    make._ferrovod_watch = True  # type: ignore[attr-defined]
    return make


def _mark_if_read_only(source: Any, tensor: Any) -> None:
    """Marks ``tensor``'s storage when ``source`` is read-only memory that ``tensor`` lies in."""
    try:
        if isinstance(source, np.ndarray):
            if source.flags.writeable:
                return
            array = source
        else:
            view = memoryview(source)
            if not view.readonly:
                return
            array = np.asarray(view)
        low, high = np.lib.array_utils.byte_bounds(array)
        if low <= tensor.data_ptr() <= high:
            setattr(tensor.untyped_storage(), _MARK, True)
    except Exception:
        pass  # never fail a torch constructor: not knowing is what happened before


def read_only(x: Any) -> bool:
    """Whether ``x`` is a torch tensor known to lie in read-only memory."""
    if not is_torch(x):
        return False
    try:
        return bool(getattr(x.untyped_storage(), _MARK, False))
    except Exception:  # no storage (sparse, nested tensors)
        return False


def refuse_read_only(x: Any, collective: str, name: str) -> None:
    """Raises the error Rust raises for a read-only array given to an in-place collective, when
    ``x`` is a torch tensor over read-only memory."""
    if read_only(x):
        raise InvalidArgumentError(f"{collective} of {_debug(name)}: {READ_ONLY}")


def _debug(s: str) -> str:
    """``s`` quoted as Rust's ``{:?}`` quotes it (as Rust names the tensor in its errors)."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
    out = (escapes.get(c) or (f"\\u{{{ord(c):x}}}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in s)
    return '"' + "".join(out) + '"'
