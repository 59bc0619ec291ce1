#!/usr/bin/env bash
# Start-up cost of a 4-process job: `ferrovod-run -np 4 -- hello` against
# `torchrun --nproc-per-node 4` running the equivalent torch.distributed gloo script
# (benches/torch_hello.py), both timed by hyperfine in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine; }
bash scripts/venv.sh torch numpy
cargo build --release -p ferrovod-runner -p ferrovod-examples
mkdir -p bench-out
hyperfine --warmup 3 --runs "${RUNS:-30}" --export-markdown bench-out/launch.md --export-json bench-out/launch.json \
  -n "ferrovod-run -np 4 -- hello" "target/release/ferrovod-run -np 4 -- target/release/hello" \
  -n "torchrun --nproc-per-node 4 torch_hello.py" ".venv/bin/torchrun --nproc-per-node 4 benches/torch_hello.py"
cat bench-out/launch.md
# The target is stated as a median; hyperfine's table shows means.
python3 - <<'PY'
import json
for r in json.load(open("bench-out/launch.json"))["results"]:
    print(f"median {r['command']}: {r['median'] * 1e3:.1f} ms")
PY
