"""``ferrovod.Pool``: the same processes run one function after another, keeping their
communicator and ``ferrovod.worker_state``; a raising function fails its call only; a dying rank
fails the call naming it and closes the pool; nothing outlives the pool or its owner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import poolfns
import procs
import pytest

import ferrovod

pytestmark = pytest.mark.multiproc


@pytest.fixture
def pool():
    with ferrovod.Pool(2) as p:
        yield p


def _gone(pids, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(procs.alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_same_processes_run_every_call_with_the_communicator_ready(pool):
    first = pool.run(poolfns.where)
    assert first["rank"] == 0 and first["size"] == 2
    every = pool.run(poolfns.pids)
    assert len(set(every)) == 2 and every[0] == first["pid"]
    for _ in range(3):
        assert pool.run(poolfns.pids) == every  # not restarted between calls
    assert pool.run(poolfns.allreduce_sum, 4) == [1.0, 3.0, 5.0, 7.0]


def test_worker_state_carries_a_model_from_training_to_prediction(pool):
    total = pool.run(poolfns.train, steps=3)
    assert total == pytest.approx(4 * 3.5)  # mean of ranks 0 and 1, plus 3 steps
    out = pool.run(poolfns.predict, [1.0, 0.0, 0.0, 2.0])
    assert out == {"y": pytest.approx(3 * 3.5), "same_process": True}


def test_a_raising_function_fails_its_call_and_the_pool_goes_on(pool):
    before = pool.run(poolfns.pids)
    with pytest.raises(ferrovod.RankFailedError, match="boom from rank 1") as e:
        pool.run(poolfns.raise_on, 1)
    assert e.value.rank == 1 and "raise_on" in e.value.traceback
    # Rank 0 was waiting in an allreduce: it failed at once, not at FERROVOD_TIMEOUT.
    assert pool.run(poolfns.allreduce_sum, 3) == [1.0, 3.0, 5.0]
    assert pool.run(poolfns.pids) == before


def test_a_rank_raising_in_the_middle_of_collectives_does_not_hang_the_others(pool):
    start = time.monotonic()
    with pytest.raises(ferrovod.RankFailedError, match="rank 1 gives up") as e:
        pool.run(poolfns.raise_in_the_middle)
    assert e.value.rank == 1
    assert time.monotonic() - start < 30
    for _ in range(2):
        assert pool.run(poolfns.allreduce_sum, 2) == [1.0, 3.0]


def test_a_function_that_shuts_down_leaves_the_next_call_a_communicator(pool):
    assert pool.run(poolfns.shut_down) == 0
    assert pool.run(poolfns.allreduce_sum, 1) == [1.0]


def test_a_function_from_source_runs_too(tmp_path):
    # A function of __main__ (a notebook cell, a script) travels as its source.
    script = textwrap.dedent(
        """
        import ferrovod

        def scaled_rank(k):
            import ferrovod as fv
            return [fv.rank() * k, len(fv.worker_state)]

        with ferrovod.Pool(2) as pool:
            print(pool.run(scaled_rank, 5), pool.run(scaled_rank, 7))
        """
    )
    (tmp_path / "cell.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "cell.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "[0, 0] [0, 0]"


def test_what_cannot_travel_is_refused_and_the_pool_goes_on(pool):
    with pytest.raises(TypeError, match="lambda"):
        pool.run(lambda: 1)
    with pytest.raises(TypeError, match="set is not JSON"):
        pool.run(poolfns.allreduce_sum, {1})
    with pytest.raises(TypeError, match="cannot be called with these arguments"):
        pool.run(poolfns.allreduce_sum)
    with pytest.raises(ferrovod.RankFailedError, match="cannot travel back: return value: a builtins.complex"):
        pool.run(poolfns.not_json)
    assert pool.run(poolfns.allreduce_sum, 1) == [1.0]


def test_bad_arguments_to_the_pool():
    with pytest.raises(ValueError, match="at least 1"):
        ferrovod.Pool(0)
    with pytest.raises(TypeError, match="np must be an int"):
        ferrovod.Pool("2")
    with pytest.raises(TypeError, match="env"):
        ferrovod.Pool(2, env={"A": 1})


@pytest.mark.parametrize(
    ("fn", "rank", "said"),
    [
        (poolfns.die_on, 2, "rank 2"),  # SIGKILL: the launcher reports it
        (poolfns.exit_on, 1, "rank 1 ended during the call"),  # status 0: the pool sees its pidfd
    ],
    ids=["killed", "status-0"],
)
def test_a_rank_that_goes_fails_the_call_naming_it_and_closes_the_pool(fn, rank, said):
    with ferrovod.Pool(3) as pool:
        pids = pool.run(poolfns.pids)
        start = time.monotonic()
        with pytest.raises(ferrovod.RankFailedError, match=said) as e:
            pool.run(fn, rank)
        assert e.value.rank == rank
        assert time.monotonic() - start < 30
        with pytest.raises(ferrovod.PoolClosedError, match=f"rank {rank}"):
            pool.run(poolfns.where)
    assert _gone(pids), f"pool ranks still running after rank {rank} went"


def test_close_ends_every_rank_and_is_idempotent():
    pool = ferrovod.Pool(2)
    pids = pool.run(poolfns.pids)
    pool.close()
    pool.close()
    assert _gone(pids, timeout=10)
    with pytest.raises(ferrovod.PoolClosedError, match="closed by its owner"):
        pool.run(poolfns.where)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_the_ranks_end_with_their_owner(how, tmp_path):
    # The owner forgets to close (exit) or is killed (SIGKILL): its ranks must go within 10 s.
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {os.path.dirname(poolfns.__file__)!r})
        import ferrovod, poolfns
        pool = ferrovod.Pool(2)
        print(" ".join(map(str, pool.run(poolfns.pids))), flush=True)
        if {how!r} == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2, proc.stderr
    assert _gone(pids, timeout=10), "pool ranks outlived their owner"


def test_the_pool_example_trains_then_scores_from_worker_state():
    example = Path(__file__).resolve().parents[3] / "examples" / "python" / "pool_example.py"
    proc = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    spark = next(ln for ln in proc.stdout.splitlines() if ln.startswith("scored "))
    assert spark.startswith("scored 1000 rows on Spark with the pool's model")
    assert float(spark.rsplit(": ", 1)[1]) < 0.05
    scores = proc.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    assert json.loads(scores) == pytest.approx([-1.0, 2.0, 0.5, -0.25], abs=0.01)
