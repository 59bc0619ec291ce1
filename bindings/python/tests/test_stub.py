"""The hand-written stub of the extension module matches what the module really exports."""

from __future__ import annotations

import subprocess
import sys


def test_stubtest_finds_no_difference():
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "ferrovod._ferrovod"], capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout
