"""Trying to break a real `gridwatch serve`: raw-socket abuse, overload, SIGTERM with requests in flight,
concurrent first starts on one model folder, damaged artifacts, and a read-only root filesystem."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from app.detector import forest_jit
from app.detector.artifact import forest_path
from app.detector.estimator import load_model
from app.detector.registry import ModelStore
from app.tools.loadgen import LoadConfig, run_load
from app.tools.processes import wait_until_ready
from tests.support import ROOT, ServerProcess, require_tool, status_kib, wait_for_status

pytestmark = pytest.mark.slow

BODY = json.dumps({"readings": [{"voltage": 230.1, "current": 10.0, "frequency": 50.0}] * 20}).encode()


def raw_request(port: int, head: bytes, body: bytes = b"", *, timeout: float = 30.0) -> tuple[int, bytes]:
    """Send bytes as they are on a fresh connection; return the status and the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(head + body)
        return read_answer(connection)


def read_answer(connection: socket.socket, answer: bytes = b"") -> tuple[int, bytes]:
    """Read a whole HTTP answer (head and Content-Length body); ``answer`` holds bytes already received."""
    while b"\r\n\r\n" not in answer:
        chunk = connection.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    while len(rest) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split(b" ")[1]), head + b"\r\n\r\n" + rest


def post_head(length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture
def hardened(model_dir: Path) -> Iterator[ServerProcess]:
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "BODY_TIMEOUT": "1", "MAX_BODY_BYTES": "65536"}
    with ServerProcess(env=env) as server:
        yield server


# --- raw sockets --------------------------------------------------------------------------------------------------


def test_truncated_json_is_422(hardened: ServerProcess):
    body = BODY[: len(BODY) // 2]
    status, answer = raw_request(hardened.port, post_head(len(body)), body)
    assert status == 422
    assert b"malformed JSON" in answer


def test_wrong_content_type_is_415(hardened: ServerProcess):
    status, answer = raw_request(hardened.port, post_head(len(BODY), "text/csv"), BODY)
    assert status == 415
    assert b"Content-Type must be application/json" in answer


def test_oversized_body_is_refused_before_it_is_sent(hardened: ServerProcess):
    """Only the headers go out: the 413 comes back without the server waiting for 10 MB it will not read."""
    status, answer = raw_request(hardened.port, post_head(10_000_000))
    assert status == 413
    assert b"MAX_BODY_BYTES=65536" in answer


def test_oversized_chunked_body_is_cut_off(hardened: ServerProcess):
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b" " * 40_000
    chunks = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    status, _ = raw_request(hardened.port, head, chunks)
    assert status == 413


def test_deeply_nested_json_is_422_not_a_crash(hardened: ServerProcess):
    body = b'{"readings": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    status, answer = raw_request(hardened.port, post_head(len(body)), body)
    assert status == 422
    assert b"malformed JSON" in answer
    assert httpx2.get(f"{hardened.url}/livez").status_code == 200


def test_a_client_trickling_its_body_gets_408_and_holds_nothing(hardened: ServerProcess):
    """One byte every 20 ms would take 40 s; BODY_TIMEOUT=1 cuts it off, and others are served meanwhile."""
    answered = threading.Event()
    result: dict[str, object] = {}

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", hardened.port), timeout=30) as connection:
            connection.sendall(post_head(2_000))
            connection.settimeout(0.02)  # between bytes, look for the server's answer
            for _ in range(2_000):
                try:
                    data = connection.recv(65536)
                except TimeoutError:
                    connection.sendall(b" ")
                    continue
                connection.settimeout(30)
                result["status"], result["answer"] = read_answer(connection, data)
                break
        answered.set()

    thread = threading.Thread(target=trickle)
    thread.start()
    others = [httpx2.post(f"{hardened.url}/predict", content=BODY, headers={"content-type": "application/json"})]
    assert answered.wait(timeout=30)
    thread.join()
    assert result["status"] == 408
    assert b"BODY_TIMEOUT=1s" in result["answer"]
    assert [response.status_code for response in others] == [200]


# --- overload -----------------------------------------------------------------------------------------------------


def test_overload_is_shed_with_503_and_the_service_recovers(model_dir: Path):
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "MAX_INFLIGHT": "2"}
    with ServerProcess(env=env) as server:
        pid = server.process.pid
        before = status_kib(pid, "VmRSS")
        probes: list[int] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                for path in ("/livez", "/health"):
                    probes.append(httpx2.get(f"{server.url}{path}", timeout=10).status_code)
                stop.wait(0.2)  # probe period, like a kubelet's

        prober = threading.Thread(target=probe)
        prober.start()
        # Batches of 2,000 are scored in the thread pool, so requests pile up: far past MAX_INFLIGHT=2.
        report = run_load(LoadConfig(url=server.url, rps=300, duration=3.0, batch_size=2000, workers=64))
        stop.set()
        prober.join()
        peak = status_kib(pid, "VmRSS")

        assert report.succeeded > 0
        assert set(report.failures) == {"HTTP 503"}  # every request got 200 or 503, nothing else
        assert report.failed + report.succeeded == report.sent
        assert probes
        assert set(probes) == {200}  # the probes were answered throughout
        assert peak - before < 200 * 1024  # memory stays bounded: no queue of pending batches
        metrics = httpx2.get(f"{server.url}/metrics").text
        shed = next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("requests_shed_total"))
        assert shed == report.failures["HTTP 503"]
        after = httpx2.post(f"{server.url}/predict", content=BODY, headers={"content-type": "application/json"})
        assert after.status_code == 200  # serving normally right after
        assert server.process.poll() is None


# --- shutdown -----------------------------------------------------------------------------------------------------


def test_sigterm_finishes_requests_in_flight_and_exits_0(model_dir: Path):
    server = ServerProcess(env={"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "GRACEFUL_TIMEOUT": "20"})
    server.start()
    half = len(BODY) // 2
    connections = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(3)]
    for connection in connections:  # three requests in flight: headers and half of each body sent
        connection.sendall(post_head(len(BODY)) + BODY[:half])
    wait_until_ready(f"{server.url}/livez", timeout=10)  # the server is reading them
    server.process.send_signal(signal.SIGTERM)

    refused = False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not refused:  # it stops accepting new connections...
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except OSError:
            refused = True
    assert refused
    statuses = []
    for connection in connections:  # ...but finishes the ones in flight
        connection.sendall(BODY[half:])
        statuses.append(read_answer(connection)[0])
        connection.close()
    assert statuses == [200, 200, 200]
    assert server.process.wait(timeout=30) == 0


# --- the model artifact -------------------------------------------------------------------------------------------


def test_two_servers_starting_at_once_on_an_empty_folder_share_one_model(tmp_path: Path):
    models = tmp_path / "shared"
    env = {"MODEL_DIR": str(models), "TRAIN_IF_MISSING": "1", "LOG_LEVEL": "info"}
    servers = [ServerProcess(env=env) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(ServerProcess.start, servers))
    try:
        versions = {httpx2.get(f"{s.url}/health").json()["model_version"] for s in servers}
    finally:
        for server in servers:
            server.stop()
    assert len(versions) == 1
    (version,) = versions
    assert load_model(models / "versions" / version / "iso_forest.joblib").version == version
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == ["active.json", "versions"]
    assert [p.name for p in (models / "versions").iterdir()] == [version]
    trained = sum(server.log().count("trained model") for server in servers)
    assert trained == 1  # one trained under the lock, the other waited and loaded


def test_a_truncated_compiled_forest_is_refused_not_rebuilt_from_the_estimator(model_dir: Path):
    """Rebuilding the forest from the estimator would take the column order from the metadata, which no hash covers
    (an edited order once served wrong scores): a damaged forest is refused, and left as it is for inspection."""
    forest = forest_path(model_dir / "iso_forest.joblib")
    forest.write_bytes(forest.read_bytes()[:1000])
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0", "LOG_LEVEL": "info"}
    with ServerProcess(env=env, ready_path="/livez") as server:
        reason = wait_for_status(f"{server.url}/health", 503, field="status", value="failed")["reason"]
        assert "iso_forest.npz holds 1000 bytes" in reason
        assert "converted model" not in server.log()
    assert forest.stat().st_size == 1000


def test_truncated_artifact_is_refused_or_retrained(model_dir: Path):
    artifact = model_dir / "iso_forest.joblib"
    artifact.write_bytes(artifact.read_bytes()[:1000])
    forest_path(artifact).write_bytes(forest_path(artifact).read_bytes()[:1000])  # what serving reads, too
    env = {"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0"}
    with ServerProcess(env=env, ready_path="/livez") as refusing:
        reason = wait_for_status(f"{refusing.url}/health", 503, field="status", value="failed")["reason"]
    assert "$MODEL_DIR/iso_forest.joblib" in reason, "the file is named, its folder on the host is not"
    assert str(model_dir) not in reason
    assert "truncated" in reason
    with ServerProcess(env={**env, "TRAIN_IF_MISSING": "1"}) as retraining:
        version = httpx2.get(f"{retraining.url}/health").json()["model_version"]
    assert load_model(ModelStore(model_dir).active_artifact()).version == version
    assert (model_dir / "iso_forest.joblib.rejected").stat().st_size == 1000


# --- a read-only root filesystem, as the chart runs it ------------------------------------------------------------

READ_ONLY_ROOT = """#!/bin/sh
# Run "$@" with / read-only and fresh tmpfs on /tmp, as a pod with readOnlyRootFilesystem and an emptyDir on /tmp.
# Extra writable folders: READ_WRITE="host_dir:mount_point ..." (bind mounts, e.g. a model volume).
set -e
mount --rbind / /mnt
for pair in $READ_WRITE; do mount --bind "${pair%%:*}" "/mnt${pair#*:}"; done
mount -o remount,bind,ro /mnt
mount -t tmpfs tmpfs /mnt/tmp
# The fresh /tmp hides whatever lived under the real one; bring back, read-only, what the server runs from (a
# checkout or virtualenv under /tmp). KEEP_VISIBLE="dir ...".
for dir in $KEEP_VISIBLE; do
  mkdir -p "/mnt$dir"
  mount --rbind "$dir" "/mnt$dir"
  mount -o remount,bind,ro "/mnt$dir"
done
exec chroot /mnt /bin/sh -c 'cd /tmp && exec "$@"' sh "$@"
"""


@pytest.fixture
def read_only_root(tmp_path: Path) -> list[str]:
    unshare = require_tool("unshare")
    script = tmp_path / "read-only-root.sh"
    script.write_text(READ_ONLY_ROOT)
    script.chmod(0o755)
    keep = " ".join(under_tmp(ROOT, sys.prefix, sys.base_prefix))
    prefix = [unshare, "-rm", "env", f"KEEP_VISIBLE={keep}", str(script)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        message = f"user and mount namespaces are not available here: {probe.stderr.strip()}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return prefix


def under_tmp(*paths: Path | str) -> list[str]:
    """The outermost of ``paths`` that lie under /tmp (the project or its Python, when CI clones it there)."""
    inside = sorted({Path(path).resolve() for path in paths if Path(path).resolve().is_relative_to("/tmp")})
    return [str(path) for path in inside if not any(path != other and path.is_relative_to(other) for other in inside)]


def test_the_service_needs_nothing_writable_but_tmp_and_its_model_folder(read_only_root: list[str]):
    """Everything else is read-only: training, the numba cache, two workers' metrics, serving all work."""
    env = {
        "MODEL_DIR": "/tmp/models",
        "TRAIN_IF_MISSING": "1",
        "WORKERS": "2",
        "NUMBA_CACHE_DIR": "/tmp/numba-cache",
        "HOME": "/nonexistent",
    }
    with ServerProcess(env=env, prefix=read_only_root) as server:
        # /health answered from one worker; the other may still be waiting for the model (503 until then).
        scored_by = scoring_workers(server.url, 2)
        metrics = httpx2.get(f"{server.url}/metrics").text
    assert len(scored_by) == 2
    assert "requests_total" in metrics
    assert "error" not in server.log().lower()


def scoring_workers(url: str, workers: int, attempts: int = 3000) -> set[str]:
    """Sends /predict on fresh connections until ``workers`` distinct workers have scored it (each answers 503
    while its own model loads); the kernel hands connections to whichever worker accepts first."""
    scored_by: set[str] = set()
    for _ in range(attempts):
        answer = httpx2.post(
            f"{url}/predict", content=BODY, headers={"content-type": "application/json", "connection": "close"}
        )
        assert answer.status_code in {200, 503}, answer.text
        if answer.status_code == 200:
            scored_by.add(answer.json()["served_by"])
            if len(scored_by) == workers:
                return scored_by
        else:
            time.sleep(0.05)  # polling interval while a worker loads its model
    raise AssertionError(f"only {sorted(scored_by)} scored after {attempts} requests")


def test_without_a_numba_cache_folder_it_compiles_in_memory(read_only_root: list[str]):
    env = {"MODEL_DIR": "/tmp/models", "TRAIN_IF_MISSING": "1", "HOME": "/nonexistent", "LOG_LEVEL": "info"}
    env_without_cache = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    server = ServerProcess(env=env, prefix=read_only_root)
    server.env = {**env_without_cache, **server.env}
    server.env.pop("NUMBA_CACHE_DIR", None)
    with server:
        assert httpx2.post(
            f"{server.url}/predict", content=BODY, headers={"content-type": "application/json"}
        ).is_success
    if forest_jit.KIND == "ahead-of-time":  # built by `make sync` and in the image: nothing is compiled at start
        assert "scored by numba ahead-of-time" in server.log()
    else:
        assert "compiled code not cached: set NUMBA_CACHE_DIR" in server.log()


def test_a_read_only_model_folder_without_a_model_says_so(read_only_root: list[str]):
    env = {"MODEL_DIR": "/srv", "TRAIN_IF_MISSING": "1", "NUMBA_CACHE_DIR": "/tmp/numba-cache"}
    server = ServerProcess(env=env, prefix=read_only_root, ready_path="/livez")
    server.env["READ_WRITE"] = ""  # /srv stays read-only: the image's folder, no volume mounted
    with server:
        reason = wait_for_status(f"{server.url}/health", 503, field="status", value="failed")["reason"]
    assert "MODEL_DIR $MODEL_DIR is not writable" in reason
    assert "/srv" not in reason
    assert "holds no usable model" in reason
