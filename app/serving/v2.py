"""The Open Inference Protocol (KServe's "v2" REST API, also spoken by Triton, MLServer and Seldon Core 2) beside the
workshop's own routes, which stay exactly as they are.

One model, ``gridwatch``; its versions are the model store's (``MODEL_DIR``). Without a version, or naming the
served one, a request is scored by the served model exactly as ``/predict`` scores it (the same answers, metrics,
drift window and shadow); naming another version scores with that version, loaded the verified way and kept
(``app.scoring.versions``), without touching the served model's metrics: that is how a challenger is compared by
hand. ``POST .../infer`` goes down the same three hops as ``/predict``: ``infer`` here (HTTP: key, limits, body,
tensors from ``app.serving.edge``) -> ``BatchScorer`` -> ``Detector.predict_batch``.

Every error is the protocol's ``{"error": "..."}`` with the status the other routes give the same error
(``ProtocolRoute``): 400 a request whose tensors are not readings, 404 an unknown model or version, 409 a version
that does not load, and the limits of ``/predict`` (401, 408, 413, 415, 503), which share its budgets. JSON only:
Triton's binary tensor extension is refused with 400.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import FEATURES, __version__
from app.detector.errors import GridWatchError
from app.detector.explain import contributions
from app.detector.model import Detector
from app.scoring.batch import BatchScorer, ScoredBatch
from app.scoring.holder import LoadedModel, ModelHolder, ModelNotReadyError, ModelState
from app.scoring.metrics import READINGS_EXPLAINED
from app.scoring.shadow import ShadowScorer
from app.scoring.versions import ModelNotFoundError, OtherVersions
from app.serving.edge.admission import BodyBytesBudget, InflightLimit, ReadingBudget, read_body, require_json
from app.serving.edge.asgi import BODY_ARRIVED
from app.serving.edge.http_errors import InvalidTensorsError, JSONResponse, protocol_error_response
from app.serving.edge.parsing import INLINE_PARSE_BYTES, most_readings
from app.serving.edge.tensors import TENSOR_READING_BYTES, InferRequest, output_tensors, parse_infer_request
from app.serving.readiness import ServerReadiness
from app.serving.schemas import (
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ProtocolError,
    ServerLive,
    ServerMetadata,
    ServerReady,
    infer_request_schema,
)
from app.serving.settings import Settings

MODEL_NAME = "gridwatch"
PLATFORM = "isolation_forest"
BINARY_HEADER = "inference-header-content-length"
"""The header of Triton's binary tensor extension: the body is JSON followed by raw tensors, which is refused."""


class ProtocolRoute(APIRoute):
    """A route whose errors are the protocol's ``{"error": "..."}``, with the status and headers every other route
    gives the same error (``app.serving.edge.http_errors``), the API key's 401 included."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except GridWatchError as error:
                return protocol_error_response(error)
            except StarletteHTTPException as error:
                return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)
            except RequestValidationError as error:
                return JSONResponse({"error": f"invalid request: {error.errors()}"}, status_code=400)

        return answer


def contributions_of(scored: ScoredBatch) -> np.ndarray:
    """The ``contributions`` output (FP32, [N, 3]), asked for with ``parameters.explain`` (or by name): each
    feature's share of the forest's isolation credit for each reading, the ``contribution`` of
    ``/predict?explain=true`` (docs/model.md), from the walk that scored the batch."""
    assert scored.credits is not None, "scored with credits=True"
    READINGS_EXPLAINED.inc(scored.credits.shape[0])
    return contributions(scored.credits).astype(np.float32)


class InferenceService:
    """What the /v2 routes do, apart from their declaration: which model a URL names, its metadata, inference."""

    def __init__(
        self,
        settings: Settings,
        *,
        inflight: InflightLimit,
        budget: ReadingBudget,
        buffered: BodyBytesBudget,
        holder: ModelHolder,
        readiness: ServerReadiness,
        scorer: BatchScorer,
        shadow: ShadowScorer,
    ) -> None:
        self.settings = settings
        self.inflight, self.budget, self.buffered = inflight, budget, buffered
        self.holder, self.readiness, self.scorer, self.shadow = holder, readiness, scorer, shadow
        self.others = OtherVersions(settings.model_store(), settings.scorer)

    def ready_reason(self) -> str | None:
        """Why the server is not ready (as /health says it), or None when it is."""
        if self.holder.state is not ModelState.ready:
            return self.holder.reason
        if not self.readiness.all_ready():
            return f"this worker is ready, {self.readiness.ready_workers()} of {self.readiness.workers} workers are"
        return None

    async def model_of(self, model_name: str, version: str | None) -> tuple[Detector, LoadedModel | None]:
        """The detector the URL names, and the served model when it is the served version (503 until loaded)."""
        if model_name != MODEL_NAME:
            raise ModelNotFoundError(f"no model {model_name!r}: this server serves {MODEL_NAME!r}")
        served = self.holder.get()
        if version is None or version == served.detector.version:
            return served.detector, served
        detector = self.others.cached(version)
        if detector is None:
            detector = await asyncio.to_thread(self.others.get, version)
        return detector, None

    def metadata(self, detector: Detector) -> dict[str, Any]:
        served = self.holder.get().detector.version
        names = self.others.names()
        return {
            "name": MODEL_NAME,
            "versions": names if served in names else [*names, served],
            "platform": PLATFORM,
            "inputs": [
                {
                    "name": "readings",
                    "datatype": "FP64",
                    "shape": [-1, len(detector.features)],
                    "parameters": {"features": list(detector.features)},
                }
            ],
            "outputs": [
                {"name": "anomaly", "datatype": "BOOL", "shape": [-1]},
                {"name": "score", "datatype": "FP64", "shape": [-1]},
            ],
        }

    async def infer(self, request: Request, model_name: str, version: str | None) -> Response:
        """Score the request's readings with the version the URL names; the same checks, budgets and order as
        /predict."""
        if BINARY_HEADER in request.headers:
            raise InvalidTensorsError(
                "Triton's binary tensor extension is not supported: send the tensors as JSON "
                "(tritonclient: binary_data=False)"
            )
        require_json(request.headers, undeclared=True)
        detector, served = await self.model_of(model_name, version)
        settings = self.settings
        body = await read_body(
            request.headers,
            request.stream(),
            settings.max_body_bytes,
            settings.body_timeout,
            self.buffered,
            arrived=BODY_ARRIVED in request.scope,
        )
        with self.inflight, self.budget.admit(most_readings(body, settings.max_batch, TENSOR_READING_BYTES)):
            batch = (body, detector.features, settings.max_batch)
            inline = len(body) <= INLINE_PARSE_BYTES
            asked = parse_infer_request(*batch) if inline else await run_in_threadpool(parse_infer_request, *batch)
            scored = await self._score(asked, detector, served)
            contributions = contributions_of(scored) if asked.explain else None
        if served is not None:  # the served version's batches feed the challenger, as /predict's do
            self.shadow.submit(asked.X, scored.flags, detector.version)
        answer: dict[str, Any] = {
            "model_name": MODEL_NAME,
            "model_version": detector.version,
            "parameters": {"served_by": request.app.state.instance},
            "outputs": output_tensors(asked.outputs, scored.flags, scored.scores, contributions),
        }
        if asked.id is not None:
            answer["id"] = asked.id
        return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    async def _score(self, asked: InferRequest, detector: Detector, served: LoadedModel | None) -> ScoredBatch:
        credits = asked.explain
        if served is None:
            return await run_in_threadpool(partial(self.scorer.score_other, detector, asked.X, credits=credits))
        if served.scores_inline(asked.X.shape[0]) and not credits:
            return self.scorer.score(served, asked.X)
        return await run_in_threadpool(partial(self.scorer.score, served, asked.X, credits=credits))


def add_v2_routes(app: FastAPI, settings: Settings, *, keyed: list[Any], **serving: Any) -> None:
    """The /v2 routes, in one table. Server metadata and the two health probes are open, like /health and /livez;
    everything under /v2/models needs the API key when one is set, like /model and /predict. ``serving`` holds
    what ``InferenceService`` shares with /predict: the budgets, the holder, readiness, the scorer, the shadow."""
    service = InferenceService(settings, **serving)
    router = APIRouter(prefix="/v2", route_class=ProtocolRoute, tags=["Open Inference Protocol (v2)"])
    model_errors, version_errors, infer_errors = _documented_errors(keyed=bool(keyed))
    request_body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": infer_request_schema(settings.max_batch, tuple(FEATURES))}},
        }
    }

    @router.get("", summary="Server metadata.", response_model=ServerMetadata)
    async def server_metadata() -> Response:
        return JSONResponse({"name": MODEL_NAME, "version": __version__, "extensions": []})

    @router.get("/health/live", summary="Liveness: the process is up.", response_model=ServerLive)
    async def server_live() -> Response:
        return JSONResponse({"live": True})

    @router.get(
        "/health/ready",
        summary="Readiness: 200 once every worker has its model, 503 with the reason before.",
        response_model=ServerReady,
        responses={503: model_errors[503]},
    )
    async def server_ready() -> Response:
        reason = service.ready_reason()
        if reason is not None:
            raise ModelNotReadyError(reason)
        return JSONResponse({"ready": True})

    @router.get(
        "/models/{model_name}",
        summary="Model metadata: versions, input and output tensors.",
        response_model=ModelMetadata,
        responses=model_errors,
        dependencies=keyed,
    )
    async def model_metadata(model_name: str) -> Response:
        detector, _ = await service.model_of(model_name, None)
        return JSONResponse(service.metadata(detector))

    @router.get(
        "/models/{model_name}/versions/{version}",
        summary="Metadata of a version of the model store (loaded if it is not the served one).",
        response_model=ModelMetadata,
        responses=version_errors,
        dependencies=keyed,
    )
    async def version_metadata(model_name: str, version: str) -> Response:
        detector, _ = await service.model_of(model_name, version)
        return JSONResponse(service.metadata(detector))

    @router.get(
        "/models/{model_name}/ready",
        summary="The served version is ready to score.",
        response_model=ModelReady,
        responses=model_errors,
        dependencies=keyed,
    )
    async def model_ready(model_name: str) -> Response:
        await service.model_of(model_name, None)
        return JSONResponse({"name": MODEL_NAME, "ready": True})

    @router.get(
        "/models/{model_name}/versions/{version}/ready",
        summary="A version is ready to score (loaded now if it is not the served one).",
        response_model=ModelReady,
        responses=version_errors,
        dependencies=keyed,
    )
    async def version_ready(model_name: str, version: str) -> Response:
        await service.model_of(model_name, version)
        return JSONResponse({"name": MODEL_NAME, "ready": True})

    @router.post(
        "/models/{model_name}/infer",
        summary="Score readings with the served version.",
        response_model=InferenceResponse,
        responses={**model_errors, **infer_errors},
        dependencies=keyed,
        openapi_extra=request_body,
    )
    async def model_infer(request: Request, model_name: str) -> Response:
        return await service.infer(request, model_name, None)

    @router.post(
        "/models/{model_name}/versions/{version}/infer",
        summary="Score readings with a version of the model store: the served one, or a challenger by hand.",
        response_model=InferenceResponse,
        responses={**version_errors, **infer_errors},
        dependencies=keyed,
        openapi_extra=request_body,
    )
    async def version_infer(request: Request, model_name: str, version: str) -> Response:
        return await service.infer(request, model_name, version)

    app.include_router(router)


Responses = dict[int | str, dict[str, Any]]


def _documented_errors(*, keyed: bool) -> tuple[Responses, Responses, Responses]:
    """The error answers of the model routes, of those naming a version, and of inference, for OpenAPI."""
    model: Responses = {
        404: {"model": ProtocolError, "description": "No model or version of that name."},
        503: {"model": ProtocolError, "description": "The model is not loaded yet (see Retry-After)."},
    }
    if keyed:
        model[401] = {"model": ProtocolError, "description": "Missing or wrong X-API-Key."}
    version: Responses = {
        **model,
        409: {"model": ProtocolError, "description": "The version is in the store but does not load."},
    }
    infer: Responses = {
        400: {"model": ProtocolError, "description": "Tensors that are not readings; the message says which."},
        408: {"model": ProtocolError, "description": "Body not received within BODY_TIMEOUT seconds."},
        413: {"model": ProtocolError, "description": "More than MAX_BATCH readings, or a body over MAX_BODY_BYTES."},
        415: {"model": ProtocolError, "description": "A body declared as something else than application/json."},
        503: {"model": ProtocolError, "description": "Not loaded yet, or overloaded (see Retry-After)."},
    }
    return model, version, infer
