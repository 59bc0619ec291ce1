#!/usr/bin/env bash
# The GPU check (issue 13): the one entry point for a machine with an NVIDIA GPU and torch.
#
#   here (any x86-64 machine with Rust):  bash scripts/gpu-bundle.sh      -> gpu-bundle/ (ignored)
#   there, gpu-bundle/ carried along:     bash scripts/gpu-check.sh
#
# In under 7 minutes it installs the carried wheel into a scratch folder (nothing from the
# network), then runs and logs into one table (scripts/gpu_check.py): the GPU and torch it found,
# the NCCL that ferrovod loads, the `gpu`-marked tests (every collective, dtype and op on CUDA
# tensors: through NCCL at N=1, through the staged path at N=1, 2 and 4 ranks on the one GPU; a
# two-rank ferrovod.torch training of a CUDA model; a kill -9 in a GPU allreduce; NCCL asked for
# by two ranks on one GPU), the staged path's time and busbw against torch.distributed's gloo on
# the same CUDA tensors at N=2 and 4, and NCCL at N=1 against torch.distributed's nccl. The
# table goes to $OUT/gpu-check.md (OUT defaults to gpu-check-out/), each step's log beside it.
#
# Exit status: 0 every check passed (a measured target missed is a "below target" row, not a
# failure); 1 a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
site="$(mktemp -d /tmp/ferrovod-site.XXXXXX)"
wheel=$(ls gpu-bundle/ferrovod-*.whl 2>/dev/null | head -n 1)
if [ -z "$wheel" ]; then
    echo "gpu-check: no gpu-bundle/ferrovod-*.whl: run 'bash scripts/gpu-bundle.sh' where Rust is, and carry gpu-bundle/" >&2
    exit 1
fi
"$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheel" || exit 1
export PYTHONPATH="$site:$PWD/bindings/python/tests" PYTHONUNBUFFERED=1
timeout 420 "$py" scripts/gpu_check.py --out "$out"
