"""``DistributedOptimizer`` used wrongly at N ranks: each misuse raises on every rank with a
message saying what to do, and training goes on afterwards. Prints ``ok <check>`` per check."""

import warnings

warnings.simplefilter("error")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import ferrovod.torch as hvd  # noqa: E402

torch.set_num_threads(1)
hvd.init()
R, N = hvd.rank(), hvd.size()

model = nn.Linear(3, 1)
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters())
x = torch.full((2, 3), float(R))


def expect(error, words, fn):
    try:
        fn()
    except error as e:
        assert words in str(e), f"{words!r} not in {e}"
        return
    raise AssertionError(f"no {error.__name__} ({words})")


# The hooks start the allreduces during backward, so zero_grad() between backward and step()
# would race with them.
model(x).sum().backward()
expect(RuntimeError, "would race", opt.zero_grad)
opt.step()
opt.zero_grad()
print("ok zero_grad refused while allreduces run", flush=True)

# A second backward pass with backward_passes_per_step=1.
model(x).sum().backward()
expect(RuntimeError, "raise backward_passes_per_step", lambda: model(x).sum().backward())
opt.step()
opt.zero_grad()
print("ok too many backward passes refused", flush=True)

# step() inside skip_synchronize() without synchronize().
model(x).sum().backward()


def step_skipping():
    with opt.skip_synchronize():
        opt.step()


expect(RuntimeError, "call synchronize() first", step_skipping)
opt.synchronize()
with opt.skip_synchronize():
    opt.step()
opt.zero_grad()
print("ok skip_synchronize without synchronize refused", flush=True)

# step() after an explicit synchronize(), outside skip_synchronize(): Horovod warns, once.
model(x).sum().backward()
opt.synchronize()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    opt.step()
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()  # no explicit synchronize() this time: no warning
opt.zero_grad()
assert [type(w.message) for w in caught] == [UserWarning], [str(w.message) for w in caught]
assert "skip_synchronize()" in str(caught[0].message), caught[0].message
print("ok step after synchronize warns", flush=True)

# Through all that, the ranks stayed together.
flat = torch.cat([p.detach().reshape(1, -1) for p in model.parameters()], dim=1)
every = hvd.allgather(flat, name="final")
assert all(torch.equal(every[0], every[k]) for k in range(N)), every
print("ok all", flush=True)
