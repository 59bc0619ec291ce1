"""``ferrovod.spark`` on a real Spark: pip pyspark, the machine's Java 17, master ``local[4]`` in
one session for the whole module (a second master runs in ``test_spark_cluster.py``)."""

from __future__ import annotations

import linecache
import os
import signal
import sys
import tempfile
import threading
import time
import types

import numpy as np
import pytest

import ferrovod
import ferrovod.spark as fs

import procs
import sparkfns

pytestmark = pytest.mark.spark


def _expected_w(n: int) -> list[float]:
    """The weights ``sparkfns.numpy_train`` should reach on ``n`` ranks, computed here."""
    shards = []
    for r in range(n):
        rng = np.random.default_rng(r)
        x = rng.normal(size=(64, 3))
        shards.append((x, x @ np.array([1.0, -2.0, 0.5])))
    w = np.zeros(3)
    for _ in range(3):
        grad = sum(2 * x.T @ (x @ w - y) / len(x) for x, y in shards) / n
        w -= 0.5 * grad
    return w.tolist()


@pytest.mark.parametrize("np_", [2, 4])
def test_numpy_training_returns_rank_0s_value_and_streams_output(spark, capsys, np_):
    value = fs.HorovodRunner(np=np_).run(sparkfns.numpy_train, steps=3, lr=0.5)
    assert value["rank"] == 0 and value["size"] == np_ and value["local_size"] == np_
    assert value["w"] == pytest.approx(_expected_w(np_), rel=1e-9)
    out = capsys.readouterr().out
    for r in range(np_):
        assert f"[{r}] step 2 loss" in out
        assert f"[{r}] done after 3 steps" in out


def test_torch_training_keeps_the_replicas_equal(spark):
    values = fs.run(sparkfns.torch_train, kwargs={"epochs": 3}, num_proc=2)
    assert [v["rank"] for v in values] == [0, 1]
    assert values[0]["weight"] == values[1]["weight"]
    assert values[0]["bias"] == values[1]["bias"]
    assert values[0]["weight"] != [0.0] * 4


def test_a_state_dict_comes_back_through_horovodrunner(spark):
    import torch

    out = fs.HorovodRunner(np=2).run(sparkfns.torch_train, epochs=3, return_state=True)
    model = torch.nn.Linear(4, 1)
    model.load_state_dict(out["state"])  # tensors through safetensors, nothing pickled
    assert model.weight.detach().flatten().tolist() == out["weight"] and model.bias.item() == out["bias"]
    assert out["state"]["weight"].dtype == torch.float32 and out["state"]["weight"].shape == (1, 4)


def test_run_returns_every_rank_in_order_with_args_kwargs_and_env(spark):
    values = fs.run(sparkfns.whoami, args=("t",), num_proc=4, env={"SPARKFNS_VAR": "x"})
    assert [v["rank"] for v in values] == [0, 1, 2, 3]
    assert all(v["size"] == 4 and v["var"] == "x" and v["tag"] == "t" for v in values)
    # A CPU task was given no GPU, and its process sees none.
    assert all(v["cuda"] == "" for v in values)


def test_negative_np_runs_local_processes_on_the_driver(spark):
    value = fs.HorovodRunner(np=-2).run(sparkfns.whoami, tag="local")
    assert value == {"rank": 0, "size": 2, "local_rank": 0, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     "var": None, "tag": "local"}


def test_a_function_from_a_notebook_cell_travels_as_source(spark):
    # What a notebook does: the cell's text is compiled under a made-up file name that
    # linecache knows, into the namespace of __main__.
    cell = (
        "def cell_fn(base):\n"
        "    import ferrovod as fv\n"
        "    fv.init()\n"
        "    r = fv.rank()\n"
        "    fv.shutdown()\n"
        "    return base + r\n"
    )
    filename = "<ipython-input-7-ferrovod>"
    linecache.cache[filename] = (len(cell), None, cell.splitlines(keepends=True), filename)
    namespace = types.ModuleType("__main__").__dict__
    exec(compile(cell, filename, "exec"), namespace)
    assert namespace["cell_fn"].__module__ == "__main__"
    assert fs.run(namespace["cell_fn"], kwargs={"base": 10}, num_proc=2) == [10, 11]


def test_log_callback_only_streams_only_log_to_driver(spark, capsys):
    assert fs.HorovodRunner(np=2, driver_log_verbosity="log_callback_only").run(sparkfns.chatty) == 0
    out = capsys.readouterr().out
    assert "[0] sent by 0" in out and "[1] sent by 1" in out
    assert "printed by" not in out
    assert fs.HorovodRunner(np=2).run(sparkfns.chatty) == 0
    out = capsys.readouterr().out
    assert "[0] printed by 0" in out and "[1] sent by 1" in out


def test_a_failing_rank_is_raised_on_the_driver_within_seconds(spark):
    start = time.monotonic()
    with pytest.raises(ferrovod.RankFailedError) as info:
        fs.HorovodRunner(np=2).run(sparkfns.fail_on_rank_1, wait_s=120.0)
    elapsed = time.monotonic() - start
    err = info.value
    assert isinstance(err, ferrovod.FerrovodError)
    assert err.rank == 1
    msg = str(err)
    assert msg.startswith("rank 1 on ") and "ValueError: boom from rank 1" in msg
    assert 'sparkfns.py", line' in msg and "in fail_on_rank_1" in msg
    assert "Last output of rank 1:\n[1] rank 1 is about to fail" in msg
    assert elapsed < 20, f"took {elapsed:.1f} s: rank 0 was not stopped"


def test_np_larger_than_the_slots_is_refused_at_once(spark):
    start = time.monotonic()
    with pytest.raises(ferrovod.LaunchError, match=r"np=5 needs 5 tasks running at once, but the cluster \(local\[4\]\) has 4 task slot"):
        fs.HorovodRunner(np=5).run(sparkfns.whoami)
    assert time.monotonic() - start < 5


def test_what_cannot_travel_is_refused_before_spark_runs_anything(spark):
    sc = spark.sparkContext
    sc.setJobGroup("ferrovod-refused", "nothing may run")
    with pytest.raises(TypeError, match="HorovodRunner.run cannot send the lambda"):
        fs.HorovodRunner(np=2).run(lambda: 1)
    with pytest.raises(TypeError, match=r"kwargs\['opt'\]: set is not JSON"):
        fs.HorovodRunner(np=2).run(sparkfns.whoami, opt={1})
    with pytest.raises(TypeError, match="cannot be called with these arguments"):
        fs.run(sparkfns.whoami, args=(1, 2), num_proc=2)
    with pytest.raises(ValueError, match="np must not be 0"):
        fs.HorovodRunner(np=0)
    with pytest.raises(ValueError, match="driver_log_verbosity"):
        fs.HorovodRunner(np=2, driver_log_verbosity="some")
    with pytest.raises(ValueError, match="num_proc must be at least 1"):
        fs.run(sparkfns.whoami, num_proc=0)
    assert sc.statusTracker().getJobIdsForGroup("ferrovod-refused") == []
    sc.setLocalProperty("spark.jobGroup.id", None)


@pytest.mark.parametrize("how", ["job_group", "all_jobs"])
def test_cancel_leaves_no_process_and_no_file_behind(spark, tmp_path, how):
    sc = spark.sparkContext
    group = f"ferrovod-cancel-{how}"
    outcome: dict = {}

    def driver_thread():
        sc.setJobGroup(group, "cancel test", interruptOnCancel=True)
        try:
            fs.HorovodRunner(np=2).run(sparkfns.record_pids_and_sleep, pid_dir=str(tmp_path))
            outcome["value"] = "returned"
        except BaseException as e:
            outcome["error"] = e

    t = threading.Thread(target=driver_thread)
    t.start()
    pids = procs.pids_of(procs.wait_for_pid_files(tmp_path, 2, t.is_alive))
    assert all(procs.alive(p) for p in pids)
    # What the ranks were given (their command line, their open files) must not be on disk: the
    # spec holds the function and its arguments, and a cancel SIGKILLs the task's Python worker.
    given = procs.paths_of(pids)
    assert not [p for p in given if "ferrovod-spark-" in p or p.endswith("spec.json")], given

    cancelled = time.monotonic()
    if how == "job_group":
        sc.cancelJobGroup(group)
    else:
        sc.cancelAllJobs()
    t.join(timeout=60)
    assert not t.is_alive()
    assert isinstance(outcome.get("error"), ferrovod.FerrovodError), outcome
    assert "cancelled" in str(outcome["error"])
    procs.assert_gone_within(pids, cancelled, 10, "the cancel")
    left = [p for p in given if p.startswith(tempfile.gettempdir() + "/ferrovod-") and os.path.exists(p)]
    assert not left, f"left on disk after the cancel: {left}"


def test_an_executor_python_without_ferrovod_is_named(spark):
    # The interpreter this venv was made from: pyspark reaches its workers through PYTHONPATH,
    # ferrovod is not installed in it.
    base = getattr(sys, "_base_executable", None)
    if not base or base == sys.executable:
        pytest.skip("not running in a venv")
    sc = spark.sparkContext
    before = sc.pythonExec
    sc.pythonExec = base
    try:
        with pytest.raises(ferrovod.LaunchError, match="ferrovod is not installed in the Python the executors run"):
            fs.HorovodRunner(np=2).run(sparkfns.whoami)
    finally:
        sc.pythonExec = before
    assert fs.HorovodRunner(np=2).run(sparkfns.whoami)["size"] == 2


def test_a_killed_task_fails_the_job_once_and_leaves_no_process(spark, tmp_path):
    # Kill one task's Python worker (the launcher's parent) as a lost executor would: Spark
    # fails the barrier stage (a result stage is not retried, so the function does not run
    # again), and the other task's processes are stopped with it.
    outcome: dict = {}

    def driver_thread():
        try:
            fs.HorovodRunner(np=2).run(sparkfns.record_pids_and_sleep, pid_dir=str(tmp_path), seconds=60.0)
        except BaseException as e:
            outcome["error"] = e

    t = threading.Thread(target=driver_thread)
    t.start()
    first = procs.wait_for_pid_files(tmp_path, 2, t.is_alive)
    pids = procs.pids_of(first)
    launcher = int(first["rank-1"].split()[1])
    worker = int(procs.stat(launcher)[1])
    killed = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    t.join(timeout=60)
    assert not t.is_alive()
    assert isinstance(outcome.get("error"), ferrovod.FerrovodError), outcome
    assert "barrier stage failed" in str(outcome["error"])
    assert {f.name: f.read_text() for f in sorted(tmp_path.glob("rank-?"))} == first, "the function ran again"
    procs.assert_gone_within(pids, killed, 10, "the kill")
