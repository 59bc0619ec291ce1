#!/usr/bin/env bash
# Every test: formatting, lints, the whole workspace's tests in release mode (the collective
# tests move gigabytes; one optimised build also serves the benchmark and demo), then the Python
# package: installed into the project venv with pip as a user would, and its pytest suite
# (multi-process, torch; GPU tests deselected) including the stub check.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release --workspace
cargo test --release --workspace
bash scripts/python-env.sh
cd bindings && ../.venv/bin/python -m pytest
