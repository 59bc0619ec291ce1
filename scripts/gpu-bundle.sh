#!/usr/bin/env bash
# What scripts/gpu-check.sh runs on a GPU machine, built here: the wheel (the extension with the
# launcher and the Python package; abi3, CPython >= 3.11), into gpu-bundle/ (ignored, about
# 6 MB). A GPU machine needs no Rust; its Python must have torch (and numpy).
#     bash scripts/gpu-bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf gpu-bundle
mkdir -p gpu-bundle
bash scripts/build-wheel.sh gpu-bundle >/dev/null
du -sh gpu-bundle
