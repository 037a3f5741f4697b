"""The two images, built from the committed Dockerfiles (``.ci/build-images.sh``), run with a real engine exactly as
the chart runs them: non-root, read-only root filesystem, /tmp a tmpfs, a models volume, every capability dropped,
the chart's memory limit."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx2
import pytest

from app.tools.processes import free_port
from tests.deploy.containers import (
    BACKEND_IMAGE,
    MEMORY_LIMIT,
    UI_IMAGE,
    Container,
    Volume,
    answers,
    podman,
    require_image,
    wait_for,
)
from tests.support import ROOT

pytestmark = pytest.mark.slow

SERVING_NEEDS_NONE_OF = ("numba", "llvmlite", "scipy", "sklearn")
"""Packages a serving worker with the ahead-of-time kernels must not have mapped: the lean-serving promise."""


def readme_predict_body() -> dict:
    """The /predict body the README shows (`curl ... -d '...'`), so the example is proven against the image."""
    text = (ROOT / "README.md").read_text()
    body = re.search(r"localhost:8000/predict .*?-d '(\{.*?\})'", text, re.S)
    assert body, "the README shows a /predict example"
    return json.loads(body.group(1))


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[Container, Volume]]:
    """The backend on an empty models volume, as on a fresh install: it trains on first start."""
    require_image(BACKEND_IMAGE)
    with Volume() as volume, Container(BACKEND_IMAGE, volumes={volume.name: "/models"}, port=8000) as container:
        wait_for(lambda: answers(f"{container.url}/health"), "the backend ready")
        yield container, volume


def test_first_start_trains_into_the_volume_and_becomes_ready(backend):
    container, _ = backend
    health = httpx2.get(f"{container.url}/health").json()
    assert health["status"] == "ok"
    assert "trained in" in container.logs()
    listing = container.exec("ls", "/models/versions").stdout.split()
    assert listing == [health["model_version"]], "the first version is in the volume, not in the image"


def test_the_readme_predict_example_is_answered(backend):
    container, _ = backend
    answer = httpx2.post(f"{container.url}/predict", json=readme_predict_body())
    assert answer.status_code == 200
    flags = [prediction["anomaly"] for prediction in answer.json()["predictions"]]
    assert flags == [False, True], "the README's normal reading passes, its fault is flagged"


def test_the_worker_scores_with_the_ahead_of_time_kernels_only(backend):
    container, _ = backend
    assert "numba ahead-of-time" in container.logs()
    mapped = {
        match.group(1)
        for match in re.finditer(r"/site-packages/([A-Za-z_]+)/", container.pid1_maps())
        if match.group(1) in SERVING_NEEDS_NONE_OF
    }
    assert mapped == set(), f"the serving process mapped {mapped}"
    assert container.exec("python", "-c", "import numba").returncode != 0, "numba is not in the image at all"


def test_the_image_healthcheck_passes_and_the_limits_hold(backend):
    container, _ = backend
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0
    config = json.loads(podman("inspect", container.name).stdout)[0]
    assert config["Config"]["Healthcheck"]["Test"][0] == "CMD", "HEALTHCHECK kept (built with --format docker)"
    assert config["HostConfig"]["ReadonlyRootfs"] is True
    assert config["HostConfig"]["Memory"] == 512 * 1024 * 1024 == int(MEMORY_LIMIT[:-1]) * 1024 * 1024
    assert config["HostConfig"]["CapDrop"], "capabilities dropped"
    written = container.exec("sh", "-c", "touch /opt/venv/x")
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr
    assert container.exec("id", "-u").stdout.strip() == "10001"


def test_a_version_promoted_from_a_second_container_is_picked_up(backend):
    container, volume = backend
    before = httpx2.get(f"{container.url}/health").json()["model_version"]
    trainer = Container(
        BACKEND_IMAGE, args=["train", "--seed", "7", "--promote", "--json"], volumes={volume.name: "/models"}
    )
    result = trainer.run()
    assert result.returncode == 0, result.stderr
    promoted = json.loads(result.stdout)["model_version"]
    assert promoted != before
    swapped = httpx2.post(f"{container.url}/model/reload")
    assert swapped.status_code == 200, swapped.text
    assert swapped.json()["model_version"] == promoted
    assert httpx2.post(f"{container.url}/predict", json=readme_predict_body()).json()["model_version"] == promoted


def test_the_ui_serves_its_page_and_reaches_the_backend(backend):
    container, _ = backend
    require_image(UI_IMAGE)
    backend_url = f"http://{container.ip()}:8000"
    with Container(UI_IMAGE, env={"BACKEND_URL": backend_url}, port=8501) as ui:
        wait_for(lambda: answers(f"{ui.url}/_stcore/health"), "the UI ready")
        page = httpx2.get(ui.url)
        assert page.status_code == 200
        assert "<title>Streamlit</title>" in page.text or "streamlit" in page.text.lower()
        reached = ui.exec(
            "python",
            "-c",
            "import os, requests; print(requests.get(os.environ['BACKEND_URL'] + '/health', timeout=10).status_code)",
        )
        assert reached.stdout.strip() == "200", reached.stderr
        assert ui.exec("python", "-c", "import sklearn").returncode != 0, "the UI image carries no scikit-learn"


def test_the_same_image_runs_the_stream_consumer_and_stays_lean(backend, tmp_path):
    """`gridwatch stream` from the backend image, as the chart's stream Deployment will run it, against a real NATS
    server on this machine: it scores what arrives, and its process loads no scikit-learn, numba or SciPy."""
    from tests.stream.support import RESULTS, NatsServer, publish_batches, run, wait_for_count
    from tests.stream.test_stream import readings_of

    _, volume = backend  # the model the backend trained is in the volume
    with NatsServer(tmp_path / "jetstream") as broker:
        port = free_port()
        env = {"NATS_URL": broker.nats_url, "HOST": "127.0.0.1", "PORT": str(port), "TRAIN_IF_MISSING": "0"}
        consumer = Container(
            BACKEND_IMAGE, args=["stream"], env=env, volumes={volume.name: "/models"}, host_network=True
        )
        with consumer:
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), "the stream consumer ready")
            readings = readings_of(4, 500, "feeder-0.sensor-0")
            run(publish_batches(broker.nats_url, [("feeder-0.sensor-0", readings)]))
            assert wait_for_count(broker.nats_url, RESULTS, 500) >= 500
            mapped = {
                match.group(1)
                for match in re.finditer(r"/site-packages/([A-Za-z_]+)/", consumer.pid1_maps())
                if match.group(1) in SERVING_NEEDS_NONE_OF
            }
            healthy = podman("healthcheck", "run", consumer.name, check=False).returncode
    assert mapped == set(), f"the stream consumer mapped {mapped}"
    assert healthy == 0
