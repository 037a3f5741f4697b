"""``POST /predict`` served in front of the framework: the one route on the hot path, answered without routing,
dependency injection or a ``Request`` object.

The route itself stays in the framework (``app.serving.routes``): it is what the OpenAPI document describes, it serves
``/predict?explain=...`` and every other method, and anything this path does not take falls through to it. This path
takes a plain ``POST /predict`` (exactly that path, no query string) and calls the same ``Predictor.predict`` with
the same checks in the same order (the API key first, as the route's dependency does), turning its errors into
answers with the same ``error_response``; ``tests/serving/test_fast_path.py`` holds it to the route's answers byte for
byte. It is the innermost middleware, so the security headers, the access log, the metrics, CORS and the error
guard wrap it exactly as they wrap the route, and it labels the request with the route's template for them.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.detector.errors import GridWatchError
from app.serving.edge.admission import receive_chunks, require_api_key
from app.serving.edge.asgi import ASGIApp, HttpMiddleware, Receive, Scope, Send
from app.serving.edge.http_errors import error_response
from app.serving.predict import Predictor

PREDICT_PATH = "/predict"
_JSON = (b"content-type", b"application/json")


class PredictFastPath(HttpMiddleware):
    """Answers a plain ``POST /predict``; everything else goes to the framework below."""

    def __init__(self, app: ASGIApp, *, api: FastAPI, predictor: Predictor, api_key: str | None) -> None:
        super().__init__(app)
        self.predictor = predictor
        self.api_key = api_key
        # The middleware stack is built on the first ASGI call, after every route was added: the route exists.
        self.route = next(
            route
            for route in api.routes
            if isinstance(route, APIRoute) and route.path == PREDICT_PATH and "POST" in (route.methods or ())
        )

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != PREDICT_PATH or scope["method"] != "POST" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # the metrics' and the access log's route label, as the router would set it
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # one pass; the first of repeated headers wins, as in Starlette's
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        try:
            if self.api_key is not None:
                require_api_key(headers, self.api_key)
            document = await self.predictor.predict(
                headers, receive_chunks(receive), explain=False, instance=scope["app"].state.instance
            )
        except GridWatchError as error:
            await error_response(error)(scope, receive, send)
            return
        body = orjson.dumps(document)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode("latin-1")), _JSON],
            }
        )
        await send({"type": "http.response.body", "body": body})
