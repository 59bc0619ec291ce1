"""GPU support as far as it is built, on a machine without a GPU: ferrovod finds and loads the
NCCL that torch's pip wheel brought, and a missing one is a clear error."""

from __future__ import annotations

import pytest

import ferrovod
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
