#!/usr/bin/env bash
# Every test: formatting, lints, the whole workspace's tests in release mode (the collective
# tests move gigabytes; one optimised build also serves the benchmark and demo; they include
# the multi-host tests and 20 chaos trials), then the Python package: its manylinux wheel built
# and audited, installed into the project venv with pip as a user would; every decoder fuzzed
# for a few seconds (scripts/fuzz.sh); the wheel in a fresh venv without Rust (a smoke run and
# the tests that need neither torch nor Spark); the tch workspace against the venv's torch
# (scripts/tch.sh); then the package's pytest suite (multi-process, torch; GPU tests
# deselected) including the stub check.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The multi-host tests build their hosts with iproute2 (ip netns, veth, ss) and util-linux's
# unshare; install iproute2 if a bare machine lacks it.
if ! command -v ip >/dev/null 2>&1 || ! command -v ss >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends iproute2
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release --workspace
cargo test --release --workspace
bash scripts/python-env.sh
# Every decoder of network and file bytes under the fuzzer, briefly (the long runs are in
# benches/RESULTS.md).
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" bash scripts/fuzz.sh
# The same wheel in a fresh venv with no Rust toolchain reachable.
bash scripts/wheel-check.sh dist/ferrovod-*.whl
bash scripts/tch.sh
cd bindings && ../.venv/bin/python -m pytest
