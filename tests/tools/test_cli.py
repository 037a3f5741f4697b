"""The `gridwatch` command line: simulate, train, evaluate, and clear errors for bad configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.detector.estimator import load_model
from app.tools.cli import main


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "app.tools.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_simulate_prints_json_lines_with_ground_truth(capsys: pytest.CaptureFixture[str]):
    assert main(["simulate", "-n", "5", "--seed", "3", "--anomaly-rate", "1", "--kinds", "voltage_sag"]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 5
    assert all(r["is_anomaly"] and r["anomaly_kind"] == "voltage_sag" for r in records)


def test_simulate_is_reproducible_and_supports_sixty_hertz(capsys: pytest.CaptureFixture[str]):
    command = ["simulate", "-n", "200", "--seed", "1", "--grid", "na", "--format", "json"]
    main([*command, "--start", "2026-05-01T12:00:00Z"])
    first = json.loads(capsys.readouterr().out)
    main([*command, "--start", "2026-05-01T12:00:00Z"])
    assert json.loads(capsys.readouterr().out) == first  # the same, timestamps included
    assert first[0]["timestamp"] == "2026-05-01T12:00:00.000Z"
    assert abs(sum(r["frequency"] for r in first) / 200 - 60.0) < 0.05


def test_simulate_request_format_is_a_predict_body(capsys: pytest.CaptureFixture[str], client):
    main(["simulate", "-n", "20", "--format", "request", "--anomaly-rate", "0.5", "--seed", "2"])
    body = json.loads(capsys.readouterr().out)
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert response.json()["total"] == 20


def test_simulate_runs_without_scikit_learn():
    code = (
        "import sys; from app.tools.cli import main; main(['simulate', '-n', '2']); "
        "assert 'sklearn' not in sys.modules, 'simulate imported scikit-learn'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_bad_start_time_is_a_usage_error():
    result = run_cli("simulate", "--start", "yesterday")
    assert result.returncode == 2
    assert "not an ISO 8601 time: 'yesterday'" in result.stderr


def test_unknown_anomaly_kind_is_a_usage_error():
    result = run_cli("simulate", "--kinds", "voltage_sag,meteor_strike")
    assert result.returncode == 2
    assert "unknown kind(s) ['meteor_strike']" in result.stderr


def test_train_then_evaluate(tmp_path: Path):
    models = tmp_path / "models"
    trained = run_cli(
        "train", "--model-dir", str(models), "--n-estimators", "20", "--max-samples", "1024",
        "--train-samples", "5000", "--json",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    metadata = json.loads(trained.stdout)
    assert metadata["config"]["n_estimators"] == 20
    version = metadata["model_version"]
    assert load_model(models / "versions" / version / "iso_forest.joblib").version == version
    assert json.loads((models / "active.json").read_text())["version"] == version, "the first version is active"

    evaluated = run_cli(
        "evaluate", "--model-dir", str(models), "-n", "3000", "--sweep", "0.001", "0.01", "--json",
        env={"TRAIN_IF_MISSING": "0"},
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["model_version"] == metadata["model_version"]
    assert report["report"]["readings"] == 3000
    assert [row["contamination"] for row in report["sweep"]] == [0.001, 0.01]


def test_evaluate_prints_tables(model_dir: Path):
    result = run_cli("evaluate", "--model-dir", str(model_dir), "-n", "2000", env={"COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    for text in ("precision", "recall", "ROC-AUC", "voltage_spike", "current_surge"):
        assert text in result.stdout


def test_evaluate_measures_the_explanations_when_asked(model_dir: Path):
    result = run_cli("evaluate", "--model-dir", str(model_dir), "-n", "2000", "--explain", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["explanations"]
    assert [(row["kind"], row["faulty_feature"]) for row in rows] == [
        ("voltage_spike", "voltage"), ("voltage_sag", "voltage"), ("current_surge", "current"),
        ("frequency_excursion", "frequency"),
    ]  # fmt: skip
    assert all(row["ranked_first"] >= 0.95 for row in rows), rows
    table = run_cli("evaluate", "--model-dir", str(model_dir), "-n", "2000", "--explain", env={"COLUMNS": "160"})
    assert "ranked first" in table.stdout


def test_evaluate_without_a_model_and_without_training_explains(tmp_path: Path):
    result = run_cli("evaluate", "--model-dir", str(tmp_path / "empty"), env={"TRAIN_IF_MISSING": "false"})
    assert result.returncode == 2
    assert "no model at" in result.stderr
    assert "gridwatch train" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "eighty"),
        ("WORKERS", "0"),
        ("LOG_LEVEL", "loud"),
        ("MAX_BATCH", "-1"),
        ("MODEL_POLL_INTERVAL", "inf"),  # once killed the watcher thread: polling silently off
        ("MODEL_POLL_INTERVAL", "nan"),
        ("MODEL_POLL_INTERVAL", "1e-9"),  # once spun a core at idle
    ],
)
def test_invalid_environment_is_refused_naming_the_variable(variable: str, value: str):
    result = run_cli("serve", env={variable: value})
    assert result.returncode == 2
    assert variable.lower() in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_python_dash_m_app_is_serve():
    result = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, check=True)
    assert "usage: gridwatch serve" in result.stdout


def test_training_removes_what_a_killed_writer_left_behind(tmp_path: Path):
    """A trainer killed mid-write leaves its temporary file; the next writer, holding the lock, removes it."""
    models = tmp_path / "models"
    models.mkdir()
    leftovers = [models / ".iso_forest.joblib.k1ll3d.tmp", models / ".iso_forest.npz.x9.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"\0" * 1_000_000)
    unrelated = models / ".other_model.joblib.a1.tmp"  # another model's writer may still be at work
    unrelated.write_bytes(b"\0")
    trained = run_cli(
        "train", "--model-dir", str(models), "--n-estimators", "5", "--max-samples", "256", "--train-samples", "1000",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert not [leftover for leftover in leftovers if leftover.exists()]
    assert unrelated.exists()
    assert "left by a writer that did not finish" in trained.stderr
    assert sorted(p.name for p in models.iterdir() if p.suffix != ".lock" and not p.name.endswith(".tmp")) == [
        "active.json",
        "versions",
    ]


# --- the model commands read the model settings only, and take --model-dir on either side of the action --------


@pytest.fixture
def versioned(tmp_path: Path) -> Path:
    """A model folder with one small trained version, active."""
    models = tmp_path / "versioned"
    trained = run_cli(
        "train", "--n-estimators", "10", "--max-samples", "256", "--train-samples", "2000", "--model-dir", str(models)
    )
    assert trained.returncode == 0, trained.stderr
    return models


@pytest.mark.parametrize(
    "serving_only",
    [
        {"API_KEY_FILE": "/nonexistent/api-key"},  # once: `gridwatch models list` exited 2 on the server's key file
        {"OTEL_TRACES_EXPORTER": "zipkin"},  # once: the same on an exporter only the server uses
        {"MAX_BATCH": "-1", "PORT": "eighty"},
    ],
)
def test_model_commands_ignore_serving_only_settings(versioned: Path, serving_only: dict[str, str]):
    listed = run_cli("models", "--model-dir", str(versioned), "list", "--json", env=serving_only)
    assert listed.returncode == 0, listed.stderr
    active = json.loads(listed.stdout)["active"]
    assert active is not None
    evaluated = run_cli("evaluate", "--model-dir", str(versioned), "-n", "500", "--json", env=serving_only)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["model_version"] == active


def test_the_server_still_refuses_the_same_serving_only_settings(tmp_path: Path):
    result = run_cli("serve", "--model-dir", str(tmp_path), env={"API_KEY_FILE": "/nonexistent/api-key"})
    assert result.returncode == 2
    assert "API_KEY_FILE=/nonexistent/api-key" in result.stderr


def test_models_takes_model_dir_before_or_after_the_action(versioned: Path, tmp_path: Path):
    before = run_cli("models", "--model-dir", str(versioned), "list", "--json")
    after = run_cli("models", "list", "--model-dir", str(versioned), "--json")
    assert before.returncode == after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert json.loads(after.stdout)["versions"]
    # given on both sides, the one after the action wins, as with any repeated option
    both = run_cli("models", "--model-dir", str(tmp_path / "elsewhere"), "list", "--model-dir", str(versioned))
    assert both.returncode == 0, both.stderr
    assert json.loads(before.stdout)["active"] in both.stdout


def test_models_promote_and_rollback_take_model_dir_after_the_action(versioned: Path):
    first = json.loads(run_cli("models", "list", "--model-dir", str(versioned), "--json").stdout)["active"]
    trained = run_cli(
        "train",
        "--n-estimators",
        "10",
        "--seed",
        "9",
        "--max-samples",
        "256",
        "--train-samples",
        "2000",
        "--model-dir",
        str(versioned),
    )
    assert trained.returncode == 0, trained.stderr
    versions = json.loads(run_cli("models", "list", "--model-dir", str(versioned), "--json").stdout)["versions"]
    second = next(entry["version"] for entry in versions if entry["version"] != first)
    assert run_cli("models", "promote", second, "--model-dir", str(versioned)).returncode == 0
    assert json.loads(run_cli("models", "--model-dir", str(versioned), "list", "--json").stdout)["active"] == second
    assert run_cli("models", "rollback", "--model-dir", str(versioned)).returncode == 0
    assert json.loads(run_cli("models", "list", "--model-dir", str(versioned), "--json").stdout)["active"] == first
