"""``broadcast_parameters`` and ``broadcast_optimizer_state``: ranks start apart (the root has
trained a few steps; the others have fresh optimizers, or the reverse) and must end identical:
parameters, buffers, per-parameter state, step counts, betas (a tuple), learning rates. Prints
``ok <check>`` per check."""

import warnings

warnings.simplefilter("error")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import ferrovod.torch as hvd  # noqa: E402

torch.set_num_threads(1)
hvd.init()
R, N = hvd.rank(), hvd.size()


def ok(check):
    print(f"ok {check}", flush=True)


def model_for(rank):
    torch.manual_seed(rank)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def train_steps(model, opt, steps):
    for i in range(steps):
        g = torch.Generator().manual_seed(i)
        loss = model(torch.randn(8, 3, generator=g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_identical(tensors, what):
    """Every rank holds the same values in each of ``tensors``, bit for bit."""
    for i, t in enumerate(tensors):
        gathered = hvd.allgather(t.detach().reshape(1, -1), name=f"same.{what}.{i}")
        assert all(torch.equal(gathered[0], gathered[k]) for k in range(N)), f"{what} {i} differs: {gathered}"


def optimizer_summary(opt):
    """What must agree, besides tensors, in plain values (types included)."""
    groups = [{k: (type(v).__name__, v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
    state = [sorted(opt.state.get(p, {}).keys()) for g in opt.param_groups for p in g["params"]]
    return {"groups": repr(groups), "state": state}


def state_tensors(opt):
    return [v for g in opt.param_groups for p in g["params"] for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor)]


def check(make_opt, root, trained_rank, form):
    model = model_for(R)
    opt = make_opt(model.parameters(), R)
    if R == trained_rank:
        train_steps(model, opt, 3)
    params = model.state_dict() if form == "state_dict" else model.named_parameters()
    hvd.broadcast_parameters(params, root_rank=root)
    hvd.broadcast_optimizer_state(opt, root_rank=root)
    what = f"{make_opt.__name__} root={root} trained={trained_rank} {form}"

    tensors = list(model.state_dict().values()) if form == "state_dict" else list(model.parameters())
    assert_identical(tensors, f"{what} params")
    summaries = hvd.allgather_object(optimizer_summary(opt))
    assert all(s == summaries[root] for s in summaries), f"{what}: optimizer differs: {summaries}"
    assert_identical(state_tensors(opt), f"{what} state")
    if make_opt is adam:
        assert isinstance(opt.param_groups[0]["betas"], tuple)
        if trained_rank == root:
            assert opt.param_groups[0]["lr"] == 0.02 and all(isinstance(s["step"], torch.Tensor) for s in opt.state.values())
            assert [s["step"].item() for s in opt.state.values()] == [3.0] * 6
        else:
            # As in Horovod, the root had no state, so it took a step with zero gradients to
            # make one, and every rank now has that state.
            assert [s["step"].item() for s in opt.state.values()] == [1.0] * 6
            assert all(torch.count_nonzero(s["exp_avg"]) == 0 for s in opt.state.values())
    # And they stay together: one more step on the same data.
    train_steps(model, opt, 1)
    assert_identical(list(model.parameters()), f"{what} after a step")
    ok(what)


def adam(params, rank):
    # The root's hyperparameters differ from the others', and must win.
    return torch.optim.Adam(params, lr=0.02, betas=(0.8, 0.9)) if rank == 0 else torch.optim.Adam(params, lr=0.001)


def sgd(params, rank):
    return torch.optim.SGD(params, lr=0.05 * (rank + 1), momentum=0.9)


def fresh_state_with_weight_decay():
    """Horovod's test_broadcast_state_no_grad, in short: no rank has state, so each takes a step
    with zero gradients to make one; that step must not move the parameters (weight decay would
    have), and leaves zero gradients where parameters train and none where they do not."""
    model = model_for(0)
    model[0].weight.requires_grad_(False)
    opt = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5), named_parameters=model.named_parameters()
    )
    before = [p.detach().clone() for p in model.parameters()]
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters())), "the step to make state moved parameters"
    assert model[0].weight.grad is None
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in trained)
    assert len(opt.state) == len(trained) and all("momentum_buffer" in opt.state[p] for p in trained)
    ok("fresh state, weight decay")


check(adam, root=0, trained_rank=0, form="state_dict")
check(sgd, root=N - 1, trained_rank=N - 1, form="named_parameters")
check(adam, root=0, trained_rank=N - 1, form="state_dict")
fresh_state_with_weight_decay()
ok("all")
