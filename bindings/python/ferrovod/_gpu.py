"""GPU support as far as it is built (issue 13): which NCCL ferrovod loads.

ferrovod loads NCCL at run time, never at build time: ``FERROVOD_NCCL_LIBRARY`` when set,
else the copy that pip's ``nvidia-nccl`` wheel (torch's dependency) installed, else
``libnccl.so.2`` from the dynamic loader's search.
"""

from __future__ import annotations

import importlib.util
import os

from . import _ferrovod


def nccl_candidates() -> list[str]:
    """Paths of ``libnccl.so.2`` in pip's ``nvidia-nccl`` wheel, when it is installed."""
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        return []
    places = list(spec.submodule_search_locations or []) if spec else []
    found = (os.path.join(p, "lib", "libnccl.so.2") for p in places)
    return [f for f in found if os.path.exists(f)]


def nccl_version() -> tuple[int, str]:
    """``(version code, path)`` of the NCCL ferrovod loads (code: major×10000 + minor×100 +
    patch); raises ``UnsupportedError``, saying where it looked, when none loads."""
    return _ferrovod.nccl_version(nccl_candidates())
