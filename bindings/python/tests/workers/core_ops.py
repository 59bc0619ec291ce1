"""Every core function on numpy arrays and torch tensors, every dtype, 0-d and empty arrays,
checked against values computed here. Run on N ranks; prints one summary line per rank and
exits non-zero on the first wrong result."""

from __future__ import annotations

import sys

import numpy as np
import torch

import ferrovod as fv

torch.set_num_threads(1)

NP_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64]
TORCH_DTYPES = [
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
]


def as_f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def make(kind: str, values: np.ndarray, dtype):
    """`values` (float64) as a numpy array or torch tensor of `dtype`."""
    if kind == "torch":
        return torch.tensor(values, dtype=torch.float64).to(dtype)
    return values.astype(dtype)


def expect(got, want: np.ndarray, what: str) -> None:
    got64 = as_f64(got)
    if got64.shape != want.shape or not np.array_equal(got64, want):
        sys.exit(f"rank {fv.rank()}: {what}: got {got64!r}, want {want!r}")


def data_ptr(x) -> int:
    return x.data_ptr() if isinstance(x, torch.Tensor) else x.ctypes.data


def check_dtype(kind: str, dtype, checks: list[str]) -> None:
    r, n = fv.rank(), fv.size()
    tag = f"{kind}.{dtype}"
    base = (np.arange(10) % 3).astype(np.float64)  # small values: sums exact in every dtype
    total = n * (n + 1) / 2
    integer = kind == "numpy" and np.issubdtype(dtype, np.integer) or kind == "torch" and not dtype.is_floating_point

    for op, want in [
        (fv.Sum, total * base),
        (fv.Max, n * base),
        (fv.Min, base),
        (fv.Average, np.trunc(total * base / n) if integer else total * base / n),
    ]:
        x = make(kind, (r + 1) * base, dtype)
        if not integer and op is fv.Average and dtype in (np.float16, torch.float16, torch.bfloat16):
            want = as_f64(make(kind, want, dtype))  # the average rounded to the dtype
        expect(fv.allreduce(x, op=op, name=f"{tag}.{op}"), want, f"{tag} allreduce {op}")
        expect(x, (r + 1) * base, f"{tag} allreduce {op} left its input alone")

    # Product: ones, with a 2 at this rank's index.
    p = np.ones(n + 2)
    p[r] = 2
    want = np.ones(n + 2)
    want[:n] = 2
    expect(fv.allreduce(make(kind, p, dtype), op=fv.Product, name=f"{tag}.prod"), want, f"{tag} product")

    # In place: same object, same memory, new values.
    x = make(kind, (r + 1) * base, dtype)
    ptr = data_ptr(x)
    out = fv.allreduce_(x, op=fv.Sum, name=f"{tag}.inplace")
    if out is not x or data_ptr(x) != ptr:
        sys.exit(f"rank {r}: {tag}: allreduce_ did not work in place")
    expect(x, total * base, f"{tag} allreduce_")

    # 0-d and empty.
    s = make(kind, np.array(float(r + 1)), dtype)
    expect(fv.allreduce_(s, op=fv.Sum, name=f"{tag}.scalar"), np.array(total), f"{tag} 0-d allreduce")
    e = make(kind, np.zeros((0, 3)), dtype)
    expect(fv.allreduce(e, op=fv.Sum, name=f"{tag}.empty"), np.zeros((0, 3)), f"{tag} empty allreduce")

    # Broadcast from the last rank, in place and not.
    root = n - 1
    b = make(kind, np.full((2, 3), r), dtype)
    expect(fv.broadcast(b, root, name=f"{tag}.bc"), np.full((2, 3), root), f"{tag} broadcast")
    expect(b, np.full((2, 3), r), f"{tag} broadcast left its input alone")
    expect(fv.broadcast_(b, root, name=f"{tag}.bc_"), np.full((2, 3), root), f"{tag} broadcast_")
    s = make(kind, np.array(float(r)), dtype)
    expect(fv.broadcast_(s, 0, name=f"{tag}.bc0d"), np.array(0.0), f"{tag} 0-d broadcast")

    # Allgather: rank i has i+1 rows of value i (rank 0 of a 3-wide world also tries 0 rows).
    g = make(kind, np.full((r + 1, 3), r), dtype)
    want = np.concatenate([np.full((i + 1, 3), i) for i in range(n)])
    got = fv.allgather(g, name=f"{tag}.ag")
    expect(got, want, f"{tag} allgather")
    if type(got) is not type(g):
        sys.exit(f"rank {r}: {tag}: allgather returned {type(got)} for {type(g)}")
    empty_rows = make(kind, np.zeros((0 if r % 2 == 0 else 2, 3)) + r, dtype)
    want = np.concatenate([np.zeros((0 if i % 2 == 0 else 2, 3)) + i for i in range(n)])
    expect(fv.allgather(empty_rows, name=f"{tag}.ag0"), want, f"{tag} allgather with empty ranks")

    # Reducescatter: 2n+1 rows, the first rank gets 3 of them, the others 2.
    rows = 2 * n + 1
    full = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2) % 5
    x = make(kind, (r + 1) * full, dtype)
    shares = [3 if i == 0 else 2 for i in range(n)] if n > 1 else [rows]
    start = sum(shares[:r])
    expect(fv.reducescatter(x, op=fv.Sum, name=f"{tag}.rs"), total * full[start : start + shares[r]], f"{tag} reducescatter")

    # Alltoall: rank i sends j+1 rows of value 10*i+j to rank j.
    rows_out = np.concatenate([np.full((j + 1, 2), 10 * r + j) for j in range(n)])
    got, splits = fv.alltoall(make(kind, rows_out, dtype), splits=[j + 1 for j in range(n)], name=f"{tag}.a2a")
    want = np.concatenate([np.full((r + 1, 2), 10 * i + r) for i in range(n)])
    expect(got, want, f"{tag} alltoall")
    expect(splits, np.full(n, r + 1), f"{tag} alltoall received splits")

    # Grouped allreduce.
    group = [make(kind, np.full(k + 1, r + k), dtype) for k in range(3)]
    outs = fv.grouped_allreduce(group, op=fv.Sum, name=f"{tag}.group")
    for k, o in enumerate(outs):
        expect(o, np.full(k + 1, sum(i + k for i in range(n))), f"{tag} grouped allreduce {k}")
    checks.append(tag)


def check_bool(kind: str, checks: list[str]) -> None:
    """Booleans: every collective, with reductions as logic (sum and max "or", min and product
    "and"), and an average refused on every rank alike (the next collectives still pair up)."""
    r, n = fv.rank(), fv.size()
    dtype = torch.bool if kind == "torch" else np.bool_
    tag = f"{kind}.bool"
    mine = np.array([r == 0, r == n - 1, True, False])  # rank 0, the last rank, all, none
    for op, want in [
        (fv.Sum, [True, True, True, False]),
        (fv.Max, [True, True, True, False]),
        (fv.Min, [n == 1, n == 1, True, False]),
        (fv.Product, [n == 1, n == 1, True, False]),
    ]:
        got = fv.allreduce(make(kind, mine, dtype), op=op, name=f"{tag}.{op}")
        if got.dtype != dtype:
            sys.exit(f"rank {r}: {tag} allreduce {op} returned {got.dtype}")
        expect(got, np.array(want, np.float64), f"{tag} allreduce {op}")
    try:
        fv.allreduce(make(kind, mine, dtype), op=fv.Average, name=f"{tag}.avg")
        sys.exit(f"rank {r}: {tag}: an average of bools was not refused")
    except fv.InvalidArgumentError as e:
        if "no average" not in str(e):
            sys.exit(f"rank {r}: {tag}: {e}")
    b = make(kind, np.array([r % 2 == 1, True]), dtype)
    expect(fv.broadcast(b, n - 1, name=f"{tag}.bc"), np.array([(n - 1) % 2 == 1, True], np.float64), f"{tag} broadcast")
    g = make(kind, np.full((r + 1, 2), r % 2 == 0), dtype)
    want = np.concatenate([np.full((i + 1, 2), i % 2 == 0) for i in range(n)]).astype(np.float64)
    expect(fv.allgather(g, name=f"{tag}.ag"), want, f"{tag} allgather")
    got, _ = fv.alltoall(make(kind, np.array([j == r for j in range(n)]), dtype), splits=[1] * n, name=f"{tag}.a2a")
    expect(got, np.array([i == r for i in range(n)], np.float64), f"{tag} alltoall")
    x = make(kind, np.array([r == 0] * n), dtype)
    expect(fv.reducescatter(x, op=fv.Max, name=f"{tag}.rs"), np.array([True]), f"{tag} reducescatter")
    checks.append(tag)


def main() -> None:
    fv.init()
    r, n = fv.rank(), fv.size()
    checks: list[str] = []
    for dtype in NP_DTYPES:
        check_dtype("numpy", dtype, checks)
    for dtype in TORCH_DTYPES:
        check_dtype("torch", dtype, checks)
    check_bool("numpy", checks)
    check_bool("torch", checks)

    # Buffer-protocol objects that are neither numpy nor torch.
    ba = bytearray([r + 1] * 4)
    fv.allreduce_(ba, op=fv.Sum, name="bytearray")
    if list(ba) != [n * (n + 1) // 2] * 4:
        sys.exit(f"rank {r}: bytearray allreduce_: {list(ba)}")

    # A tensor that requires grad (a parameter) goes through without autograd complaints.
    w = torch.nn.Parameter(torch.full((3,), float(r)))
    expect(fv.allreduce(w, op=fv.Max, name="param"), np.full(3, n - 1.0), "parameter allreduce")

    # Async: handles, poll, synchronize.
    hs = [fv.allreduce_async(np.full(5, float(i + r), np.float32), op=fv.Sum, name=f"async.{i}") for i in range(4)]
    for i, h in enumerate(hs):
        expect(fv.synchronize(h), np.full(5, float(sum(i + k for k in range(n)))), f"async {i}")
        if not fv.poll(h):
            sys.exit(f"rank {r}: poll is False after synchronize")

    # Objects travel as JSON.
    obj = fv.broadcast_object({"from": r, "list": [1, 2.5, None]}, root_rank=n - 1)
    if obj != {"from": n - 1, "list": [1, 2.5, None]}:
        sys.exit(f"rank {r}: broadcast_object: {obj}")
    if fv.allgather_object({"r": r}) != [{"r": i} for i in range(n)]:
        sys.exit(f"rank {r}: allgather_object")
    # What Horovod scripts pass: int and tuple keys, tuples, numpy arrays and torch tensors.
    obj = fv.broadcast_object({0: ("epoch", r), (1, 2): np.arange(3) + r, "t": torch.full((2,), float(r))}, root_rank=n - 1)
    if obj[0] != ("epoch", n - 1) or obj[(1, 2)].tolist() != [n - 1, n, n + 1] or obj["t"].tolist() != [n - 1.0] * 2:
        sys.exit(f"rank {r}: broadcast_object with keys, tuples and arrays: {obj}")
    every = fv.allgather_object((r, torch.tensor([r])))
    if [(i, t.tolist()) for i, t in every] != [(i, [i]) for i in range(n)]:
        sys.exit(f"rank {r}: allgather_object of tuples with tensors: {every}")

    # Join: rank i runs i+1 steps; at step k the ranks still active sum their ones.
    for k in range(r + 1):
        got = fv.allreduce(np.ones(3, np.float32), op=fv.Sum, name=f"join.step.{k}")
        expect(got, np.full(3, float(n - k)), f"allreduce with {k} ranks joined")
    last = fv.join()
    if not 0 <= last < n:
        sys.exit(f"rank {r}: join returned {last}")
    fv.barrier()
    print(f"rank {r} of {n}: ok, {len(checks)} dtype suites, join -> {last}")
    fv.shutdown()


if __name__ == "__main__":
    main()
