"""The loop on recorded data from the command line: simulate a labelled file, train on it, evaluate on another,
and a one-line message with exit code 2 (never a traceback) for each kind of broken file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.detector.artifact import read_metadata

NOISY = ["--voltage-noise", "2.5", "--current-noise", "0.1", "--frequency-std", "0.04"]


def gridwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.tools.cli", *args], capture_output=True, text=True, check=False, timeout=300
    )


@pytest.mark.slow
def test_train_on_a_recorded_file_then_evaluate_on_another(tmp_path: Path):
    train_file, test_file, models = tmp_path / "feeder.parquet", tmp_path / "later.csv", tmp_path / "models"
    made = gridwatch(
        "simulate",
        "-n",
        "6000",
        "--anomaly-rate",
        "0.02",
        "--seed",
        "7",
        *NOISY,
        "--start",
        "2026-06-01T00:00:00Z",
        "--format",
        "parquet",
        "--out",
        str(train_file),
    )
    assert made.returncode == 0, made.stderr
    made = gridwatch(
        "simulate",
        "-n",
        "3000",
        "--anomaly-rate",
        "0.03",
        "--seed",
        "8",
        *NOISY,
        "--start",
        "2026-08-01T00:00:00Z",
        "--format",
        "csv",
        "--out",
        str(test_file),
    )
    assert made.returncode == 0, made.stderr

    trained = gridwatch(
        "train", "--model-dir", str(models), "--data", str(train_file), "--n-estimators", "30", "--json"
    )
    assert trained.returncode == 0, trained.stderr
    metadata = json.loads(trained.stdout)
    training = metadata["training"]
    assert training["source"] == "file"
    assert training["file"] == "feeder.parquet"
    assert training["rows"] == 6000
    assert training["holdout_rows"] == 1200, "the last 20 % is kept out to evaluate on"
    assert training["samples"] == 4800 - training["excluded_anomalies"]
    assert 0 < training["excluded_anomalies"] < 4800 * 0.05, "labelled anomalies are not trained on"
    assert metadata["evaluation"]["on"] == "holdout"
    assert metadata["evaluation"]["readings"] == 1200
    assert metadata["config"]["train_samples"] == training["samples"]
    version = metadata["model_version"]
    assert read_metadata(models / "versions" / version / "iso_forest.joblib")["model_version"] == version

    evaluated = gridwatch("evaluate", "--model-dir", str(models), "--data", str(test_file), "--sweep", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    document = json.loads(evaluated.stdout)
    report = document["report"]
    assert report["readings"] == 3000
    assert set(report["per_kind"]) == {"current_surge", "frequency_excursion", "voltage_sag", "voltage_spike"}
    assert report["roc_auc"] > 0.95, "a model of this feeder ranks its anomalies above its normal readings"
    sweep = {row["contamination"]: row for row in document["sweep"]}
    current = metadata["config"]["contamination"]
    assert sweep[current]["flagged"] == report["flagged"], "the sweep at the model's own value is its answer"
    flagged = [sweep[c]["flagged"] for c in sorted(sweep)]
    assert flagged == sorted(flagged), "a higher contamination flags more"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("voltage,current\n230,10\n", "missing column(s) frequency"),
        ("voltage,current,frequency\n230,10,50\nx,10,50\n", "1 of 2 rows have a missing"),
        ("voltage,current,frequency\n230,10,50\n", "too few normal readings to train on: 1"),
    ],
)
def test_a_broken_training_file_is_one_line_and_exit_code_2(tmp_path: Path, content: str, message: str):
    path = tmp_path / "readings.csv"
    path.write_text(content)
    result = gridwatch("train", "--model-dir", str(tmp_path / "models"), "--data", str(path))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "iso_forest.joblib").exists()


def test_evaluate_needs_labels(tmp_path: Path, model_dir: Path):
    path = tmp_path / "unlabelled.csv"
    path.write_text("voltage,current,frequency\n230,10,50\n")
    result = gridwatch("evaluate", "--model-dir", str(model_dir), "--data", str(path))
    assert result.returncode == 2
    assert "missing column(s) is_anomaly" in result.stderr


@pytest.mark.slow
def test_train_promotes_only_if_better_on_the_held_out_rows(tmp_path: Path):
    data, models = tmp_path / "feeder.csv", tmp_path / "models"
    made = gridwatch("simulate", "-n", "6000", "--anomaly-rate", "0.03", "--seed", "7", "--format", "csv",
                     "--start", "2026-06-01T00:00:00Z", "--out", str(data))  # fmt: skip
    assert made.returncode == 0, made.stderr
    common = ["train", "--model-dir", str(models), "--data", str(data), "--n-estimators", "30", "--json"]
    first = json.loads(gridwatch(*common, "--contamination", "0.01").stdout)["model_version"]

    # a threshold that flags a quarter of normal readings: far worse F1 on 3 % anomalies, whatever the trees
    worse = gridwatch(*common, "--contamination", "0.25", "--promote-if-better")
    assert worse.returncode == 0, worse.stderr
    refused = json.loads(worse.stdout)["model_version"]
    assert f"version {refused} not promoted, {first} stays active" in worse.stderr
    assert json.loads((models / "active.json").read_text())["version"] == first

    forced = gridwatch("models", "--model-dir", str(models), "promote", refused, "--if-better", "--data", str(data))
    assert forced.returncode == 0, forced.stderr
    assert "not promoted" in forced.stderr, "the same gate from `models promote`"
    assert gridwatch("models", "--model-dir", str(models), "promote", refused, "--if-better").returncode == 2
    assert json.loads((models / "active.json").read_text())["version"] == first
