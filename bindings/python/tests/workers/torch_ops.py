"""Every collective of ``ferrovod.torch`` on torch tensors, checked against values each rank can
compute by itself. Prints ``ok <check>`` per check and ``ok all`` at the end; any mismatch
raises (the launcher then fails)."""

import warnings

warnings.simplefilter("error")

import torch  # noqa: E402

import ferrovod  # noqa: E402
import ferrovod.torch as hvd  # noqa: E402

torch.set_num_threads(1)
hvd.init()
R, N = hvd.rank(), hvd.size()
ALL = range(N)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.uint8, torch.int8, torch.int16]


def same(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), f"{what}: got {got!r}, want {want!r}"


def ok(check):
    print(f"ok {check}", flush=True)


def world():
    assert (hvd.local_rank(), hvd.local_size(), hvd.cross_rank(), hvd.cross_size()) == (R, N, 0, 1)
    assert hvd.is_initialized() and not hvd.mpi_threads_supported()
    # Horovod's build queries answer for ferrovod as it is: no MPI, Gloo or ROCm; CUDA and NCCL
    # are loaded at run time.
    for query in ("mpi_built", "mpi_enabled", "gloo_built", "gloo_enabled", "rocm_built", "ddl_built", "ccl_built"):
        assert getattr(hvd, query)() is False, query
    assert hvd.cuda_built() is True and hvd.nccl_built() is True
    assert hvd.is_homogeneous() is True  # every rank on this one host
    try:
        hvd.join("cuda")
        raise AssertionError("a device that is not an int was taken")
    except TypeError as e:
        assert "device must be an int" in str(e), e
    ok("world")


def allreduce_ops():
    """Each op on each dtype; inputs small enough that no dtype overflows or rounds."""
    base = torch.tensor([1, 2, 3, 4])
    inputs = {k: base + k for k in ALL}
    factors = {k: torch.tensor([1, 2, 1, 1]) + (torch.arange(4) == k % 4) for k in ALL}
    stacked = torch.stack([inputs[k] for k in ALL]).double()
    want = {
        hvd.Sum: stacked.sum(0),
        hvd.Min: stacked.min(0).values,
        hvd.Max: stacked.max(0).values,
        hvd.Average: stacked.mean(0),
        hvd.Product: torch.stack([factors[k] for k in ALL]).double().prod(0),
    }
    for dtype in DTYPES:
        for op, expected in want.items():
            x = (factors[R] if op == hvd.Product else inputs[R]).to(dtype)
            if op == hvd.Average and not dtype.is_floating_point:
                expected = torch.div(stacked.sum(0), N, rounding_mode="floor")
            name = f"ops.{dtype}.{op!r}"
            same(hvd.allreduce(x, op=op, name=name), expected.to(dtype), name)
            same(x, (factors[R] if op == hvd.Product else inputs[R]).to(dtype), f"{name} left its input alone")
    ok("allreduce ops x dtypes")


def allreduce_variants():
    # In place: the same memory, now holding the sum.
    x = torch.full((5,), float(R + 1))
    ptr = x.data_ptr()
    out = hvd.allreduce_(x, op=hvd.Sum)
    assert out is x and x.data_ptr() == ptr, "allreduce_ did not reduce in place"
    same(x, torch.full((5,), float(N * (N + 1) // 2)), "allreduce_")
    # average=, the legacy spelling, and the default op (Average).
    same(hvd.allreduce(torch.full((2,), float(R)), average=False), torch.full((2,), float(N * (N - 1) // 2)), "average=False")
    same(hvd.allreduce(torch.full((2,), float(R))), torch.full((2,), (N - 1) / 2), "default op")
    # Scaling.
    got = hvd.allreduce(torch.ones(3), op=hvd.Sum, prescale_factor=2.0, postscale_factor=0.5)
    same(got, torch.full((3,), float(N)), "prescale/postscale")
    # Async, both kinds; synchronize returns the tensor.
    h1 = hvd.allreduce_async(torch.ones(4), op=hvd.Sum, name="async")
    y = torch.ones(4)
    h2 = hvd.allreduce_async_(y, op=hvd.Sum, name="async_")
    same(hvd.synchronize(h1), torch.full((4,), float(N)), "allreduce_async")
    assert hvd.synchronize(h2) is y and hvd.poll(h2)
    same(y, torch.full((4,), float(N)), "allreduce_async_")
    # 0-d and empty tensors.
    same(hvd.allreduce(torch.tensor(float(R)), op=hvd.Sum), torch.tensor(float(N * (N - 1) // 2)), "0-d")
    same(hvd.allreduce(torch.empty(0, 3), op=hvd.Sum), torch.empty(0, 3), "empty")
    # A non-contiguous input (the out-of-place allreduce copies it).
    t = torch.arange(6.0).reshape(2, 3).t()
    same(hvd.allreduce(t, op=hvd.Sum), t * N, "non-contiguous")
    ok("allreduce variants")


def allreduce_compressed():
    x = torch.full((6,), 0.25 * (R + 1), dtype=torch.float32)
    got = hvd.allreduce(x, op=hvd.Sum, compression=hvd.Compression.fp16)
    same(got, torch.full((6,), 0.25 * N * (N + 1) / 2), "fp16 compression returns float32")
    ptr = x.data_ptr()
    hvd.allreduce_(x, op=hvd.Sum, compression=hvd.Compression.fp16)
    assert x.data_ptr() == ptr
    same(x, torch.full((6,), 0.25 * N * (N + 1) / 2), "allreduce_ with fp16 compression")
    i = torch.arange(3, dtype=torch.int64)
    same(hvd.allreduce(i, op=hvd.Sum, compression=hvd.Compression.fp16), i * N, "fp16 compression leaves ints alone")
    ok("compression")


def gradients():
    """Through every collective, Horovod's gradients: allreduce's and alltoall's are exact; for
    allgather and broadcast the ranks' output gradients are averaged, and reducescatter's are
    gathered (times the ranks for Sum)."""
    x = torch.full((3,), float(R + 1), requires_grad=True)
    y = hvd.allreduce(x, op=hvd.Sum, name="grad.allreduce")
    assert y.requires_grad
    (y * (R + 1)).sum().backward()
    same(x.grad, torch.full((3,), float(N * (N + 1) // 2)), "allreduce gradient")

    x = torch.full((R + 1, 2), 1.0, requires_grad=True)
    g = hvd.allgather(x, name="grad.allgather")
    weights = torch.arange(g.shape[0], dtype=torch.float32)[:, None]
    (g * weights).sum().backward()
    first = R * (R + 1) // 2  # this rank's first row in the gathered tensor
    same(x.grad, torch.arange(first, first + R + 1, dtype=torch.float32)[:, None].expand(R + 1, 2), "allgather gradient")

    x = torch.ones(2, requires_grad=True)
    b = hvd.broadcast(x, root_rank=0, name="grad.broadcast")
    (b * (R + 1)).sum().backward()
    same(x.grad, torch.full((2,), (N + 1) / 2 if R == 0 else 0.0), "broadcast gradient")

    x = torch.ones(N, 2, requires_grad=True)
    (hvd.reducescatter(x, op=hvd.Sum, name="grad.rs") * (R + 1)).sum().backward()
    same(x.grad, torch.tensor([[float(N * (k + 1))] * 2 for k in ALL]), "reducescatter Sum gradient")

    a, b = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    ya, yb = hvd.grouped_allreduce([a, b], op=hvd.Average, name="grad.grouped")
    ((ya + yb.sum()) * (R + 1)).sum().backward()
    same(a.grad, torch.full((2,), (N + 1) / 2), "grouped_allreduce gradient 0")
    same(b.grad, torch.full((3,), 2 * (N + 1) / 2), "grouped_allreduce gradient 1")

    # The grouped allgather and reducescatter: each member's gradient is the single op's.
    a, b = torch.full((R + 1, 2), 1.0, requires_grad=True), torch.ones(1, 3, requires_grad=True)
    ga, gb = hvd.grouped_allgather([a, b], name="grad.grouped_allgather")
    ((ga * torch.arange(ga.shape[0], dtype=torch.float32)[:, None]).sum() + (gb * (R + 1)).sum()).backward()
    same(a.grad, torch.arange(first, first + R + 1, dtype=torch.float32)[:, None].expand(R + 1, 2), "grouped_allgather gradient 0")
    same(b.grad, torch.full((1, 3), (N + 1) / 2), "grouped_allgather gradient 1")
    a, b = torch.ones(N, 2, requires_grad=True), torch.ones(2 * N, requires_grad=True)
    ya, yb = hvd.grouped_reducescatter([a, b], op=hvd.Sum, name="grad.grouped_rs")
    ((ya.sum() + yb.sum()) * (R + 1)).backward()
    same(a.grad, torch.tensor([[float(N * (k + 1))] * 2 for k in ALL]), "grouped_reducescatter Sum gradient 0")
    same(b.grad, torch.tensor([float(N * (k + 1)) for k in ALL for _ in range(2)]), "grouped_reducescatter Sum gradient 1")
    ok("gradients")


def allgather():
    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.uint8):
        x = torch.full((R + 1, 2), R, dtype=dtype)
        want = torch.cat([torch.full((k + 1, 2), k, dtype=dtype) for k in ALL])
        same(hvd.allgather(x, name=f"gather.{dtype}"), want, f"allgather {dtype}")
    # A rank with no rows.
    x = torch.full((R % 2, 3), float(R))
    want = torch.cat([torch.full((k % 2, 3), float(k)) for k in ALL])
    same(hvd.allgather(x), want, "allgather with empty ranks")
    ok("allgather")


def broadcast():
    root = N - 1
    x = torch.arange(4, dtype=torch.float64) + 10 * R
    same(hvd.broadcast(x, root_rank=root), torch.arange(4, dtype=torch.float64) + 10 * root, "broadcast")
    same(x, torch.arange(4, dtype=torch.float64) + 10 * R, "broadcast left its input alone")
    ptr = x.data_ptr()
    hvd.broadcast_(x, root_rank=root)
    assert x.data_ptr() == ptr
    same(x, torch.arange(4, dtype=torch.float64) + 10 * root, "broadcast_")
    y = torch.full((2, 2), R, dtype=torch.int32)
    hvd.synchronize(hvd.broadcast_async_(y, 0, name="bcast.async"))
    same(y, torch.zeros(2, 2, dtype=torch.int32), "broadcast_async_")
    ok("broadcast")


def reducescatter():
    rows = 2 * N + 1
    x = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2) * (R + 1)
    total = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2) * (N * (N + 1) // 2)
    counts = [rows // N + (k < rows % N) for k in ALL]
    start = sum(counts[:R])
    same(hvd.reducescatter(x, op=hvd.Sum), total[start : start + counts[R]], "reducescatter Sum")
    same(hvd.reducescatter(x), total[start : start + counts[R]] / N, "reducescatter Average")
    # Horovod's order: tensor, name, compression, op; and its scaling.
    same(hvd.reducescatter(x, "rs.positional", hvd.Compression.none, hvd.Sum), total[start : start + counts[R]], "positional")
    same(
        hvd.reducescatter(x, op=hvd.Sum, prescale_factor=2.0, postscale_factor=0.25),
        total[start : start + counts[R]] * 0.5,
        "reducescatter scaled",
    )
    ints = torch.full((N, 2), R + 1, dtype=torch.int32)
    # Integers scale in float64, truncated back: 3 * 0.5 = 1.5 -> 1 on every rank, summed.
    same(hvd.reducescatter(ints * 0 + 3, op=hvd.Sum, prescale_factor=0.5), torch.full((1, 2), N, dtype=torch.int32), "int prescale")
    same(hvd.allreduce(ints * 0 + 3, op=hvd.Sum, prescale_factor=0.5), torch.full((N, 2), N, dtype=torch.int32), "int allreduce prescale")
    outs = hvd.grouped_reducescatter([x, x.double()], op=hvd.Sum)
    same(outs[1], total[start : start + counts[R]].double(), "grouped_reducescatter")
    gathered = hvd.grouped_allgather([torch.full((R + 1,), float(R)), torch.tensor([R])], name="gag")
    same(gathered[1], torch.tensor(ALL), "grouped_allgather")
    # Horovod's parameter orders, by position: (name, compression, op, process_set, prescale,
    # postscale), and the asynchronous forms' (name, op, process_set, prescale, postscale).
    part = total[start : start + counts[R]]
    same(hvd.reducescatter(x, "rs.order", hvd.Compression.none, hvd.Sum, hvd.global_process_set, 2.0, 0.25), part * 0.5, "reducescatter by position")
    same(hvd.synchronize(hvd.reducescatter_async(x, "rs.async", hvd.Sum, hvd.global_process_set, 4.0)), part * 4, "reducescatter_async by position")
    outs = hvd.grouped_reducescatter([x, x], "grs.order", hvd.Compression.none, hvd.Sum, hvd.global_process_set, 1.0, 0.5)
    same(outs[1], part * 0.5, "grouped_reducescatter by position")
    outs = hvd.synchronize(hvd.grouped_reducescatter_async([x, 2 * x], "grs.async", hvd.Sum))
    same(outs[1], part * 2, "grouped_reducescatter_async")
    outs = hvd.synchronize(hvd.grouped_allgather_async([torch.tensor([R]), torch.tensor([[R, R]])], "gag.async"))
    same(outs[1], torch.tensor([[k, k] for k in ALL]), "grouped_allgather_async")
    ok("reducescatter")


def alltoall():
    # Rank R sends j + 1 rows of value 10R + j to rank j; so it receives R + 1 rows from each.
    splits = [j + 1 for j in ALL]
    x = torch.cat([torch.full((j + 1, 2), 10.0 * R + j) for j in ALL])
    out, received = hvd.alltoall(x, splits=splits)
    same(out, torch.cat([torch.full((R + 1, 2), 10.0 * k + R) for k in ALL]), "alltoall with splits")
    assert received.tolist() == [R + 1] * N, received
    out, received = hvd.alltoall(x, splits=torch.tensor(splits, dtype=torch.int32))
    assert received.tolist() == [R + 1] * N
    # Even split.
    x = torch.arange(2 * N, dtype=torch.int64) + 100 * R
    if N > 1:
        try:
            hvd.alltoall(torch.ones(N + 1))
            raise AssertionError("an uneven first dimension without splits was taken")
        except ValueError as e:  # Horovod's class; ferrovod's InvalidArgumentError is one
            assert "does not divide" in str(e), e
    out = hvd.alltoall(x)  # without splits, Horovod returns the output alone
    same(out, torch.tensor([100 * k + 2 * R + i for k in ALL for i in range(2)]), "alltoall even")
    ok("alltoall")


def grouped():
    a, b = torch.full((3,), float(R)), torch.full((2, 2), float(R), dtype=torch.float64)
    s = float(N * (N - 1) // 2)
    out = hvd.grouped_allreduce([a, b], op=hvd.Sum, name="grp")
    same(out[0], torch.full((3,), s), "grouped 0")
    same(out[1], torch.full((2, 2), s, dtype=torch.float64), "grouped 1")
    pa = a.data_ptr()
    hvd.grouped_allreduce_([a, b], op=hvd.Sum, name="grp_")
    assert a.data_ptr() == pa
    same(a, torch.full((3,), s), "grouped_ in place")
    c = [torch.full((2,), 0.5 * (R + 1)), torch.full((3,), 0.25 * (R + 1), dtype=torch.bfloat16)]
    out = hvd.grouped_allreduce(c, op=hvd.Sum, compression=hvd.Compression.fp16)
    same(out[0], torch.full((2,), 0.5 * N * (N + 1) / 2), "grouped with fp16 compression 0")
    same(out[1], torch.full((3,), 0.25 * N * (N + 1) / 2, dtype=torch.bfloat16), "grouped with fp16 compression 1")
    pc = c[0].data_ptr()
    hvd.grouped_allreduce_(c, op=hvd.Sum, compression=hvd.Compression.fp16)
    assert c[0].data_ptr() == pc
    same(c[0], torch.full((2,), 0.5 * N * (N + 1) / 2), "grouped_ with fp16 compression")
    ok("grouped_allreduce")


def objects():
    got = hvd.broadcast_object({"from": R, "list": [1, 2.5, "x", None]} if R == 0 else None, root_rank=0)
    assert got == {"from": 0, "list": [1, 2.5, "x", None]}, got
    assert hvd.allgather_object({"r": R}) == [{"r": k} for k in ALL]
    hvd.barrier()
    ok("objects and barrier")


def join():
    # Every rank but 0 joins at once; rank 0's allreduce then reduces with the joined ranks
    # contributing nothing, and rank 0 is the last to join.
    if R == 0:
        same(hvd.allreduce(torch.full((2,), 5.0), op=hvd.Sum, name="after.join"), torch.full((2,), 5.0), "allreduce while others joined")
        # As in Horovod, the other collectives are an error (a RuntimeError) while a rank has
        # joined, and the rank goes on.
        for what, call in [] if N == 1 else [
            ("allgather", lambda: hvd.allgather(torch.ones(2, 3))),
            ("broadcast", lambda: hvd.broadcast(torch.ones(2), root_rank=0)),
            ("reducescatter", lambda: hvd.reducescatter(torch.ones(2 * N))),
            ("alltoall", lambda: hvd.alltoall(torch.ones(N))),
        ]:
            try:
                call()
            except RuntimeError as e:
                assert isinstance(e, ferrovod.UnsupportedError), repr(e)
                assert e.op == what and f"{what} is not supported while rank(s) {list(range(1, N))} have joined" in str(e), e
            else:
                raise AssertionError(f"{what} ran while ranks had joined")
    last = hvd.join(-1)  # Horovod's CPU device
    assert last == 0, last
    same(hvd.allreduce(torch.full((2,), 1.0), op=hvd.Sum, name="after.all.joined"), torch.full((2,), float(N)), "allreduce after join")
    ok("join")


for check in (world, allreduce_ops, allreduce_variants, allreduce_compressed, gradients, allgather, broadcast, reducescatter, alltoall, grouped, objects, join):
    check()
ok("all")
