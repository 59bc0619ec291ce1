"""The core API: every function on 1, 2 and 4 ranks (numpy and torch, every dtype, 0-d and
empty), bad inputs refused with clear errors, waits that free the GIL and obey Ctrl-C, and
the launcher installed with the package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ferrovod as fv
from conftest import launch, without_launcher


@pytest.mark.multiproc
@pytest.mark.parametrize("np_", [1, 2, 4])
def test_every_function_on_numpy_and_torch(ranks, np_):
    out = ranks(np_, "core_ops.py", timeout=240)
    for r in range(np_):
        assert f"[{r}] rank {r} of {np_}: ok, 19 dtype suites" in out


@pytest.mark.multiproc
def test_process_sets_run_every_collective_among_their_ranks_only(ranks):
    out = ranks(4, "process_sets.py", timeout=180)
    for r in range(4):
        assert f"[{r}] rank {r}: process sets ok" in out, out


@pytest.mark.multiproc
def test_an_error_on_one_rank_before_or_after_it_submits_leaves_the_ranks_paired(ranks):
    out = ranks(2, "one_rank_errors.py", timeout=120)
    for r in range(2):
        assert out.count(f"[{r}] rank {r}: ok after ") == 11, out
        assert f"[{r}] rank {r}: ok after an exception after submitting, its handle dropped" in out, out


def test_in_place_means_the_same_memory(world1):
    x = np.arange(5, dtype=np.float32)
    before = x.ctypes.data
    assert fv.allreduce_(x, op=fv.Sum) is x and x.ctypes.data == before
    t = torch.arange(5, dtype=torch.float32)
    ptr = t.data_ptr()
    assert fv.broadcast_(t, 0) is t and t.data_ptr() == ptr


def test_results_are_the_callers_array_type(world1):
    assert isinstance(fv.allreduce(torch.ones(3)), torch.Tensor)
    assert isinstance(fv.allgather(np.ones((2, 2))), np.ndarray)
    assert isinstance(fv.allreduce(bytearray(b"abc"), op=fv.Sum), np.ndarray)
    g = fv.allgather(torch.ones(2, 3, dtype=torch.bfloat16))
    assert g.dtype == torch.bfloat16 and g.shape == (2, 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: np.zeros((4, 4), np.float32)[:, ::2], "not contiguous"),
        (lambda: torch.zeros(4, 4).t(), "not contiguous"),
        (lambda: np.zeros(3, dtype=np.complex64), "unsupported element type"),
        (lambda: np.zeros(3, dtype=np.uint16), "unsupported element type"),
        (lambda: np.zeros(3, dtype=">f4"), "unsupported element type"),
        (lambda: torch.zeros(3, dtype=torch.complex64), "unsupported element type"),
        (lambda: [1.0, 2.0], "expected a numpy array, a torch tensor or a buffer, got list"),
        (lambda: b"bytes are read-only", "read-only"),
    ],
)
def test_bad_inputs_to_in_place_ops_are_refused(world1, make, message):
    with pytest.raises(fv.InvalidArgumentError, match=message):
        fv.allreduce_(make(), op=fv.Sum)


@pytest.mark.parametrize("make", [lambda: np.zeros(3, dtype=np.complex64), lambda: torch.zeros(3, dtype=torch.complex64)])
def test_every_dtype_an_unsupported_type_error_lists_is_taken(world1, make):
    # The list in the message, the buffer/DLPack conversions and the numpy/torch maps all come
    # from one dtype table: whatever the message offers works, from numpy and from torch.
    with pytest.raises(fv.InvalidArgumentError, match="ferrovod takes ") as e:
        fv.allreduce(make())
    listed = re.split(r", | and ", str(e.value).split("ferrovod takes ")[1])
    assert listed == ["uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64", "int16", "bool"]
    for name in listed:
        t = torch.arange(3).to(getattr(torch, name))
        out = fv.allgather(t)  # a result ferrovod allocated, typed through the maps
        assert out.dtype == t.dtype and torch.equal(out, t), name
        if hasattr(np, name):  # numpy has no bfloat16
            a = np.arange(3).astype(name)
            out = fv.allgather(a)
            assert out.dtype == a.dtype and np.array_equal(out, a), name


def test_read_only_arrays_are_refused_in_place_but_fine_out_of_place(world1):
    x = np.arange(3, dtype=np.float32)
    x.flags.writeable = False
    with pytest.raises(fv.InvalidArgumentError, match="read-only and this operation writes"):
        fv.allreduce_(x)
    with pytest.raises(fv.InvalidArgumentError, match="read-only"):
        fv.broadcast_(x, 0)
    assert fv.allreduce(x, op=fv.Sum).tolist() == [0, 1, 2]
    assert fv.allgather(x).tolist() == [0, 1, 2]


class _DLPackOnly:
    """Memory that reaches ferrovod only through DLPack (as a torch tensor does), from a numpy
    array: numpy flags a read-only array in a DLPack 1.x capsule."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def _numpy_error(call) -> str:
    """The error an in-place collective gives for a read-only numpy array."""
    a = np.arange(3, dtype=np.float32)
    a.flags.writeable = False
    with pytest.raises(fv.InvalidArgumentError) as e:
        call(a)
    return str(e.value)


def test_a_dlpack_tensor_flagged_read_only_is_refused_in_place_as_numpy_is(world1):
    a = np.arange(3, dtype=np.float32)
    a.flags.writeable = False
    with pytest.raises(fv.InvalidArgumentError) as e:
        fv.allreduce_(_DLPackOnly(a), name="x")
    assert str(e.value) == _numpy_error(lambda x: fv.allreduce_(x, name="x"))
    w = np.arange(3, dtype=np.float32)
    fv.allreduce_(_DLPackOnly(w), op=fv.Sum)  # a writable one is taken in place
    assert w.tolist() == [0, 1, 2]


def test_a_torch_tensor_over_read_only_memory_is_refused_in_place_as_numpy_is(world1):
    import ferrovod.torch as hvd

    a = np.arange(3, dtype=np.float32)
    a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "The given NumPy array is not writable"
        t = torch.from_numpy(a)
        b = torch.frombuffer(b"\0" * 12, dtype=torch.float32)  # the bytes object's own memory
    allreduce_ = _numpy_error(lambda x: fv.allreduce_(x, name="x"))
    broadcast_ = _numpy_error(lambda x: fv.broadcast_(x, 0, name="x"))
    assert "read-only" in allreduce_ and "read-only" in broadcast_
    for x in (t, t[1:], t.view(1, 3), t.detach(), b):
        for call, expected in [
            (lambda x: fv.allreduce_(x, name="x", prescale_factor=2.0), allreduce_),
            (lambda x: fv.broadcast_(x, 0, name="x"), broadcast_),
            (lambda x: fv.grouped_allreduce_([x], name="x"), allreduce_.replace('"x"', '"x.0"')),
            (lambda x: hvd.allreduce_(x, name="x"), allreduce_),
            (lambda x: hvd.allreduce_(x, name="x", compression=hvd.Compression.fp16), allreduce_),
            (lambda x: hvd.grouped_allreduce_([x], name="x", compression=hvd.Compression.fp16), allreduce_.replace('"x"', '"x.0"')),
            (lambda x: hvd.broadcast_parameters({"x": x}, root_rank=0), broadcast_.replace('"x"', '"broadcast_parameters.x"')),
        ]:
            with pytest.raises(fv.InvalidArgumentError) as e:
                call(x)
            assert str(e.value) == expected
    assert a.tolist() == [0, 1, 2], "the read-only array was written"
    assert bytes(b.numpy()) == b"\0" * 12
    # Reading is fine, and so is a writable array wrapped the same way.
    assert hvd.allreduce(t, op=fv.Sum).tolist() == [0, 1, 2]
    w = np.arange(3, dtype=np.float32)
    assert hvd.allreduce_(torch.from_numpy(w), op=fv.Sum, prescale_factor=2.0).tolist() == [0, 2, 4]
    assert w.tolist() == [0, 2, 4]


def test_out_of_place_ops_take_non_contiguous_input(world1):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)[:, ::2]
    assert fv.allreduce(x, op=fv.Sum).tolist() == [[0, 2], [4, 6]]


def test_argument_errors(world1):
    with pytest.raises(fv.InvalidArgumentError, match="root 3 is not a rank"):
        fv.broadcast(np.ones(2), 3)
    with pytest.raises(fv.InvalidArgumentError, match="root rank -1 is negative"):
        fv.broadcast(np.ones(2), -1)
    with pytest.raises(fv.InvalidArgumentError, match=f"root rank {2**32} is not a rank of this world"):
        fv.broadcast(np.ones(2), 2**32)
    with pytest.raises(fv.InvalidArgumentError, match="scalar has no first dimension") as e:
        fv.allgather(np.float32(1.0) * np.ones(()))
    # Refused in the core before it ran: the op is typed, with no sequence number yet.
    assert (e.value.op, e.value.seq, e.value.rank) == ("allgather", None, 0)
    with pytest.raises(fv.InvalidArgumentError, match="root rank -1") as e:
        fv.broadcast(np.ones(2), -1)
    assert (e.value.op, e.value.seq, e.value.blamed_ranks) == (None, None, ())
    with pytest.raises(fv.InvalidArgumentError, match="splits"):
        fv.alltoall(np.ones(4), splits=[1, 2])
    with pytest.raises(ValueError, match="op or average"):
        fv.allreduce(np.ones(2), average=True, op=fv.Sum)


def test_name_in_flight_twice_is_refused(world1):
    # A one-rank world completes at once, so hold the first request back with a group gate:
    # simpler to submit the same name twice in one group.
    with pytest.raises(fv.InvalidArgumentError, match="already in flight"):
        fv._ferrovod.grouped_allreduce_async_([np.ones(1), np.ones(1)], ["same", "same"], fv.Sum)


def test_calls_before_init_say_so():
    assert not fv.is_initialized()
    with pytest.raises(fv.NotInitializedError, match="call ferrovod.init"):
        fv.allreduce(np.ones(2))
    with pytest.raises(fv.NotInitializedError):
        fv.rank()


def test_broadcast_object_refuses_what_cannot_travel_naming_it(world1):
    with pytest.raises(TypeError, match=r"broadcast_object\['s'\]: a builtins.complex cannot travel"):
        fv.broadcast_object({"s": 1j})
    assert fv.broadcast_object({"s": {1, 2}}) == {"s": {1, 2}}  # Horovod scripts gather sets of names
    assert fv.broadcast_object({"a": [1, "b", None]}) == {"a": [1, "b", None]}


def test_error_hierarchy():
    for cls in (fv.ConfigError, fv.InvalidArgumentError, fv.BootstrapError, fv.CollectiveError,
                fv.MismatchError, fv.StalledError, fv.NotInitializedError, fv.LaunchError, fv.RankFailedError):
        assert issubclass(cls, fv.FerrovodError)
    assert issubclass(fv.CollectiveTimeoutError, fv.CollectiveError)


@pytest.mark.multiproc
def test_a_wait_releases_the_gil():
    out = launch(2, "core_waits.py", "gil")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[0] rank 0: waited" in out.stdout


@pytest.mark.multiproc
def test_ctrl_c_interrupts_a_wait_and_the_handle_stays_usable():
    out = launch(2, "core_waits.py", "interrupt")
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(l for l in out.stdout.splitlines() if "interrupted after" in l)
    assert float(line.split()[-2]) < 1.5, line
    assert "[0] rank 0: then completed: [3.0, 3.0, 3.0, 3.0]" in out.stdout


@pytest.mark.multiproc
def test_a_dtype_mismatch_fails_every_rank_naming_it():
    out = launch(2, "core_waits.py", "mismatch")
    assert out.returncode == 0, out.stdout + out.stderr
    for r in range(2):
        assert f'[{r}] rank {r}: MismatchError: rank {r}: tensor "w": ranks disagree on dtype: rank 0: f32, rank 1: f64' in out.stdout


def test_ferrovod_run_is_on_the_venvs_path():
    exe = shutil.which("ferrovod-run", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "-np", "2", "--", sys.executable, "-c", "print('hi')"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["[0] hi", "[1] hi"]
    bad = subprocess.run([exe, "-np", "0", "--", "true"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "np" in bad.stderr


@pytest.mark.multiproc
def test_a_killed_rank_is_a_collective_error_naming_it_on_every_rank():
    """Without a launcher (rank 0 serves the store), rank 2 of 3 is SIGKILLed mid-job: the
    others raise CollectiveError (not NotInitializedError) with ``blamed_ranks == [2]``."""
    procs = without_launcher(3, "core_faults.py", "kill")
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert procs[2].returncode == -9, outs[2]
    for r in (0, 1):
        assert procs[r].returncode == 0, f"rank {r}:\n{outs[r]}"
        line = next(l for l in outs[r].splitlines() if l.startswith(f"rank {r}: CollectiveError"))
        assert f"rank={r} blamed=[2]" in line and "rank 2" in line, line
        # The op is typed up to Python: the data allreduce, or the round that negotiates it.
        assert re.search(r"op=(allreduce seq=\d+|negotiation seq=(\d+|None)):", line), line
        assert f"rank {r}: later: CollectiveError blamed=[2]" in outs[r], outs[r]


@pytest.mark.multiproc
def test_a_silent_rank_past_ferrovod_timeout_is_a_collective_timeout_error():
    out = launch(2, "core_faults.py", "timeout", env={"FERROVOD_TIMEOUT": "2"})
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("[0] rank 0:"))
    assert "CollectiveTimeoutError rank=0 blamed=[1]" in line and "rank(s) [1]" in line, line
    assert 'negotiating "late"' in line and " op=negotiation " in line, line
    late = next(l for l in out.stdout.splitlines() if l.startswith("[1] rank 1:"))
    assert "CollectiveTimeoutError rank=1 blamed=[1]" in late, late


@pytest.mark.multiproc
def test_synchronous_collectives_run_their_round_on_the_calling_thread(ranks):
    out = ranks(2, "caller_rounds.py", timeout=180)
    for r in range(2):
        m = re.search(rf"\[{r}\] rank {r}: ok, (\d+) rounds by callers, (\d+) by the engine thread", out)
        assert m, out
        # Most of 1,200 synchronous calls find the loop free; none at all means the path is off.
        assert int(m.group(1)) > 0, out
