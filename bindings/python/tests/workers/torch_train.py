"""``DistributedOptimizer`` against single-process training on the same data.

Each step's global batch is split into equal shards, one per rank, and each rank's loss is the
mean over its shard; so the average of the ranks' gradients is the gradient of the mean over the
global batch, and N ranks must end where one process training on the global batches ends. Rank 0
trains that reference itself, from the parameters it broadcast, and prints per configuration
``ok <name> maxdiff=<d>`` (or ``FAIL ...``) and ``identical <name>`` when every rank holds the
same parameters, bit for bit.
"""

import copy
import warnings

warnings.simplefilter("error")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import ferrovod.torch as hvd  # noqa: E402

torch.set_num_threads(1)
hvd.init()
R, N = hvd.rank(), hvd.size()
SHARD, STEPS = 4, 6


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.unused = nn.Linear(3, 3)  # never used: its allreduce starts in step(), zero grad

    def forward(self, x):
        return self.body(x)


class SparseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4, sparse=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.emb(x).mean(1))


def dense_batch(i):
    """Global batch i: the same on every rank, from a fixed seed."""
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(SHARD * N, 4, generator=g)
    return x, x.sum(1, keepdim=True).sin() + 0.1 * torch.randn(SHARD * N, 1, generator=g)


def sparse_batch(i):
    g = torch.Generator().manual_seed(2000 + i)
    x = torch.randint(0, 10, (SHARD * N, 3), generator=g)
    return x, torch.randn(SHARD * N, 1, generator=g)


def sgd(params, dist):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def adam(params, dist):
    return torch.optim.Adam(params, lr=0.01)


def plain_sgd(params, dist):
    return torch.optim.SGD(params, lr=0.1)


def sgd_for_sum(params, dist):
    """With op=Sum the gradients are N times the average: the same steps with lr / N."""
    return torch.optim.SGD(params, lr=0.1 / N if dist else 0.1, momentum=0.9)


# name: (model, optimizer, DistributedOptimizer kwargs, passes per step, tolerance, options)
CONFIGS = {
    "sgd": (Net, sgd, {}, 1, 1e-5, {"scheduler"}),
    "adam": (Net, adam, {}, 1, 1e-5, set()),
    "noname": (Net, sgd, {}, 1, 1e-5, {"unnamed"}),
    "bpps2": (Net, sgd, {"backward_passes_per_step": 2}, 2, 1e-5, set()),
    "adam_bpps3": (Net, adam, {"backward_passes_per_step": 3}, 3, 1e-5, set()),
    "fp16": (Net, sgd, {"compression": hvd.Compression.fp16}, 1, 5e-3, set()),
    "predivide": (Net, sgd, {"gradient_predivide_factor": 2.0}, 1, 1e-5, set()),
    "sum": (Net, sgd_for_sum, {"op": hvd.Sum}, 1, 1e-5, set()),
    "num_groups": (Net, adam, {"num_groups": 2}, 1, 1e-5, set()),
    "groups": (Net, sgd, {"groups": "body weights"}, 1, 1e-5, set()),
    "clip": (Net, sgd, {}, 1, 1e-5, {"clip"}),
    "sparse": (SparseNet, plain_sgd, {}, 1, 1e-5, set()),
    "sparse_as_dense": (SparseNet, plain_sgd, {"sparse_as_dense": True}, 1, 1e-5, set()),
}


def train(model, opt, batch, passes, options, shard):
    """STEPS steps of ``passes`` backward passes each; ``shard`` takes this rank's rows."""
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if "scheduler" in options else None
    for step in range(STEPS):
        for k in range(passes):
            x, y = batch(step * passes + k)
            x, y = shard(x), shard(y)
            nn.functional.mse_loss(model(x), y).backward()
        if "clip" in options:
            if hasattr(opt, "synchronize"):
                opt.synchronize()
            nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            if hasattr(opt, "skip_synchronize"):
                with opt.skip_synchronize():
                    opt.step()
            else:
                opt.step()
        else:
            opt.step()
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def run(name, make_model, make_opt, kwargs, passes, tol, options):
    torch.manual_seed(R)  # every rank starts elsewhere, until the broadcast
    model = make_model()
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    start = copy.deepcopy(model.state_dict())
    kwargs = dict(kwargs)
    if kwargs.get("groups") == "body weights":
        kwargs["groups"] = [[model.body[0].weight, model.body[2].weight]]
    named = None if "unnamed" in options else model.named_parameters()
    inner = make_opt(model.parameters(), True)
    opt = hvd.DistributedOptimizer(inner, named_parameters=named, **kwargs)
    assert isinstance(opt, type(inner)) and opt.param_groups is inner.param_groups
    batch = sparse_batch if make_model is SparseNet else dense_batch
    train(model, opt, batch, passes, options, lambda t: t[R * SHARD : (R + 1) * SHARD])

    gathered = hvd.allgather(flat(model)[None], name=f"check.{name}")
    if make_model is SparseNet:
        # The embedding's gradient after the reduction: sparse, whichever way it travelled.
        # (One more backward and synchronize; the optimizer is done with.)
        x, y = batch(0)
        nn.functional.mse_loss(model(x[:SHARD]), y[:SHARD]).backward()
        opt.synchronize()
        print(f"grad {name} {'sparse' if model.emb.weight.grad.is_sparse else 'dense'}", flush=True)
    if R != 0:
        return
    if all(torch.equal(gathered[0], gathered[k]) for k in range(N)):
        print(f"identical {name}", flush=True)
    reference = make_model()
    reference.load_state_dict(start)
    train(reference, make_opt(reference.parameters(), False), batch, passes, options, lambda t: t)
    got, want = flat(model), flat(reference)
    diff = (got - want).abs().max().item()
    moved = (want - torch.cat([t.reshape(-1) for t in start.values()])).abs().max().item()
    verdict = "ok" if torch.allclose(got, want, atol=tol) and moved > 10 * tol else "FAIL"
    print(f"{verdict} {name} maxdiff={diff:.2e} moved={moved:.2e}", flush=True)


for name, config in CONFIGS.items():
    run(name, *config)
print("done", flush=True)
