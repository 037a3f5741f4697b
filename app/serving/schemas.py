"""The request and answer shapes of the API, for OpenAPI (``/docs``) only.

``/predict`` reads its body itself (``app.serving.edge.parsing``) rather than through these pydantic models: that keeps
a batch of readings one NumPy array from bytes to scores, and lets the error name the row and field. The models
here publish the same contract in OpenAPI; the schemathesis tests prove the service keeps it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Reading(BaseModel):
    """One sensor reading. Extra fields (``timestamp``, ``sensor_id``...) are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"voltage": 231.2, "current": 12.5, "frequency": 50.01}]},
    )
    voltage: float = Field(description="RMS voltage in volts; finite.")
    current: float = Field(description="Current in amperes; finite.")
    frequency: float = Field(description="Grid frequency in hertz; finite.")


class Prediction(BaseModel):
    anomaly: bool = Field(description="True when score > 0.")
    score: float = Field(description="Negated IsolationForest decision function: higher is more anomalous.")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One per reading, in input order.")
    anomalies: int = Field(description="How many readings were flagged.")
    total: int = Field(description="How many readings were scored.")
    served_by: str = Field(description="Instance (pod or host, and process id) that answered.")
    model_version: str = Field(description="The model version that scored the whole batch.")


class ReloadResponse(BaseModel):
    model_version: str = Field(description="The version serving after the reload.")
    previous: str | None = Field(description="The version it replaced, or null when it was already serving.")
    swapped: bool = Field(description="Whether the serving version changed.")


class HealthResponse(BaseModel):
    status: str
    model: str
    features: list[str]
    model_version: str
    instance: str
    pod: str | None
    node: str | None


class NotReadyResponse(BaseModel):
    status: str = Field(description="`loading` or `failed`.")
    reason: str
    instance: str


class ErrorResponse(BaseModel):
    detail: Any = Field(description="A message, or for 422 a list of {type, loc, msg} naming row and field.")


def predict_request_schema(max_batch: int) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["readings"],
        "properties": {
            "readings": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_batch,
                "items": Reading.model_json_schema(),
            }
        },
    }


PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorResponse, "description": "Body not received within BODY_TIMEOUT seconds."},
    413: {"model": ErrorResponse, "description": "More than MAX_BATCH readings, or body over MAX_BODY_BYTES."},
    415: {"model": ErrorResponse, "description": "Body not sent as application/json."},
    422: {"model": ErrorResponse, "description": "Invalid batch; `detail` names each row and field."},
    503: {
        "model": ErrorResponse,
        "description": "Model not loaded yet, or MAX_INFLIGHT requests already in flight (see Retry-After).",
    },
}
"""The documented error answers of /predict (OpenAPI), besides 401 when an API key is required."""
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key."}
}
"""Documented only when an API key is required."""


# --- the Open Inference Protocol (v2), app.serving.v2 ---------------------------------------------------------------


class ProtocolError(BaseModel):
    """Every error of the /v2 routes, in the protocol's shape."""

    error: str = Field(description="What is wrong, in words.")


class ServerMetadata(BaseModel):
    name: str = Field(description="`gridwatch`.")
    version: str = Field(description="The server's version.")
    extensions: list[str] = Field(description="None: neither Triton's binary tensors nor any other extension.")


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="`FP64`, `FP32` or `BOOL`.")
    shape: list[int] = Field(description="-1 for the batch dimension.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="For the input: `features`, the order of its columns."
    )


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="The versions of the model store that may be named in the URL.")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ResponseOutput(BaseModel):
    name: str = Field(description="`anomaly` (BOOL, [N]: score > 0) or `score` (FP64, [N]: higher is more anomalous).")
    datatype: str
    shape: list[int]
    data: list[bool | float | list[float]] = Field(description="One value per reading, in input order.")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str = Field(description="The version that scored the whole batch.")
    id: str | None = Field(default=None, description="The request's `id`, when it gave one.")
    parameters: dict[str, Any] = Field(description="`served_by`: the instance that answered.")
    outputs: list[ResponseOutput]


def infer_request_schema(max_batch: int, features: tuple[str, ...]) -> dict[str, Any]:
    """The inference request as this server reads it (``app.serving.edge.tensors``), for OpenAPI: one input of
    shape [N, 3] or three named [N] inputs, FP64 or FP32, data flat or as rows."""
    parameters = {"anyOf": [{"type": "object"}, {"type": "null"}]}
    number = {"type": "number"}
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "parameters": parameters,
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": len(features),
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string", "examples": ["readings", *features]},
                        "shape": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer"}},
                        "datatype": {"type": "string", "enum": ["FP64", "FP32"]},
                        "parameters": parameters,
                        "data": {
                            "type": "array",
                            "maxItems": max_batch * len(features),
                            "items": {"anyOf": [number, {"type": "array", "items": number}]},
                        },
                    },
                },
            },
            "outputs": {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}, "parameters": parameters},
                        },
                    },
                    {"type": "null"},
                ]
            },
        },
        "examples": [
            {
                "id": "42",
                "inputs": [
                    {
                        "name": "readings",
                        "shape": [2, 3],
                        "datatype": "FP64",
                        "data": [231.2, 12.5, 50.01, 410.0, 200.0, 45.0],
                    }
                ],
                "outputs": [{"name": "anomaly"}, {"name": "score"}],
            }
        ],
    }
