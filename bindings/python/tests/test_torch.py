"""``ferrovod.torch``, the ``horovod.torch`` surface: every collective on torch tensors at 1, 2
and 4 ranks; ``DistributedOptimizer`` training that ends where single-process training on the
same data ends, on every rank alike; broadcasting a model and its optimizer state; refusals; and
the example training script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import ferrovod  # noqa: E402
import ferrovod.torch as hvd  # noqa: E402
from conftest import check, launch  # noqa: E402
from ferrovod._launcher import command  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "python" / "train_torch.py"


def lines_of(out: str, rank: int) -> list[str]:
    prefix = f"[{rank}] "
    return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def one_rank():
    """This process as rank 0 of 1 (no launcher), shut down again afterwards."""
    hvd.init()
    yield
    hvd.shutdown()


# --- the surface -------------------------------------------------------------------------------


def test_reexports_the_core_api_and_adds_the_torch_one():
    missing = [name for name in ferrovod.__all__ if not hasattr(hvd, name)]
    assert not missing
    for name in ("Compression", "DistributedOptimizer", "broadcast_parameters", "broadcast_optimizer_state", "mpi_threads_supported"):
        assert name in hvd.__all__ and hasattr(hvd, name)
    assert hvd.Average is ferrovod.Average and hvd.join is ferrovod.join


def test_fp16_compression_round_trips_floats_and_leaves_others_alone():
    x = torch.tensor([1.5, -2.25, 1e-3], dtype=torch.float64)
    wire, ctx = hvd.Compression.fp16.compress(x)
    assert wire.dtype == torch.float16
    back = hvd.Compression.fp16.decompress(wire, ctx)
    assert back.dtype == torch.float64 and torch.allclose(back, x, rtol=1e-3)
    i = torch.arange(3)
    assert hvd.Compression.fp16.compress(i)[0] is i
    h = torch.ones(2, dtype=torch.float16)
    assert hvd.Compression.fp16.decompress(*hvd.Compression.fp16.compress(h)) is h
    assert hvd.Compression.none.compress(x)[0] is x


# --- collectives -------------------------------------------------------------------------------


CHECKS = ["world", "allreduce ops x dtypes", "allreduce variants", "compression", "gradients", "allgather", "broadcast", "reducescatter", "alltoall", "grouped_allreduce", "objects and barrier", "join", "all"]


@pytest.mark.multiproc
@pytest.mark.parametrize("n", [1, 2, pytest.param(4, marks=pytest.mark.slow)])
def test_every_collective_on_torch_tensors(ranks, n):
    """Each op on each dtype (bfloat16, float16, ints too), in place and not, 0-d and empty
    tensors, uneven allgather, alltoall with splits, gradients through collectives, join."""
    out = ranks(n, "torch_ops.py")
    for r in range(n):
        assert [line for line in lines_of(out, r) if line.startswith("ok ")] == [f"ok {c}" for c in CHECKS], out


def test_allreduce_of_a_tensor_requiring_grad_is_differentiable(one_rank):
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = hvd.allreduce(x, op=hvd.Sum, prescale_factor=3.0)
    assert y.requires_grad and torch.equal(y, torch.tensor([3.0, 6.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([3.0, 3.0]))


def test_allreduce_with_fp16_compression_returns_the_original_dtype(one_rank):
    x = torch.tensor([0.5, 1.25], dtype=torch.float32)
    assert hvd.allreduce(x, compression=hvd.Compression.fp16).dtype == torch.float32
    # Horovod's positional order: tensor, average, name, compression, op.
    out = hvd.allreduce(x, None, "positional", hvd.Compression.fp16, hvd.Sum)
    assert out.dtype == torch.float32 and torch.equal(out, x)
    outs = hvd.grouped_allreduce([x, x], None, "grouped.positional", hvd.Compression.fp16, hvd.Sum)
    assert all(o.dtype == torch.float32 and torch.equal(o, x) for o in outs)
    y = torch.tensor([0.5, 1.25], dtype=torch.bfloat16)
    out = hvd.allreduce_(y, op=hvd.Sum, compression=hvd.Compression.fp16)
    assert out is y and y.dtype == torch.bfloat16


# --- DistributedOptimizer ----------------------------------------------------------------------


TRAINING = ["sgd", "adam", "noname", "bpps2", "adam_bpps3", "fp16", "predivide", "sum", "num_groups", "groups", "clip", "sparse", "sparse_as_dense"]


@pytest.fixture(scope="module")
def trained():
    """One run of every training configuration at 2 ranks (they share the start-up cost)."""
    return check(launch(2, "torch_train.py"))


@pytest.mark.multiproc
@pytest.mark.parametrize("config", TRAINING)
def test_distributed_training_matches_single_process_and_ranks_agree(trained, config):
    """``sgd`` (momentum, lr scheduler), ``adam``, unnamed parameters, 2 and 3 backward passes
    per step, fp16 compression (looser tolerance), predivide, op=Sum, groups, clipping between
    synchronize() and step(), sparse gradients: all end within tolerance of one process trained
    on the global batches, with an unused parameter in the model, identical on every rank."""
    rank0 = lines_of(trained, 0)
    assert f"identical {config}" in rank0, trained
    assert any(re.fullmatch(rf"ok {config} maxdiff=\S+ moved=\S+", line) for line in rank0), trained


@pytest.mark.multiproc
def test_sparse_gradients_reach_the_step_sparse_either_way(trained):
    # As Horovod's: sparse_as_dense reduces them as dense tensors, then makes them sparse again
    # for optimizers that take only sparse gradients (SparseAdam).
    for r in range(2):
        assert {"grad sparse sparse", "grad sparse_as_dense sparse"} <= set(lines_of(trained, r)), trained


@pytest.mark.multiproc
@pytest.mark.parametrize("np_", [1, 3])
def test_sync_batch_norm_matches_one_process_on_the_whole_batch(ranks, np_):
    out = ranks(np_, "torch_sync_bn.py")
    for r in range(np_):
        assert lines_of(out, r) == ["ok shape (3,)", "ok shape (3, 5)", "ok shape (3, 2, 3)", "ok all"], out


@pytest.mark.multiproc
def test_misuse_of_the_optimizer_is_refused_and_ranks_stay_together(ranks):
    out = ranks(2, "torch_misuse.py")
    for r in range(2):
        assert lines_of(out, r) == [
            "ok zero_grad refused while allreduces run",
            "ok too many backward passes refused",
            "ok skip_synchronize without synchronize refused",
            "ok step after synchronize warns",
            "ok all",
        ], out


def test_distributed_optimizer_is_a_subclass_sharing_the_wrapped_state(one_rank):
    model = torch.nn.Linear(2, 1)
    inner = torch.optim.Adam(model.parameters(), lr=0.1)
    opt = hvd.DistributedOptimizer(inner, named_parameters=model.named_parameters())
    assert isinstance(opt, torch.optim.Adam) and type(opt).__name__ == "Adam"
    assert opt.param_groups is inner.param_groups and opt.state is inner.state
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    steps = []
    opt.register_step_pre_hook(lambda *args: steps.append(1))
    opt.load_state_dict(opt.state_dict())  # which re-wraps a class's step unless told not to
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.05
    assert steps == [1], "step hooks must run once per step"


def test_one_rank_trains_as_the_wrapped_optimizer_does(one_rank):
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    plain = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    dist = hvd.DistributedOptimizer(torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), named_parameters=b.named_parameters())
    x = torch.randn(4, 3)
    for _ in range(3):
        for model, opt in ((a, plain), (b, dist)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"named_parameters": "duplicate"}, "duplicate names: w"),
        ({"named_parameters": "partial"}, "does not name 1 of the optimizer's 2 parameters"),
        ({"named_parameters": "not pairs"}, "must be (name, parameter) pairs"),
        ({"op": hvd.Sum, "gradient_predivide_factor": 2.0}, "op=Average only"),
        ({"backward_passes_per_step": 0}, "at least 1"),
        ({"groups": "foreign"}, "not a trainable parameter"),
        ({"groups": "twice"}, "in more than one group"),
    ],
)
def test_distributed_optimizer_refuses_what_would_mismatch_ranks(one_rank, kwargs, message):
    w, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    named = {"duplicate": [("w", w), ("w", b)], "partial": [("w", w)], "not pairs": [w, b]}
    groups = {"foreign": [[torch.nn.Parameter(torch.ones(1))]], "twice": [[w], [w, b]]}
    kwargs = dict(kwargs)
    if "named_parameters" in kwargs:
        kwargs["named_parameters"] = named[kwargs["named_parameters"]]
    if "groups" in kwargs:
        kwargs["groups"] = groups[kwargs["groups"]]
    with pytest.raises(ValueError, match=re.escape(message)):
        hvd.DistributedOptimizer(torch.optim.SGD([w, b], lr=0.1), **kwargs)


# --- broadcasting a model and its optimizer ----------------------------------------------------


@pytest.mark.multiproc
@pytest.mark.parametrize("n", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_broadcast_makes_parameters_and_optimizer_state_identical(ranks, n):
    """Adam from rank 0 after 3 steps to fresh ranks (state tensors, step counts, betas as a
    tuple, lr), SGD momentum from the last rank through named_parameters, and a root without
    state clearing the others'; buffers (BatchNorm) included, and ranks agree after one more
    step."""
    out = ranks(n, "torch_broadcast.py")
    for r in range(n):
        assert lines_of(out, r) == [
            "ok adam root=0 trained=0 state_dict",
            f"ok sgd root={n - 1} trained={n - 1} named_parameters",
            f"ok adam root=0 trained={n - 1} state_dict",
            "ok fresh state, weight decay",
            "ok all",
        ], out


def test_optimizer_state_that_json_cannot_carry_is_refused_on_the_root(one_rank):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["custom"] = object()
    with pytest.raises(TypeError, match=r"cannot send state_dict\['param_groups'\]\[0\]\['custom'\]: a object"):
        hvd.broadcast_optimizer_state(opt, root_rank=0)


# --- the example -------------------------------------------------------------------------------


@pytest.mark.multiproc
@pytest.mark.slow
def test_example_training_script_runs_at_two_ranks():
    proc = subprocess.run(
        [*command(), "-np", "2", "--", sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60
    )
    out = check(proc)
    losses = [float(m.group(1)) for m in re.finditer(r"^\[0\] epoch \d: loss (\S+)$", out, re.M)]
    assert len(losses) == 5 and losses[-1] < losses[0] / 2, out
    assert "[0] parameters agree across 2 ranks: True" in out
    assert "[1] epoch" not in out
