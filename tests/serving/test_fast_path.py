"""The fast path in front of the framework answers a plain ``POST /predict`` exactly as the framework route does.

Every request is sent twice to the same application: as ``POST /predict`` (the fast path,
``app.serving.edge.fast_path``) and as ``POST /predict?explain=false`` (the same route through FastAPI's routing and
dependencies, the query being the route's default). Status, headers and body must be identical, for valid, invalid,
oversized, unauthorised, shed and not-ready requests; and each of the two really took the path it is meant to (the
framework's router leaves the endpoint in the request's scope, the fast path never does).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.detector.model import Detector
from app.serving.app import create_app
from app.serving.settings import Settings

NORMAL = {"voltage": 230.4, "current": 11.2, "frequency": 50.003}
EXTREME = {"voltage": 410.0, "current": 200.0, "frequency": 45.0}
FAST, FRAMEWORK = b"", b"explain=false"
KEY = "fast-path-test-key"


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    scope: dict[str, Any] = field(repr=False)

    @property
    def by_fast_path(self) -> bool:
        return "endpoint" not in self.scope  # FastAPI's router sets it; the fast path never does

    def json(self) -> Any:
        return json.loads(self.body)


async def asgi_post(
    app: FastAPI,
    query: bytes,
    chunks: Sequence[bytes],
    *,
    headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
    method: str = "POST",
    path: str = "/predict",
    waiting: asyncio.Event | None = None,
    complete: bool = True,
) -> Answer:
    """One request as uvicorn hands it to the application: the body in ``chunks``, then the answer's messages.
    Without ``complete`` the client never finishes its body; ``waiting`` is set when the application asks for more
    body than the client sent (it then waits forever)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1 or not complete}
        for i, chunk in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        if waiting is not None:
            waiting.set()
        await asyncio.Event().wait()  # nothing more from this client
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], list(start["headers"]), body, scope)


@contextmanager
def running(app: FastAPI) -> Iterator[TestClient]:
    """The application with its lifespan run (model, shadow thread), driven on the lifespan's event loop."""
    with TestClient(app) as client:
        yield client


def both(client: TestClient, chunks: Sequence[bytes], **kwargs: Any) -> tuple[Answer, Answer]:
    """The same request through the fast path and through the framework route, one after the other."""
    fast = client.portal.call(lambda: asgi_post(client.app, FAST, chunks, **kwargs))  # type: ignore[arg-type]
    framework = client.portal.call(lambda: asgi_post(client.app, FRAMEWORK, chunks, **kwargs))  # type: ignore[arg-type]
    assert fast.by_fast_path
    assert not framework.by_fast_path
    return fast, framework


def assert_same(fast: Answer, framework: Answer, status: int) -> None:
    assert fast.status == framework.status == status, (fast.body, framework.body)
    assert fast.headers == framework.headers
    assert fast.body == framework.body


def body_of(readings: list[dict[str, Any]]) -> bytes:
    return json.dumps({"readings": readings}).encode()


@pytest.fixture
def app(settings: Settings, detector: Detector) -> FastAPI:
    return create_app(settings, detector=detector)


def test_a_valid_batch_gets_the_same_answer_and_is_counted_and_logged_under_the_route(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    def count() -> float:
        labels = {"path": "/predict", "method": "POST", "status": "200"}
        return REGISTRY.get_sample_value("requests_total", labels) or 0.0

    with running(app) as client:
        before = count()
        with caplog.at_level("INFO", logger="gridwatch.access"):
            fast, framework = both(client, [body_of([NORMAL, EXTREME, NORMAL])])
        assert_same(fast, framework, 200)
        answer = fast.json()
        assert [p["anomaly"] for p in answer["predictions"]] == [False, True, False]
        assert (answer["total"], answer["anomalies"]) == (3, 1)
        assert (b"x-content-type-options", b"nosniff") in fast.headers
        assert count() - before == 2  # both answers counted as /predict 200
        lines = [r for r in caplog.records if r.name == "gridwatch.access"]
        assert [(r.route, r.status, r.path) for r in lines] == [("/predict", 200, "/predict")] * 2  # type: ignore[attr-defined]
        assert lines[0].response_bytes == lines[1].response_bytes == len(fast.body)  # type: ignore[attr-defined]


def test_a_body_in_several_chunks_is_read_whole(app: FastAPI) -> None:
    body = body_of([NORMAL] * 50)
    with running(app) as client:
        fast, framework = both(client, [body[:7], b"", body[7:300], body[300:]])
    assert_same(fast, framework, 200)
    assert fast.json()["total"] == 50


@pytest.mark.parametrize(
    "chunks",
    [
        [b'{"readings": [{"voltage": 230.1, "current": 11.2}]}'],  # a missing feature
        [b'{"readings": [{"voltage": "high", "current": 11.2, "frequency": 50}]}'],  # not a number
        [b'{"readings": [{"voltage": 230.1, "current": 11.2, "frequency": 50}'],  # cut short
        [b'{"readings": []}'],
        [b"\xff\xfe not utf-8"],
        [b""],
    ],
    ids=["missing-feature", "not-a-number", "truncated", "empty-batch", "not-utf8", "no-body"],
)
def test_invalid_bodies_get_the_same_422(app: FastAPI, chunks: list[bytes]) -> None:
    with running(app) as client:
        fast, framework = both(client, chunks)
    assert_same(fast, framework, 422)
    assert fast.json()["detail"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (((b"content-type", b"text/plain"),), 415),
        (((b"content-type", b"application/json; charset=latin-1"),), 415),
        (((b"content-type", b"application/json"), (b"content-encoding", b"gzip")), 415),
        ((), 415),
    ],
    ids=["text-plain", "latin-1", "gzip", "no-content-type"],
)
def test_undeclared_json_gets_the_same_415(app: FastAPI, headers: tuple[tuple[bytes, bytes], ...], status: int) -> None:
    with running(app) as client:
        fast, framework = both(client, [body_of([NORMAL])], headers=headers)
    assert_same(fast, framework, status)


def test_repeated_headers_are_read_as_the_framework_reads_them(app: FastAPI) -> None:
    """The first of two Content-Type headers counts on both paths (Starlette's ``Headers.get``)."""
    headers = ((b"content-type", b"text/plain"), (b"content-type", b"application/json"))
    with running(app) as client:
        fast, framework = both(client, [body_of([NORMAL])], headers=headers)
    assert_same(fast, framework, 415)


def test_oversized_requests_get_the_same_413(settings: Settings, detector: Detector) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048, "max_batch": 5})
    app = create_app(small, detector=detector)
    declared = ((b"content-type", b"application/json"), (b"content-length", b"999999"))
    with running(app) as client:
        assert_same(*both(client, [body_of([NORMAL])], headers=declared), 413)  # declared, refused before reading
        assert_same(*both(client, [b'{"readings": [', b" " * 3000, b"]}"]), 413)  # found while reading
        assert_same(*both(client, [body_of([NORMAL] * 6)]), 413)  # more readings than MAX_BATCH


def test_unauthorised_requests_get_the_same_401_and_the_key_lets_both_in(
    settings: Settings, detector: Detector
) -> None:
    keyed = Settings(**{**settings.model_dump(), "api_key": KEY})
    app = create_app(keyed, detector=detector)
    body = [body_of([NORMAL])]
    json_type = (b"content-type", b"application/json")
    with running(app) as client:
        missing = both(client, body)
        assert_same(*missing, 401)
        assert any(name == b"www-authenticate" for name, _ in missing[0].headers)
        assert_same(*both(client, body, headers=(json_type, (b"x-api-key", b"wrong"))), 401)
        # The key is checked before anything else, as the route's dependency is: a wrong type still gets 401.
        assert_same(*both(client, body, headers=((b"content-type", b"text/plain"),)), 401)
        assert_same(*both(client, body, headers=(json_type, (b"x-api-key", KEY.encode()))), 200)


def test_a_request_shed_for_the_bodies_being_received_gets_the_same_503(settings: Settings, detector: Detector) -> None:
    """A client holds 1,000 bytes of an unfinished body; the next body would pass MAX_BUFFERED_BODY_BYTES."""
    tight = settings.model_copy(update={"max_buffered_body_bytes": 1024})
    app = create_app(tight, detector=detector)

    async def shed_while_one_body_is_held(query: bytes) -> Answer:
        held = asyncio.Event()
        unfinished = [b'{"readings": [' + b" " * 986]
        holder = asyncio.ensure_future(asgi_post(app, FAST, unfinished, waiting=held, complete=False))
        await held.wait()  # it read its first chunk and waits for the rest, holding its bytes
        try:
            return await asgi_post(app, query, [body_of([NORMAL])])
        finally:
            holder.cancel()

    def shed() -> float:
        return REGISTRY.get_sample_value("requests_shed_total") or 0.0

    with running(app) as client:
        before = shed()
        fast = client.portal.call(shed_while_one_body_is_held, FAST)
        framework = client.portal.call(shed_while_one_body_is_held, FRAMEWORK)
        assert (fast.by_fast_path, framework.by_fast_path) == (True, False)
        assert_same(fast, framework, 503)
        assert (b"retry-after", b"1") in fast.headers
        assert shed() - before == 2
        assert_same(*both(client, [body_of([NORMAL])]), 200)  # the held bodies are gone: admitted again


def test_before_the_model_is_loaded_both_answer_503(settings: Settings, detector: Detector) -> None:
    release = threading.Event()

    def slow_loader() -> Detector:
        release.wait(timeout=30)
        return detector

    app = create_app(settings, loader=slow_loader)
    try:
        with running(app) as client:
            fast, framework = both(client, [body_of([NORMAL])])
            assert_same(fast, framework, 503)
            assert (b"retry-after", b"5") in fast.headers
    finally:
        release.set()


def test_everything_but_a_plain_post_to_predict_goes_to_the_framework(app: FastAPI) -> None:
    with running(app) as client:
        wrong_method = client.portal.call(lambda: asgi_post(app, FAST, [], method="GET"))
        assert (wrong_method.status, wrong_method.by_fast_path) == (405, False)
        slash = client.portal.call(lambda: asgi_post(app, FAST, [body_of([NORMAL])], path="/predict/"))
        assert slash.status == 307  # the framework's redirect to /predict, not a fast answer
        explained = client.portal.call(lambda: asgi_post(app, b"explain=true", [body_of([EXTREME])]))
        assert (explained.status, explained.by_fast_path) == (200, False)
        assert explained.json()["predictions"][0]["explanation"]["top_feature"]
