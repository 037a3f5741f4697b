"""``gridwatch stream`` against a real NATS server: every reading one result, equal to /predict's, nothing lost.

Each test starts nats-server on free localhost ports with a store of its own, and the consumer as a real process.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from app.detector.loading import load_detector
from app.serving.app import create_app
from app.serving.settings import Settings
from app.sim import GridSimulator
from tests.stream.support import (
    DEADLETTERS,
    RESULTS,
    NatsServer,
    StreamProcess,
    publish_batches,
    publish_raw,
    read_all,
    run,
    stream_count,
    wait_for_count,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def broker(tmp_path: Path):
    with NatsServer(tmp_path / "jetstream") as server:
        yield server


def readings_of(seed: int, n: int, sensor: str) -> list[dict[str, Any]]:
    """``n`` simulated readings with a timestamp each (unique per sensor) and a few anomalies."""
    batch = GridSimulator(seed=seed, anomaly_rate=0.02, interval_s=1.0).batch(n)
    return [{**record, "sensor_id": sensor} for record in batch.to_records(ground_truth=False)]


def predict_scores(model_dir: Path, readings: list[dict[str, Any]]) -> list[float]:
    """What POST /predict answers for the same readings, through the real application."""
    settings = Settings(model_dir=model_dir, train_if_missing=False)
    detector = load_detector(settings.model_store(), train_if_missing=False)  # the version the consumer serves
    scores: list[float] = []
    with TestClient(create_app(settings, detector=detector)) as client:
        for start in range(0, len(readings), 10_000):
            answer = client.post("/predict", json={"readings": readings[start : start + 10_000]})
            assert answer.status_code == 200, answer.text
            scores += [prediction["score"] for prediction in answer.json()["predictions"]]
    return scores


def publish_mqtt(url: str, messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Publish each reading as a device does: one MQTT message, QoS 1, waited for."""
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-feeder")
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = [client.publish(topic, json.dumps(reading), qos=1) for topic, reading in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def test_every_reading_gets_exactly_one_result_with_the_score_predict_gives(broker: NatsServer, model_dir: Path):
    """100,000 readings from 20 sensors, 2,000 of them over MQTT one by one, the rest as NATS batches."""
    sensors = [f"feeder-{f}.sensor-{s}" for f in range(4) for s in range(5)]
    per_sensor = 5_000
    readings = {tokens: readings_of(n, per_sensor, tokens) for n, tokens in enumerate(sensors)}
    with StreamProcess(broker.nats_url, model_dir) as consumer:
        mqtt_sensors = sensors[:2]
        publish_mqtt(
            broker.mqtt_url,
            [
                (f"grid/readings/{tokens.replace('.', '/')}", reading)
                for tokens in mqtt_sensors
                for reading in readings[tokens][:1_000]
            ],
        )
        batches = [
            (tokens, readings[tokens][start : start + 250])
            for tokens in sensors
            for start in range(1_000 if tokens in mqtt_sensors else 0, per_sensor, 250)
        ]
        run(publish_batches(broker.nats_url, batches))
        total = len(sensors) * per_sensor
        assert wait_for_count(broker.nats_url, RESULTS, total) >= total
        results = run(read_all(broker.nats_url, RESULTS, "grid.scored.>"))
        anomalies = run(read_all(broker.nats_url, RESULTS, "grid.anomalies.>"))
        consumed = consumer.metric("stream_readings_consumed_total")

    assert len(results) == total
    keys = Counter((body["sensor"], body["timestamp"]) for body, _ in results)
    assert len(keys) == total, "a reading with two results, or two readings with one"
    expected_keys = {(tokens, reading["timestamp"]) for tokens, rows in readings.items() for reading in rows}
    assert set(keys) == expected_keys
    by_key = {(body["sensor"], body["timestamp"]): body for body, _ in results}
    everything = [reading for rows in readings.values() for reading in rows]
    predicted = predict_scores(model_dir, everything)
    streamed = [by_key[(reading["sensor_id"], reading["timestamp"])]["score"] for reading in everything]
    assert np.array_equal(np.array(streamed), np.array(predicted)), "the stream scores as /predict scores"
    anomalies_expected = sum(1 for body, _ in results if body["anomaly"])
    assert len(anomalies) == anomalies_expected > 0
    assert {body["model_version"] for body, _ in results} == {results[0][0]["model_version"]}
    # Every reading was taken at least once; more when a delivery outlived STREAM_ACK_WAIT (2 s here) on a loaded
    # machine: a fetch of 500 messages here holds 125,000 readings. Such a redelivery is the promise working, and
    # the results above are exactly once all the same.
    assert consumed >= total


def test_poison_messages_are_dead_lettered_with_their_reason_and_the_rest_is_scored(
    broker: NatsServer, model_dir: Path
):
    good = readings_of(3, 40, "feeder-0.sensor-0")
    bad_reading = {"voltage": "high", "current": 10.0, "frequency": 50.0}
    poison = [
        ("feeder-0.sensor-0", b"not json at all"),
        ("feeder-0.sensor-0", b"[1, 2, 3]"),
        ("feeder-0.sensor-0", json.dumps({"voltage": 230.0, "current": 10.0}).encode()),
        ("feeder-0.sensor-0", json.dumps({"readings": [good[0], bad_reading, good[1]]}).encode()),
        ("feeder-0.sensor-0", b'{"voltage": 230.0, "current": 10.0, "frequency": NaN}'),
        ("feeder-0.sensor-0", json.dumps({"voltage": 230.0, "current": 10.0, "frequency": 50.0,
                                          "timestamp": "yesterday"}).encode()),
    ]  # fmt: skip
    with StreamProcess(broker.nats_url, model_dir) as consumer:
        run(publish_raw(broker.nats_url, poison[:2]))
        run(publish_batches(broker.nats_url, [("feeder-0.sensor-0", good[2:20])]))
        run(publish_raw(broker.nats_url, poison[2:]))
        run(publish_batches(broker.nats_url, [("feeder-0.sensor-0", good[20:])]))
        assert wait_for_count(broker.nats_url, RESULTS, 40) >= 40
        assert wait_for_count(broker.nats_url, DEADLETTERS, 6) >= 6
        reasons = {
            reason: consumer.metric("stream_dead_letters_total", f'{{reason="{reason}"}}')
            for reason in ("not_json", "bad_shape", "missing_field", "invalid_value", "max_deliveries")
        }
    results = run(read_all(broker.nats_url, RESULTS, "grid.scored.>"))
    assert sorted(body["timestamp"] for body, _ in results if body["sensor"] == "feeder-0.sensor-0") == sorted(
        reading["timestamp"] for reading in good
    )
    letters = run(read_all(broker.nats_url, DEADLETTERS, "grid.deadletter.>"))
    assert Counter(headers["Gridwatch-Reason"] for _, headers in letters) == {
        "not_json": 2,  # not JSON, and the NaN literal JSON has no word for
        "bad_shape": 1,  # a JSON array
        "missing_field": 1,
        "invalid_value": 2,  # "high", and a timestamp that is no time
    }
    assert reasons == {"not_json": 2, "bad_shape": 1, "missing_field": 1, "invalid_value": 2, "max_deliveries": 0}
    inside_batch = [body for body, headers in letters if headers["Gridwatch-Reason"] == "invalid_value"]
    assert {"voltage": "high", "current": 10.0, "frequency": 50.0} in inside_batch  # only the bad reading
    assert all(headers["Gridwatch-Detail"] for _, headers in letters)


def test_sigterm_finishes_the_batch_in_hand_and_leaves_nothing_unacknowledged(broker: NatsServer, model_dir: Path):
    sensors = [f"feeder-{f}.sensor-0" for f in range(10)]
    batches = [(tokens, readings_of(n, 2_000, tokens)) for n, tokens in enumerate(sensors)]
    consumer = StreamProcess(broker.nats_url, model_dir, STREAM_BATCH="50").start()
    try:
        run(
            publish_batches(
                broker.nats_url, [(t, rows[i : i + 100]) for t, rows in batches for i in range(0, 2_000, 100)]
            )
        )
        wait_for_count(broker.nats_url, RESULTS, 1)  # consuming
        code = consumer.stop(signal.SIGTERM, timeout=30)
    finally:
        consumer.stop()
    assert code == 0, consumer.log()[-3000:]
    info = run(_consumer_info(broker.nats_url))
    assert info.num_ack_pending == 0, "a message in hand was left unacknowledged"
    scored = run(read_all(broker.nats_url, RESULTS, "grid.scored.>"))
    acknowledged_messages = info.delivered.stream_seq - info.num_ack_pending
    assert len(scored) >= acknowledged_messages  # every acknowledged message has its results
    assert "stopping: finishing the batch in hand" in consumer.log()


async def _consumer_info(url: str):
    import nats

    client = await nats.connect(url)
    try:
        return await client.jetstream().consumer_info("GRID_READINGS", "gridwatch-scorer")
    finally:
        await client.close()


def _exactly_once(url: str, sent: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every reading sent has exactly one result: no loss, no duplicate. Returns the results in stream order."""
    total = sum(len(rows) for rows in sent.values())
    assert wait_for_count(url, RESULTS, total) >= total
    results = [body for body, _ in run(read_all(url, RESULTS, "grid.scored.>"))]
    keys = Counter((body["sensor"], body["timestamp"]) for body in results)
    duplicates = {key: count for key, count in keys.items() if count > 1}
    assert duplicates == {}, f"{len(duplicates)} readings with more than one result"
    expected = {(tokens, reading["timestamp"]) for tokens, rows in sent.items() for reading in rows}
    assert set(keys) == expected, f"{len(expected - set(keys))} readings without a result"
    return results


def _readings_by_sensor(sensors: int, per_sensor: int, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    tokens = [f"feeder-{n // 5}.sensor-{n % 5}" for n in range(sensors)]
    return {name: readings_of(seed + n, per_sensor, name) for n, name in enumerate(tokens)}


def _as_messages(sent: dict[str, list[dict[str, Any]]], size: int) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(tokens, rows[i : i + size]) for tokens, rows in sent.items() for i in range(0, len(rows), size)]


def test_a_consumer_killed_three_times_mid_stream_loses_nothing_and_duplicates_nothing(
    broker: NatsServer, model_dir: Path
):
    sent = _readings_by_sensor(20, 3_000)
    messages = _as_messages(sent, 100)
    total = sum(len(rows) for rows in sent.values())
    consumer = StreamProcess(broker.nats_url, model_dir, STREAM_BATCH="20").start()
    counted = Counter[str]()

    def tally(process: StreamProcess) -> None:
        for name in ("stream_redeliveries_total", "stream_results_duplicate_total", "stream_results_published_total"):
            counted[name] += int(process.metric(name))

    try:
        run(publish_batches(broker.nats_url, messages))
        for kill in range(1, 4):  # kill it while it works, at a quarter, a half and three quarters of the backlog
            wait_for_count(broker.nats_url, RESULTS, total * kill // 4)
            tally(consumer)  # what it did until a moment before it dies
            consumer.stop(signal.SIGKILL)
            consumer = StreamProcess(broker.nats_url, model_dir, STREAM_BATCH="20").start()
        results = _exactly_once(broker.nats_url, sent)
        tally(consumer)
    finally:
        consumer.stop()
    info = run(_consumer_info(broker.nats_url))
    assert info.num_ack_pending == 0
    assert info.num_pending == 0
    assert run(stream_count(broker.nats_url, DEADLETTERS)) == 0
    print(f"\nkills: 3, readings sent {total}, results {len(results)}, counted {dict(counted)}")


def test_two_consumers_share_one_durable_consumer_and_split_the_work(broker: NatsServer, model_dir: Path):
    sent = _readings_by_sensor(10, 4_000, seed=50)
    with (
        StreamProcess(broker.nats_url, model_dir, STREAM_BATCH="10") as first,
        StreamProcess(broker.nats_url, model_dir, STREAM_BATCH="10") as second,
    ):
        run(publish_batches(broker.nats_url, _as_messages(sent, 50)))
        _exactly_once(broker.nats_url, sent)
        shares = [first.metric("stream_readings_consumed_total"), second.metric("stream_readings_consumed_total")]
    assert sum(shares) >= 40_000
    assert min(shares) > 0, f"one consumer did all the work: {shares}"


def test_the_broker_killed_and_restarted_on_its_store_loses_nothing(broker: NatsServer, model_dir: Path):
    before = _readings_by_sensor(10, 2_000, seed=100)
    after = _readings_by_sensor(10, 2_000, seed=200)
    after = {f"{tokens}-late": rows for tokens, rows in after.items()}
    with StreamProcess(broker.nats_url, model_dir, STREAM_BATCH="20") as consumer:
        run(publish_batches(broker.nats_url, _as_messages(before, 100)))
        wait_for_count(broker.nats_url, RESULTS, 5_000)
        broker.stop(signal.SIGKILL)
        broker.start()  # the same ports and store
        run(publish_batches(broker.nats_url, _as_messages(after, 100)))
        _exactly_once(broker.nats_url, {**before, **after})
        assert consumer.metric("stream_reconnects_total") >= 1
        assert consumer.metric("stream_connected") == 1


def test_a_promotion_while_streaming_switches_the_model_version_exactly_once(broker: NatsServer, tmp_path: Path):
    from app.detector.model import ModelConfig
    from app.detector.registry import ModelStore
    from app.detector.training import train_version

    store = ModelStore(tmp_path / "models")
    first, _ = train_version(store, ModelConfig(n_estimators=20, max_samples=256, train_samples=4_000), promote=True)
    second, _ = train_version(
        store, ModelConfig(n_estimators=20, max_samples=256, train_samples=4_000, random_state=7), promote=False
    )
    sent = {"feeder-0.sensor-0": readings_of(9, 20_000, "feeder-0.sensor-0")}
    messages = _as_messages(sent, 20)
    with StreamProcess(broker.nats_url, store.root, STREAM_BATCH="5", MODEL_POLL_INTERVAL="0.1") as consumer:
        run(publish_batches(broker.nats_url, messages[:300]))
        wait_for_count(broker.nats_url, RESULTS, 2_000)
        store.promote(second.version)
        run(publish_batches(broker.nats_url, messages[300:]))
        results = _exactly_once(broker.nats_url, sent)
        swaps = consumer.metric("model_swaps_total", '{result="swapped"}')
    versions = [body["model_version"] for body in sorted(results, key=lambda body: (body["sequence"], body["index"]))]
    changes = [n for n in range(1, len(versions)) if versions[n] != versions[n - 1]]
    assert versions[0] == first.version
    assert versions[-1] == second.version
    assert len(changes) == 1, f"the version changed {len(changes)} times"
    assert swaps == 1


def test_results_carry_the_explanation_stream_explain_asks_for(broker: NatsServer, model_dir: Path):
    """STREAM_EXPLAIN=anomalies: a voltage spike's result says voltage, on both subjects; a normal reading's result
    carries no explanation; the explanation is /predict?explain=true's."""
    records = GridSimulator(seed=5, interval_s=1.0).batch(40).to_records(ground_truth=False)
    normal = [{**record, "sensor_id": "feeder-1.sensor-1"} for record in records]
    spike = {**normal[-1], "timestamp": "2026-12-04T06:00:00Z", "voltage": 285.0}
    with StreamProcess(broker.nats_url, model_dir, STREAM_EXPLAIN="anomalies"):
        run(publish_batches(broker.nats_url, [("feeder-1.sensor-1", [*normal, spike])]))
        assert wait_for_count(broker.nats_url, RESULTS, len(normal) + 2) >= len(normal) + 2
        results = [body for body, _ in run(read_all(broker.nats_url, RESULTS, "grid.scored.>"))]
        anomalies = [body for body, _ in run(read_all(broker.nats_url, RESULTS, "grid.anomalies.>"))]
    by_time = {body["timestamp"]: body for body in results}
    explained = by_time[spike["timestamp"]]
    assert explained["anomaly"] is True
    assert explained["explanation"]["top_feature"] == "voltage"
    assert [a["explanation"] for a in anomalies if a["timestamp"] == spike["timestamp"]] == [explained["explanation"]]
    assert all("explanation" not in body for body in results if not body["anomaly"])
    settings = Settings(model_dir=model_dir, train_if_missing=False)
    detector = load_detector(settings.model_store(), train_if_missing=False)
    with TestClient(create_app(settings, detector=detector)) as client:
        reading = {key: spike[key] for key in ("voltage", "current", "frequency")}
        answer = client.post("/predict?explain=true", json={"readings": [reading]}).json()
    assert answer["predictions"][0]["explanation"] == explained["explanation"]
