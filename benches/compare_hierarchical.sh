#!/usr/bin/env bash
# The hierarchical allreduce against the flat one and against torch.distributed's gloo, on 2
# hosts of 2 ranks faked on this machine (ferrovod-bench --hosts 2: shared memory within a
# host, TCP between hosts; gloo has no hierarchy and talks TCP between all 4). Same method,
# same run, twice (interleaved), f32. Installs torch into the project venv. Writes
# bench-out/hier-*.json and prints the joined table (paste it into benches/RESULTS.md with the
# date and machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh torch numpy
py=.venv/bin/python
cargo build --release -p ferrovod-bench
out=bench-out
mkdir -p "$out"
rm -f "$out"/hier-*.json
sizes=4KiB,64KiB,1MiB,16MiB,64MiB
for run in 1 2; do
  for mode in on off; do
    FERROVOD_HIERARCHICAL_ALLREDUCE=$mode target/release/ferrovod-bench --np 4 --hosts 2 --sizes "$sizes" \
      --json "$out/hier-ferrovod-$mode-$run.json"
  done
  "$py" benches/gloo_bench.py --np 4 --op allreduce --sizes "$sizes" --json "$out/hier-gloo-$run.json"
done
"$py" benches/compare.py --ferrovod "$out"/hier-ferrovod-on-1.json "$out"/hier-ferrovod-off-1.json \
  "$out"/hier-ferrovod-on-2.json "$out"/hier-ferrovod-off-2.json \
  --gloo "$out"/hier-gloo-1.json "$out"/hier-gloo-2.json --out-md "$out/hier-compare.md"
