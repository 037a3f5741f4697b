"""The Streamlit page run by ``streamlit.testing.v1.AppTest`` against a real backend and against broken ones.

AppTest runs the entry script, ``ui/main.py``, the way a browser session would (widgets, session state, reruns)
but does not run the ``st.fragment(run_every=...)`` timer: streaming is tested by switching it on through the page
and calling the tick function the fragment calls (``ui.live.stream_tick``); the browser test watches the real timer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from app.tools.processes import free_port, wait_until_ready
from tests.support import ROOT, Answer, StubBackend
from tests.ui.support import UI_SCRIPT, scoring_route
from tests.ui.test_logic import BLOCK_BACKEND_LIBRARIES, READY_HEALTH
from ui.live import LiveSession, StreamSettings, stream_tick
from ui.stream_feed import StreamFeed

pytestmark = pytest.mark.slow

SIGNAL_CHARTS = 3  # voltage, current, frequency


def open_page(monkeypatch: pytest.MonkeyPatch, backend_url: str) -> AppTest:
    monkeypatch.setenv("BACKEND_URL", backend_url)
    page = AppTest.from_file(str(UI_SCRIPT), default_timeout=60)
    page.run()
    assert_no_traceback(page)
    return page


def assert_no_traceback(page: AppTest) -> None:
    """Neither an uncaught exception nor a panel that had to swallow one."""
    assert not page.exception, [e.message for e in page.exception]
    assert not [e.value for e in page.error if "unexpected problem" in e.value]


def metric(page: AppTest, label: str) -> str:
    return next(m.value for m in page.metric if m.label == label)


def charts(page: AppTest) -> list:
    return list(page.get("vega_lite_chart"))


def chart_rows(chart) -> int:
    """Rows of the main dataset a chart was sent (Streamlit ships datasets as Arrow next to the Vega-Lite spec;
    a threshold rule is a second, one-row dataset)."""
    return max(pa.ipc.open_stream(d.data.data).read_all().num_rows for d in chart.proto.datasets)


def session(page: AppTest) -> LiveSession:
    return page.session_state["gridwatch"]


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def test_page_with_a_ready_backend_shows_its_status_and_an_empty_live_view(monkeypatch, backend):
    page = open_page(monkeypatch, backend.url)
    assert page.title[0].value.endswith("GridWatch")
    assert "app.sim.GridSimulator" in page.caption[0].value  # the diagnostics caption names the simulator
    assert backend.url in page.caption[0].value
    markdown = texts(page.markdown)
    assert "Backend ready" in markdown
    assert "model " in markdown
    assert not page.error
    assert not page.warning
    assert metric(page, "Readings") == "0"
    assert metric(page, "Precision") == "\u2014"
    assert not charts(page)
    assert "No readings yet" in texts(page.info)
    assert page.sidebar.text_input(key="backend_url").value == backend.url


def test_generate_batch_fills_the_charts_and_counters(monkeypatch, backend):
    page = open_page(monkeypatch, backend.url)
    page.slider(key="batch_size").set_value(100).run()
    page.button(key="generate").click().run()
    assert_no_traceback(page)

    assert metric(page, "Readings") == "100"
    flagged = int(metric(page, "Flagged"))
    live = session(page)
    assert flagged == live.stats.flagged == int(live.window.frame["flagged"].sum())
    assert metric(page, "Latency p50").endswith(" ms")
    drawn = charts(page)
    # three signals, the score, the confusion matrix, the load spread and its instances, the latency
    assert len(drawn) >= SIGNAL_CHARTS + 2
    assert [chart_rows(c) for c in drawn[: SIGNAL_CHARTS + 1]] == [100] * (SIGNAL_CHARTS + 1)
    assert "last 100 readings" in texts(page.markdown)
    scored_by = live.last_batch.model_version
    assert scored_by, "the answer named the version that scored it"
    page.run()  # the status line sits above the buttons: it shows the batch from the next run on
    assert f"last batch scored by model {scored_by}" in texts(page.markdown)
    assert not page.error


def test_inject_extreme_reading_produces_a_flagged_row(monkeypatch, backend):
    page = open_page(monkeypatch, backend.url)
    page.button(key="inject").click().run()
    assert_no_traceback(page)
    assert metric(page, "Readings") == "1"
    assert metric(page, "Flagged") == "1"
    assert metric(page, "Precision") == "1.000"
    assert metric(page, "Recall") == "1.000"
    row = session(page).window.frame.iloc[-1]
    assert row["kind"] == "extreme"
    assert bool(row["flagged"])
    assert row["score"] > 0
    assert row["outcome"] == "detected"


def test_streaming_is_switched_through_session_state_and_each_tick_scores_a_batch(monkeypatch, backend):
    page = open_page(monkeypatch, backend.url)
    page.button(key="stream_toggle").click().run()
    live = session(page)
    assert live.streaming
    assert page.button(key="stream_toggle").label == "Stop streaming"
    assert "streaming" in texts(page.markdown)

    # What the fragment does on each tick, with the page's own client and settings.
    client = page.session_state["gridwatch_client"]
    settings = StreamSettings(batch_size=32)
    assert stream_tick(live, client, settings)
    assert stream_tick(live, client, settings)
    page.run()  # the full rerun draws what the ticks scored (and, while streaming, ticks once more)
    assert_no_traceback(page)
    assert int(metric(page, "Readings")) >= 64

    page.button(key="stream_toggle").click().run()
    assert not session(page).streaming
    assert page.button(key="stream_toggle").label == "Start streaming"
    readings = session(page).stats.readings
    assert not stream_tick(session(page), client, settings)
    page.run()
    assert session(page).stats.readings == readings


def test_reset_clears_charts_and_counters(monkeypatch, backend):
    page = open_page(monkeypatch, backend.url)
    page.button(key="generate").click().run()
    assert charts(page)
    page.button(key="reset").click().run()
    assert_no_traceback(page)
    assert metric(page, "Readings") == "0"
    assert session(page).window.frame.empty


def test_load_actions_report_successes_latency_and_who_answered(monkeypatch, backend):
    page = open_page(monkeypatch, backend.url)
    instance = session(page).backend.health.instance
    page.number_input(key="load_requests").set_value(30).run()
    page.number_input(key="load_threads").set_value(4).run()

    page.button(key="burst").click().run()
    assert_no_traceback(page)
    report = texts(page.success)
    assert "Burst Load" in report
    assert "30 requests" in report
    assert "30 ok" in report
    assert "0 errors" in report
    assert "p50" in report

    page.button(key="concurrent_burst").click().run()
    report = texts(page.success)
    assert "Concurrent Burst" in report
    assert "30 ok" in report
    assert session(page).traffic.instances() == {instance: 60}
    assert "1 instance(s)" in texts(page.markdown)


def test_sustained_load_runs_in_the_background_and_reports_when_done(monkeypatch, backend):
    page = open_page(monkeypatch, backend.url)
    page.number_input(key="load_seconds").set_value(1).run()
    page.number_input(key="load_threads").set_value(2).run()
    page.button(key="sustained_toggle").click().run()
    live = session(page)
    assert live.sustained is not None
    assert page.button(key="sustained_toggle").label == "Stop sustained load"
    assert page.button(key="burst").disabled  # one load at a time
    assert live.sustained.wait(timeout=60), "the sustained load did not stop by itself"

    page.run()
    assert_no_traceback(page)
    report = texts(page.success)
    assert "**Sustained Concurrent Bursts** (done)" in report
    assert "0 errors" in report
    assert page.button(key="sustained_toggle").label == "Sustained Concurrent Bursts"
    assert session(page).load_report is not None
    assert session(page).load_report.ok > 0


def test_an_unreachable_backend_shows_a_banner_not_an_exception(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    page = open_page(monkeypatch, url)
    banner = texts(page.error)
    assert f"Backend unreachable at {url}: Connection refused" in banner
    assert "keeps running" in banner
    assert "Backend unreachable" in texts(page.markdown)

    for button in ("generate", "inject", "burst"):
        page.button(key=button).click().run()
        assert_no_traceback(page)
    assert metric(page, "Readings") == "0"
    assert "No readings yet" in texts(page.info)  # no live charts, only the spread of the failed requests
    assert "errors" in texts(page.warning)  # the burst's report counts the failures
    assert "Connection refused" in texts(page.caption)


def test_a_backend_that_is_not_ready_shows_a_warning(monkeypatch, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_DIR": str(tmp_path / "empty"),
        "TRAIN_IF_MISSING": "0",
        "LOG_LEVEL": "warning",
    }
    server = subprocess.Popen([sys.executable, "-m", "app"], env=env, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{url}/livez", process=server, timeout=120)
        page = open_page(monkeypatch, url)
        assert "Backend not ready" in texts(page.warning)
        assert "failed" in texts(page.warning)
        page.button(key="generate").click().run()
        assert_no_traceback(page)
        assert "Last batch not scored" in texts(page.error)
        assert "503" in texts(page.error)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_url_that_is_not_the_gridwatch_api_shows_an_error_banner(monkeypatch, backend):
    page = open_page(monkeypatch, f"{backend.url}/docs")  # a real server, but not the API's base URL
    banner = texts(page.error)
    assert "404" in banner
    assert "/docs/health" in banner
    assert "Backend error" in texts(page.markdown)


def test_the_page_runs_without_scikit_learn_or_numba(backend):
    """The UI image has neither scikit-learn nor numba: run the page with both made unimportable, score a batch and
    have a flagged reading explained."""
    code = BLOCK_BACKEND_LIBRARIES + (
        "from streamlit.testing.v1 import AppTest\n"
        f"page = AppTest.from_file({str(UI_SCRIPT)!r}, default_timeout=60).run()\n"
        "page.button(key='generate').click().run()\n"
        "page.button(key='inject').click().run()\n"
        "assert not page.exception, [e.message for e in page.exception]\n"
        "assert not page.error, [e.value for e in page.error]\n"
        "print(next(m.value for m in page.metric if m.label == 'Readings'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'sklearn', 'numba'}))\n"
        "print(page.session_state['gridwatch'].flagged.readings[-1].explanation.top_feature is not None)\n"
    )
    env = {**os.environ, "BACKEND_URL": backend.url}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    readings, backend_modules, explained = result.stdout.strip().splitlines()[-3:]
    assert readings == "65"
    assert backend_modules == "[]"
    assert explained == "True", "the extreme reading came with its explanation"


def test_a_panel_that_fails_shows_one_line_and_the_page_keeps_running():
    def page_script():
        import streamlit as st

        from ui.views import guarded

        def broken_panel():
            raise RuntimeError("simulated bug")

        guarded(broken_panel)()
        st.write("after the broken panel")

    page = AppTest.from_function(page_script, default_timeout=60).run()
    assert not page.exception
    assert "This panel hit an unexpected problem (RuntimeError: simulated bug)" in texts(page.error)
    assert "after the broken panel" in texts(page.markdown)


def test_shrinking_the_window_applies_without_a_new_batch(monkeypatch, backend):
    page = open_page(monkeypatch, backend.url)
    page.slider(key="batch_size").set_value(300).run()
    page.button(key="generate").click().run()
    assert len(session(page).window) == 300
    page.slider(key="window").set_value(100).run()
    assert len(session(page).window) == 100
    assert chart_rows(charts(page)[0]) == 100
    assert metric(page, "Readings") == "300"  # the counters cover everything since the last reset


# --- why a reading was flagged ------------------------------------------------------------------------------------


def why_chart(page: AppTest):
    """The why-panel's bar chart: the one chart whose data has a row per reading and feature."""
    (chart,) = [c for c in charts(page) if '"contribution"' in c.proto.spec]
    return chart


def test_a_flagged_reading_shows_why_in_the_tooltips_the_bars_and_the_details(monkeypatch, backend):
    page = open_page(monkeypatch, backend.url)
    assert "Why flagged" not in texts(page.markdown), "nothing flagged yet, nothing to explain"
    page.button(key="inject").click().run()
    assert_no_traceback(page)

    (reading,) = session(page).flagged.readings
    explanation = reading.explanation
    assert explanation.top_feature in {"voltage", "current", "frequency"}
    assert sum(f.contribution for f in explanation.features) == pytest.approx(1.0)
    assert "**Why flagged** \u00b7 the last flagged reading" in texts(page.markdown)
    assert not page.info, "the backend explains: nothing is unavailable"
    row = session(page).window.frame.iloc[-1]
    assert row["top_feature"] == explanation.top_feature  # what the flagged marker's tooltip shows
    top = explanation.feature(explanation.top_feature)
    assert row[f"share_{top.name}"] == f"{100 * top.contribution:.0f} %"
    assert row["limits_voltage"].startswith("OUTSIDE"), "an extreme reading breaks EN 50160"

    assert chart_rows(why_chart(page)) == 3  # one reading, three features
    choice = page.selectbox(key="why_reading")
    assert choice.value == "newest"
    assert f"**{top.name}** has {100 * top.contribution:.0f} % of the credit" in texts(page.markdown)
    details = page.dataframe[-1].value
    assert details["feature"].tolist() == [f.name for f in explanation.features]
    assert details["contribution"].tolist() == [f.contribution for f in explanation.features]

    session(page).seed = 7  # the simulator the new anomaly rate builds is seeded: the same flags every run
    page.slider(key="batch_size").set_value(100).run()
    page.slider(key="anomaly_rate").set_value(0.08).run()  # some flags, fewer than the panel keeps (20)
    page.button(key="generate").click().run()
    assert_no_traceback(page)
    readings = session(page).flagged.readings
    assert readings[0] == reading, "the extreme reading is still among the last flagged"
    assert len(readings) > 1
    assert chart_rows(why_chart(page)) == 3 * len(readings)
    choice = page.selectbox(key="why_reading")
    assert choice.value == "newest"
    assert choice.options[0].startswith(f"newest: {readings[-1].label}")
    assert choice.options[-1].startswith(reading.label), "the newest first, the oldest last"

    choice.select(reading.time.isoformat()).run()  # pick the extreme reading again
    page.slider(key="anomaly_rate").set_value(0.0).run()
    page.button(key="generate").click().run()
    assert page.selectbox(key="why_reading").value == reading.time.isoformat(), "a picked reading stays picked"
    assert f"**{top.name}** has {100 * top.contribution:.0f} % of the credit" in texts(page.markdown)


@pytest.fixture
def older_backend() -> Iterator[StubBackend]:
    """A backend from before explanations: it scores, and ignores ``explain=true`` as FastAPI ignores any unknown
    query parameter."""
    with StubBackend() as stub:
        stub.route("GET", "/health", Answer(200, READY_HEALTH))
        stub.route("GET", "/model", Answer(200, {"model_version": "abc123def456", "config": {}}))
        stub.route("POST", "/predict", scoring_route())
        stub.route("POST", "/predict?explain=true", scoring_route())
        yield stub


def test_a_backend_without_explanations_says_so_and_the_page_keeps_working(monkeypatch, older_backend):
    page = open_page(monkeypatch, older_backend.url)
    page.button(key="inject").click().run()
    assert_no_traceback(page)
    assert metric(page, "Flagged") == "1"
    assert "Explanations unavailable" in texts(page.info)
    assert "sends none" in texts(page.info)
    assert session(page).window.frame.iloc[-1]["top_feature"] == "unavailable"
    assert not [c for c in charts(page) if '"contribution"' in c.proto.spec], "no bars without explanations"
    page.button(key="generate").click().run()
    assert_no_traceback(page)
    assert metric(page, "Readings") == "65"


# --- the Stream view -------------------------------------------------------------------------------------------


@pytest.fixture
def feeds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[StreamFeed]]:
    """Every subscription the page starts, in order: it keeps them in a session-scoped Streamlit cache, out of the
    test's reach. Each is stopped at the end, whatever the test did."""
    started: list[StreamFeed] = []
    start = StreamFeed.start

    def recorded(feed: StreamFeed) -> StreamFeed:
        started.append(feed)
        return start(feed)

    monkeypatch.setattr(StreamFeed, "start", recorded)
    yield started
    for feed in started:
        feed.stop()


def test_without_nats_url_the_stream_view_waits_to_be_switched_on(monkeypatch, backend, feeds):
    monkeypatch.delenv("NATS_URL", raising=False)
    page = open_page(monkeypatch, backend.url)
    assert page.text_input(key="nats_url").value == "nats://127.0.0.1:4222"
    assert page.toggle(key="stream_subscribed").value is False
    assert feeds == [], "no connection attempt unless asked"
    assert "Not subscribed" not in texts(page.warning)


def test_the_stream_view_shows_each_feeders_results_and_the_latest_anomalies(monkeypatch, backend, tmp_path, feeds):
    from tests.stream.support import NatsServer, run
    from tests.ui.test_stream_feed import poll, publish, result

    with NatsServer(tmp_path / "store") as server:
        monkeypatch.setenv("NATS_URL", server.nats_url)
        page = open_page(monkeypatch, backend.url)
        (feed,) = feeds
        assert page.toggle(key="stream_subscribed").value is True, "NATS_URL set: subscribed at once"
        assert "No results yet" in texts(page.info)
        poll(feed, lambda s: s.connected, "the page's feed is subscribed")
        messages = [(f"grid.scored.f{i % 2}.s1", result(i, anomaly=i == 3, score=0.7 if i == 3 else 0.1))
                    for i in range(8)]  # fmt: skip
        messages.append(("grid.anomalies.f1.s1", result(3, anomaly=True, score=0.7)))
        run(publish(server.nats_url, messages))
        poll(feed, lambda s: s.received == 8 and s.anomalies, "the results reached the feed")
        page.run()
        assert_no_traceback(page)
        assert metric(page, "Results received") == "8"
        assert metric(page, "Feeders") == "2"
        assert metric(page, "Flagged (shown)") == "1"
        assert page.multiselect(key="stream_feeders").value == ["f0", "f1"]
        (chart,) = [c for c in charts(page) if "feeder" in c.proto.spec]
        assert chart_rows(chart) == 8
        (table,) = page.dataframe
        assert table.value[["feeder", "sensor", "score"]].values.tolist() == [["f1", "s1", 0.7]]

        page.run()
        assert feeds == [feed], "one subscription across reruns"

        page.toggle(key="stream_subscribed").set_value(False).run()
        poll(feed, lambda _: not feed.running, "switched off: the subscription and its thread end")
        assert "Results received" not in [m.label for m in page.metric]


def test_an_unreachable_broker_shows_a_warning_not_an_exception(monkeypatch, backend, feeds):
    from tests.ui.test_stream_feed import poll

    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{free_port()}")
    page = open_page(monkeypatch, backend.url)
    (feed,) = feeds
    poll(feed, lambda s: s.error is not None and "NATS" in s.error, "the feed reports the broker unreachable")
    page.run()
    assert_no_traceback(page)
    assert "Not subscribed" in texts(page.warning)


def test_a_new_nats_url_releases_the_previous_subscription(monkeypatch, backend, feeds):
    from tests.ui.test_stream_feed import poll

    first, second = (f"nats://127.0.0.1:{free_port()}" for _ in range(2))
    monkeypatch.setenv("NATS_URL", first)
    page = open_page(monkeypatch, backend.url)
    page.text_input(key="nats_url").set_value(second).run()
    assert_no_traceback(page)
    assert [feed.url for feed in feeds] == [first, second]
    poll(feeds[0], lambda _: not feeds[0].running, "the first subscription's thread ends")
    assert feeds[1].running
