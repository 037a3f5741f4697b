"""The UI's HTTP client of the GridWatch API: ``/health``, ``/model`` and ``/predict``, with errors in plain words.

Every failure, whether the connection is refused, a timeout, a 4xx/5xx answer or a body that is not the API's
contract, becomes one ``BackendError`` whose message a person can act on. The page shows that message in a banner
and keeps running; it never shows a traceback.

Connections: by default requests reuse keep-alive connections from a small pool of sessions (one session per
concurrent caller, so the load actions' threads never share one). With ``new_connection_each_request`` every
request opens a fresh TCP connection and asks the server to close it. That matters in Kubernetes: a Service
balances *connections*, not requests, so keep-alive pins a client to one pod while fresh connections spread over
all of them as the HPA adds replicas.
"""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
from requests.adapters import HTTPAdapter

from app import __version__
from ui.config import REQUEST_TIMEOUT_S
from ui.why import Explanation, parse_explanation

USER_AGENT = f"gridwatch-ui/{__version__}"


class ErrorKind(StrEnum):
    bad_url = "bad_url"
    """The configured URL is not an http(s) URL."""
    unreachable = "unreachable"
    """No TCP connection: refused, unknown host, no route."""
    timeout = "timeout"
    """Connected (or tried to) but no answer in time."""
    http = "http"
    """The backend answered with an error status."""
    bad_answer = "bad_answer"
    """The backend answered 200 with a body that is not the API's contract (a proxy page, another service)."""


class BackendError(Exception):
    """A backend problem, explained for a person. ``kind`` says what went wrong, ``status`` the HTTP status."""

    def __init__(
        self, message: str, *, kind: ErrorKind, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def unreachable(self) -> bool:
        """True when the backend could not be reached at all, as opposed to answering with an error."""
        return self.kind in {ErrorKind.bad_url, ErrorKind.unreachable, ErrorKind.timeout}


@dataclass(frozen=True)
class Health:
    """The answer of ``GET /health``: ready (200) or not ready (503 with a reason)."""

    ready: bool
    body: Mapping[str, Any]
    latency_s: float

    @property
    def status(self) -> str:
        return str(self.body.get("status", "unknown"))

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", ""))

    @property
    def model_version(self) -> str | None:
        version = self.body.get("model_version")
        return str(version) if version else None

    @property
    def instance(self) -> str | None:
        instance = self.body.get("instance")
        return str(instance) if instance else None


@dataclass(frozen=True)
class PredictResult:
    """The scores of one batch, in input order, and who computed them."""

    flags: np.ndarray
    """True where the model flagged the reading (score > 0)."""
    scores: np.ndarray
    anomalies: int
    served_by: str
    latency_s: float
    """Wall-clock time of the request as the UI saw it (connection, transfer, scoring)."""
    model_version: str | None = None
    """The model version that scored the batch (None from a backend that predates hot swaps)."""
    explanations: tuple[Explanation | None, ...] | None = None
    """With ``explain``: per reading, its explanation if it was flagged (the only ones the UI shows), else None;
    None too for one the answer did not carry (a backend that predates explanations ignores the parameter) or
    carried in a form the UI cannot read. None when not asked."""


class BackendClient:
    """A client of one GridWatch API base URL. Thread-safe: the load actions call ``predict`` from many threads."""

    def __init__(
        self,
        base_url: str,
        *,
        new_connection_each_request: bool = False,
        timeout: tuple[float, float] = REQUEST_TIMEOUT_S,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.strip().rstrip("/")
        self.new_connection_each_request = new_connection_each_request
        self.timeout = timeout
        self.api_key = api_key
        self._url_problem = _check_url(self.base_url)
        self._idle_sessions: queue.LifoQueue[requests.Session] = queue.LifoQueue()

    def health(self) -> Health:
        """Readiness. A 503 is an answer (not ready, with a reason), not an error; unreachable raises."""
        response, latency = self._request("GET", "/health")
        body = _json_object(response)
        if response.status_code == 200 and body.get("status") == "ok":
            return Health(ready=True, body=body, latency_s=latency)
        if response.status_code == 503 and "status" in body:
            return Health(ready=False, body=body, latency_s=latency)
        raise _http_error(response)

    def model(self) -> dict[str, Any]:
        """The model metadata (version, training, feature statistics, evaluation)."""
        response, _ = self._request("GET", "/model")
        if response.status_code != 200:
            raise _http_error(response)
        return _json_object(response)

    def predict(self, readings: Sequence[Mapping[str, object]], *, explain: bool = False) -> PredictResult:
        """Score a batch. Extra fields in the readings (timestamp, ground truth) are sent and ignored by the API.
        ``explain`` asks for each reading's explanation too (``?explain=true``), which costs the backend more time
        and the answer about 14 times the bytes: the live view asks, the load actions do not (docs/ui.md)."""
        path = "/predict?explain=true" if explain else "/predict"
        response, latency = self._request("POST", path, json={"readings": list(readings)})
        if response.status_code != 200:
            raise _http_error(response)
        body = _json_object(response)
        try:
            predictions = body["predictions"]
            flags = np.array([bool(p["anomaly"]) for p in predictions], dtype=bool)
            scores = np.array([float(p["score"]) for p in predictions], dtype=np.float64)
            result = PredictResult(
                flags=flags,
                scores=scores,
                anomalies=int(body["anomalies"]),
                served_by=str(body["served_by"]),
                latency_s=latency,
                model_version=str(body["model_version"]) if body.get("model_version") else None,
                explanations=_flagged_explanations(predictions, flags) if explain else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise BackendError(
                f"{self.base_url} answered /predict with a body that is not GridWatch's ({error!r} missing or wrong)",
                kind=ErrorKind.bad_answer,
                status=response.status_code,
            ) from None
        if len(flags) != len(readings):
            raise BackendError(
                f"{self.base_url} scored {len(flags)} readings of the {len(readings)} sent",
                kind=ErrorKind.bad_answer,
                status=response.status_code,
            )
        return result

    def close(self) -> None:
        """Close the pooled keep-alive connections."""
        while True:
            try:
                self._idle_sessions.get_nowait().close()
            except queue.Empty:
                return

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[requests.Response, float]:
        if self._url_problem:
            raise BackendError(self._url_problem, kind=ErrorKind.bad_url)
        url = f"{self.base_url}{path}"
        started = time.perf_counter()
        try:
            with self._session() as session:
                response = session.request(method, url, timeout=self.timeout, **kwargs)
                # Read the body inside the session, so its connection goes back to the pool (or is closed).
                _ = response.content
        except requests.Timeout as error:
            connect, read = self.timeout
            waited = connect if isinstance(error, requests.ConnectTimeout) else read
            raise BackendError(
                f"Backend at {self.base_url} did not answer {method} {path} within {waited:g} s",
                kind=ErrorKind.timeout,
            ) from None
        except requests.ConnectionError as error:
            raise BackendError(
                f"Backend unreachable at {self.base_url}: {_root_cause(error)}", kind=ErrorKind.unreachable
            ) from None
        except requests.RequestException as error:
            raise BackendError(
                f"Request to {self.base_url} failed: {_root_cause(error)}", kind=ErrorKind.unreachable
            ) from None
        return response, time.perf_counter() - started

    @contextmanager
    def _session(self) -> Iterator[requests.Session]:
        if self.new_connection_each_request:
            # A fresh session has a fresh pool: one new TCP connection, closed by both sides after the answer.
            with _new_session(self.api_key) as session:
                session.headers["Connection"] = "close"
                yield session
            return
        try:
            session = self._idle_sessions.get_nowait()
        except queue.Empty:
            session = _new_session(self.api_key)
        try:
            yield session
        finally:
            self._idle_sessions.put(session)


def _flagged_explanations(predictions: Sequence[Any], flags: np.ndarray) -> tuple[Explanation | None, ...]:
    """The flagged readings' explanations, None for the others: reading a thousand explanations nobody shows would
    be the UI's own waste."""
    return tuple(
        parse_explanation(p.get("explanation")) if flagged else None
        for p, flagged in zip(predictions, flags.tolist(), strict=True)
    )


def _new_session(api_key: str | None) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    if api_key:
        session.headers["X-API-Key"] = api_key
    session.trust_env = False  # a proxy from the environment must not sit between the UI and its backend
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _check_url(url: str) -> str | None:
    """Why ``url`` cannot be a backend base URL, or None if it can."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return f"Backend URL {url!r} is not an http(s) URL like http://localhost:8000"
    if parts.query or parts.fragment:
        return f"Backend URL {url!r} must not have a query or fragment"
    return None


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _root_cause(error: Exception) -> str:
    """The useful part of a requests/urllib3 error chain, e.g. 'Connection refused', not three wrapped reprs."""
    match = _ERRNO.search(str(error))
    if match:
        return match.group(1).strip().rstrip(".")
    return error.__class__.__name__


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    if response.status_code >= 400:
        raise _http_error(response)
    content_type = response.headers.get("content-type", "unknown")
    raise BackendError(
        f"{response.url} answered {response.status_code} with {content_type}, not a JSON object: is this GridWatch?",
        kind=ErrorKind.bad_answer,
        status=response.status_code,
    )


def _http_error(response: requests.Response) -> BackendError:
    """A BackendError for an error status, quoting the API's ``detail`` (422 lists name the row and field)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail", body.get("reason")) if isinstance(body, dict) else None
    if isinstance(detail, list) and detail:
        first = detail[0] if isinstance(detail[0], dict) else {"msg": str(detail[0])}
        location = ".".join(str(part) for part in first.get("loc", [])[1:])
        explained = f"{first.get('msg', 'invalid')}" + (f" at {location}" if location else "")
        if len(detail) > 1:
            explained += f" (and {len(detail) - 1} more)"
    elif detail:
        explained = str(detail)
    else:
        text = " ".join(response.text.split())
        explained = text[:160] + ("..." if len(text) > 160 else "") if text else "no details"
    path = urlsplit(response.url).path
    retry_after = _retry_after(response)
    message = f"Backend answered {response.status_code} {response.reason} on {path}: {explained}"
    if retry_after is not None:
        message += f" (retry after {retry_after:g} s)"
    return BackendError(message, kind=ErrorKind.http, status=response.status_code, retry_after_s=retry_after)


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
