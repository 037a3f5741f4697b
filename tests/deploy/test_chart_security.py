"""The chart's security and shutdown values, rendered with the real helm binary (tests/deploy/support.py): the API key
reaches the backend, the UI and the `helm test` API pod as a mounted Secret file named by API_KEY_FILE (never an
environment variable), the chart owns the Secret only when given a value and never invents one, the production values
file renders valid objects, and GRACEFUL_TIMEOUT fits in the pod's termination grace period. The smoke test script
itself runs against a real keyed server."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from app.serving.settings import Settings
from tests.deploy.support import (
    API_KEY,
    CHART_DIR,
    CHART_OWNED_SECRET,
    EXISTING_SECRET,
    KUBERNETES_VERSION,
    NAMESPACE,
    RELEASE,
    Rendered,
    helm,
    pod_spec,
    refusal,
    render,
    template_args,
)
from tests.support import Answer, ServerProcess, StubBackend, copy_model
from ui.config import api_key_from_env

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
PRODUCTION_FILE = CHART_DIR / "values-production.yaml"
PRODUCTION = yaml.safe_load(PRODUCTION_FILE.read_text())
STACK_FILE = CHART_DIR / "values-stack-production.yaml"
BACKEND, UI, TEST_API = f"{RELEASE}-backend", f"{RELEASE}-ui", f"{RELEASE}-test-api"
CHART_SECRET = f"{RELEASE}-api-key"
MOUNT_PATH = "/etc/gridwatch/api-key"

VARIANTS = {
    "existing-secret": (EXISTING_SECRET, "ops-api-key", "token"),
    "chart-owned": (CHART_OWNED_SECRET, CHART_SECRET, "api-key"),
}
"""Each way to turn the key on, with the Secret and the key inside it the pods must read."""


def keyed_workloads(objects: Rendered) -> list[dict[str, Any]]:
    """Everything that calls /predict: the backend (it checks the key), the UI and the helm test pod of the API."""
    return [objects.get("Deployment", BACKEND), objects.get("Deployment", UI), objects.get("Pod", TEST_API)]


def environment(objects: Rendered, workload: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet assembles it: its ConfigMaps (envFrom), then its literal env."""
    (container,) = pod_spec(workload)["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= objects.get("ConfigMap", source["configMapRef"]["name"])["data"]
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return env


def backend_settings(data: dict[str, str], **overrides: str) -> Settings:
    """app.serving.settings.Settings built from the backend ConfigMap, as the container's environment would be."""
    env = {k.lower(): v for k, v in data.items() if k.lower() in Settings.model_fields} | overrides
    return Settings(**env)


# --- off by default ------------------------------------------------------------------------------------------------


def test_by_default_the_api_is_open_and_no_key_is_mounted(rendered: dict[str, Rendered]):
    objects = rendered["defaults"]
    assert VALUES["apiKey"] == {"enabled": False, "existingSecret": "", "secretKey": "api-key", "value": ""}
    assert objects.names("Secret") == {VALUES["grafanaAdmin"]["secretName"]}, "no key Secret"
    for workload in keyed_workloads(objects):
        spec = pod_spec(workload)
        assert "api-key" not in {v["name"] for v in spec.get("volumes", [])}
        assert not any("API_KEY" in name for name in environment(objects, workload))
        annotations = workload.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
        assert "checksum/api-key" not in annotations
    assert backend_settings(objects.get("ConfigMap", BACKEND)["data"]).required_api_key() is None


# --- on: one Secret, mounted as a file everywhere it is needed ------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_key_reaches_backend_ui_and_test_pod_as_a_mounted_file(rendered: dict[str, Rendered], variant: str):
    objects = rendered[variant]
    _, secret_name, secret_key = VARIANTS[variant]
    for workload in keyed_workloads(objects):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        (container,) = spec["containers"]
        volume = {v["name"]: v for v in spec["volumes"]}["api-key"]["secret"]
        assert volume["secretName"] == secret_name, name
        assert volume["items"] == [{"key": secret_key, "path": "key"}], f"{name}: only the key, as one file"
        assert volume["defaultMode"] == 0o440, f"{name}: readable by the pod's group (fsGroup), nobody else"
        mount = {m["name"]: m for m in container["volumeMounts"]}["api-key"]
        assert mount == {"name": "api-key", "mountPath": MOUNT_PATH, "readOnly": True}, name
        assert environment(objects, workload)["API_KEY_FILE"] == f"{MOUNT_PATH}/key", name
        assert "API_KEY" not in environment(objects, workload), f"{name}: the key itself is no variable"
        for var in container.get("env", []):
            assert "secretKeyRef" not in var.get("valueFrom", {}), f"{name}: {var['name']} carries a Secret"
        for source in container.get("envFrom", []):
            assert "secretRef" not in source, name
    for config_map in objects.of_kind("ConfigMap"):
        assert API_KEY not in yaml.safe_dump(config_map), (
            f"the key leaked into ConfigMap {config_map['metadata']['name']}"
        )
    target_test = objects.get("Pod", f"{RELEASE}-test-prometheus-target")
    assert "volumes" not in pod_spec(target_test), "the Prometheus test never calls the API: it gets no key"


def test_the_chart_creates_the_secret_only_from_a_given_value(chart: Path, rendered: dict[str, Rendered]):
    assert CHART_SECRET not in rendered["existing-secret"].names("Secret"), "the user's Secret is not the chart's"
    secret = rendered["chart-owned"].get("Secret", CHART_SECRET)
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert set(secret["data"]) == {"api-key"}
    assert base64.b64decode(secret["data"]["api-key"]).decode() == API_KEY
    assert render(chart, CHART_OWNED_SECRET).get("Secret", CHART_SECRET) == secret, "stable: never regenerated"
    both = render(chart, {"apiKey": {**EXISTING_SECRET["apiKey"], "value": API_KEY}})
    assert CHART_SECRET not in both.names("Secret"), "existingSecret wins over value"
    volume = {v["name"]: v for v in pod_spec(both.get("Deployment", BACKEND))["volumes"]}["api-key"]
    assert volume["secret"]["secretName"] == "ops-api-key"


@pytest.mark.parametrize("api_key", [{"enabled": True}, {"enabled": True, "value": "   "}])
def test_enabling_the_key_without_a_secret_fails_with_the_way_out(chart: Path, api_key: dict):
    stderr = refusal(chart, {"apiKey": api_key})
    assert "apiKey.enabled is true but neither apiKey.existingSecret nor apiKey.value is set" in stderr
    assert f"kubectl -n {NAMESPACE} create secret generic gridwatch-api-key --from-literal=api-key=" in stderr


@pytest.mark.parametrize("name", ["API_KEY", "API_KEY_FILE"])
def test_a_key_in_the_backend_configmap_is_refused(chart: Path, name: str):
    stderr = refusal(chart, {"backend": {"config": {name: "/somewhere"}}})
    assert f"backend.config.{name} is not allowed" in stderr
    assert "apiKey.existingSecret" in stderr


def test_a_changed_chart_owned_key_rolls_the_pods(chart: Path, rendered: dict[str, Rendered]):
    def checksums(objects: Rendered) -> list[str | None]:
        return [
            objects.get("Deployment", name)["spec"]["template"]["metadata"]["annotations"].get("checksum/api-key")
            for name in (BACKEND, UI)
        ]

    owned = checksums(rendered["chart-owned"])
    assert all(owned)
    assert checksums(render(chart, CHART_OWNED_SECRET)) == owned, (
        "deterministic: an upgrade with the same key rolls nothing"
    )
    rotated = checksums(render(chart, {"apiKey": {"enabled": True, "value": API_KEY + "-rotated"}}))
    assert all(a != b for a, b in zip(rotated, owned, strict=True))
    assert checksums(rendered["existing-secret"]) == [None, None], "the chart cannot see a Secret it does not own"


def test_the_backend_and_the_ui_read_the_key_from_the_mounted_file(rendered: dict[str, Rendered], tmp_path: Path):
    """The rendered environment, with the file where the kubelet would project it, gives both sides the same key."""
    objects = rendered["chart-owned"]
    data = objects.get("ConfigMap", BACKEND)["data"]
    with pytest.raises(ValidationError, match=f"API_KEY_FILE={MOUNT_PATH}/key"):
        backend_settings(data)  # no such file on this machine: the backend reads the path it was given
    projected = tmp_path / "key"
    secret = objects.get("Secret", CHART_SECRET)
    projected.write_bytes(base64.b64decode(secret["data"]["api-key"]))
    assert backend_settings(data, api_key_file=str(projected)).required_api_key() == API_KEY
    ui_env = environment(objects, objects.get("Deployment", UI))
    assert ui_env["API_KEY_FILE"] == data["API_KEY_FILE"]
    assert api_key_from_env({**ui_env, "API_KEY_FILE": str(projected)}) == API_KEY


# --- the new backend settings -------------------------------------------------------------------------------------

NEW_SETTINGS = ("MAX_INFLIGHT", "BODY_TIMEOUT", "GRACEFUL_TIMEOUT", "CORS_ORIGINS")


def test_new_backend_settings_are_mirrored_with_the_service_defaults(rendered: dict[str, Rendered]):
    config = VALUES["backend"]["config"]
    for name in NEW_SETTINGS:
        assert config[name] == Settings.model_fields[name.lower()].default, f"{name}: chart and service disagree"
    data = rendered["defaults"].get("ConfigMap", BACKEND)["data"]
    assert (data["MAX_INFLIGHT"], data["BODY_TIMEOUT"], data["GRACEFUL_TIMEOUT"]) == ("64", "10", "20")
    assert "CORS_ORIGINS" not in data, "empty leaves it unset: CORS off"
    settings = backend_settings(data)
    assert (settings.max_inflight, settings.body_timeout, settings.graceful_timeout) == (64, 10.0, 20.0)
    assert settings.allowed_origins() == []


def test_new_backend_settings_render_as_the_service_parses_them(chart: Path):
    origins = "https://ops.example.org, https://grid.example.org:8443"
    config = {"MAX_INFLIGHT": 8, "BODY_TIMEOUT": 2.5, "GRACEFUL_TIMEOUT": 12, "CORS_ORIGINS": origins}
    data = render(chart, {"backend": {"config": config}}).get("ConfigMap", BACKEND)["data"]
    assert data["BODY_TIMEOUT"] == "2.5", "a fraction keeps its decimals"
    assert data["GRACEFUL_TIMEOUT"] == "12"
    settings = backend_settings(data)
    assert (settings.max_inflight, settings.body_timeout, settings.graceful_timeout) == (8, 2.5, 12.0)
    assert settings.allowed_origins() == ["https://ops.example.org", "https://grid.example.org:8443"]


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ({"MAX_INFLIGHT": 0}, "/backend/config/MAX_INFLIGHT"),
        ({"BODY_TIMEOUT": 0}, "/backend/config/BODY_TIMEOUT"),
        ({"GRACEFUL_TIMEOUT": -1}, "/backend/config/GRACEFUL_TIMEOUT"),
        ({"CORS_ORIGINS": "https://ops.example.org/"}, "/backend/config/CORS_ORIGINS"),
        ({"CORS_ORIGINS": "ops.example.org"}, "/backend/config/CORS_ORIGINS"),
    ],
)
def test_schema_rejects_bad_new_settings(chart: Path, setting: dict, path: str):
    stderr = refusal(chart, {"backend": {"config": setting}})
    assert "schema" in stderr
    assert path in stderr


@pytest.mark.parametrize(
    ("timing", "accepted"),
    [
        ((5, 24.5, 30), True),  # 29.5 s of the 30: the kubelet still waits for it
        ((5, 25, 30), False),  # the sleep and the drain use up the whole grace period
        ((0, 29, 30), True),
        ((0, 30, 30), False),  # GRACEFUL_TIMEOUT = terminationGracePeriodSeconds
        ((0, 45, 30), False),
    ],
    ids=lambda case: "-".join(map(str, case)) if isinstance(case, tuple) else str(case),
)
def test_graceful_timeout_must_end_before_the_termination_grace_period(
    chart: Path, timing: tuple[int, float, int], accepted: bool
):
    """(preStopSleepSeconds, GRACEFUL_TIMEOUT, terminationGracePeriodSeconds): the kubelet runs the preStop sleep,
    then sends SIGTERM, and kills the container when the grace period (counted from the start of the preStop) ends,
    so the drain must finish before that."""
    pre_stop, graceful, grace = timing
    values = {
        "backend": {
            "preStopSleepSeconds": pre_stop,
            "terminationGracePeriodSeconds": grace,
            "config": {"GRACEFUL_TIMEOUT": graceful},
        }
    }
    if accepted:
        objects = render(chart, values)
        assert pod_spec(objects.get("Deployment", BACKEND))["terminationGracePeriodSeconds"] == grace
        settings = backend_settings(objects.get("ConfigMap", BACKEND)["data"])
        assert pre_stop + settings.graceful_timeout < grace
    else:
        stderr = refusal(chart, values)
        assert "GRACEFUL_TIMEOUT" in stderr
        assert "must stay below backend.terminationGracePeriodSeconds" in stderr


# --- values-production.yaml ----------------------------------------------------------------------------------------


def _unknown_keys(overlay: Any, base: Any, path: str = "") -> list[str]:
    """Key paths of ``overlay`` that ``base`` does not have (lists and free-form maps are taken as they are)."""
    if not isinstance(overlay, dict) or not isinstance(base, dict) or not base:
        return []
    unknown = []
    for key, value in overlay.items():
        if key not in base:
            unknown.append(f"{path}{key}")
        else:
            unknown += _unknown_keys(value, base[key], f"{path}{key}.")
    return unknown


def test_production_values_use_only_keys_of_the_chart():
    assert _unknown_keys(PRODUCTION, VALUES) == []
    kind_overlay = yaml.safe_load((CHART_DIR / "values-production-kind.yaml").read_text())
    assert _unknown_keys(kind_overlay, VALUES) == [], "values-production-kind.yaml too"
    assert _unknown_keys({"backend": {"replicas": 2}}, VALUES) == ["backend.replicas"], "the check itself works"


def test_production_values_lint_and_render_valid_objects(chart: Path):
    lint = helm("lint", "--strict", str(chart), "--values", str(PRODUCTION_FILE))
    assert "0 chart(s) failed" in lint.stdout, lint.stdout
    objects = Rendered(
        [
            doc
            for doc in yaml.safe_load_all(helm(*template_args(chart, PRODUCTION_FILE)).stdout)
            if doc and not doc["apiVersion"].startswith("monitoring.coreos.com/")
        ]
    )
    assert objects.objects
    for obj in objects.objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_production_values_require_the_key_from_an_existing_secret(chart: Path):
    objects = render(chart, PRODUCTION)
    assert PRODUCTION["apiKey"]["enabled"] is True
    secret_name = PRODUCTION["apiKey"]["existingSecret"]
    assert secret_name
    assert "value" not in PRODUCTION["apiKey"], "the key is not kept in a values file"
    assert objects.names("Secret") == set(), "neither the key nor the Grafana login comes from chart values"
    for workload in keyed_workloads(objects):
        volume = {v["name"]: v for v in pod_spec(workload)["volumes"]}["api-key"]
        assert volume["secret"]["secretName"] == secret_name
        assert environment(objects, workload)["API_KEY_FILE"] == f"{MOUNT_PATH}/key"
    # The Grafana login is the stack release's (values-stack-production.yaml), from a Secret in its namespace; this
    # release creates none, even should its bundled stack be turned back on.
    stack_admin = yaml.safe_load(STACK_FILE.read_text())["grafana"]["admin"]
    assert PRODUCTION["grafanaAdmin"] == {"create": False, "secretName": stack_admin["existingSecret"]}
    text = PRODUCTION_FILE.read_text()
    assert f"kubectl -n gridwatch create secret generic {secret_name} --from-literal=api-key=" in text
    assert f"kubectl -n monitoring create secret generic {stack_admin['existingSecret']}" in STACK_FILE.read_text()
    hpa = objects.get("HorizontalPodAutoscaler", BACKEND)
    assert hpa["spec"]["minReplicas"] >= 2, "a drain or a rollout never takes the API down"
    claim = objects.get("PersistentVolumeClaim", f"{BACKEND}-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "replicas on several nodes share the model"
    for name in (BACKEND, UI):
        image = pod_spec(objects.get("Deployment", name))["containers"][0]["image"]
        assert not image.startswith("localhost:"), f"{name}: not the kind registry"


# --- the helm test script against a real keyed server --------------------------------------------------------------

SMOKE_TEST = CHART_DIR / "files" / "api_smoke_test.py"


def run_smoke_test(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "API_KEY_FILE"}}
    return subprocess.run(
        [sys.executable, str(SMOKE_TEST)],
        env={**clean, "BACKEND_URL": url, "TEST_TIMEOUT_SECONDS": "30", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, trained_artifact: Path) -> Iterator[tuple[str, Path]]:
    """A real `gridwatch serve` reading its key from a file, as the chart runs it; yields (url, key file)."""
    folder = tmp_path_factory.mktemp("keyed")
    models = copy_model(trained_artifact, folder / "models")
    key_file = folder / "key"
    key_file.write_text(API_KEY + "\n")  # a trailing newline, as `kubectl create secret --from-file` often leaves
    env = {"MODEL_DIR": str(models), "TRAIN_IF_MISSING": "0", "API_KEY_FILE": str(key_file)}
    with ServerProcess(env=env) as process:
        yield process.url, key_file


@pytest.mark.slow
def test_smoke_test_sends_the_key_and_checks_that_the_api_refuses_none(keyed_server: tuple[str, Path]):
    url, key_file = keyed_server
    result = run_smoke_test(url, API_KEY_FILE=str(key_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: /predict without X-API-Key answered 401" in result.stdout
    assert "PASS" in result.stdout


@pytest.mark.slow
def test_smoke_test_fails_without_the_key_or_with_a_wrong_one(keyed_server: tuple[str, Path], tmp_path: Path):
    url, _ = keyed_server
    missing = run_smoke_test(url)
    assert missing.returncode == 1
    assert "the API requires a key: set the chart's apiKey values" in missing.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-key")
    result = run_smoke_test(url, API_KEY_FILE=str(wrong))
    assert result.returncode == 1
    assert "the key sent is not the API's" in result.stderr
    unreadable = run_smoke_test(url, API_KEY_FILE=str(tmp_path / "absent"))
    assert unreadable.returncode == 1
    assert f"FAIL: API_KEY_FILE={tmp_path / 'absent'}" in unreadable.stderr


def test_smoke_test_fails_when_the_api_accepts_a_call_without_the_key(tmp_path: Path):
    """An API that ignores its key answers everything with 200: the smoke test must notice."""
    anything = Answer(200, {"status": "ok", "predictions": [], "anomalies": 0, "total": 0})
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    with StubBackend() as stub:
        stub.route("GET", "/health", anything)
        stub.route("POST", "/predict", anything)
        result = run_smoke_test(stub.url, API_KEY_FILE=str(key_file))
    assert result.returncode == 1
    assert "FAIL: /predict without X-API-Key answered 200, expected 401" in result.stderr
