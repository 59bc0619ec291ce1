#!/usr/bin/env bash
# ferrovod (shm and tcp transports) vs torch.distributed gloo vs Open MPI (btl vader, shared
# memory) on this machine: same method, same f32 data, interleaved runs. Open MPI runs through
# mpi4py's user-buffer API in the same harness as gloo (benches/mpi_bench.py; allreduce in place,
# so every iteration rewrites its input, as ferrovod's does). Installs what it needs (Open MPI
# from apt when mpirun is missing; torch, numpy, mpi4py into the project venv), writes
# bench-out/mpi/<impl>-<op>-<np>-<run>.json and prints the joined tables (bench-out/mpi/compare.md).
#
# Knobs (environment):
#   CONFIGS    ';'-separated "op np sizes" entries (default: allreduce at np 2 and 4, below)
#   RUNS       number of interleaved runs (default 2)
#   MIN_TIME   --min-time seconds per size for every benchmark (default 1, the benchmarks' own)
#   SKIP_BUILD=1  use the existing target/release/ferrovod-bench instead of building it
#   e.g. a smoke test: CONFIGS="allreduce 2 4KiB,64KiB" RUNS=1 MIN_TIME=0.05 bash benches/compare_mpi.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mpirun >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y --no-install-recommends openmpi-bin libopenmpi-dev
fi
bash scripts/venv.sh torch numpy mpi4py
py=.venv/bin/python
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p ferrovod-bench

mpirun=(mpirun --oversubscribe --mca btl self,vader --mca pml ob1)
[ "$(id -u)" -ne 0 ] || mpirun+=(--allow-run-as-root)

IFS=';' read -r -a configs <<<"${CONFIGS:-allreduce 2 4KiB,64KiB,1MiB,16MiB,64MiB,256MiB;allreduce 4 4KiB,64KiB,1MiB,16MiB,64MiB}"
runs=${RUNS:-2}
min_time=(--min-time "${MIN_TIME:-1}")
out=bench-out/mpi
mkdir -p "$out"
rm -f "$out"/*.json

# File lists in run order, so that compare.py pairs run i of ferrovod with run i of each peer.
fv=() gl=() mp=()
for run in $(seq 1 "$runs"); do
  for cfg in "${configs[@]}"; do
    read -r op np sizes <<<"$cfg"
    [ -n "$op" ] || continue
    for transport in shm tcp; do
      f="$out/ferrovod-$transport-$op-$np-$run.json"
      target/release/ferrovod-bench --np "$np" --op "$op" --sizes "$sizes" --transport "$transport" \
        "${min_time[@]}" --json "$f"
      fv+=("$f")
    done
    f="$out/gloo-$op-$np-$run.json"
    "$py" benches/gloo_bench.py --np "$np" --op "$op" --sizes "$sizes" "${min_time[@]}" --json "$f"
    gl+=("$f")
    f="$out/openmpi-vader-$op-$np-$run.json"
    "${mpirun[@]}" -np "$np" "$py" benches/mpi_bench.py --op "$op" --sizes "$sizes" "${min_time[@]}" --json "$f"
    mp+=("$f")
  done
done
"$py" benches/compare.py --ferrovod "${fv[@]}" --gloo "${gl[@]}" --mpi "${mp[@]}" --out-md "$out/compare.md"
