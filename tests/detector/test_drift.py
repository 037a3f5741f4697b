"""Drift and data quality: the sliding window, the drift score on normal and shifted data, the gauges."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app import FEATURES
from app.detector.drift import DRIFT_THRESHOLD, NORMAL_MAX_SCORE, DriftMonitor
from app.detector.model import Detector
from app.sim import GridProfile, GridSimulator


def monitor(detector: Detector, window: int = 1000) -> DriftMonitor:
    return DriftMonitor(FEATURES, detector.metadata["feature_stats"], window=window)


def day_of_windows(profile: GridProfile | None = None, seed: int = 0):
    """Consecutive 1,000-reading windows (one reading a second) covering a whole simulated day."""
    simulator = GridSimulator(profile=profile or GridProfile(), seed=seed, start=datetime(2026, 9, 1, tzinfo=UTC))
    return [simulator.batch(1000) for _ in range(87)]


def test_window_keeps_exactly_the_newest_readings_across_wrap_around(detector: Detector):
    drift = monitor(detector, window=100)
    rows = np.arange(0, 3 * 257, dtype=np.float64).reshape(-1, 3)  # 257 rows, fed in odd-sized batches
    flags = np.arange(257) % 4 == 0
    position = 0
    for size in (7, 93, 1, 60, 96):
        snapshot = drift.update(rows[position : position + size], flags[position : position + size])
        position += size
    newest = rows[position - 100 : position]
    assert snapshot.readings == 100
    assert snapshot.means == dict(zip(FEATURES, newest.mean(axis=0).tolist(), strict=True))
    assert snapshot.anomaly_ratio == pytest.approx(flags[position - 100 : position].mean())


def test_window_fills_up_then_a_big_batch_replaces_it(detector: Detector):
    drift = monitor(detector, window=100)
    assert drift.update(np.ones((30, 3)), np.zeros(30, dtype=bool)).readings == 30
    big = np.arange(3 * 500, dtype=np.float64).reshape(-1, 3)
    snapshot = drift.update(big, np.ones(500, dtype=bool))
    assert snapshot.readings == 100
    assert snapshot.means["voltage"] == pytest.approx(big[-100:, 0].mean())
    assert snapshot.anomaly_ratio == 1.0


def test_normal_traffic_stays_below_the_threshold_at_every_hour(detector: Detector):
    drift = monitor(detector)
    worst = dict.fromkeys(FEATURES, 0.0)
    for batch in day_of_windows():
        snapshot = drift.update(batch.features(), batch.is_anomaly)
        worst = {name: max(worst[name], snapshot.scores[name]) for name in FEATURES}
    assert max(worst.values()) < DRIFT_THRESHOLD
    assert worst["current"] <= NORMAL_MAX_SCORE  # the documented figure: current at the evening peak
    assert worst["current"] > 1.5  # the daily cycle is visible, which is why a stricter score would false-alarm


@pytest.mark.parametrize(
    ("feature", "factor", "floor"),
    [
        ("voltage", 1.025, DRIFT_THRESHOLD),  # a sensor reading 2.5 % high
        ("voltage", 0.97, DRIFT_THRESHOLD),  # 3 % low
        ("voltage", 0.95, 8.0),  # the whole feeder 5 % low
        ("frequency", 1.0015, DRIFT_THRESHOLD),  # a 0.075 Hz offset in the meter
    ],
)
def test_shifted_inputs_cross_the_threshold_at_every_hour(detector: Detector, feature: str, factor: float, floor):
    """The shifts app/detector/drift.py promises to catch, in every 1,000-reading window of a day, not a lucky one."""
    column = FEATURES.index(feature)
    for batch in day_of_windows(seed=3):
        X = batch.features()
        X[:, column] *= factor
        snapshot = monitor(detector).update(X, np.zeros(len(X), dtype=bool))
        assert snapshot.scores[feature] > floor
        others = [name for name in FEATURES if name != feature]
        assert all(snapshot.scores[name] < DRIFT_THRESHOLD for name in others)


def test_documented_blind_spot_a_two_percent_voltage_offset_hides_at_the_evening_peak(detector: Detector):
    """+2 % is caught most of the day but not everywhere (the docstring says 91 % of the hours)."""
    column = FEATURES.index("voltage")
    caught = []
    for batch in day_of_windows(seed=3):
        X = batch.features()
        X[:, column] *= 1.02
        caught.append(monitor(detector).update(X, np.zeros(len(X), dtype=bool)).scores["voltage"] > DRIFT_THRESHOLD)
    assert 0.8 < np.mean(caught) < 1.0


def test_a_sixty_hertz_feed_is_massive_drift(detector: Detector):
    batch = day_of_windows(profile=GridProfile.north_american())[0]
    snapshot = monitor(detector).update(batch.features(), batch.is_anomaly)
    assert snapshot.scores["frequency"] > 100
    assert snapshot.scores["voltage"] > 50


def test_concurrent_updates_are_consistent(detector: Detector):
    drift = monitor(detector, window=500)
    ones = np.ones((10, 3))

    def feed() -> None:
        for _ in range(100):
            drift.update(ones, np.ones(10, dtype=bool))

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = drift.update(ones, np.ones(10, dtype=bool))
    assert final.readings == 500
    assert final.means == dict.fromkeys(FEATURES, 1.0)
    assert final.anomaly_ratio == 1.0


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_gauges_follow_the_traffic_through_the_api(client: TestClient, detector: Detector):
    stats = detector.metadata["feature_stats"]
    shifted = [
        {"voltage": stats["voltage"]["mean"] * 1.05, "current": stats["current"]["mean"], "frequency": 50.0}
        for _ in range(1000)
    ]
    client.post("/predict", json={"readings": shifted})
    assert gauge("feature_drift_score", feature="voltage") > DRIFT_THRESHOLD
    assert gauge("feature_drift_score", feature="current") < 0.01
    assert gauge("feature_window_mean", feature="voltage") == pytest.approx(stats["voltage"]["mean"] * 1.05)
    assert gauge("drift_window_readings") == 1000

    normal = GridSimulator(seed=4, start=datetime(2026, 9, 1, 12, tzinfo=UTC)).batch(1000).to_records()
    answer = client.post("/predict", json={"readings": normal}).json()
    assert gauge("feature_drift_score", feature="voltage") < DRIFT_THRESHOLD
    assert gauge("anomaly_ratio_window") == pytest.approx(answer["anomalies"] / 1000)


def test_readings_at_the_float_limit_overflow_the_window_and_it_recovers(detector: Detector):
    drift = monitor(detector, window=100)
    normal = day_of_windows()[0].features()[:100]
    expected = dict(zip(FEATURES, normal.mean(axis=0).tolist(), strict=True))
    overflowed = drift.update(np.full((10, 3), 1e308), np.ones(10, dtype=bool))
    assert not np.isfinite(overflowed.means["voltage"])  # beyond float range, and reported as such
    drift.update(normal[:90], np.zeros(90, dtype=bool))  # full: 10 huge + 90 normal
    one_left = drift.update(normal[90:99], np.zeros(9, dtype=bool))  # 9 huge overwritten, 1 remains
    assert one_left.means["voltage"] > 1e300
    recovered = drift.update(normal[99:], np.zeros(1, dtype=bool))  # the last huge one leaves
    # Exactly the 100 normal readings' means: a running sum would have rounded them away next to 1e308.
    assert recovered.means == pytest.approx(expected, rel=1e-12)
    assert all(score < DRIFT_THRESHOLD for score in recovered.scores.values())
    later = drift.update(normal[:40], np.zeros(40, dtype=bool))  # back to incremental sums, still exact
    window = np.concatenate([normal[40:], normal[:40]])
    assert later.means == pytest.approx(dict(zip(FEATURES, window.mean(axis=0).tolist(), strict=True)), rel=1e-12)


def test_a_window_added_to_without_statistics_reads_as_one_updated_batch_by_batch(detector: Detector):
    """``add`` (one process: statistics computed when scraped) and ``update`` (per batch) describe the same window,
    through wrap-around, a reading beyond the incremental limit and its departure, and switching between them."""
    rows = GridSimulator(seed=8).batch(400).features()
    rows[130] = [1e300, 11.0, 50.0]  # summed exactly while it is in the window
    flags = np.arange(400) % 9 == 0
    added, updated = monitor(detector, window=100), monitor(detector, window=100)
    assert added.snapshot() is None  # nothing scored yet
    position = 0
    for size in (7, 93, 1, 60, 96, 43, 100):
        added.add(rows[position : position + size], flags[position : position + size])
        expected = updated.update(rows[position : position + size], flags[position : position + size])
        got = added.snapshot()
        assert got is not None
        assert (got.readings, got.anomaly_ratio) == (expected.readings, pytest.approx(expected.anomaly_ratio))
        assert got.means == pytest.approx(expected.means, rel=1e-12)
        assert got.scores == pytest.approx(expected.scores, rel=1e-12)
        position += size
    assert np.isfinite(list(added.snapshot().means.values())).all()  # the huge reading has left both windows
    mixed = added.update(rows[:10], flags[:10])  # update after add: re-summed first, not off by the added rows
    assert mixed.means == pytest.approx(updated.update(rows[:10], flags[:10]).means, rel=1e-12)


def test_window_gauges_show_the_window_of_the_last_batch_scored_when_scraped(detector: Detector):
    """One process: the gauges read the window when scraped; after a swap they keep showing the old model's
    window until the new model scores its first batch, as writing them batch by batch did."""
    from app.scoring.metrics import DriftGauges

    old, new = monitor(detector), monitor(detector)
    gauges = DriftGauges(FEATURES)
    assert gauges.on_scrape
    gauges.record(old, np.full((10, 3), [230.0, 10.0, 50.0]), np.zeros(10, dtype=bool))
    assert gauge("feature_window_mean", feature="voltage") == 230.0
    assert gauge("drift_window_readings") == 10
    gauges.record(old, np.full((30, 3), [240.0, 10.0, 50.0]), np.ones(30, dtype=bool))
    assert gauge("feature_window_mean", feature="voltage") == pytest.approx(237.5)  # read now, not at the batch
    assert gauge("anomaly_ratio_window") == 0.75
    DriftGauges(FEATURES)  # a swapped-in model's gauges: nothing scored with it yet
    assert gauge("drift_window_readings") == 40
    gauges.record(new, np.full((5, 3), [231.0, 10.0, 50.0]), np.zeros(5, dtype=bool))
    assert gauge("drift_window_readings") == 5
    assert gauge("feature_window_mean", feature="voltage") == 231.0
