#!/usr/bin/env bash
# The tch workspace (tch/: the ferrovod-tch crate and examples/tch_train), built against the
# project venv's pip torch (LIBTORCH_USE_PYTORCH=1), apart from the main workspace so that the
# main build never needs libtorch: formatting, lints, its tests (in-process ranks, the example
# under ferrovod-run -np 2 against one process on the concatenated data) and its doc examples.
# Needs the venv (scripts/python-env.sh) and target/release/ferrovod-run (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/python-env.sh
[ -x target/release/ferrovod-run ] || cargo build --release -p ferrovod-runner
export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1
cd tch
cargo fmt --all --check
# --release: the same build-script run as the tests (torch-sys compiles its C++ once).
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
