"""Model inputs from Arrow columns and Arrow columns from model outputs, with the rules of
``pyspark.ml.functions.predict_batch_udf``, read from Arrow buffers rather than pandas object
columns. Where Spark's rules go wrong this says why: a tensor column is known by its Arrow type
(Spark looks at the first row, so a null there hides it), a null tensor is an error naming its
row, and boolean outputs are accepted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.types import (
    BooleanType,
    ByteType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
)

#: The scalar types Spark's predict_batch_udf accepts as outputs; this one takes booleans too.
SCALAR_TYPES = (ByteType, ShortType, IntegerType, LongType, FloatType, DoubleType, StringType, BooleanType)
Shapes = Sequence[Sequence[int] | None] | None


def is_tensor(column: pa.Array) -> bool:
    return pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type)


def inputs(batch: pa.RecordBatch, n_params: int, shapes: Shapes, has_tuple: bool) -> list[np.ndarray]:
    """The arrays ``predict(*arrays)`` receives for ``batch``: one per column when the function
    takes as many parameters as there are columns (more than one), else one array."""
    columns = batch.columns
    names = batch.schema.names
    for i, (c, n) in enumerate(zip(columns, names)):
        # A batch whose column holds only nulls has no type to tell a tensor column by.
        if pa.types.is_null(c.type) and len(c) and _shape_of(shapes, i, n_params, len(columns)):
            raise ValueError(f"tensor column {n!r} is null in row 0 of the batch; every row needs a value")
    tensors = [is_tensor(c) for c in columns]
    if any(tensors) and not shapes:
        raise ValueError("Tensor columns require input_tensor_shapes")
    if n_params > 1 and len(columns) == n_params:
        if shapes and len(shapes) != len(columns):
            raise ValueError("input_tensor_shapes must match columns")
        return [
            _tensor(c, n, shapes[i]) if shapes and shapes[i] else _plain(c)
            for i, (c, n) in enumerate(zip(columns, names))
        ]
    if n_params != 1:
        raise ValueError(f"Model expected {n_params} inputs, but received {len(columns)} columns")
    if any(tensors):
        if len(columns) != 1:
            raise ValueError(
                "Multiple input columns found, but model expected a single input, use `array` "
                "to combine columns into tensors."
            )
        single = _rows(columns[0], names[0])
    elif len(columns) == 1:
        single = _plain(columns[0])
        if shapes and list(shapes[0] or []) not in ([], [1]):
            raise ValueError("Invalid input_tensor_shape for scalar column.")
    elif not has_tuple:  # the fields of one struct column, as Spark stacks them
        single = np.column_stack([_plain(c) for c in columns])
        if shapes and list(shapes[0] or []) != [len(columns)]:
            raise ValueError("Input data does not match expected shape.")
    else:
        raise ValueError(
            "Multiple input columns found, but model expected a single input, use `array` to "
            "combine columns into tensors."
        )
    if shapes:
        if len(shapes) != 1:
            raise ValueError("Multiple input_tensor_shapes found, but model expected one input")
        if shapes[0]:
            single = _reshape(single, shapes[0], len(batch))
    return [single]


def _shape_of(shapes: Shapes, i: int, n_params: int, n_columns: int) -> Sequence[int] | None:
    """The shape given for column ``i`` (one input per column, or one input for them all)."""
    if not shapes:
        return None
    if n_params > 1 and n_columns == n_params:
        return shapes[i] if i < len(shapes) else None
    return shapes[0]


def _plain(column: pa.Array) -> np.ndarray:
    """A scalar column as numpy (nulls of numbers become NaN, as through pandas); writable, as
    Spark's are (``torch.from_numpy`` warns about read-only arrays)."""
    return column.to_numpy(zero_copy_only=False, writable=True)


def _rows(column: pa.Array, name: str) -> np.ndarray:
    """A tensor column as ``(rows, values per row)``, from the list's value buffer."""
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise ValueError(f"tensor column {name!r} is null in row {row} of the batch; every row needs a value")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False) if len(column) else np.zeros(0, int)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.argmax(lengths != lengths[0]))
        raise ValueError(
            f"tensor column {name!r}: row {row} holds {lengths[row]} values and row 0 holds {lengths[0]}; "
            "every row of a tensor column needs the same number"
        )
    values = column.flatten().to_numpy(zero_copy_only=False, writable=True)
    return values.reshape(len(column), -1 if len(column) else 0)


def _tensor(column: pa.Array, name: str, shape: Sequence[int]) -> np.ndarray:
    return _reshape(_rows(column, name), shape, len(column))


def _reshape(values: np.ndarray, shape: Sequence[int], rows: int) -> np.ndarray:
    try:
        out = values.reshape([-1, *shape])
    except ValueError:
        raise ValueError(f"Input data does not match expected shape: {values.shape[1:]} cannot become {list(shape)}") from None
    if len(out) != rows:
        raise ValueError("Input data does not match expected shape.")
    return out


# --- outputs -----------------------------------------------------------------------------------


def outputs(preds: Any, rows: int, return_type: Any) -> pa.Array:
    """The Arrow column Spark expects for ``return_type`` (a pyspark ``DataType``) from what the
    predict function returned for ``rows`` rows; ``ValueError`` saying what does not fit."""
    from pyspark.sql.types import ArrayType, StructType

    if isinstance(return_type, StructType):
        if isinstance(preds, Mapping):
            columns = dict(preds)
        elif isinstance(preds, list) and preds and isinstance(preds[0], Mapping):
            if len(preds) != rows:
                raise ValueError("Prediction results must have same length as input data.")
            columns = {k: np.asarray([p[k] for p in preds]) for k in preds[0]}
        else:
            raise ValueError(
                f"Prediction results for StructType must be a dictionary or a list of dictionary, got: {type(preds)}"
            )
        if set(columns) != set(return_type.names):
            raise ValueError(
                "Prediction result columns did not match expected return_type columns: "
                f"expected {return_type.names}, got: {list(columns)}"
            )
        arrays = [_field(np.asarray(columns[f.name]), rows, f.dataType, f.name) for f in return_type.fields]
        return pa.StructArray.from_arrays(arrays, fields=[pa.field(f.name, a.type) for f, a in zip(return_type.fields, arrays)])
    if isinstance(return_type, ArrayType):
        if not isinstance(preds, np.ndarray):
            raise ValueError("Prediction results for ArrayType must be an ndarray.")
    return _field(np.asarray(preds), rows, return_type, None)


def _field(values: np.ndarray, rows: int, dtype: Any, name: str | None) -> pa.Array:
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import ArrayType

    where = f" (field {name!r})" if name else ""
    if len(values) != rows:
        raise ValueError(f"Prediction results must have same length as input data{where}: {len(values)} != {rows}.")
    target = to_arrow_type(dtype)
    if isinstance(dtype, ArrayType):
        if values.ndim != 2:
            raise ValueError(f"Prediction results for ArrayType must be two-dimensional{where}.")
        flat = pa.array(values.reshape(-1)).cast(target.value_type, safe=False)
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * values.shape[1])
        return pa.ListArray.from_arrays(offsets, flat).cast(target)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"Invalid shape for scalar prediction result{where}: {values.shape}.")
    try:
        return pa.array(values).cast(target, safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"Prediction results{where} of dtype {values.dtype} cannot become {dtype.simpleString()}: {e}") from None
