#!/usr/bin/env bash
# The demo: 4 local processes started by ferrovod-run run `hello` (barrier, small allreduce,
# then a checked 64 MiB allreduce), then ferrovod-bench prints an allreduce table for 4 ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
bin=target/release
echo "== ferrovod-run -np 4 -- hello --bytes 64MiB"
"$bin/ferrovod-run" -np 4 -- "$bin/hello" --bytes 64MiB
echo
echo "== ferrovod-bench --np 4 --op allreduce"
"$bin/ferrovod-bench" --np 4 --op allreduce --sizes 4KiB,1MiB,16MiB --min-time 0.5
