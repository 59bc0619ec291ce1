"""ferrovod on CUDA tensors: marked ``gpu``, deselected by default, run by
``scripts/gpu-check.sh`` on a machine with an NVIDIA GPU (``pytest -m gpu``). Several ranks
share the one GPU of such a machine, so these run the staged path (GPU memory through host
buffers); see ``workers/gpu_ops.py`` for what each scenario checks."""

from __future__ import annotations

import pytest

from conftest import check, launch, without_launcher

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_every_collective_dtype_and_op_on_cuda_tensors(np_):
    out = check(launch(np_, "gpu_ops.py", "collectives", timeout=600))
    for r in range(np_):
        assert f"[{r}] ok grouped, compressed and differentiable" in out, out
        for dtype in ("float32", "float16", "bfloat16", "int8", "uint8", "int64"):
            assert f"[{r}] ok allreduce torch.{dtype}" in out, out
            assert f"[{r}] ok broadcast allgather reducescatter alltoall torch.{dtype}" in out, out


def test_training_a_cuda_model_on_two_ranks_ends_with_equal_parameters():
    out = check(launch(2, "gpu_ops.py", "train", timeout=300))
    assert "[0] ok train maxdiff=" in out and "[0] ok train identical" in out and "[1] ok train identical" in out, out


def test_a_rank_killed_in_a_gpu_allreduce_fails_the_others_naming_it():
    procs = without_launcher(3, "gpu_ops.py", "kill")
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert procs[2].returncode == -9, outs[2]
    for r in (0, 1):
        assert procs[r].returncode == 0, f"rank {r}:\n{outs[r]}"
        assert f"rank {r}: CollectiveError blamed=[2]" in outs[r], outs[r]


@pytest.mark.skipif(torch.cuda.device_count() != 1, reason="needs exactly one GPU (two ranks on it)")
def test_nccl_asked_for_by_two_ranks_on_one_gpu_is_a_clear_error_at_once():
    out = launch(2, "gpu_ops.py", "nccl", timeout=120, env={"FERROVOD_GPU_BACKEND": "nccl"})
    assert out.returncode == 0, out.stdout + out.stderr
    for r in range(2):
        line = next(l for l in out.stdout.splitlines() if l.startswith(f"[{r}] rank {r}: "))
        assert "FERROVOD_GPU_BACKEND=nccl, but ranks 0 and 1 share one GPU, which NCCL refuses" in line, line
        assert float(line.split(" after ")[1].split(" s")[0]) < 10, line


def test_every_collective_dtype_and_op_on_nccl_at_one_rank():
    out = check(launch(1, "gpu_ops.py", "collectives", timeout=600, env={"FERROVOD_GPU_BACKEND": "nccl"}))
    assert "[0] ok grouped, compressed and differentiable" in out, out
    assert "[0] ok broadcast allgather reducescatter alltoall torch.bfloat16" in out, out


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_every_collective_dtype_and_op_on_nccl_across_two_gpus():
    out = check(launch(2, "gpu_ops.py", "collectives", timeout=600, env={"FERROVOD_GPU_BACKEND": "nccl"}))
    for r in range(2):
        assert f"[{r}] ok grouped, compressed and differentiable" in out, out
