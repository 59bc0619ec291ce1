#!/usr/bin/env bash
# The wheel on a machine without Rust: a fresh venv, an environment with no cargo or rustc on
# PATH (checked), `pip install WHEEL` and the test tools, then ferrovod-run and the Python tests
# that need neither torch nor Spark. (The whole suite runs against the same wheel in the project
# venv: scripts/python-env.sh installs it.)
#     bash scripts/wheel-check.sh dist/ferrovod-*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=$(realpath "$1")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
# Nothing of Rust reachable: the toolchain lives under ~/.cargo and ~/.rustup, neither of which
# is on this PATH or under this HOME.
clean=(env -i "HOME=$tmp" "PATH=$tmp/venv/bin:/usr/local/bin:/usr/bin:/bin" "LANG=C.UTF-8")
if "${clean[@]}" sh -c 'command -v cargo || command -v rustc' >/dev/null; then
    echo "wheel-check: a Rust toolchain is on the clean PATH" >&2
    exit 1
fi
"${clean[@]}" pip install --quiet --disable-pip-version-check "$wheel" "pytest==9.2.0" "pytest-timeout==2.4.0"
echo "== ferrovod-run -np 2 from the wheel"
"${clean[@]}" ferrovod-run -np 2 -- python -c '
import numpy as np, ferrovod as fv
fv.init()
out = fv.allreduce(np.full(4, fv.rank() + 1.0), op=fv.Sum)
assert out.tolist() == [3.0] * 4, out
print("rank", fv.rank(), "of", fv.size(), "allreduce", out.tolist())'
echo "== the tests that need neither torch nor Spark, from the wheel"
cd bindings
# (Two of these files' tests use torch or Spark: the pool example, which scores on Spark, and the
# check that code catching horovod.torch's errors catches ferrovod's.)
"${clean[@]}" python -m pytest -q -p no:cacheprovider -m "not spark and not gpu" \
    -k "not pool_example and not catching_horovods" \
    python/tests/test_launch.py python/tests/test_pool.py python/tests/test_exceptions.py python/tests/test_spark_logs.py
