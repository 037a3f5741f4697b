"""An Open Inference Protocol (v2) inference request to the model's input array, and the answer's output tensors.

The request is decoded by msgspec with each tensor's ``data`` left as raw JSON, then read as numbers once its
name, shape and datatype are known to be right, so a wrong request is refused before its data becomes Python
objects. Two forms hold the same readings:

* one input of shape ``[N, 3]`` (any name; the metadata calls it ``readings``), its columns in the model's feature
  order (``voltage, current, frequency``), its data flat in row-major order or as ``N`` rows of 3;
* three inputs of shape ``[N]`` named after the features, in any order.

``FP64`` and ``FP32`` are read; ``FP32`` data are rounded to 32-bit floats as the datatype declares (so a client's
``np.float32`` array arrives exactly), then scored as 64-bit like every reading. Every mistake is an
``InvalidTensorsError`` (400) naming the input and what is wrong; more than ``MAX_BATCH`` readings is a
``BatchTooLargeError`` (413), as on ``/predict``. JSON only: Triton's binary tensor extension is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from app.serving.edge.http_errors import BatchTooLargeError, InvalidTensorsError

DATATYPES: dict[str, type[np.floating[Any]]] = {"FP64": np.float64, "FP32": np.float32}
OUTPUTS = ("anomaly", "score")
"""The outputs answered when the request names none, in this order."""
CONTRIBUTIONS = "contributions"
"""The explanation output (FP32, [N, 3]), asked for with ``parameters.explain`` or by name: each feature's share of
the isolation, as ``/predict?explain=true``'s ``contribution``."""
EXPLAIN = "explain"
TENSOR_READING_BYTES = 6
"""The fewest bytes a reading takes in a tensor's data: ``1,1,1,``; bounds the readings before parsing."""
BINARY_PARAMETERS = ("binary_data_size", "shared_memory_region")
"""Input parameters of Triton's binary tensor and shared memory extensions, which this server does not have."""


class _Input(msgspec.Struct, gc=False):
    name: str
    shape: list[int]
    datatype: str
    data: msgspec.Raw
    parameters: dict[str, Any] | None = None


class _Output(msgspec.Struct, gc=False):
    name: str
    parameters: dict[str, Any] | None = None


class _Request(msgspec.Struct, gc=False):
    inputs: list[_Input]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_Output] | None = None


_REQUEST = msgspec.json.Decoder(_Request)
_FLAT = msgspec.json.Decoder(list[float])
_ROWS = msgspec.json.Decoder(list[list[float]])


@dataclass(frozen=True)
class InferRequest:
    """What an inference request asks: the readings, the outputs in the order wanted, its id, and whether it asks
    for the contributions."""

    X: np.ndarray
    outputs: tuple[str, ...]
    id: str | None
    explain: bool


def parse_infer_request(body: bytes, features: Sequence[str], max_batch: int) -> InferRequest:
    """Decode and check an inference request into an ``(N, len(features))`` float64 array and what it asks for."""
    try:
        request = _REQUEST.decode(body)
    except msgspec.ValidationError as error:
        raise InvalidTensorsError(f"not an inference request: {error}") from None
    except (msgspec.DecodeError, RecursionError) as error:
        raise InvalidTensorsError(f"the body is not JSON: {error}") from None
    explain = (request.parameters or {}).get(EXPLAIN, False)
    if not isinstance(explain, bool):
        raise InvalidTensorsError(f"parameters.{EXPLAIN} must be true or false, got {explain!r}")
    outputs = _outputs(request.outputs, explain=explain)
    X = _readings(request.inputs, tuple(features), max_batch)
    return InferRequest(X, outputs, request.id, explain or CONTRIBUTIONS in outputs)


def output_tensors(
    names: Sequence[str], flags: np.ndarray, scores: np.ndarray, contributions: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """The answer's ``outputs`` in the order of ``names``; numpy arrays, for ``orjson.OPT_SERIALIZE_NUMPY``."""
    rows = len(flags)
    tensors: dict[str, tuple[str, list[int], np.ndarray]] = {
        "anomaly": ("BOOL", [rows], flags),
        "score": ("FP64", [rows], scores),
    }
    if contributions is not None:
        tensors[CONTRIBUTIONS] = ("FP32", list(contributions.shape), contributions)
    return [
        {"name": name, "datatype": datatype, "shape": shape, "data": np.ascontiguousarray(data)}
        for name in names
        for datatype, shape, data in (tensors[name],)
    ]


def _outputs(requested: list[_Output] | None, *, explain: bool) -> tuple[str, ...]:
    if not requested:  # none named: every output, as the protocol says
        return (*OUTPUTS, CONTRIBUTIONS) if explain else OUTPUTS
    names: list[str] = []
    for output in requested:
        if output.name not in (*OUTPUTS, CONTRIBUTIONS):
            raise InvalidTensorsError(f"unknown output {output.name!r}: the outputs are {', '.join(OUTPUTS)}")
        if output.name in names:
            raise InvalidTensorsError(f"output {output.name!r} is asked for twice")
        if (output.parameters or {}).get("classification"):
            raise InvalidTensorsError("the classification extension is not supported: ask for anomaly and score")
        names.append(output.name)
    return tuple(names)


def _readings(inputs: list[_Input], features: tuple[str, ...], max_batch: int) -> np.ndarray:
    width = len(features)
    forms = (
        f"send one input of shape [N, {width}] (columns {', '.join(features)}) or {width} inputs of shape [N] "
        f"named {', '.join(features)}"
    )
    for tensor in inputs:
        _check_input(tensor)
    if len(inputs) == 1:
        (tensor,) = inputs
        if len(tensor.shape) != 2 or tensor.shape[1] != width:
            raise InvalidTensorsError(f"input {tensor.name!r} has shape {tensor.shape}: {forms}")
        rows = _rows(tensor, max_batch)
        return _values(tensor, rows * width, row_width=width).reshape(rows, width)
    names = sorted(tensor.name for tensor in inputs)
    if names != sorted(features) or len(set(names)) != width:
        raise InvalidTensorsError(f"inputs {', '.join(repr(t.name) for t in inputs) or 'none'}: {forms}")
    by_name = {tensor.name: tensor for tensor in inputs}
    for tensor in inputs:
        if len(tensor.shape) != 1:
            raise InvalidTensorsError(f"input {tensor.name!r} has shape {tensor.shape}: {forms}")
    shapes = {tensor.shape[0] for tensor in inputs}
    if len(shapes) != 1:
        raise InvalidTensorsError("inputs of different lengths: " + ", ".join(f"{t.name} {t.shape}" for t in inputs))
    rows = _rows(inputs[0], max_batch)
    return np.column_stack([_values(by_name[feature], rows) for feature in features])


def _check_input(tensor: _Input) -> None:
    if tensor.datatype not in DATATYPES:
        raise InvalidTensorsError(
            f"input {tensor.name!r} has datatype {tensor.datatype!r}: readings are {' or '.join(DATATYPES)}"
        )
    for parameter in BINARY_PARAMETERS:
        if parameter in (tensor.parameters or {}):
            raise InvalidTensorsError(
                f"input {tensor.name!r} has parameter {parameter}: binary tensors and shared memory are not "
                "supported, send the data as JSON (tritonclient: binary_data=False)"
            )


def _rows(tensor: _Input, max_batch: int) -> int:
    rows = tensor.shape[0]
    if rows < 1:
        raise InvalidTensorsError(f"input {tensor.name!r} has shape {tensor.shape}: at least one reading is needed")
    if rows > max_batch:
        raise BatchTooLargeError(f"{rows} readings in one request exceed MAX_BATCH={max_batch}")
    return rows


def _values(tensor: _Input, count: int, *, row_width: int | None = None) -> np.ndarray:
    """The tensor's data as ``count`` float64 values, flat or (with ``row_width``) as rows of that width."""
    try:
        values = _FLAT.decode(tensor.data)
    except msgspec.ValidationError:
        values = _as_rows(tensor, row_width)
    except (msgspec.DecodeError, RecursionError):
        raise _not_numbers(tensor) from None
    if len(values) != count:
        raise InvalidTensorsError(
            f"input {tensor.name!r} of shape {tensor.shape} holds {count} values, its data has {len(values)}"
        )
    array = np.array(values, dtype=np.float64)
    if DATATYPES[tensor.datatype] is np.float32:
        with np.errstate(over="ignore"):
            narrowed = array.astype(np.float32)
        if not np.isfinite(narrowed).all():
            raise InvalidTensorsError(f"input {tensor.name!r}: a value is beyond the range of FP32")
        array = narrowed.astype(np.float64)
    return array


def _as_rows(tensor: _Input, row_width: int | None) -> list[float]:
    if row_width is None:
        raise _not_numbers(tensor)
    try:
        rows = _ROWS.decode(tensor.data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        raise _not_numbers(tensor) from None
    if any(len(row) != row_width for row in rows):
        raise InvalidTensorsError(f"input {tensor.name!r}: every row of its data must hold {row_width} values")
    return [value for row in rows for value in row]


def _not_numbers(tensor: _Input) -> InvalidTensorsError:
    return InvalidTensorsError(
        f"input {tensor.name!r}: data must be finite numbers ({tensor.datatype}), flat in row-major order"
        + (" or as rows" if len(tensor.shape) == 2 else "")
    )
