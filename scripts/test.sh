#!/usr/bin/env bash
# Every test: formatting, lints, then the whole workspace's tests in release mode (the
# collective tests move gigabytes; one optimised build also serves the benchmark and demo).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --release --workspace
cargo test --release --workspace
