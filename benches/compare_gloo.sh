#!/usr/bin/env bash
# ferrovod vs torch.distributed gloo on this machine, same method, same run, twice (interleaved),
# f32. Installs torch into the project venv. Writes bench-out/*.json and prints the joined table
# (paste it into benches/RESULTS.md with the date and machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh torch numpy
py=.venv/bin/python
cargo build --release -p ferrovod-bench
out=bench-out
mkdir -p "$out"
rm -f "$out"/*.json
configs=(
  "allreduce 2 4KiB,1MiB,16MiB,64MiB"
  "allreduce 4 4KiB,1MiB,16MiB,64MiB"
  "broadcast 2 1MiB,16MiB,64MiB"
)
for run in 1 2; do
  for cfg in "${configs[@]}"; do
    read -r op np sizes <<<"$cfg"
    target/release/ferrovod-bench --np "$np" --op "$op" --sizes "$sizes" --json "$out/ferrovod-$op-$np-$run.json"
    "$py" benches/gloo_bench.py --np "$np" --op "$op" --sizes "$sizes" --json "$out/gloo-$op-$np-$run.json"
  done
done
"$py" benches/compare.py --ferrovod "$out"/ferrovod-*.json --gloo "$out"/gloo-*.json --out-md "$out/compare.md"
