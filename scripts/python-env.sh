#!/usr/bin/env bash
# The project venv (.venv): pinned requirements (torch included), then the ferrovod package
# installed from bindings/ exactly as a user would (`pip install ./bindings`), which also puts
# `ferrovod-run` on the venv's PATH. Idempotent; re-run after changing Rust or Python code.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r bindings/python/requirements-dev.txt
.venv/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./bindings
