"""GPU support on a machine without a GPU: ferrovod finds and loads the NCCL that torch's pip
wheel brought, a missing one is a clear error, and so is a CUDA tensor where no NVIDIA driver
is. (The checks on a GPU are test_gpu_cuda.py's, marked ``gpu``.)"""

from __future__ import annotations

import os

import numpy as np
import pytest

import ferrovod
import ferrovod as fv
from ferrovod import _gpu


def test_nccl_is_the_copy_torch_ships_and_reports_torchs_version():
    torch = pytest.importorskip("torch")
    try:
        major, minor, patch = torch.cuda.nccl.version()
    except Exception as e:  # a torch built without NCCL
        pytest.skip(f"torch reports no NCCL: {e}")
    assert _gpu.nccl_candidates(), "torch has NCCL, so pip's nvidia-nccl wheel should be installed"
    code, path = _gpu.nccl_version()
    assert code == major * 10000 + minor * 100 + patch
    assert path in _gpu.nccl_candidates()


def test_a_missing_nccl_is_an_error_naming_what_was_tried(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "libnccl.so.2"
    monkeypatch.setenv("FERROVOD_NCCL_LIBRARY", str(missing))
    with pytest.raises(ferrovod.UnsupportedError, match="NCCL could not be loaded; tried: .*nowhere/libnccl.so.2"):
        _gpu.nccl_version()
    not_a_library = tmp_path / "libnccl.so.2"
    not_a_library.write_bytes(b"not an ELF file")
    monkeypatch.setenv("FERROVOD_NCCL_LIBRARY", str(not_a_library))
    with pytest.raises(ferrovod.UnsupportedError, match="tried: .*libnccl.so.2"):
        _gpu.nccl_version()


class _OnCuda:
    """An array that says it lies on cuda:0 (DLPack device type 2)."""

    def __dlpack__(self, **kwargs):
        raise AssertionError("__dlpack__ must not be asked for when CUDA cannot be used")

    def __dlpack_device__(self):
        return (2, 0)


def test_a_cuda_tensor_without_the_nvidia_driver_is_an_error_naming_what_is_missing(world1):
    if os.path.exists("/proc/driver/nvidia"):
        pytest.skip("this machine has an NVIDIA driver")
    for call in (
        lambda x: fv.allreduce_(x, name="x"),
        lambda x: fv.broadcast_(x, 0, name="x"),
        lambda x: fv.grouped_allreduce_([x], name="x"),
    ):
        with pytest.raises(fv.UnsupportedError) as e:
            call(_OnCuda())
        assert "the tensor is on cuda:0, and ferrovod cannot use CUDA" in str(e.value), e.value
        assert "libcuda.so.1" in str(e.value), e.value
    # Nothing was left in flight: the same name runs at once on host memory.
    a = np.ones(3, dtype=np.float32)
    fv.allreduce_(a, name="x", op=fv.Sum)
    assert a.tolist() == [1, 1, 1]
