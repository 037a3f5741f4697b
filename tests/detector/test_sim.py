"""The simulator: realistic normal readings, labelled anomalies at the requested rate, reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest

from app import FEATURES
from app.sim import DEFAULT_ANOMALY_KINDS, AnomalyKind, GridProfile, GridSimulator

START = datetime(2026, 3, 1, tzinfo=UTC)


def normal_batch(n: int = 20_000, profile: GridProfile | None = None, interval_s: float = 60.0):
    return GridSimulator(profile=profile or GridProfile(), interval_s=interval_s, start=START, seed=1).batch(n)


def test_normal_readings_sit_at_nominal_values():
    batch = normal_batch()
    assert not batch.is_anomaly.any()
    assert batch.voltage.mean() == pytest.approx(230.0, abs=1.0)
    assert 0.8 < batch.voltage.std() < 2.5
    assert batch.frequency.mean() == pytest.approx(50.0, abs=0.005)
    assert batch.frequency.std() == pytest.approx(0.02, rel=0.2)
    # Normal operation stays inside the statutory bands: +-10 % voltage, +-0.2 Hz frequency.
    assert np.all(np.abs(batch.voltage - 230.0) < 23.0)
    assert np.all(np.abs(batch.frequency - 50.0) < 0.2)


def test_current_follows_the_daily_load_curve():
    batch = normal_batch()
    hours = (batch.timestamp % 86_400) / 3_600
    night = batch.current[(hours >= 3) & (hours < 5)].mean()
    evening = batch.current[(hours >= 18.5) & (hours < 19.5)].mean()
    assert night == pytest.approx(GridProfile().night_current, rel=0.1)
    assert evening == pytest.approx(GridProfile().peak_current, rel=0.1)
    # Voltage drops under load through the line impedance.
    assert batch.voltage[(hours >= 18.5) & (hours < 19.5)].mean() < batch.voltage[(hours >= 3) & (hours < 5)].mean()


def test_sixty_hertz_profile():
    batch = normal_batch(profile=GridProfile.north_american())
    assert batch.frequency.mean() == pytest.approx(60.0, abs=0.005)
    assert batch.voltage.mean() == pytest.approx(120.0, abs=1.0)


def test_frequency_wanders_smoothly_not_as_white_noise():
    batch = GridSimulator(seed=3, interval_s=1.0).batch(5_000)
    deviation = batch.frequency - 50.0
    lag_one = np.corrcoef(deviation[:-1], deviation[1:])[0, 1]
    assert lag_one > 0.9  # one-second steps of a process with a 30 s correlation time


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_anomaly_rate_is_within_binomial_tolerance(rate):
    n = 40_000
    batch = GridSimulator(anomaly_rate=rate, seed=11).batch(n)
    tolerance = 4 * np.sqrt(rate * (1 - rate) / n)
    assert abs(batch.is_anomaly.mean() - rate) < tolerance
    kinds = Counter(kind for kind in batch.anomaly_kind if kind is not None)
    assert set(kinds) == {kind.value for kind in DEFAULT_ANOMALY_KINDS}
    expected = batch.is_anomaly.sum() / len(DEFAULT_ANOMALY_KINDS)
    for count in kinds.values():  # drawn uniformly among the kinds
        assert abs(count - expected) < 5 * np.sqrt(expected)


def test_ground_truth_labels_agree():
    batch = GridSimulator(anomaly_rate=0.1, seed=5).batch(2_000)
    assert all((kind is not None) == flag for kind, flag in zip(batch.anomaly_kind, batch.is_anomaly, strict=True))


def test_each_kind_looks_like_its_fault():
    profile = GridProfile()
    simulator = GridSimulator(seed=9)
    spike = simulator.batch(500, kind=AnomalyKind.VOLTAGE_SPIKE)
    assert np.all(spike.voltage >= 1.10 * profile.nominal_voltage - 0.01)
    sag = simulator.batch(500, kind=AnomalyKind.VOLTAGE_SAG)
    assert np.all(sag.voltage <= 0.88 * profile.nominal_voltage + 0.01)
    excursion = simulator.batch(500, kind=AnomalyKind.FREQUENCY_EXCURSION)
    assert np.all(np.abs(excursion.frequency - 50.0) >= 0.2 - 1e-9)
    assert (excursion.frequency > 50).any()
    assert (excursion.frequency < 50).any()
    surge = simulator.batch(500, kind=AnomalyKind.CURRENT_SURGE)
    assert np.all(surge.current >= 1.5 * profile.peak_current - 0.001)
    extreme = simulator.extreme()
    assert len(extreme) == 1
    assert extreme.is_anomaly[0]
    assert extreme.anomaly_kind == ("extreme",)
    assert extreme.voltage[0] > 1.5 * profile.nominal_voltage
    assert extreme.frequency[0] < 0.95 * profile.nominal_frequency


def test_only_requested_kinds_are_injected():
    batch = GridSimulator(anomaly_rate=0.5, anomaly_kinds=["voltage_sag"], seed=2).batch(1_000)
    assert {kind for kind in batch.anomaly_kind if kind} == {"voltage_sag"}


def test_same_seed_same_readings_different_seed_different_readings():
    first = GridSimulator(anomaly_rate=0.05, seed=42, start=START).batch(1_000)
    again = GridSimulator(anomaly_rate=0.05, seed=42, start=START).batch(1_000)
    other = GridSimulator(anomaly_rate=0.05, seed=43, start=START).batch(1_000)
    assert first.to_records() == again.to_records()
    assert not np.array_equal(first.features(), other.features())


def test_stream_continues_the_clock_and_is_reproducible():
    def collect(seed: int):
        simulator = GridSimulator(anomaly_rate=0.05, seed=seed, start=START, interval_s=2.0)
        return list(simulator.stream(batch_size=25, n_batches=4))

    batches = collect(7)
    assert [len(b) for b in batches] == [25] * 4
    joined = batches[0].concatenate(batches)
    assert np.all(np.diff(joined.timestamp) == 2.0)
    assert joined.timestamp[0] == START.timestamp()
    assert joined.to_records() == batches[0].concatenate(collect(7)).to_records()


def test_records_are_json_ready_with_iso_timestamps():
    records = GridSimulator(seed=1, start=START).batch(3).to_records()
    assert json.loads(json.dumps(records)) == records
    assert records[0]["timestamp"] == "2026-03-01T00:00:00.000Z"
    assert set(records[0]) == {"timestamp", *FEATURES, "is_anomaly", "anomaly_kind"}
    assert set(GridSimulator(seed=1).batch(1).to_records(ground_truth=False)[0]) == {"timestamp", *FEATURES}


def test_readings_generator_yields_single_readings():
    readings = GridSimulator(seed=1).readings()
    first, second = next(readings), next(readings)
    assert first["timestamp"] < second["timestamp"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"anomaly_rate": 1.5}, "anomaly_rate must be within"),
        ({"anomaly_rate": -0.1}, "anomaly_rate must be within"),
        ({"interval_s": 0}, "interval_s must be positive"),
        ({"anomaly_rate": 0.1, "anomaly_kinds": []}, "anomaly_kinds must not be empty"),
    ],
)
def test_invalid_configuration_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GridSimulator(**kwargs)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="not_a_kind"):
        GridSimulator(anomaly_kinds=["not_a_kind"])


def test_simulator_does_not_import_scikit_learn():
    """The UI image has no scikit-learn; importing the simulator must not need it."""
    code = "import sys, app.sim; app.sim.GridSimulator(seed=1).batch(10); print('sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
