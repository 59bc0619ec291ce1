"""``predict_batch_udf`` with the call of ``pyspark.ml.functions.predict_batch_udf``, served by
one inference worker per host (per GPU) that loads the model once per application and batches
rows across Arrow batches and across concurrent tasks.

    from ferrovod.inference import predict_batch_udf

    def make_predict_fn(model_path):
        model = load(model_path)
        return lambda x: model(x)

    classify = predict_batch_udf(functools.partial(make_predict_fn, "/models/m.pt"),
                                 return_type="float", batch_size=1024)
    df.withColumn("score", classify("features"))

``make_predict_fn`` travels as ``ferrovod.run``'s functions do (by reference or source; a
``functools.partial`` with JSON arguments for the common ``model_path`` case); nothing is
pickled. The workers end with the SparkContext, the driver, or their executor.
"""

import functools
import hashlib
import json
import os
import secrets
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Union

from .._ship import prepare, type_name
from . import _client, _lease
from ._server import serve_in_pool as _serve_in_pool

__all__ = ["predict_batch_udf"]

#: Seconds a task waits for its worker's next answer (a model call) before failing.
DEFAULT_TIMEOUT_S = 600.0


def predict_batch_udf(
    make_predict_fn: Callable[[], Callable[..., Any]],
    *,
    return_type: Any,
    batch_size: int,
    input_tensor_shapes: Union[Sequence[Union[Sequence[int], None]], Mapping[int, Sequence[int]], None] = None,
    workers_per_host: Union[int, None] = None,
    pool: Any = None,
    model_key: Union[str, None] = None,
) -> Any:
    """A pandas UDF that scores its input columns with the model ``make_predict_fn`` loads.

    Inputs and outputs follow ``pyspark.ml.functions.predict_batch_udf``: one or several columns
    (tensor columns reshaped by ``input_tensor_shapes``), and a scalar, an array, or a struct
    (from a dict of arrays or a list of dicts). ``return_type`` is a ``DataType`` or a DDL
    string. The UDF is an Arrow UDF (usable in ``withColumn`` and ``select`` as Spark's is). The model sees exactly ``batch_size`` rows per call (fewer only at the end of the
    data). ``workers_per_host`` (default: one per GPU of the executor, else 1) sets how many
    model copies a host runs. Needs an active SparkSession.

    With ``pool`` (a ``ferrovod.Pool`` on this host, as in local mode), the pool's ranks serve
    instead, one per task by partition: ``make_predict_fn`` runs in them and can use what
    training left in ``ferrovod.worker_state``, with no file in between; the model is loaded
    again for each UDF made (a retrained model is picked up).

    ``model_key`` names the loaded model: a UDF made with the same key finds it loaded, whatever
    its ``make_predict_fn`` (the default key is derived from the function and its arguments;
    with ``pool``, each UDF gets a key of its own)."""
    from pyspark import SparkContext
    from pyspark.sql.pandas.functions import arrow_udf
    from pyspark.util import PythonEvalType

    api = "ferrovod.inference.predict_batch_udf"
    context = SparkContext._active_spark_context
    if context is None:
        raise RuntimeError(f"{api} needs an active SparkSession (its workers live as long as it)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{api}: batch_size must be a positive int, not {batch_size!r}")
    if workers_per_host is not None and (
        isinstance(workers_per_host, bool) or not isinstance(workers_per_host, int) or workers_per_host < 1
    ):
        raise ValueError(f"{api}: workers_per_host must be a positive int or None, not {workers_per_host!r}")
    if model_key is not None and (not isinstance(model_key, str) or not 0 < len(model_key) <= 256):
        raise ValueError(f"{api}: model_key must be a non-empty str of at most 256 characters, not {model_key!r}")
    dtype = _return_type(return_type, api)
    shapes = _shapes(input_tensor_shapes, api)
    if isinstance(make_predict_fn, functools.partial):
        spec = prepare(make_predict_fn.func, make_predict_fn.args, make_predict_fn.keywords, api)
    else:
        spec = prepare(make_predict_fn, (), {}, api)
    if pool is not None:
        from .._pool import Pool

        if not isinstance(pool, Pool):
            raise TypeError(f"{api}: pool must be a ferrovod.Pool, not {type_name(pool)}")
        if workers_per_host is not None:
            raise ValueError(f"{api}: workers_per_host is the pool's np when pool is given")
        # Every rank serves on a thread of its own from now on, under the pool's secret.
        secret, lease_address, workers_per_host = _pool_secret(pool), "", pool.np
        pool.run(_serve_in_pool, secret)
        spec_key = uuid.uuid4().hex
    else:
        lease = _lease.for_context(context)
        secret, lease_address = lease.secret, lease.address
        # The loaded model is kept under this: a UDF made again for the same function and
        # arguments (a notebook cell run twice) finds it loaded.
        spec_key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    if model_key is not None:
        spec_key = "key:" + model_key  # apart from the derived keys (hex digests)
    config = {
        "model": {
            "spec": spec,
            "spec_key": spec_key,
            "batch_size": batch_size,
            "return_type": dtype.json(),
            "shapes": shapes,
        },
        "secret": secret,
        "lease": lease_address,
        "pool": pool is not None,
        "workers_per_host": workers_per_host,
        "timeout_s": _timeout(api),
    }

    def predict(data: Iterator[Any]) -> Iterator[Any]:
        return _client.predict(data, config)

    # An Arrow UDF: the task hands Spark's Arrow batches to the worker and its Arrow answers
    # back, with no pandas conversion on either side. Its kind is given, not inferred from type
    # hints: one UDF takes one column (an array) or several (a tuple), which no hint says.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "It is preferred to specify type hints", UserWarning)
        return arrow_udf(predict, dtype, functionType=PythonEvalType.SQL_SCALAR_ARROW_ITER_UDF)


def _pool_secret(pool: Any) -> str:
    """The pool's inference secret, made on first use; it names the ranks' sockets."""
    if pool._inference_secret is None:
        pool._inference_secret = secrets.token_hex(32)
    return pool._inference_secret


def _return_type(return_type: Any, api: str) -> Any:
    from pyspark.sql.types import ArrayType, DataType, StructType, _parse_datatype_string

    from ._convert import SCALAR_TYPES

    if isinstance(return_type, str):
        try:
            dtype = _parse_datatype_string(return_type)
        except Exception as e:  # noqa: BLE001 (Spark's parser raises several kinds)
            raise ValueError(f"{api}: return_type {return_type!r} is not a Spark type: {e}") from None
    elif isinstance(return_type, DataType):
        dtype = return_type
    else:
        raise TypeError(f"{api}: return_type must be a DataType or a DDL string, not {type_name(return_type)}")

    def supported(t: Any, nested: bool) -> bool:
        if isinstance(t, SCALAR_TYPES):
            return True
        if isinstance(t, ArrayType):
            return isinstance(t.elementType, SCALAR_TYPES)
        return not nested and isinstance(t, StructType) and all(supported(f.dataType, True) for f in t.fields)

    if not supported(dtype, False):
        raise ValueError(
            f"{api}: return_type {dtype.simpleString()} is not supported: a number, string or "
            "boolean, an array of one, or a struct of those"
        )
    return dtype


def _shapes(shapes: Any, api: str) -> Any:
    """``input_tensor_shapes`` as JSON: a list (an entry per input), or ``{index: shape}``."""
    if shapes is None:
        return None

    def shape(s: Any, where: str) -> Any:
        if s is None:
            return None
        if isinstance(s, (str, bytes)) or not isinstance(s, Sequence) or not all(
            isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in s
        ):
            raise ValueError(f"{api}: input_tensor_shapes{where} must be a list of positive ints (or -1), not {s!r}")
        return list(s)

    if isinstance(shapes, Mapping):
        for k in shapes:
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError(f"{api}: input_tensor_shapes keys must be input indices, not {k!r}")
        return {str(k): shape(v, f"[{k}]") for k, v in shapes.items()}
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Sequence):
        raise ValueError(f"{api}: input_tensor_shapes must be a list or a dict, not {type_name(shapes)}")
    return [shape(s, f"[{i}]") for i, s in enumerate(shapes)]


def _timeout(api: str) -> float:
    text = os.environ.get("FERROVOD_INFERENCE_TIMEOUT", "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{api}: FERROVOD_INFERENCE_TIMEOUT must be a positive number of seconds, not {text!r}")
    return value
