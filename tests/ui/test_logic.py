"""The UI's logic without Streamlit: the client on the wire, the rolling window, the detector statistics, the
traffic log, the load actions and the live session. Fast: a scripted stub backend stands in for the model."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from app.tools.processes import free_port
from tests.support import ROOT, Answer, StubBackend
from tests.ui.support import STUB_CONTRIBUTIONS, scoring_route, stub_explanation
from ui.client import BackendClient, BackendError, ErrorKind
from ui.config import (
    BATCH_SIZE,
    DEFAULT_BACKEND_URL,
    LOAD_REQUESTS,
    LOAD_SECONDS,
    LOAD_THREADS,
    WHY_READINGS,
    backend_url_from_env,
    nats_url_from_env,
)
from ui.detection import DetectionStats, Outcome, outcomes
from ui.live import BackendState, LiveSession, StreamSettings, refresh_backend, stream_tick
from ui.load import (
    LoadTally,
    SustainedLoad,
    burst,
    concurrent_burst,
    load_payloads,
    make_sender,
)
from ui.model_info import model_summary
from ui.traffic import RequestRecord, TrafficLog, timed_predict
from ui.why import (
    NOT_FLAGGED,
    UNAVAILABLE,
    WHY_COLUMNS,
    FlaggedLog,
    FlaggedReading,
    details_frame,
    headline,
    parse_explanation,
    why_frame,
)
from ui.window import RollingWindow

EXPLAIN_PATH = "/predict?explain=true"

READY_HEALTH = {
    "status": "ok",
    "model": "isolation_forest",
    "features": ["voltage", "current", "frequency"],
    "model_version": "abc123def456",
    "instance": "stub:1",
    "pod": None,
    "node": None,
}


@pytest.fixture
def stub():
    with StubBackend() as backend:
        backend.route("GET", "/health", Answer(200, READY_HEALTH))
        backend.route("GET", "/model", Answer(200, {"model_version": "abc123def456", "config": {}}))
        backend.route("POST", "/predict", scoring_route())
        backend.route("POST", EXPLAIN_PATH, scoring_route(explain=True))
        yield backend


# --- configuration -------------------------------------------------------------------------------------------


def test_backend_url_comes_from_the_environment_without_trailing_slash():
    assert backend_url_from_env({}) == DEFAULT_BACKEND_URL == "http://localhost:8000"
    assert backend_url_from_env({"BACKEND_URL": "  "}) == DEFAULT_BACKEND_URL
    assert backend_url_from_env({"BACKEND_URL": "http://gridwatch-api:8000/"}) == "http://gridwatch-api:8000"


def test_nats_url_set_means_subscribe_at_once_and_unset_offers_the_consumers_default():
    assert nats_url_from_env({"NATS_URL": " nats://gridwatch-nats:4222 "}) == ("nats://gridwatch-nats:4222", True)
    assert nats_url_from_env({}) == ("nats://127.0.0.1:4222", False), "the README's default for NATS_URL"
    assert nats_url_from_env({"NATS_URL": "  "}) == ("nats://127.0.0.1:4222", False)


# --- client ----------------------------------------------------------------------------------------------------


def test_client_scores_a_batch_and_says_who_answered(stub):
    client = BackendClient(stub.url)
    result = client.predict([{"voltage": 230.0, "current": 10.0, "frequency": 50.0}, {"voltage": 400.0}])
    assert result.flags.tolist() == [False, True]
    assert result.scores.shape == (2,)
    assert result.anomalies == 1
    assert result.served_by == "stub:1"
    assert result.latency_s > 0
    assert stub.requests[-1]["body"]["readings"][1] == {"voltage": 400.0}


def test_client_reads_health_ready_and_not_ready(stub):
    health = BackendClient(stub.url).health()
    assert health.ready
    assert (health.status, health.model_version, health.instance) == ("ok", "abc123def456", "stub:1")

    stub.route("GET", "/health", Answer(503, {"status": "loading", "reason": "model is loading"}, {"Retry-After": "5"}))
    health = BackendClient(stub.url).health()
    assert not health.ready
    assert (health.status, health.reason) == ("loading", "model is loading")


def test_keep_alive_reuses_one_connection_and_new_connection_mode_opens_one_per_request(stub):
    keep_alive = BackendClient(stub.url)
    for _ in range(5):
        keep_alive.predict([{"voltage": 230.0, "current": 10.0, "frequency": 50.0}])
    ports = {r["client_port"] for r in stub.requests}
    assert len(ports) == 1
    keep_alive.close()

    stub.requests.clear()
    fresh = BackendClient(stub.url, new_connection_each_request=True)
    for _ in range(5):
        fresh.predict([{"voltage": 230.0, "current": 10.0, "frequency": 50.0}])
    assert len({r["client_port"] for r in stub.requests}) == 5
    assert {r["connection"] for r in stub.requests} == {"close"}


def test_unreachable_backend_is_one_plain_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendError) as caught:
        BackendClient(url).health()
    error = caught.value
    assert error.kind is ErrorKind.unreachable
    assert error.unreachable
    assert error.message == f"Backend unreachable at {url}: Connection refused"


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host", "http://", "http://host:8000/?x=1"])
def test_a_url_that_is_not_http_is_refused_before_any_request(url):
    with pytest.raises(BackendError) as caught:
        BackendClient(url).predict([{"voltage": 1.0}])
    assert caught.value.kind is ErrorKind.bad_url
    assert "http(s) URL" in caught.value.message or "query or fragment" in caught.value.message


def test_validation_errors_name_the_row_and_field(stub):
    detail = [
        {"type": "missing", "loc": ["body", "readings", 3, "voltage"], "msg": "Field required"},
        {"type": "float_type", "loc": ["body", "readings", 4, "current"], "msg": "Input should be a number"},
    ]
    stub.route("POST", "/predict", Answer(422, {"detail": detail}))
    with pytest.raises(BackendError) as caught:
        BackendClient(stub.url).predict([{"voltage": 1.0}])
    error = caught.value
    assert (error.kind, error.status) == (ErrorKind.http, 422)
    assert not error.unreachable
    assert "422" in error.message
    assert "Field required at readings.3.voltage (and 1 more)" in error.message


def test_not_ready_predict_carries_retry_after(stub):
    stub.route("POST", "/predict", Answer(503, {"detail": "model is loading"}, {"Retry-After": "5"}))
    with pytest.raises(BackendError) as caught:
        BackendClient(stub.url).predict([{"voltage": 1.0}])
    assert caught.value.retry_after_s == 5.0
    assert caught.value.message.endswith("model is loading (retry after 5 s)")


def test_a_proxy_error_page_is_quoted_briefly(stub):
    page = b"<html><body><h1>502 Bad Gateway</h1>" + b"x" * 500 + b"</body></html>"
    stub.route("POST", "/predict", Answer(502, raw=page, headers={"Content-Type": "text/html"}))
    with pytest.raises(BackendError) as caught:
        BackendClient(stub.url).predict([{"voltage": 1.0}])
    assert caught.value.status == 502
    assert "502 Bad Gateway" in caught.value.message
    assert len(caught.value.message) < 300


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, raw=b"<html>hello</html>", headers={"Content-Type": "text/html"}),
        Answer(200, {"predictions": "nope"}),
        Answer(200, {"predictions": [], "anomalies": 0, "total": 0, "served_by": "x"}),
    ],
    ids=["html", "wrong-shape", "wrong-count"],
)
def test_an_answer_that_is_not_gridwatchs_is_a_bad_answer(stub, answer):
    stub.route("POST", "/predict", answer)
    with pytest.raises(BackendError) as caught:
        BackendClient(stub.url).predict([{"voltage": 1.0}])
    assert caught.value.kind is ErrorKind.bad_answer


def test_a_backend_that_does_not_answer_times_out(stub):
    stub.hang("GET", "/health")
    with pytest.raises(BackendError) as caught:
        BackendClient(stub.url, timeout=(2.0, 0.2)).health()
    assert caught.value.kind is ErrorKind.timeout
    assert "within 0.2 s" in caught.value.message


# --- rolling window --------------------------------------------------------------------------------------------


def frame(values: range) -> pd.DataFrame:
    return pd.DataFrame({"n": list(values)})


def test_window_keeps_the_newest_rows_in_order():
    window = RollingWindow(5)
    assert window.frame.empty
    assert len(window) == 0
    window.append(frame(range(3)))
    window.append(frame(range(3, 7)))
    assert window.frame["n"].tolist() == [2, 3, 4, 5, 6]
    window.append(frame(range(100, 120)))  # a batch larger than the window
    assert window.frame["n"].tolist() == [115, 116, 117, 118, 119]
    window.append(frame(range(0)))
    assert len(window) == 5


def test_window_resize_and_clear():
    window = RollingWindow(10)
    window.append(frame(range(10)))
    window.resize(3)
    assert window.frame["n"].tolist() == [7, 8, 9]
    window.resize(6)
    window.append(frame(range(10, 14)))
    assert window.frame["n"].tolist() == [8, 9, 10, 11, 12, 13]
    window.clear()
    assert window.frame.empty
    with pytest.raises(ValueError, match="at least 1"):
        RollingWindow(0)


# --- detector statistics ----------------------------------------------------------------------------------------


def test_outcomes_name_each_cell_of_the_confusion_matrix():
    truth = np.array([True, True, False, False])
    flagged = np.array([True, False, True, False])
    assert outcomes(truth, flagged).tolist() == ["detected", "missed", "false alarm", "normal"]
    with pytest.raises(ValueError, match="shape"):
        outcomes(truth, flagged[:2])


def test_statistics_accumulate_precision_recall_and_per_kind_recall():
    stats = DetectionStats()
    assert (stats.precision, stats.recall, stats.f1, stats.flag_rate) == (None, None, None, None)
    stats.update(
        np.array([True, True, True, False, False, False]),
        np.array([True, True, False, True, False, False]),
        ["voltage_spike", "voltage_sag", "voltage_sag", None, None, None],
    )
    stats.update(np.array([False, True]), np.array([False, True]), [None, "extreme"])
    assert (stats.true_positives, stats.false_negatives, stats.false_positives, stats.true_negatives) == (3, 1, 1, 3)
    assert (stats.readings, stats.flagged, stats.injected) == (8, 4, 4)
    assert stats.precision == pytest.approx(0.75)
    assert stats.recall == pytest.approx(0.75)
    assert stats.f1 == pytest.approx(0.75)
    assert stats.flag_rate == pytest.approx(0.5)
    assert stats.false_positive_rate == pytest.approx(0.25)
    kinds = stats.kinds_frame().set_index("kind")
    assert kinds.loc["voltage_sag", "injected"] == 2
    assert kinds.loc["voltage_sag", "recall"] == pytest.approx(0.5)
    assert kinds.loc["extreme", "detected"] == 1
    confusion = stats.confusion_frame().set_index(["actual", "predicted"])["count"]
    assert confusion[("anomaly", "flagged")] == 3
    assert confusion[("normal", "not flagged")] == 3
    assert confusion.sum() == stats.readings
    with pytest.raises(ValueError, match="lengths differ"):
        stats.update(np.array([True]), np.array([True, False]), [None])


# --- traffic log and load actions --------------------------------------------------------------------------------


def record(ok: bool = True, latency_s: float = 0.01, served_by: str | None = "pod-a:1", at: float = 0.0):
    return RequestRecord(
        at=at or time.time(),
        source="test",
        ok=ok,
        latency_s=latency_s,
        served_by=served_by if ok else None,
        error=None if ok else "Backend unreachable at x: Connection refused",
    )


def test_traffic_log_is_bounded_and_counts_answers_per_instance():
    log = TrafficLog(capacity=3)
    for served_by in ["a", "b", "b", "c"]:
        log.add(record(served_by=served_by))
    assert len(log) == 3
    assert log.instances() == {"b": 2, "c": 1}
    frame = log.frame()
    assert list(frame.columns) == ["time", "source", "ok", "latency_ms", "served_by"]
    assert frame["latency_ms"].tolist() == pytest.approx([10.0, 10.0, 10.0])
    assert log.frame(since=time.time() + 60).empty
    log.clear()
    assert log.instances() == {}


def test_tally_reports_counts_percentiles_and_errors():
    tally = LoadTally()
    for ms in range(1, 101):
        tally.add(record(latency_s=ms / 1000, served_by="a" if ms % 4 else "b"))
    for _ in range(3):
        tally.add(record(ok=False))
    report = tally.report("test", duration_s=2.0)
    assert (report.requests, report.ok, report.errors) == (103, 100, 3)
    assert report.latency_ms["p50"] == pytest.approx(50.5)
    assert report.latency_ms["max"] == pytest.approx(100.0)
    assert report.instances == {"a": 75, "b": 25}
    assert report.error_messages == {"Backend unreachable at x: Connection refused": 3}
    assert report.throughput == pytest.approx(51.5)


def test_burst_sends_exactly_n_requests_back_to_back():
    threads = set()

    def send():
        threads.add(threading.get_ident())
        return record()

    report = burst(send, 25)
    assert (report.requests, report.ok, report.action) == (25, 25, "Burst Load")
    assert threads == {threading.get_ident()}


def test_concurrent_burst_really_runs_its_threads_in_parallel():
    threads = 4
    barrier = threading.Barrier(threads, timeout=30)  # only passes if `threads` requests are in flight at once
    calls = []
    lock = threading.Lock()

    def send():
        with lock:
            calls.append(threading.get_ident())
            first_wave = len(calls) <= threads
        if first_wave:
            barrier.wait()
        return record()

    report = concurrent_burst(send, 40, threads)
    assert (report.requests, report.ok, report.errors) == (40, 40, 0)
    assert len(set(calls)) == threads


@pytest.mark.parametrize(
    ("action", "arguments"),
    [
        (burst, (0,)),
        (burst, (int(LOAD_REQUESTS.high) + 1,)),
        (concurrent_burst, (10, int(LOAD_THREADS.high) + 1)),
        (concurrent_burst, (int(LOAD_REQUESTS.high) + 1, 2)),
    ],
)
def test_load_actions_refuse_more_than_their_bounds(action, arguments):
    with pytest.raises(ValueError, match="must be within"):
        action(record, *arguments)


def test_sustained_load_is_bounded_in_threads_and_seconds():
    with pytest.raises(ValueError, match="threads"):
        SustainedLoad(record, threads=int(LOAD_THREADS.high) + 1, seconds=1)
    with pytest.raises(ValueError, match="seconds"):
        SustainedLoad(record, threads=1, seconds=LOAD_SECONDS.high + 1)


def paced_sender(pause: threading.Event):
    def send():
        pause.wait(0.005)  # stands in for the request's round trip
        return record()

    return send


def test_sustained_load_stops_by_itself_when_its_time_is_up():
    load = SustainedLoad(paced_sender(threading.Event()), threads=3, seconds=1).start()
    assert load.running
    assert load.wait(timeout=60), "the sustained load did not end by itself"
    report = load.report()
    assert not report.running
    assert not report.stopped_early
    assert report.ok == report.requests > 0
    assert report.duration_s >= 1.0
    with pytest.raises(RuntimeError, match="runs once"):
        load.start()


def test_sustained_load_stops_early_when_asked():
    load = SustainedLoad(paced_sender(threading.Event()), threads=2, seconds=LOAD_SECONDS.high).start()
    deadline = time.monotonic() + 30
    while load.report().requests == 0 and time.monotonic() < deadline:
        load.wait(0.01)
    load.stop()
    assert load.wait(timeout=30), "stop() did not end the sustained load"
    report = load.report()
    assert report.stopped_early
    assert report.duration_s < LOAD_SECONDS.high


def test_sender_records_every_request_and_never_raises(stub):
    log = TrafficLog()
    payloads = load_payloads(8, anomaly_rate=0.0, anomaly_kinds=[], variants=3, seed=1)
    assert len(payloads) == 3
    assert all(len(p) == 8 and "is_anomaly" not in p[0] for p in payloads)
    send = make_sender(BackendClient(stub.url), payloads, log, source="burst")
    assert burst(send, 6).ok == 6
    assert [len(r["body"]["readings"]) for r in stub.requests] == [8] * 6
    assert stub.requests[0]["body"] == stub.requests[3]["body"]  # the payloads are used in turn

    stub.route("POST", "/predict", Answer(500, {"detail": "Internal Server Error"}))
    report = burst(send, 2)
    assert (report.ok, report.errors) == (0, 2)
    assert log.instances() == {"stub:1": 6}
    assert sum(not r.ok for r in log.snapshot()) == 2
    with pytest.raises(ValueError, match="batch size"):
        load_payloads(int(BATCH_SIZE.high) + 1, anomaly_rate=0.0, anomaly_kinds=[])


def test_timed_predict_records_an_answer_and_a_failure_the_same_way_for_every_caller(stub):
    client = BackendClient(stub.url)
    (readings,) = load_payloads(4, anomaly_rate=0.0, anomaly_kinds=[], variants=1, seed=1)
    record, result = timed_predict(client, readings, source="stream")
    assert not isinstance(result, BackendError)
    assert (record.source, record.ok, record.served_by, record.error) == ("stream", True, "stub:1", None)
    assert record.latency_s == result.latency_s

    stub.route("POST", "/predict", Answer(500, {"detail": "Internal Server Error"}))
    record, error = timed_predict(client, readings, source="burst")
    assert isinstance(error, BackendError)
    assert (record.source, record.ok, record.served_by, record.error) == ("burst", False, None, error.message)
    assert record.latency_s > 0


# --- live session -----------------------------------------------------------------------------------------------


def test_generate_scores_a_batch_and_fills_window_stats_and_traffic(stub):
    live = LiveSession(seed=7)
    settings = StreamSettings(batch_size=50, anomaly_rate=0.2, window=120)
    assert live.generate(BackendClient(stub.url), settings)
    frame = live.window.frame
    assert len(frame) == 50
    assert list(frame.columns) == [
        "time",
        "voltage",
        "current",
        "frequency",
        "truth",
        "kind",
        "flagged",
        "score",
        "outcome",
        "served_by",
        "model_version",
        *WHY_COLUMNS,
    ]
    assert set(frame["model_version"]) == {"stub-v1"}, "each row names the version that scored its batch"
    assert frame["flagged"].tolist() == (frame["voltage"] > 300).tolist()
    assert set(frame["outcome"]) <= {o.value for o in Outcome}
    assert live.stats.readings == 50
    assert live.stats.injected == int(frame["truth"].sum())
    assert live.last_batch is not None
    assert live.last_batch.readings == 50
    assert live.last_batch.model_version == "stub-v1"
    assert live.traffic.instances() == {"stub:1": 1}
    assert frame["time"].is_monotonic_increasing


def test_inject_extreme_produces_a_flagged_detected_row(stub):
    live = LiveSession(seed=1)
    assert live.inject_extreme(BackendClient(stub.url), StreamSettings())
    row = live.window.frame.iloc[-1]
    assert (row["kind"], bool(row["truth"]), bool(row["flagged"]), row["outcome"]) == (
        "extreme",
        True,
        True,
        "detected",
    )
    assert live.stats.true_positives == 1


def test_stream_tick_scores_only_while_streaming(stub):
    live = LiveSession(seed=3)
    client = BackendClient(stub.url)
    settings = StreamSettings(batch_size=10)
    assert not stream_tick(live, client, settings)
    assert live.stats.readings == 0
    live.streaming = True
    assert stream_tick(live, client, settings)
    assert stream_tick(live, client, settings)
    assert live.stats.readings == 20
    assert live.batches_scored == 2


def test_changing_anomaly_settings_continues_the_clock(stub):
    live = LiveSession(seed=5)
    client = BackendClient(stub.url)
    live.generate(client, StreamSettings(batch_size=10, anomaly_rate=0.0))
    live.generate(client, StreamSettings(batch_size=10, anomaly_rate=0.5, anomaly_kinds=("voltage_sag",)))
    times = live.window.frame["time"]
    assert times.diff().dropna().dt.total_seconds().tolist() == [1.0] * 19
    assert set(live.window.frame["kind"].iloc[10:]) <= {"", "voltage_sag"}


def test_no_anomaly_kind_selected_means_nothing_is_injected(stub):
    live = LiveSession(seed=9)
    live.generate(BackendClient(stub.url), StreamSettings(batch_size=200, anomaly_rate=0.5, anomaly_kinds=()))
    assert live.stats.injected == 0


def test_a_failed_batch_is_reported_and_not_shown():
    live = LiveSession(seed=2)
    client = BackendClient(f"http://127.0.0.1:{free_port()}")
    assert not live.generate(client, StreamSettings(batch_size=10))
    assert live.last_error is not None
    assert live.last_error.kind is ErrorKind.unreachable
    assert live.window.frame.empty
    assert live.stats.readings == 0
    assert (live.batches_failed, len(live.traffic)) == (1, 1)


def test_a_success_clears_the_last_error_and_reset_forgets_everything(stub):
    live = LiveSession(seed=4)
    live.generate(BackendClient(f"http://127.0.0.1:{free_port()}"), StreamSettings(batch_size=5))
    client = BackendClient(stub.url)
    live.generate(client, StreamSettings(batch_size=5))
    assert live.last_error is None
    live.streaming = True
    live.reset()
    assert live.window.frame.empty
    assert live.stats.readings == 0
    assert len(live.traffic) == 0
    assert live.last_batch is None
    assert live.streaming  # reset clears the data, not the stream


def test_window_setting_bounds_the_charts_not_the_counters(stub):
    live = LiveSession(seed=6)
    client = BackendClient(stub.url)
    for _ in range(3):
        live.generate(client, StreamSettings(batch_size=80, window=100))
    assert len(live.window) == 100
    assert live.stats.readings == 240


def test_refresh_backend_fetches_health_then_model_and_reports_problems(stub):
    state = BackendState()
    client = BackendClient(stub.url)
    refresh_backend(state, client, max_age_s=60)
    assert state.ready
    assert state.model == {"model_version": "abc123def456", "config": {}}
    fetched = len(stub.requests)
    refresh_backend(state, client, max_age_s=60)  # fresh: no new request
    assert len(stub.requests) == fetched
    refresh_backend(state, client, max_age_s=60, force=True)  # same model version: /model is not fetched again
    assert [r["path"] for r in stub.requests[fetched:]] == ["/health"]

    stub.route("GET", "/health", Answer(503, {"status": "failed", "reason": "model failed to load: x"}))
    refresh_backend(state, client, max_age_s=60, force=True)
    assert not state.ready
    assert state.health is not None
    assert state.health.reason == "model failed to load: x"

    gone = BackendClient(f"http://127.0.0.1:{free_port()}")
    refresh_backend(state, gone, max_age_s=60)  # another URL is never "fresh"
    assert state.error is not None
    assert state.error.unreachable
    assert state.health is None
    assert state.model is None


# --- model metadata -----------------------------------------------------------------------------------------------


def test_model_summary_picks_the_facts_and_tolerates_missing_fields():
    metadata = {
        "model_version": "abc",
        "trained_at": "2026-01-01T00:00:00+00:00",
        "training": {"samples": 50000},
        "config": {"n_estimators": 100, "max_samples": 16384, "contamination": 0.002},
        "threshold": {"rule": "anomaly when score > 0"},
        "versions": {"sklearn": "1.6.1"},
        "evaluation": {"precision": 0.9221, "recall": 0.998, "f1": 0.959, "roc_auc": 0.9998, "readings": 20000},
    }
    summary = model_summary(metadata)
    assert summary.facts["trees x samples"] == "100 x 16384"
    assert summary.facts["contamination"] == 0.002
    assert (
        summary.evaluation
        == "precision 0.922 \u00b7 recall 0.998 \u00b7 F1 0.959 \u00b7 ROC-AUC 1.000 on 20,000 readings"
    )
    sparse = model_summary({"model_version": "abc", "config": "odd", "evaluation": None})
    assert sparse.facts["version"] == "abc"
    assert sparse.facts["trees x samples"] is None
    assert sparse.evaluation is None


# --- no scikit-learn, no numba ------------------------------------------------------------------------------------

BLOCK_BACKEND_LIBRARIES = """
import sys

class RefuseBackendLibraries:
    '''Behave like the UI image, which has neither scikit-learn nor numba (the backend's compiled kernels): the
    explanations reach the UI over HTTP, never from app.detector.'''
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"sklearn", "numba"}:
            raise ImportError(f"{name} is not installed in the UI image")
        return None

sys.meta_path.insert(0, RefuseBackendLibraries())
"""


def test_importing_the_ui_modules_imports_neither_scikit_learn_nor_numba():
    code = BLOCK_BACKEND_LIBRARIES + (
        "import ui.client, ui.live, ui.load, ui.charts, ui.views, ui.window, ui.detection, ui.traffic, ui.why\n"
        "import app.sim\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'sklearn', 'joblib', 'scipy', 'numba'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- what the charts draw -------------------------------------------------------------------------------------------


def _layers(chart) -> list[dict]:
    return chart.to_dict()["layer"]


def _marked_rows(layer: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """Applies the layer's own Vega-Lite `oneOf` filter to the frame: the rows this layer draws."""
    (predicate,) = [step["filter"] for step in layer.get("transform", []) if "filter" in step]
    return frame[frame[predicate["field"]].isin(predicate["oneOf"])]


def test_signal_and_score_charts_mark_every_anomaly_and_draw_the_threshold():
    from ui.charts import score_chart, signal_chart

    outcome = [Outcome.normal, Outcome.detected, Outcome.normal, Outcome.missed, Outcome.false_alarm, Outcome.normal]
    frame = pd.DataFrame(
        {
            "time": pd.date_range("2026-11-23", periods=6, freq="s"),
            "voltage": [230.0, 410.0, 229.0, 231.0, 228.0, 230.5],
            "current": 10.0,
            "frequency": 50.0,
            "score": [-0.2, 0.3, -0.1, -0.05, 0.02, -0.2],
            "outcome": [o.value for o in outcome],
            "kind": ["", "extreme", "", "voltage_sag", "", ""],
            "served_by": "pod-a",
        }
    )
    line, markers = _layers(signal_chart(frame, "voltage"))
    assert line["mark"]["type"] == "line"
    assert markers["mark"]["type"] == "point"
    assert list(_marked_rows(markers, frame).index) == [1, 3, 4]  # detected, missed, false alarm; not normals
    assert markers["encoding"]["color"]["field"] == "outcome"

    chart = score_chart(frame, threshold=0.15).to_dict()
    layers = chart["layer"]
    rules = [layer for layer in layers if layer["mark"]["type"] == "rule"]
    assert len(rules) == 1
    (threshold_data,) = [rows for rows in chart["datasets"].values() if "threshold" in rows[0]]
    assert threshold_data == [{"threshold": 0.15, "label": "threshold 0.15"}]
    markers = [layer for layer in layers if layer["mark"]["type"] == "point"]
    assert [list(_marked_rows(layer, frame).index) for layer in markers] == [[1, 3, 4]]


def test_a_backend_that_names_no_model_version_still_scores(stub):
    """Backends from before hot swaps answer without ``model_version``: the UI keeps working, the column is empty."""
    stub.route("POST", EXPLAIN_PATH, scoring_route(model_version=None))  # nor explanations, then
    live = LiveSession(seed=3)
    assert live.generate(BackendClient(stub.url), StreamSettings(batch_size=10, anomaly_rate=0.0, window=50))
    assert set(live.window.frame["model_version"]) == {""}
    assert live.last_batch is not None
    assert live.last_batch.model_version is None


# --- why a reading was flagged -----------------------------------------------------------------------------------

EXTREME = {"voltage": 410.0, "current": 12.0, "frequency": 50.0}


def test_an_explanation_in_the_apis_shape_is_read_feature_by_feature():
    explanation = parse_explanation(stub_explanation(EXTREME, flagged=True))
    assert explanation is not None
    assert explanation.top_feature == "voltage"
    assert [f.name for f in explanation.features] == ["voltage", "current", "frequency"]
    assert {f.name: f.contribution for f in explanation.features} == STUB_CONTRIBUTIONS
    voltage, current, frequency = explanation.features
    assert (voltage.value, voltage.band, voltage.limits, voltage.outside_limits) == (
        410.0,
        (227.5, 233.0),
        (207.0, 253.0),
        True,
    )
    assert voltage.z == pytest.approx((410.0 - 230.0) / 1.2)
    assert not voltage.in_band
    assert (current.limits, current.outside_limits) == (None, None), "current has no physical limit"
    assert frequency.in_band
    assert frequency.outside_limits is False

    uncredited = parse_explanation(stub_explanation(EXTREME, flagged=False))
    assert uncredited is not None
    assert uncredited.top_feature is None, "no tree isolated it: no top feature"


def _broken(change) -> dict:
    data = stub_explanation(EXTREME, flagged=True)
    change(data)
    return data


@pytest.mark.parametrize(
    "data",
    [
        None,
        "voltage",
        {"top_feature": "voltage"},
        {"top_feature": "voltage", "features": []},
        _broken(lambda d: d.update(top_feature="power")),
        _broken(lambda d: d["features"][0].pop("band")),
        _broken(lambda d: d["features"][0].update(band=[1.0])),
        _broken(lambda d: d["features"][1].update(contribution="a lot")),
        _broken(lambda d: d["features"].append(d["features"][0])),
    ],
    ids=["none", "text", "no-features", "empty", "unknown-top", "no-band", "short-band", "not-a-number", "twice"],
)
def test_an_explanation_the_ui_cannot_read_is_none_not_an_error(data):
    assert parse_explanation(data) is None


def test_tooltip_columns_say_why_for_flagged_readings_only():
    explanation = parse_explanation(stub_explanation(EXTREME, flagged=True))
    assert explanation is not None
    frame = why_frame([False, True, True], {1: explanation})
    assert list(frame.columns) == WHY_COLUMNS
    assert frame["top_feature"].tolist() == [NOT_FLAGGED, "voltage", UNAVAILABLE]
    explained = frame.iloc[1]
    assert (explained["share_voltage"], explained["share_current"], explained["share_frequency"]) == (
        "70 %",
        "20 %",
        "10 %",
    )
    assert explained["band_voltage"] == "above 227.5 to 233 V"
    assert explained["z_voltage"] == "+150.0"
    assert explained["limits_voltage"] == "OUTSIDE 207 to 253 V"
    assert explained["band_frequency"] == "inside 49.95 to 50.05 Hz"
    assert explained["limits_frequency"] == "inside 49.5 to 50.5 Hz"
    assert explained["limits_current"] == "none"
    for row in (0, 2):  # not flagged, and flagged without an explanation: nothing made up
        assert set(frame.iloc[row].drop("top_feature")) == {""}

    low = parse_explanation(stub_explanation({"voltage": 200.0, "current": 10.7, "frequency": 50.0}, flagged=True))
    assert low is not None
    assert why_frame([True], {0: low}).iloc[0]["band_voltage"] == "below 227.5 to 233 V"


def _flagged(second: int, explanation) -> FlaggedReading:
    return FlaggedReading(
        time=pd.Timestamp("2026-11-23 10:00:00", tz="UTC") + pd.Timedelta(seconds=second),
        score=0.1,
        outcome=Outcome.detected.value,
        kind="voltage_spike",
        explanation=explanation,
    )


def test_flagged_log_keeps_the_last_readings_and_charts_their_shares():
    explanation = parse_explanation(stub_explanation(EXTREME, flagged=True))
    log = FlaggedLog(capacity=3)
    log.extend(_flagged(second, explanation) for second in range(5))
    assert [r.label for r in log.readings] == ["10:00:02", "10:00:03", "10:00:04"]
    shares = log.contributions_frame()
    assert len(shares) == 3 * 3
    assert shares.groupby("reading")["contribution"].sum().round(9).tolist() == [1.0, 1.0, 1.0]
    assert set(shares["feature"]) == {"voltage", "current", "frequency"}
    log.clear()
    assert log.contributions_frame().empty


def test_details_and_headline_of_one_reading():
    reading = _flagged(0, parse_explanation(stub_explanation(EXTREME, flagged=True)))
    table = details_frame(reading.explanation)
    assert table["feature"].tolist() == ["voltage", "current", "frequency"]
    assert table["contribution"].tolist() == [0.7, 0.2, 0.1]
    assert table["EN 50160"].tolist() == ["OUTSIDE 207 to 253 V", "none", "inside 49.5 to 50.5 Hz"]
    assert headline(reading) == (
        "**voltage** has 70 % of the credit: 410 V, z +150.0, above its training band, outside the EN 50160 limits."
    )
    uncredited = _flagged(0, parse_explanation(stub_explanation(EXTREME, flagged=False)))
    assert headline(uncredited).startswith("No tree isolated this reading early")


def test_client_asks_for_explanations_only_when_told_and_reads_the_flagged_ones(stub):
    client = BackendClient(stub.url)
    normal = {"voltage": 230.0, "current": 10.0, "frequency": 50.0}
    plain = client.predict([EXTREME])
    assert plain.explanations is None
    assert stub.requests[-1]["path"] == "/predict"
    explained = client.predict([normal, EXTREME], explain=True)
    assert stub.requests[-1]["path"] == EXPLAIN_PATH
    assert explained.explanations is not None
    unflagged, flagged = explained.explanations
    assert unflagged is None, "sent, but not read: the UI shows why only for flagged readings"
    assert flagged is not None
    assert flagged.top_feature == "voltage"


def test_the_live_view_asks_why_in_its_batches_own_request(stub):
    """One request per batch, as before, with explain=true: a second request for the flagged readings would have
    the backend score them twice (its anomalies_total, drift window and shadow would count them twice)."""
    stub.route("POST", EXPLAIN_PATH, scoring_route(threshold_voltage=240.0, explain=True))  # flags voltage spikes
    live = LiveSession(seed=11)
    client = BackendClient(stub.url)
    assert live.generate(client, StreamSettings(batch_size=200, anomaly_rate=0.2, anomaly_kinds=("voltage_spike",)))
    assert [r["path"] for r in stub.requests] == [EXPLAIN_PATH]
    assert len(stub.requests[0]["body"]["readings"]) == 200
    frame = live.window.frame
    flagged = frame[frame["flagged"]]
    assert len(flagged) > WHY_READINGS, "the seed injects more voltage spikes than the panel keeps"
    assert set(flagged["top_feature"]) == {"voltage"}
    assert set(flagged["share_voltage"]) == {"70 %"}
    assert set(frame.loc[~frame["flagged"], "top_feature"]) == {NOT_FLAGGED}
    assert live.why_unavailable is None
    assert len(live.flagged) == WHY_READINGS
    assert [r.time for r in live.flagged.readings] == flagged["time"].tolist()[-WHY_READINGS:]
    assert live.traffic.instances() == {"stub:1": 1}

    live.reset()
    assert len(live.flagged) == 0
    assert live.why_unavailable is None


def test_a_backend_without_explanations_still_scores_and_the_reason_is_kept(stub):
    stub.route("POST", EXPLAIN_PATH, scoring_route())  # an older backend: the parameter is ignored
    live = LiveSession(seed=1)
    client = BackendClient(stub.url)
    assert live.inject_extreme(client, StreamSettings())
    row = live.window.frame.iloc[-1]
    assert (bool(row["flagged"]), row["top_feature"]) == (True, UNAVAILABLE)
    assert live.stats.flagged == 1
    assert live.last_error is None
    assert len(live.flagged) == 0
    assert live.why_unavailable is not None
    assert "sends none" in live.why_unavailable
    assert stub.url in live.why_unavailable

    assert live.generate(client, StreamSettings(batch_size=20, anomaly_rate=0.0))
    assert "sends none" in live.why_unavailable, "a batch without flags neither proves nor disproves it"

    stub.route("POST", EXPLAIN_PATH, scoring_route(explain=True))  # upgraded
    assert live.inject_extreme(client, StreamSettings())
    assert live.why_unavailable is None
    assert len(live.flagged) == 1


def test_an_explanation_the_ui_cannot_read_leaves_that_reading_unexplained(stub):
    def odd(body):
        answer = scoring_route(explain=True)(body)
        answer.body["predictions"][0]["explanation"] = {"top_feature": "voltage", "features": "voltage"}
        return answer

    stub.route("POST", EXPLAIN_PATH, odd)
    live = LiveSession(seed=1)
    assert live.inject_extreme(BackendClient(stub.url), StreamSettings())
    assert live.window.frame.iloc[-1]["top_feature"] == UNAVAILABLE
    assert live.stats.flagged == 1
    assert "not in a form this UI reads" in (live.why_unavailable or "")


def test_load_actions_never_ask_why(stub):
    send = make_sender(BackendClient(stub.url), [[EXTREME]], TrafficLog(), source="burst")
    burst(send, 3)
    assert [r["path"] for r in stub.requests] == ["/predict"] * 3


def test_flagged_markers_carry_why_in_their_tooltips_and_the_bars_stack_the_shares(stub):
    from ui.charts import contributions_chart, score_chart, signal_chart

    live = LiveSession(seed=1)
    client = BackendClient(stub.url)
    live.generate(client, StreamSettings(batch_size=30, anomaly_rate=0.0))
    live.inject_extreme(client, StreamSettings())
    frame = live.window.frame

    _line, markers = _layers(signal_chart(frame, "voltage"))
    titles = [t.get("title", t["field"]) for t in markers["encoding"]["tooltip"]]
    assert titles[-7:] == [
        "why: top feature",
        "voltage share",
        "current share",
        "frequency share",
        "voltage vs training band",
        "voltage z",
        "voltage EN 50160",
    ]
    chart = signal_chart(frame, "frequency").to_dict()
    (rows,) = chart["datasets"].values()
    flagged_row = rows[-1]
    assert flagged_row["top_feature"] == "voltage"
    assert flagged_row["share_voltage"] == "70 %"
    assert flagged_row["limits_frequency"] == "OUTSIDE 49.5 to 50.5 Hz", "an extreme reading breaks every limit"
    assert "band_voltage" not in flagged_row, "a signal chart sends its own signal's band only"
    score_titles = [t.get("title", t["field"]) for t in score_chart(frame).to_dict()["layer"][1]["encoding"]["tooltip"]]
    assert "why: top feature" in score_titles

    bars = contributions_chart(live.flagged.contributions_frame()).to_dict()
    assert bars["mark"]["type"] == "bar"
    assert bars["encoding"]["y"]["stack"] == "zero"
    assert bars["encoding"]["color"]["scale"]["domain"] == ["voltage", "current", "frequency"]
    (shares,) = bars["datasets"].values()
    assert [(r["reading"], r["feature"], r["contribution"]) for r in shares] == [
        (live.flagged.readings[0].label, feature, share) for feature, share in STUB_CONTRIBUTIONS.items()
    ]


def test_tooltips_give_a_readings_time_in_utc_to_the_second():
    """As the why-panel names readings. Vega-Lite has no ``formatType: utc`` (the tooltip showed NaN): a UTC time
    unit does it."""
    from ui.charts import score_chart, signal_chart, stream_chart

    frame = pd.DataFrame(
        {"time": pd.date_range("2026-11-23", periods=2, freq="s", tz="UTC"), "voltage": [230.0, 410.0],
         "score": [-0.2, 0.3], "outcome": ["normal", "detected"], "kind": ["", "extreme"], "served_by": "pod-a",
         "feeder": "f1", "sensor": "s1", "anomaly": [False, True], "model_version": "v1"}
    )  # fmt: skip
    for chart in (signal_chart(frame, "voltage"), score_chart(frame), stream_chart(frame)):
        tooltips = [t for layer in chart.to_dict()["layer"] for t in layer.get("encoding", {}).get("tooltip", [])]
        (time,) = [t for t in tooltips if t.get("field") == "time"]
        assert (time["timeUnit"], time["format"]) == ("utcyearmonthdatehoursminutesseconds", "%Y-%m-%d %H:%M:%S")
        assert "formatType" not in time
