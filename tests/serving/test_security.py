"""Who may do what: response headers, CORS, and the optional API key (docs/security.md is the threat model)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.detector.model import Detector
from app.serving.app import create_app
from app.serving.edge import admission
from app.serving.settings import Settings
from tests.support import ROOT, ServerProcess
from ui.client import BackendClient, BackendError
from ui.config import api_key_from_env

KEY = "k3y-0f-the-grid"
READINGS = {"readings": [{"voltage": 230.1, "current": 10.4, "frequency": 50.01}]}
OPEN_ROUTES = ["/health", "/livez", "/metrics"]
KEYED_ROUTES = [("POST", "/predict"), ("GET", "/model")]
OPS_ORIGIN = "https://ops.example.org"


def keyed_client(settings: Settings, detector: Detector, **keys: object) -> TestClient:
    keyed = settings.model_copy(update=keys)
    return TestClient(create_app(Settings.model_validate(keyed.model_dump()), detector=detector))


@pytest.fixture
def keyed(settings: Settings, detector: Detector) -> Iterator[TestClient]:
    with keyed_client(settings, detector, api_key=KEY) as client:
        yield client


def call(client: TestClient, method: str, path: str, **headers: str) -> httpx2.Response:
    return client.request(method, path, json=READINGS if method == "POST" else None, headers=headers)


# --- response headers ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_server_sends_no_version_banner_and_nosniff_on_every_answer(server: ServerProcess):
    answers = [
        httpx2.get(f"{server.url}/health"),
        httpx2.get(f"{server.url}/metrics"),
        httpx2.get(f"{server.url}/model"),
        httpx2.post(f"{server.url}/predict", json=READINGS),
        httpx2.post(f"{server.url}/predict", content=b"{", headers={"content-type": "application/json"}),
        httpx2.get(f"{server.url}/no/such/route"),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 422, 404]
    for answer in answers:
        assert "server" not in answer.headers, f"{answer.request.url} announces {answer.headers['server']}"
        assert answer.headers["x-content-type-options"] == "nosniff"


# --- CORS ---------------------------------------------------------------------------------------------------------


def preflight(client: TestClient, origin: str) -> httpx2.Response:
    return client.options(
        "/predict",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
    )


def test_cors_is_off_by_default_so_no_browser_page_may_call_the_api(client: TestClient):
    assert "access-control-allow-origin" not in preflight(client, OPS_ORIGIN).headers
    answer = client.post("/predict", json=READINGS, headers={"Origin": OPS_ORIGIN})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


def test_cors_lets_in_exactly_the_configured_origins(settings: Settings, detector: Detector):
    with keyed_client(settings, detector, cors_origins=f"{OPS_ORIGIN}, https://grid.example.net") as client:
        allowed = preflight(client, OPS_ORIGIN)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == OPS_ORIGIN
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        assert (
            client.post("/predict", json=READINGS, headers={"Origin": OPS_ORIGIN}).headers[
                "access-control-allow-origin"
            ]
            == OPS_ORIGIN
        )

        stranger = preflight(client, "https://evil.example.com")
        assert stranger.status_code == 400
        assert "access-control-allow-origin" not in stranger.headers
        answer = client.post("/predict", json=READINGS, headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in answer.headers


# --- the API key --------------------------------------------------------------------------------------------------


def test_without_a_key_configured_the_api_is_open(client: TestClient):
    for method, path in KEYED_ROUTES:
        assert call(client, method, path).status_code == 200


@pytest.mark.parametrize(("method", "path"), KEYED_ROUTES)
@pytest.mark.parametrize("offered", [None, "", "wrong", KEY[:-1], KEY + "x", KEY.upper()])
def test_a_missing_or_wrong_key_is_refused_with_401(keyed: TestClient, method: str, path: str, offered: str | None):
    answer = call(keyed, method, path, **({} if offered is None else {"X-API-Key": offered}))
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("ApiKey")
    assert "X-API-Key" in answer.json()["detail"]
    assert KEY not in answer.text


@pytest.mark.parametrize(("method", "path"), KEYED_ROUTES)
def test_the_right_key_is_let_in(keyed: TestClient, method: str, path: str):
    assert call(keyed, method, path, **{"X-API-Key": KEY}).status_code == 200


@pytest.mark.parametrize("path", OPEN_ROUTES)
def test_probes_and_metrics_stay_open_for_kubernetes_and_prometheus(keyed: TestClient, path: str):
    assert keyed.get(path).status_code == 200


def test_refused_requests_are_counted_and_score_nothing(keyed: TestClient):
    scored_before = keyed.get("/metrics").text
    assert call(keyed, "POST", "/predict").status_code == 401
    metrics = keyed.get("/metrics").text
    assert 'requests_total{method="POST",path="/predict",status="401"}' in metrics
    scored = [line for line in metrics.splitlines() if line.startswith("readings_scored_total ")]
    assert scored == [line for line in scored_before.splitlines() if line.startswith("readings_scored_total ")]


def test_the_key_is_compared_in_constant_time(keyed: TestClient, monkeypatch: pytest.MonkeyPatch):
    compared: list[tuple[bytes, bytes]] = []
    real = admission.hmac.compare_digest

    def spy(offered: bytes, expected: bytes) -> bool:
        compared.append((offered, expected))
        return real(offered, expected)

    monkeypatch.setattr(admission.hmac, "compare_digest", spy)
    assert call(keyed, "GET", "/model", **{"X-API-Key": "guess"}).status_code == 401
    assert compared == [(b"guess", KEY.encode())]


def test_the_key_is_read_from_a_mounted_secret_file_which_wins(settings: Settings, detector: Detector, tmp_path: Path):
    secret = tmp_path / "api-key"
    secret.write_text(KEY + "\n")  # `kubectl create secret --from-file` keeps a trailing newline
    with keyed_client(settings, detector, api_key="from-env", api_key_file=secret) as client:
        assert call(client, "GET", "/model", **{"X-API-Key": KEY}).status_code == 200
        assert call(client, "GET", "/model", **{"X-API-Key": "from-env"}).status_code == 401


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"API_KEY": "  "}, "API_KEY is set but empty"),
        ({"API_KEY_FILE": "{tmp}/empty"}, "is empty"),
        ({"API_KEY_FILE": "{tmp}/missing"}, "No such file or directory"),
        ({"API_KEY_FILE": "{tmp}/two-lines"}, "holds several lines"),
        ({"API_KEY": "cl\u00e9-secr\u00e8te"}, "non-ASCII characters"),
        ({"API_KEY": "two words"}, "holds spaces"),
    ],
)
def test_an_empty_or_unreadable_key_stops_the_start_with_a_message(
    tmp_path: Path, environment: dict[str, str], message: str
):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "two-lines").write_text("first-line\nsecond-line\n")
    environment = {name: value.format(tmp=tmp_path) for name, value in environment.items()}
    with pytest.raises(ValidationError, match=message):
        Settings(**{name.lower(): value for name, value in environment.items()})
    started = subprocess.run(
        [sys.executable, "-m", "app"],
        env={"PATH": "/usr/bin:/bin", "MODEL_DIR": str(tmp_path / "models"), **environment},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode != 0
    assert message in started.stderr
    assert "Traceback" not in started.stderr
    assert not (tmp_path / "models").exists(), "refused before touching the model folder"


@pytest.mark.slow
def test_a_key_file_with_a_byte_order_mark_and_a_padded_header_still_match(model_dir: Path, tmp_path: Path):
    """What editors and clients do to a key without meaning to: a UTF-8 BOM in the file, spaces around the header."""
    secret = tmp_path / "api-key"
    secret.write_bytes(b"\xef\xbb\xbf" + KEY.encode() + b"\n")
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "API_KEY_FILE": str(secret)}
    with ServerProcess(env=env) as server:
        for offered in (KEY, f"  {KEY} ", f"\t{KEY}"):  # raw: client libraries refuse to pad a header value
            assert raw_predict(server.port, offered).startswith(b"HTTP/1.1 200"), repr(offered)
        assert raw_predict(server.port, KEY[:-1]).startswith(b"HTTP/1.1 401")


def raw_predict(port: int, api_key: str) -> bytes:
    """POST /predict over a plain socket, the X-API-Key header exactly as given; returns the raw answer."""
    body = json.dumps(READINGS).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-API-Key:{api_key}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head.encode("latin-1") + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


# --- the UI sends the key -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_ui_sends_the_key_it_is_given_and_reports_a_401_otherwise(model_dir: Path):
    with ServerProcess(env={"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "API_KEY": KEY}) as server:
        with_key, without = BackendClient(server.url, api_key=KEY), BackendClient(server.url)
        try:
            assert len(with_key.predict(READINGS["readings"]).flags) == 1
            with pytest.raises(BackendError) as refused:
                without.predict(READINGS["readings"])
        finally:
            with_key.close()
            without.close()
        assert refused.value.status == 401
        assert "X-API-Key" in str(refused.value)


@pytest.mark.slow
def test_the_ui_reads_the_shared_key_file_as_the_backend_does(model_dir: Path, tmp_path: Path):
    """One Secret serves both: the UI once kept the byte-order mark the backend strips, and sent a wrong key."""
    secret = tmp_path / "api-key"
    secret.write_bytes(b"\xef\xbb\xbf" + KEY.encode() + b"\r\n")
    assert api_key_from_env({"API_KEY_FILE": str(secret)}) == KEY
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "API_KEY_FILE": str(secret)}
    with ServerProcess(env=env) as server:
        client = BackendClient(server.url, api_key=api_key_from_env({"API_KEY_FILE": str(secret)}))
        try:
            assert len(client.predict(READINGS["readings"]).flags) == 1
        finally:
            client.close()


def test_a_key_file_no_header_can_carry_is_no_key_for_the_ui_and_a_refusal_for_the_backend(tmp_path: Path):
    secret = tmp_path / "api-key"
    secret.write_text("two\nlines\n")
    assert api_key_from_env({"API_KEY_FILE": str(secret)}) is None  # the UI shows its 401 banner
    with pytest.raises(ValueError, match="holds several lines"):
        Settings(api_key_file=secret)
