#!/usr/bin/env bash
# The project venv (.venv): Java for pyspark, pinned requirements (torch and pyspark included), then the ferrovod package
# installed as a user installs it: the manylinux wheel scripts/build-wheel.sh builds and audits
# (`pip install ferrovod-*.whl`), which also puts `ferrovod-run` on the venv's PATH. Idempotent;
# re-run after changing Rust or Python code.
set -euo pipefail
cd "$(dirname "$0")/.."
# pyspark needs a Java runtime (17 is what Spark 4 supports and this machine has).
if ! command -v java >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r bindings/python/requirements-dev.txt
wheel=$(bash scripts/build-wheel.sh)
.venv/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
