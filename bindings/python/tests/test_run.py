"""``ferrovod.run``: every rank's return value comes back in rank order; what cannot travel as a
reference, source or JSON is refused before anything starts; a failing rank is named with its
traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import procs
import pytest
import runfns

import ferrovod
from conftest import WORKERS


@pytest.fixture
def no_launch(monkeypatch):
    """Makes starting any process (or making the spec's memfd) fail the test: a refusal must
    come before either."""

    def refuse(*args, **kwargs):
        raise AssertionError("ferrovod.run started something before refusing")

    monkeypatch.setattr(ferrovod._run.subprocess, "Popen", refuse)
    monkeypatch.setattr(ferrovod._ship.os, "memfd_create", refuse)


# --- the worker entry points ---------------------------------------------------------------------


@pytest.mark.parametrize("module", ["ferrovod._worker", "ferrovod._pool_worker"])
def test_worker_modules_start_without_a_warning(module):
    """``python -m ferrovod._worker`` warns (into every rank's output) when importing the package
    has already imported the module it runs; the package must not import its entry points."""
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", module],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "usage: python -m " + module in done.stderr
    assert "Warning" not in done.stderr


# --- results -----------------------------------------------------------------------------------


@pytest.mark.multiproc
@pytest.mark.parametrize("n", [1, 2, 4])
def test_importable_function_returns_every_rank_value_in_rank_order(n, monkeypatch, tmp_path):
    # The spec and the results travel in memory: nothing is written to the temporary directory.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    results = ferrovod.run(runfns.allreduce_rank, np=n)
    assert results == [{"rank": r, "size": n, "sum": [n * (n - 1) / 2, n]} for r in range(n)]
    assert list(tmp_path.iterdir()) == [], "ferrovod.run left files behind"


@pytest.mark.multiproc
def test_arrays_tensors_tuples_and_non_string_keys_come_back_as_they_were():
    import torch

    results = ferrovod.run(runfns.arrays_and_tensors, np=2)
    for r, v in enumerate(results):
        assert v["rank"] == r and v[(1, "pair")] == (r, None, "x") and v[3] == [float("inf"), -0.0]
        for name, a in v["numpy"].items():
            want = np.arange(6).reshape(2, 3).astype(name) + r
            assert isinstance(a, np.ndarray) and a.dtype == want.dtype and np.array_equal(a, want), name
            assert a.flags.writeable
        bf, zero_d, empty = v["torch"]
        assert bf.dtype == torch.bfloat16 and bf.tolist() == [1.5 + r] * 2
        assert zero_d.shape == () and zero_d.item() == 7 + r
        assert empty.shape == (0, 3) and empty.dtype == torch.float32
        assert type(v["scalar"]) is np.float32 and v["scalar"] == 0.25


def test_the_tagged_encoding_round_trips_and_names_what_cannot_travel():
    import torch

    from ferrovod import _tagged

    sd = torch.nn.Linear(3, 2).state_dict()
    back = _tagged.decode(_tagged.encode({"sd": sd, "k": {(1, 2): [1, {"x": None}]}}))
    assert back["k"] == {(1, 2): [1, {"x": None}]}
    assert list(back["sd"]) == list(sd) and all(torch.equal(back["sd"][k], sd[k]) for k in sd)
    # A dict that looks like a tag is only a dict.
    assert _tagged.decode(_tagged.encode({"torch": "0", "d": []})) == {"torch": "0", "d": []}
    assert _tagged.decode(_tagged.encode({"s": {1, (2, "x")}, "f": frozenset({3})})) == {"s": {1, (2, "x")}, "f": frozenset({3})}
    with pytest.raises(TypeError, match=r"value\['a'\]\[1\]: a builtins.complex cannot travel"):
        _tagged.encode({"a": [1, 2j]})
    with pytest.raises(TypeError, match="complex64 cannot travel"):
        _tagged.encode(np.zeros(2, np.complex64))
    with pytest.raises(ValueError, match="not a ferrovod value"):
        _tagged.decode(b"\x00")
    # A result goes as plain JSON only when JSON brings it back exactly: a tuple does not.
    assert _tagged.result([1, {"a": 2.5}], "r") == {"ok": True, "value": [1, {"a": 2.5}]}
    tagged = _tagged.result({"pair": (1, 2)}, "r")
    assert "value" not in tagged and _tagged.value_of(tagged) == {"pair": (1, 2)}
    loop: list = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match=r"r\[1\]: refers to itself"):
        _tagged.result(loop, "r")


@pytest.mark.multiproc
def test_a_killed_caller_leaves_no_file_behind(tmp_path):
    """The caller SIGKILLed while its ranks run (as Spark kills a cancelled task's worker): no
    ``finally`` runs, and still nothing of the run is on disk, in the caller's temporary
    directory or anywhere a rank's descriptors point."""
    tmp = tmp_path / "tmp"
    pids = tmp_path / "pids"
    tmp.mkdir()
    pids.mkdir()
    code = (
        "import ferrovod, sparkfns; "
        f"ferrovod.run(sparkfns.record_pids_and_sleep, args=({str(pids)!r}, 60.0), np=2)"
    )
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": os.path.dirname(__file__)}
    caller = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.glob("rank-?"))) < 2:
            assert caller.poll() is None and time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.05)
        ranks = [int(f.read_text().split()[0]) for f in pids.glob("rank-?")]
        on_disk = [
            os.readlink(f"/proc/{pid}/fd/{fd}") for pid in ranks for fd in os.listdir(f"/proc/{pid}/fd")
        ]
        on_disk = [p for p in on_disk if p.startswith("/") and not p.startswith("/memfd:") and "ferrovod" in p]
        assert on_disk == [], f"the ranks hold files of the run: {on_disk}"
        assert list(tmp.iterdir()) == [], f"written to disk while the ranks run: {list(tmp.iterdir())}"
    finally:
        caller.kill()
        caller.wait()
    for pid in ranks:
        procs.wait_gone(pid, 15)
    assert list(tmp.iterdir()) == [], f"left on disk: {list(tmp.iterdir())}"


@pytest.mark.multiproc
def test_args_kwargs_and_env_round_trip():
    opts = {"lr": 0.5, "layers": [1, 2, {"deep": None}], "name": "ü", "flag": True}
    results = ferrovod.run(
        runfns.echo, args=(3, "x", (1, 2), 4.5), kwargs={"scale": 2, "opts": opts}, np=2, env={"RUNFNS_VAR": "v"}
    )
    assert results == [
        {"rank": r, "a": 6, "b": "x", "rest": [[1, 2], 4.5], "opts": opts, "env": "v"} for r in range(2)
    ]


@pytest.mark.multiproc
def test_rank_output_reaches_the_caller_with_its_rank(capsys):
    assert ferrovod.run(runfns.say_hello, np=2) == [0, 0]
    out = capsys.readouterr().out
    assert "[0] hello from rank 0" in out
    assert "[1] hello from rank 1" in out


@pytest.mark.multiproc
def test_function_in_main_travels_as_source():
    proc = subprocess.run(
        [sys.executable, str(WORKERS / "main_fn.py"), "ok"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    # total = (0 + 10) + (1 + 10) = 21, doubled by scale=2
    assert results == [{"rank": 0, "total": 42.0}, {"rank": 1, "total": 42.0}]


# --- failures ----------------------------------------------------------------------------------


@pytest.mark.multiproc
def test_failing_rank_is_named_with_its_traceback():
    with pytest.raises(ferrovod.RankFailedError) as info:
        ferrovod.run(runfns.fail_on_rank_1, np=2)
    err = info.value
    assert isinstance(err, ferrovod.FerrovodError)
    assert err.rank == 1
    text = str(err)
    assert "rank 1" in text and "ValueError" in text and "boom from rank 1" in text
    assert "Traceback" in text and "fail_on_rank_1" in text
    assert "fail_on_rank_1" in err.traceback


@pytest.mark.multiproc
def test_rank_dying_without_an_error_fails_the_run():
    with pytest.raises(ferrovod.RankFailedError) as info:
        ferrovod.run(runfns.exit_silently_on_rank_1, np=2)
    assert info.value.rank == 1
    assert "exit status 7" in str(info.value)
    assert "rank 1 ended without reporting an error" in str(info.value)


@pytest.mark.multiproc
def test_a_return_value_that_cannot_travel_is_an_error_naming_its_path_and_type():
    with pytest.raises(ferrovod.RankFailedError) as info:
        ferrovod.run(runfns.return_complex, np=1)
    assert info.value.rank == 0
    assert "return value['ok'][1]: a builtins.complex cannot travel" in str(info.value)


# --- refusals, before anything starts ----------------------------------------------------------


def test_lambda_is_refused(no_launch):
    with pytest.raises(TypeError, match=r"lambda .*<lambda>"):
        ferrovod.run(lambda: 1)


def test_closure_is_refused_naming_the_variable(no_launch):
    secret = 3

    def inner():
        return secret

    with pytest.raises(TypeError, match=r"inner: it closes over local variables \(secret\)"):
        ferrovod.run(inner)


def test_nested_function_is_refused(no_launch):
    def inner():
        return 1

    with pytest.raises(TypeError, match=r"<locals>\.inner: it is defined inside another function"):
        ferrovod.run(inner)


def test_bound_method_is_refused(no_launch):
    with pytest.raises(TypeError, match=r"bound method Holder\.method"):
        ferrovod.run(runfns.Holder().method)


def test_non_json_argument_is_refused_naming_where(no_launch):
    with pytest.raises(TypeError, match=r"kwargs\['opt'\]\[2\]: set is not JSON"):
        ferrovod.run(runfns.echo, args=(1, 2), kwargs={"opt": [1, 2, {3}]})
    with pytest.raises(TypeError, match=r"args\[1\]\['k'\]: numpy\.ndarray is not JSON"):
        ferrovod.run(runfns.echo, args=(1, {"k": runfns.np.ones(2)}))
    with pytest.raises(TypeError, match=r"args\[0\]: key 1 is a int; JSON keys are strings"):
        ferrovod.run(runfns.echo, args=({1: "a"}, 2))


def test_bad_np_env_and_arguments_are_refused(no_launch):
    with pytest.raises(ValueError, match="np must be at least 1"):
        ferrovod.run(runfns.allreduce_rank, np=0)
    with pytest.raises(TypeError, match="np must be an int"):
        ferrovod.run(runfns.allreduce_rank, np=2.0)
    with pytest.raises(TypeError, match=r"env\['X'\]"):
        ferrovod.run(runfns.allreduce_rank, env={"X": 1})
    with pytest.raises(TypeError, match=r"echo\(\) cannot be called with these arguments"):
        ferrovod.run(runfns.echo, args=(1,))


def test_function_in_main_using_a_module_global_is_refused():
    proc = subprocess.run(
        [sys.executable, str(WORKERS / "main_fn.py"), "global"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "TypeError: ferrovod.run cannot send uses_module_global from __main__" in proc.stdout
    assert "module-level names that will not exist on the ranks (json)" in proc.stdout
