"""``POST /predict`` answered in front of the framework: the one route on the hot path, served without Starlette's
middleware stack, routing, dependency injection or a ``Request`` object.

The route itself stays in the framework (``app.serving.routes``): it is what the OpenAPI document describes, it serves
``/predict?explain=...`` and every other method, and everything this path does not take goes to it. This path takes a
plain ``POST /predict`` (exactly that path, no query string; with CORS on, no ``Origin`` header; with tracing on,
nothing, so that every request gets its server span) and does in one function what the edge's middlewares do around
the route (``app.serving.edge.middleware``), with their own helpers: requests in flight, the API key (first, as the
route's dependency), ``Predictor.predict`` (the route's own code), errors through ``error_response`` and the 500 guard,
``X-Content-Type-Options``, ``requests_total`` and the latency recorded before the body is handed over, the access
line last. ``tests/serving/test_fast_path.py`` holds its answers, counts and log lines to the route's, byte for byte.
"""

from __future__ import annotations

import logging
import time

import orjson
from fastapi.routing import APIRoute

from app.detector.errors import GridWatchError
from app.serving.edge.admission import receive_chunks, require_api_key
from app.serving.edge.asgi import BODY_ARRIVED, SERVER_ANSWERED, Receive, Scope, Send
from app.serving.edge.http_errors import error_response
from app.serving.edge.middleware import (
    INTERNAL_ERROR,
    NOSNIFF_HEADER,
    RequestMetrics,
    log_access,
    log_internal_error,
)
from app.serving.predict import Predictor
from app.serving.telemetry.logs import ACCESS_LOGGER
from app.serving.telemetry.metrics import REQUESTS_IN_FLIGHT

PREDICT_PATH = "/predict"
_JSON = (b"content-type", b"application/json")
_ORIGIN = b"origin"
Headers = list[tuple[bytes, bytes]]


class PredictFastPath:
    """Serves the requests ``takes`` accepts; the application (``app.serving.app``) asks it before the framework."""

    def __init__(
        self, *, predictor: Predictor, api_key: str | None, metrics: RequestMetrics, route: APIRoute, cors: bool
    ) -> None:
        self.predictor = predictor
        self.api_key = api_key
        self.metrics = metrics
        self.record_ok = metrics.recorder(PREDICT_PATH, "POST", 200)
        self.route = route
        self.cors = cors
        self.access_log = logging.getLogger(ACCESS_LOGGER)

    def takes(self, scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope["path"] == PREDICT_PATH
            and scope["method"] == "POST"
            and not scope["query_string"]
            and not (self.cors and any(name == _ORIGIN for name, _ in scope["headers"]))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        scope["route"] = self.route  # the metrics' and the access log's route label, as the router would set it
        status, size, recorded = 500, 0, False
        REQUESTS_IN_FLIGHT.inc()
        try:
            status, headers, body = await self._answer(scope, receive)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            recorded = True  # counted before the client holds the answer, as HTTPMetricsMiddleware does
            if status == 200 and SERVER_ANSWERED not in scope:
                self.record_ok(time.perf_counter() - started)
            else:
                self.metrics.record(scope, status, time.perf_counter() - started)
            size = len(body)
            await send({"type": "http.response.body", "body": body})
        finally:
            REQUESTS_IN_FLIGHT.dec()
            if not recorded:
                self.metrics.record(scope, status, time.perf_counter() - started)
            if self.access_log.isEnabledFor(logging.INFO):
                log_access(self.access_log, scope, status, started, size)

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, Headers, bytes]:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # one pass; the first of repeated headers wins, as in Starlette's
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        try:
            if self.api_key is not None:
                require_api_key(headers, self.api_key)
            document = await self.predictor.predict(
                headers,
                receive_chunks(receive),
                explain=False,
                instance=scope["app"].state.instance,
                arrived=BODY_ARRIVED in scope,
            )
        except GridWatchError as error:
            response = error_response(error)
            return response.status_code, [*response.raw_headers, NOSNIFF_HEADER], bytes(response.body)
        except Exception:
            log_internal_error(scope)
            return 500, [*INTERNAL_ERROR.raw_headers, NOSNIFF_HEADER], bytes(INTERNAL_ERROR.body)
        body = orjson.dumps(document)
        return 200, [(b"content-length", str(len(body)).encode("latin-1")), _JSON, NOSNIFF_HEADER], body
