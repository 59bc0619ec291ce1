"""``ferrovod.inference.predict_batch_udf`` on a real local[4] Spark: the predictions Spark's
own ``predict_batch_udf`` gives, one model load per worker however often the UDF is re-made,
batches of exactly ``batch_size`` rows across tasks, a raising model or a killed worker, and
workers that end with their application."""

from __future__ import annotations

import functools
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

pytestmark = pytest.mark.spark


def _tensors(spark, rows: int = 1000, partitions: int = 4):
    return spark.range(rows, numPartitions=partitions).selectExpr(
        "cast(id as double) as x",
        "array(cast(id as float), cast(id + 1 as float), cast(id + 2 as float), cast(id + 3 as float)) as t1",
        "array(cast(id as double), cast(-id as double), cast(2 * id as double)) as t2",
    )


def _both(df, make, return_type, columns, **kw):
    """ferrovod's and Spark's outputs on the same DataFrame, each sorted by x."""
    from pyspark.ml.functions import predict_batch_udf as spark_udf

    out = []
    for udf in (predict_batch_udf, spark_udf):
        scored = df.withColumn("p", udf(make, return_type=return_type, **kw)(*columns))
        out.append([r.asDict(recursive=True) for r in scored.orderBy("x").select("x", "p").collect()])
    return out


def test_predictions_equal_sparks_own(spark):
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, StructField, StructType

    df = _tensors(spark)
    ours, theirs = _both(df, inferfns.make_scale, DoubleType(), ["x"], batch_size=64)
    assert ours == theirs and ours[3]["p"] == 6.0
    ours, theirs = _both(df, inferfns.make_scale, DoubleType(), ["t1"], batch_size=50, input_tensor_shapes=[[2, 2]])
    assert ours == theirs and ours[1]["p"] == 1 + 2 + 3 + 4
    array = ArrayType(FloatType())
    ours, theirs = _both(df, inferfns.make_double_rows, array, ["t1"], batch_size=32, input_tensor_shapes=[[4]])
    assert ours == theirs and ours[1]["p"] == [2.0, 4.0, 6.0, 8.0]
    struct = StructType(
        [StructField("s1", DoubleType()), StructField("s2", DoubleType()), StructField("x2", ArrayType(DoubleType()))]
    )
    shapes = [[4], [3]]
    ours, theirs = _both(df, inferfns.make_two_sums, struct, ["t1", "t2"], batch_size=40, input_tensor_shapes=shapes)
    assert ours == theirs and ours[2]["p"] == {"s1": 2 + 3 + 4 + 5, "s2": 4.0, "x2": [4.0, -4.0, 8.0]}
    struct = StructType([StructField("s1", DoubleType()), StructField("s2", DoubleType())])
    ours, theirs = _both(df, inferfns.make_row_dicts, struct, ["t1", "t2"], batch_size=40, input_tensor_shapes=shapes)
    assert ours == theirs and ours[2]["p"] == {"s1": 14.0, "s2": 4.0}


def test_ddl_strings_and_booleans_which_sparks_own_refuses(spark):
    df = spark.range(100, numPartitions=2).selectExpr("cast(id - 50 as double) as x")
    rows = df.withColumn("p", predict_batch_udf(inferfns.make_is_positive, return_type="boolean", batch_size=16)("x")).collect()
    assert sorted((r.x, r.p) for r in rows) == [(float(i), i > 0) for i in range(-50, 50)]
    rows = df.withColumn("p", predict_batch_udf(inferfns.make_scale, return_type="float", batch_size=16)("x")).collect()
    assert sorted((r.x, r.p) for r in rows) == [(float(i), 2.0 * i) for i in range(-50, 50)]
    udf = predict_batch_udf(inferfns.make_writable_flag, return_type="boolean", batch_size=16)
    assert {r.p for r in df.withColumn("p", udf("x")).collect()} == {True}


def test_the_model_loads_once_per_worker_while_sparks_reloads_per_udf(spark, tmp_path):
    from pyspark.ml.functions import predict_batch_udf as spark_udf
    from pyspark.sql.types import DoubleType


    df = _tensors(spark, rows=400, partitions=4)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for _ in range(3):  # a notebook cell run three times: a new UDF each time, two jobs each
        make = functools.partial(inferfns.make_scale, str(ours))
        scored = df.withColumn("p", predict_batch_udf(make, return_type="double", batch_size=64)("x"))
        assert scored.count() == 400 and scored.agg({"p": "sum"}).collect()[0][0] == 2.0 * sum(range(400))
        spark_make = functools.partial(inferfns.make_scale, str(theirs))
        spark_udf(spark_make, return_type=DoubleType(), batch_size=64)  # made, as a user would
        df.withColumn("p", spark_udf(spark_make, return_type=DoubleType(), batch_size=64)("x")).collect()
    assert len(ours.read_text().split()) == 1
    assert len(theirs.read_text().split()) >= 3  # once per Python worker per UDF


def test_a_model_key_keeps_one_model_across_different_functions(spark, tmp_path):
    df = _tensors(spark, rows=100, partitions=2)
    count = tmp_path / "loads"
    for scale in (inferfns.make_scale, inferfns.make_scale_again):  # the key, not the function, names it
        make = functools.partial(scale, str(count))
        udf = predict_batch_udf(make, return_type="double", batch_size=32, model_key="scale-v1")
        assert sorted(r.p for r in df.withColumn("p", udf("x")).collect()) == [2.0 * i for i in range(100)]
    assert len(count.read_text().split()) == 1
    udf = predict_batch_udf(functools.partial(inferfns.make_scale, str(count)), return_type="double", batch_size=32)
    df.withColumn("p", udf("x")).collect()
    assert len(count.read_text().split()) == 2  # without the key, its own
    with pytest.raises(ValueError, match="model_key"):
        predict_batch_udf(inferfns.make_scale, return_type="double", batch_size=8, model_key="")


def test_the_model_sees_exactly_batch_size_rows_across_tasks(spark):
    # Ragged input: 12 partitions of about 2.5k rows, batch_size 4096, on 4 concurrent tasks.
    df = spark.range(30_000, numPartitions=12).selectExpr("cast(id as double) as x")
    rows = df.withColumn("s", predict_batch_udf(inferfns.make_batch_size, return_type="long", batch_size=4096)("x"))
    sizes = {r.s: r["count"] for r in rows.groupBy("s").count().collect()}
    assert max(sizes) == 4096, sizes
    batches = {s: n // s for s, n in sizes.items()}
    assert all(n % s == 0 for s, n in sizes.items()), sizes
    short = sum(n for s, n in batches.items() if s < 4096)
    assert short <= 4, f"{short} short model calls (a task ending may cut one): {sizes}"
    assert sizes[4096] >= 30_000 - 4 * 4096


def test_a_raising_model_fails_the_query_with_its_traceback(spark):
    df = spark.range(100, numPartitions=2).selectExpr("cast(id as double) as x")
    with pytest.raises(Exception) as info:
        df.withColumn("p", predict_batch_udf(inferfns.make_raising, return_type="double", batch_size=10)("x")).collect()
    text = str(info.value)
    assert "predicting failed on the inference worker" in text
    assert "ValueError: bad input of 10 rows" in text and "inferfns.py" in text


def test_bad_inputs_and_outputs_are_named(spark):
    df = spark.createDataFrame([(None,), ([1.0, 2.0],)], "t array<double>").coalesce(1)
    udf = predict_batch_udf(inferfns.make_scale, return_type="double", batch_size=8, input_tensor_shapes=[[2]])
    with pytest.raises(Exception, match="tensor column 'c0' is null in row 0"):
        df.withColumn("p", udf("t")).collect()
    udf = predict_batch_udf(inferfns.make_double_rows, return_type="double", batch_size=8, input_tensor_shapes=[[4]])
    with pytest.raises(Exception, match=r"Invalid shape for scalar prediction result: \(8, 4\)"):
        _tensors(spark, rows=10, partitions=1).withColumn("p", udf("t1")).collect()


def test_a_killed_worker_is_replaced_and_the_query_succeeds(spark, tmp_path):
    df = spark.range(2000, numPartitions=4).selectExpr("cast(id as double) as x")
    make = functools.partial(inferfns.make_dying_once, str(tmp_path / "died"))
    udf = predict_batch_udf(make, return_type="double", batch_size=100)
    rows = df.withColumn("p", udf("x")).collect()
    assert (tmp_path / "died").exists(), "no worker was killed: the test tested nothing"
    assert sorted((r.x, r.p) for r in rows) == [(float(i), 2.0 * i) for i in range(2000)]


def test_a_pool_trains_then_serves_its_model_from_worker_state(spark):
    with ferrovod.Pool(2) as pool:
        total = pool.run(poolfns.train, 3)
        pids = pool.run(poolfns.pids)
        udf = predict_batch_udf(
            inferfns.make_from_state, return_type="y double, pid long", batch_size=16,
            input_tensor_shapes=[[4]], pool=pool,
        )
        rows = _tensors(spark, rows=200, partitions=4).withColumn("p", udf("t1")).collect()
        w = total / 4  # every weight is the same after training
        assert all(abs(r.p.y - w * sum(r.t1)) < 1e-6 for r in rows)
        assert {r.p.pid for r in rows} == set(pids), "both ranks serve, each with the model it trained"
    with pytest.raises(Exception, match="no rank of the pool serving this UDF serves on this host"):
        _tensors(spark, rows=10, partitions=1).withColumn("p", udf("t1")).collect()


def test_a_cancelled_query_leaves_the_worker_serving(spark, tmp_path):
    import threading

    started = tmp_path / "started"
    udf = predict_batch_udf(functools.partial(inferfns.make_slow, str(started)), return_type="double", batch_size=10)
    df = spark.range(4000, numPartitions=4).selectExpr("cast(id as double) as x")
    failed = []

    def query():
        spark.sparkContext.setJobGroup("to-cancel", "a slow inference query", interruptOnCancel=True)
        try:
            df.withColumn("p", udf("x")).collect()
        except Exception as e:  # noqa: BLE001 (what a cancelled job raises)
            failed.append(e)

    t = threading.Thread(target=query)
    t.start()
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the model never ran"
    spark.sparkContext.cancelJobGroup("to-cancel")
    t.join(60)
    assert not t.is_alive() and failed, "the cancelled query did not end with an error"
    # The worker dropped the cancelled tasks' rows and serves the next query at once.
    small = spark.range(50, numPartitions=2).selectExpr("cast(id as double) as x")
    start = time.monotonic()
    rows = small.withColumn("p", udf("x")).collect()
    assert sorted((r.x, r.p) for r in rows) == [(float(i), 2.0 * i) for i in range(50)]
    assert time.monotonic() - start < 20, "the worker was still scoring the cancelled query's rows"


def test_bad_arguments_are_refused_on_the_driver(spark):
    with pytest.raises(ValueError, match="batch_size"):
        predict_batch_udf(inferfns.make_scale, return_type="double", batch_size=0)
    with pytest.raises(ValueError, match="not a Spark type"):
        predict_batch_udf(inferfns.make_scale, return_type="no such type", batch_size=8)
    with pytest.raises(ValueError, match="is not supported"):
        predict_batch_udf(inferfns.make_scale, return_type="map<string,double>", batch_size=8)
    with pytest.raises(TypeError, match="lambda"):
        predict_batch_udf(lambda: None, return_type="double", batch_size=8)
    with pytest.raises(ValueError, match="input_tensor_shapes"):
        predict_batch_udf(inferfns.make_scale, return_type="double", batch_size=8, input_tensor_shapes=[[0]])
    with pytest.raises(ValueError, match="workers_per_host"):
        predict_batch_udf(inferfns.make_scale, return_type="double", batch_size=8, workers_per_host=0)
    with pytest.raises(TypeError, match="ferrovod.Pool"):
        predict_batch_udf(inferfns.make_scale, return_type="double", batch_size=8, pool="not a pool")


@pytest.mark.parametrize("how", ["spark.stop", "SIGKILL"])
def test_workers_end_with_their_application(how, tmp_path):
    """A driver of its own scores once, prints its workers' pids, then stops its SparkContext
    (or is killed): every worker is gone within 10 s."""
    with subprocess.Popen(
        [sys.executable, str(TESTS / "drivers" / "inference_life.py")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(TESTS)},
    ) as driver:
        line = driver.stdout.readline()
        assert line.startswith("pids "), line
        pids = [int(p) for p in line.split()[1:]]
        assert pids and all(procs.alive(p) for p in pids)
        if how == "SIGKILL":
            driver.kill()
        else:
            driver.send_signal(signal.SIGUSR1)  # the driver calls spark.stop() and sleeps on
        deadline = time.monotonic() + 10
        while any(procs.alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        driver.kill()
        assert not any(procs.alive(p) for p in pids), f"workers {pids} outlived their application ({how})"
