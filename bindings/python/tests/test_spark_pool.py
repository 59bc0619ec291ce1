"""``ferrovod.spark.Pool`` on a real Spark: processes started by one barrier stage that outlive it
and run one function after another; training then inference from ``worker_state``; a raising
function fails its call only; a killed rank fails the call naming it; and nothing is left once
the pool closes, its SparkContext stops, its driver is killed or its executor's JVM dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import inferfns
import poolfns
import procs
import pytest

import ferrovod
from conftest import TESTS
from ferrovod.inference import predict_batch_udf
from ferrovod.spark import Pool

pytestmark = pytest.mark.spark


def _every_process(pool: Pool) -> list[int]:
    """The ranks, their launchers and the launcher hosts."""
    return sorted({p for triple in pool.run(poolfns.lineage) for p in triple})


def _gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(procs.alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if procs.alive(p)]


def test_the_processes_outlive_the_stage_and_run_every_call(spark):
    with Pool(2) as pool:
        first = pool.run(poolfns.where)
        assert first["rank"] == 0 and first["size"] == 2
        every = pool.run(poolfns.pids)
        assert len(set(every)) == 2 and every[0] == first["pid"]
        # Spark's stage ended long ago, its slots are free: a job runs next to the pool.
        assert spark.range(100, numPartitions=4).count() == 100
        for _ in range(2):
            assert pool.run(poolfns.pids) == every
        assert pool.run(poolfns.allreduce_sum, 4) == [1.0, 3.0, 5.0, 7.0]
        assert pool.run(poolfns.train, steps=3) == pytest.approx(4 * 3.5)
        assert pool.run(poolfns.predict, [1.0, 0.0, 0.0, 2.0]) == {"y": pytest.approx(10.5), "same_process": True}


def test_a_raising_function_fails_its_call_and_the_pool_goes_on(spark):
    with Pool(2) as pool:
        before = pool.run(poolfns.pids)
        with pytest.raises(ferrovod.RankFailedError, match="boom from rank 1") as e:
            pool.run(poolfns.raise_on, 1)
        assert e.value.rank == 1 and "raise_on" in e.value.traceback
        assert pool.run(poolfns.pids) == before
        assert pool.run(poolfns.allreduce_sum, 2) == [1.0, 3.0]


def test_training_then_inference_from_worker_state_with_no_file(spark):
    # make_from_state reads the model training left in the ranks' memory: no file in between.
    with Pool(2) as pool:
        total = pool.run(poolfns.train, 3)
        pids = pool.run(poolfns.pids)
        udf = predict_batch_udf(
            inferfns.make_from_state, return_type="y double, pid long", batch_size=16,
            input_tensor_shapes=[[4]], pool=pool,
        )
        df = spark.range(200, numPartitions=4).selectExpr(
            "array(cast(id as float), cast(id + 1 as float), cast(id + 2 as float), cast(id + 3 as float)) as t1"
        )
        rows = df.withColumn("p", udf("t1")).collect()
        w = total / 4
        assert len(rows) == 200 and all(abs(r.p.y - w * sum(r.t1)) < 1e-6 for r in rows)
        assert {r.p.pid for r in rows} == set(pids), "both ranks serve, each with the model it trained"


def test_a_killed_rank_fails_the_call_naming_it_and_nothing_is_left(spark):
    pool = Pool(2)
    pids = _every_process(pool)
    assert len(pids) == 6  # 2 ranks, 2 launchers, 2 launcher hosts
    with pytest.raises(ferrovod.RankFailedError, match="rank 1") as e:
        pool.run(poolfns.die_on, 1)
    assert e.value.rank == 1 and "SIGKILL" in str(e.value)
    with pytest.raises(ferrovod.PoolClosedError, match="rank 1"):
        pool.run(poolfns.where)
    assert _gone(pids, 10) == []
    pool.close()


def test_close_ends_every_process_within_10_s_and_is_idempotent(spark):
    pool = Pool(2)
    pids = _every_process(pool)
    start = time.monotonic()
    pool.close()
    pool.close()
    assert _gone(pids, 10 - (time.monotonic() - start)) == []
    with pytest.raises(ferrovod.PoolClosedError, match="closed by its owner"):
        pool.run(poolfns.where)


def test_bad_arguments_are_refused_before_a_stage_starts(spark):
    with pytest.raises(ValueError, match="np must be at least 1"):
        Pool(0)
    with pytest.raises(TypeError, match="np must be an int"):
        Pool("2")
    with pytest.raises(ferrovod.LaunchError, match="task slot"):
        Pool(64)
    with Pool(1) as pool, pytest.raises(TypeError, match="lambda"):
        pool.run(lambda: 1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "master, how",
    [("local[2]", "spark.stop"), ("local[2]", "SIGKILL"), ("local-cluster[2,1,1024]", "executor JVM killed")],
)
def test_the_pool_ends_with_its_driver_and_its_executors(master, how):
    """A driver of its own starts a pool and prints every process it holds; then its SparkContext
    stops, it is killed, or the executors' JVMs are: every pool process is gone within 10 s."""
    with subprocess.Popen(
        [sys.executable, str(TESTS / "drivers" / "pool_life.py"), master],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(TESTS)},
    ) as driver:
        try:
            line = driver.stdout.readline()
            assert line.startswith("pids "), line
            pids = [int(p) for p in line.split()[1:]]
            jvms = [int(p) for p in driver.stdout.readline().split()[1:]]
            assert len(pids) == 6 and all(procs.alive(p) for p in pids)
            if how == "SIGKILL":
                driver.kill()
            elif how == "spark.stop":
                driver.send_signal(signal.SIGUSR1)  # the driver calls spark.stop() and sleeps on
            else:
                assert len(jvms) == 2, "under local-cluster every launcher host watches its executor"
                for jvm in jvms:
                    os.kill(jvm, signal.SIGKILL)
            left = _gone(pids, 10)
        finally:
            driver.kill()
        assert left == [], f"pool processes {left} of {pids} outlived {how}"
