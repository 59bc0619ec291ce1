#!/usr/bin/env bash
# The demo: 4 local processes started by ferrovod-run run `hello` (barrier, small allreduce,
# then a checked 64 MiB allreduce); then, from the Python package (installed into the project
# venv), a Horovod-style PyTorch training script on 2 ranks (`import ferrovod.torch as hvd`) and
# a function run on 2 ranks with `ferrovod.run`; a pool of 2 processes trains a model and then
# scores data with it, a Spark DataFrame through `predict_batch_udf(pool=pool)` included
# (`ferrovod.Pool`, `worker_state`); then the same kind of training from a PySpark driver
# (`ferrovod.spark.HorovodRunner(np=2)` on a local Spark, one barrier stage), whose weights
# then score a DataFrame (`ferrovod.inference.predict_batch_udf`); a Rust training loop (tch,
# `ferrovod_tch::DistributedOptimizer`) on 2 ranks; last, ferrovod-bench prints an allreduce
# table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
bin=target/release
echo "== ferrovod-run -np 4 -- hello --bytes 64MiB"
"$bin/ferrovod-run" -np 4 -- "$bin/hello" --bytes 64MiB
echo
echo "== the Python package: bash scripts/python-env.sh (venv, torch, pip install ./bindings)"
bash scripts/python-env.sh
echo
echo "== ferrovod-run -np 2 -- python examples/python/train_torch.py"
.venv/bin/ferrovod-run -np 2 -- .venv/bin/python examples/python/train_torch.py
echo
echo "== python examples/python/run_example.py (ferrovod.run, np=2)"
.venv/bin/python examples/python/run_example.py
echo
echo "== python examples/python/pool_example.py (ferrovod.Pool(2): train, then score a Spark DataFrame and a list with the model left in worker_state)"
.venv/bin/python examples/python/pool_example.py
echo
echo "== python examples/python/spark_train.py (HorovodRunner(np=2) on master local[2], then predict_batch_udf scoring; then a ferrovod.spark.Pool that trains and serves from worker_state)"
.venv/bin/python examples/python/spark_train.py --master 'local[2]' --np 2
echo
echo "== ferrovod-run -np 2 -- tch_train (a Rust training loop on tch; built against the venv's torch)"
(export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1 && cd tch && cargo build --release -p tch-train)
"$bin/ferrovod-run" -np 2 -- tch/target/release/tch_train --epochs 5
echo
echo "== ferrovod-bench --np 4 --op allreduce"
"$bin/ferrovod-bench" --np 4 --op allreduce --sizes 4KiB,1MiB,16MiB --min-time 0.5
