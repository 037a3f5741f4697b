"""The page's panels: how each part of the state is drawn. No state changes here, only rendering.

``ui/main.py`` decides what runs when (sidebar, buttons, fragments); these functions turn a ``LiveSession`` into
Streamlit elements. ``guarded`` wraps every panel, so an unexpected error becomes a short message on the page
and a traceback in the UI's log, never a traceback in front of the user.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from app.sim import GridProfile
from ui import charts, why
from ui.config import HEALTH_REFRESH_S, SPREAD_WINDOW_S
from ui.live import STREAM_SOURCE, LiveSession
from ui.load import LoadReport
from ui.model_info import model_summary
from ui.stream_feed import FeedSnapshot
from ui.traffic import now

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator
    from streamlit.elements.metric import DeltaColor

logger = logging.getLogger("gridwatch.ui")

P = ParamSpec("P")
R = TypeVar("R")


def guarded(render: Callable[P, R]) -> Callable[P, R | None]:
    """Run a panel; if it fails unexpectedly, log the traceback and show one line instead of the traceback."""

    @functools.wraps(render)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return render(*args, **kwargs)
        except Exception as error:  # the last line of defence: a person never sees a Python traceback
            logger.exception("UI panel %s failed", render.__name__)
            st.error(
                f"This panel hit an unexpected problem ({error.__class__.__name__}: {error}). "
                "The rest of the UI keeps running; the details are in the UI's log.",
                icon=":material/error:",
            )
            return None

    return wrapper


def ratio(value: float | None, digits: int = 3) -> str:
    """A ratio for a counter, or an em dash while it is undefined."""
    return "\u2014" if value is None else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    return "\u2014" if value is None else f"{100 * value:.1f} %"


def milliseconds(values: np.ndarray, q: float) -> str:
    return "\u2014" if values.size == 0 else f"{np.percentile(values, q):.0f} ms"


def render_diagnostics(backend_url: str) -> None:
    """Which simulator produces the readings and where they go: the first thing to check when numbers look odd."""
    profile = GridProfile()
    st.caption(
        f"Simulator: `app.sim.GridSimulator` (NumPy {np.__version__}, no scikit-learn), "
        f"{profile.nominal_voltage:g} V / {profile.nominal_frequency:g} Hz feeder profile, one reading per simulated "
        f"second with its ground truth \u00b7 Backend: `{backend_url}`"
    )


def render_status(live: LiveSession) -> None:
    """The banner (backend unreachable, not ready, or last batch failed) and a one-line backend status."""
    state = live.backend
    retry = f"The UI keeps running and re-checks every {HEALTH_REFRESH_S:g} s."
    if state.error is not None:
        hint = " Check the Backend URL in the sidebar (default: `BACKEND_URL`)." if state.error.unreachable else ""
        st.error(f"**{state.error.message}.** {retry}{hint}", icon=":material/cloud_off:")
    elif state.health is not None and not state.health.ready:
        st.warning(
            f"**Backend not ready** (`{state.health.status}`): {state.health.reason}. {retry}",
            icon=":material/hourglass_top:",
        )

    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        if state.ready and state.health is not None:
            st.badge("Backend ready", icon=":material/check_circle:", color="green")
            st.badge(f"model {state.health.model_version}", color="blue")
            st.badge(f"instance {state.health.instance}", color="gray")
        elif state.health is not None:
            st.badge(f"Backend {state.health.status}", icon=":material/hourglass_top:", color="orange")
        elif state.error is not None and not state.error.unreachable:
            st.badge("Backend error", icon=":material/error:", color="red")
        else:
            st.badge("Backend unreachable", icon=":material/cloud_off:", color="red")
        last = live.last_batch
        if last is not None and last.model_version:
            swapped = state.health is not None and last.model_version != state.health.model_version
            st.badge(
                f"last batch scored by model {last.model_version}",
                icon=":material/swap_horiz:" if swapped else None,
                color="orange" if swapped else "blue",
            )
        if live.streaming:
            st.badge("streaming", icon=":material/play_circle:", color="violet")
        if live.sustained_running:
            st.badge("sustained load running", icon=":material/speed:", color="orange")


def render_counters(live: LiveSession) -> None:
    stats, last = live.stats, live.last_batch
    latency = live.traffic.latency_ms(source=STREAM_SOURCE)
    columns = st.columns(6)
    _counter_card(
        columns[0],
        "Readings",
        f"{stats.readings:,}",
        help="Readings scored by the backend since the last reset.",
        delta=last.readings if last else None,
        delta_color="off",
        delta_description="last batch",
    )
    _counter_card(
        columns[1],
        "Flagged",
        f"{stats.flagged:,}",
        help="Readings the model flagged as anomalous (score > 0).",
        delta=last.flagged if last else None,
        delta_color="inverse",
        delta_description="last batch",
    )
    _counter_card(
        columns[2],
        "Anomaly rate",
        percent(stats.flag_rate),
        help=f"Share of readings flagged. Injected by the simulator: {percent(_injected_rate(live))}.",
    )
    _counter_card(
        columns[3],
        "Precision",
        ratio(stats.precision),
        help="Of the flagged readings, the share that really were injected anomalies.",
    )
    _counter_card(
        columns[4],
        "Recall",
        ratio(stats.recall),
        help=f"Of the {stats.injected:,} injected anomalies, the share the model flagged.",
    )
    _counter_card(
        columns[5],
        "Latency p50",
        milliseconds(latency, 50),
        help=f"Round trip of /predict as the UI sees it, last {latency.size} batches; p95 {milliseconds(latency, 95)}.",
    )


def _counter_card(
    column: DeltaGenerator,
    label: str,
    value: str,
    *,
    help: str,
    delta: int | None = None,
    delta_color: DeltaColor = "normal",
    delta_description: str | None = None,
) -> None:
    """One card of the counter row. Every card has a border and stretches to the row's height, so the six line up
    whether or not they show a delta; the delta arguments default to Streamlit's own, for the cards without one."""
    column.metric(
        label,
        value,
        delta=delta,
        delta_color=delta_color,
        delta_description=delta_description,
        border=True,
        height="stretch",
        help=help,
    )


def _injected_rate(live: LiveSession) -> float | None:
    stats = live.stats
    return stats.injected / stats.readings if stats.readings else None


def render_live_charts(live: LiveSession) -> None:
    frame = live.window.frame
    if frame.empty:
        st.info(
            "No readings yet. Press **Generate Batch** to score one batch, **Start streaming** to score one every "
            "interval, or **Inject Extreme Reading** to see the detector fire.",
            icon=":material/insights:",
        )
        return
    left, right = st.columns([3, 2], gap="medium")
    with left, st.container(border=True):
        st.markdown(f"**Signals** \u00b7 last {len(frame):,} readings, anomalies marked")
        for index, column in enumerate(charts.SIGNALS):
            st.altair_chart(charts.signal_chart(frame, column, legend=index == 0), width="stretch")
    with right:
        with st.container(border=True):
            st.markdown("**Anomaly score** \u00b7 flagged above the model threshold")
            st.altair_chart(charts.score_chart(frame), width="stretch")
        with st.container(border=True):
            stats = live.stats
            st.markdown(
                f"**Detector vs ground truth** \u00b7 {stats.readings:,} readings \u00b7 "
                f"precision {ratio(stats.precision)} \u00b7 recall {ratio(stats.recall)} \u00b7 F1 {ratio(stats.f1)}"
            )
            st.altair_chart(charts.confusion_chart(stats.confusion_frame()), width="stretch")
            kinds = stats.kinds_frame()
            if not kinds.empty:
                st.dataframe(
                    kinds,
                    hide_index=True,
                    width="stretch",
                    column_config={
                        "kind": "injected kind",
                        "recall": st.column_config.ProgressColumn(
                            "recall", min_value=0.0, max_value=1.0, format="%.2f"
                        ),
                    },
                )


def render_why(live: LiveSession) -> None:
    """Why the model flagged what it flagged: the last flagged readings' shares of the forest's credit as stacked
    bars, and one chosen reading's details (share, value against the training band, z, EN 50160 limits). Says so
    when the backend sends no explanations; the rest of the live view does not depend on them."""
    readings = live.flagged.readings
    if not readings and live.why_unavailable is None and not live.stats.flagged:
        return  # nothing flagged yet: nothing to explain, and the live view's hint already says what to press
    with st.container(border=True):
        shown = "the last flagged reading" if len(readings) == 1 else f"the last {len(readings)} flagged readings"
        st.markdown(
            f"**Why flagged** \u00b7 {shown}, each feature's share of the forest's credit \u00b7 hover a flagged "
            "marker above for its value against the training band"
        )
        if live.why_unavailable is not None:
            st.info(f"**Explanations unavailable:** {live.why_unavailable}.", icon=":material/help:")
        if not readings:
            return
        bars, details = st.columns(2, gap="medium")
        with bars:
            st.altair_chart(charts.contributions_chart(live.flagged.contributions_frame()), width="stretch")
        with details:
            newest = readings[-1]
            by_time = {reading.time.isoformat(): reading for reading in reversed(readings)}
            chosen = st.selectbox(
                "Flagged reading",
                [NEWEST, *by_time],
                format_func=lambda key: (
                    f"newest: {_reading_label(newest)}" if key == NEWEST else _reading_label(by_time[key])
                ),
                key="why_reading",
                help="The newest unless you pick one, which stays until it leaves the last flagged readings. Each is "
                "named by its simulated time (UTC), as on the charts.",
            )
            reading = by_time.get(chosen or NEWEST, newest)
            st.markdown(why.headline(reading))
            st.dataframe(
                why.details_frame(reading.explanation),
                hide_index=True,
                width="stretch",
                column_config={
                    "contribution": st.column_config.ProgressColumn(
                        "share", min_value=0.0, max_value=1.0, format="percent"
                    ),
                    "value": st.column_config.NumberColumn(format="%.3f"),
                    "median": st.column_config.NumberColumn(format="%.3f"),
                    "z": st.column_config.NumberColumn(format="%+.1f"),
                },
            )


NEWEST = "newest"
"""The why-panel's choice that follows the newest flagged reading."""


def _reading_label(reading: why.FlaggedReading) -> str:
    top = reading.explanation.top_feature or "no top feature"
    return f"{reading.label} \u00b7 {top} \u00b7 score {reading.score:.3f} \u00b7 {reading.outcome}"


def render_load_report(
    report: LoadReport | None, *, elapsed: float | None = None, seconds: float | None = None
) -> None:
    if report is None:
        st.caption("No load sent yet.")
        return
    if report.running and elapsed is not None and seconds:
        st.progress(min(elapsed / seconds, 1.0), text=f"{report.action}: {elapsed:.0f} s of {seconds:g} s")
    state = "running" if report.running else ("stopped" if report.stopped_early else "done")
    latency = report.latency_ms
    summary = (
        f"**{report.action}** ({state}): {report.requests:,} requests in {report.duration_s:.1f} s "
        f"({report.throughput:.1f}/s) \u00b7 **{report.ok:,} ok**, **{report.errors:,} errors**"
    )
    if latency:
        summary += (
            f" \u00b7 latency p50 {latency['p50']:.0f} ms, p90 {latency['p90']:.0f} ms, p99 {latency['p99']:.0f} ms"
        )
    if report.instances:
        summary += f" \u00b7 {len(report.instances)} instance(s) answered"
    (st.warning if report.errors else st.success)(summary, icon=":material/speed:")
    for message, count in report.error_messages.items():
        st.caption(f"{count:,} \u00d7 {message}")


def render_spread(live: LiveSession) -> None:
    since = now() - SPREAD_WINDOW_S
    traffic = live.traffic.frame(since=since)
    if traffic.empty:
        st.caption(f"No requests in the last {SPREAD_WINDOW_S:g} s.")
        return
    instances = live.traffic.instances(since=since)
    left, right = st.columns([3, 1], gap="medium")
    with left, st.container(border=True):
        st.markdown(f"**Load spread** \u00b7 requests per second by answering instance, last {SPREAD_WINDOW_S:g} s")
        st.altair_chart(charts.spread_chart(traffic), width="stretch")
    with right, st.container(border=True):
        st.markdown(f"**{len(instances)} instance(s)** answered")
        if instances:
            st.altair_chart(charts.instances_chart(instances), width="stretch")


def render_backend_details(live: LiveSession) -> None:
    state = live.backend
    summary = model_summary(state.model) if state.model else None
    health, model, latency = st.columns([1, 1, 1], gap="medium")
    with health, st.container(border=True):
        st.markdown("**Health** \u00b7 `GET /health`")
        if state.health is None:
            st.caption(state.error.message if state.error else "Not checked yet.")
        else:
            _facts(
                {
                    "status": state.health.status,
                    "model version": state.health.model_version,
                    "instance": state.health.instance,
                    "pod": state.health.body.get("pod"),
                    "node": state.health.body.get("node"),
                    "health latency": f"{1000 * state.health.latency_s:.0f} ms",
                    "reason": state.health.reason or None,
                }
            )
    with model, st.container(border=True):
        st.markdown("**Model** \u00b7 `GET /model`")
        if summary is None:
            st.caption("Available once the backend is ready.")
        else:
            _facts(summary.facts)
            if summary.evaluation:
                st.caption("Offline evaluation (labelled simulated stream): " + summary.evaluation)
    with latency, st.container(border=True):
        st.markdown("**Latency seen by the UI** \u00b7 `POST /predict`")
        traffic = live.traffic.frame()
        if traffic.empty or not traffic["ok"].any():
            st.caption("No successful request yet.")
        else:
            st.altair_chart(charts.latency_chart(traffic.tail(2000)), width="stretch")
    if state.model:
        with st.expander("Full model metadata (`GET /model`)"):
            st.json(state.model, expanded=1)


def _facts(facts: dict[str, Any]) -> None:
    lines = [f"- {name}: `{value}`" for name, value in facts.items() if value not in (None, "")]
    st.markdown("\n".join(lines))


def stream_frame(snapshot: FeedSnapshot, feeders: list[str]) -> pd.DataFrame:
    """The chosen feeders' results as one frame for the chart, oldest first."""
    rows = [
        {"time": pd.Timestamp(result.received, unit="s", tz="UTC"), "feeder": result.feeder, "sensor": result.sensor,
         "score": result.score, "anomaly": result.anomaly, "model_version": result.model_version}
        for feeder in feeders
        for result in snapshot.feeders.get(feeder, [])
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["time", "feeder", "sensor", "score", "anomaly", "model_version"])


def render_stream(snapshot: FeedSnapshot) -> None:
    """The live results of the stream consumers: per feeder, scores and flags, and the latest anomalies."""
    if snapshot.connected:
        st.markdown(f":green-badge[:material/check_circle: Subscribed] to `{snapshot.url}`")
    else:
        st.warning(
            f"**Not subscribed.** {snapshot.error or 'Connecting to ' + snapshot.url}. Is `gridwatch up --stream` "
            "running, or a port-forward to the cluster's NATS?",
            icon=":material/cloud_off:",
        )
    flagged_in_window = sum(r.anomaly for window in snapshot.feeders.values() for r in window)
    received, feeders, flagged, malformed = st.columns(4)
    received.metric("Results received", f"{snapshot.received:,}")
    feeders.metric("Feeders", f"{len(snapshot.feeders):,}")
    flagged.metric("Flagged (shown)", f"{flagged_in_window:,}")
    malformed.metric("Unreadable messages", f"{snapshot.malformed:,}")
    if not snapshot.feeders:
        st.info(
            "No results yet: the view shows what `gridwatch stream` publishes to `grid.scored.>` from the moment it "
            "subscribed (`gridwatch publish` sends simulated feeders).",
            icon=":material/hourglass_empty:",
        )
        return
    names = sorted(snapshot.feeders)
    chosen = st.multiselect("Feeders", names, default=names, key="stream_feeders")
    frame = stream_frame(snapshot, chosen)
    if not frame.empty:
        with st.container(border=True):
            st.markdown("**Scores per feeder** \u00b7 `grid.scored.>`, red: flagged")
            st.altair_chart(charts.stream_chart(frame), width="stretch")
    with st.container(border=True):
        st.markdown(f"**Latest anomalies** \u00b7 `grid.anomalies.>` ({len(snapshot.anomalies)})")
        if snapshot.anomalies:
            table = pd.DataFrame(
                [{"received (UTC)": pd.Timestamp(r.received, unit="s", tz="UTC").strftime("%H:%M:%S"),
                  "feeder": r.feeder, "sensor": r.sensor, "reading time": r.timestamp, "score": round(r.score, 4),
                  "model": r.model_version} for r in snapshot.anomalies]
            )  # fmt: skip
            st.dataframe(table, hide_index=True, width="stretch", height=240)
        else:
            st.caption("None flagged since the view subscribed.")
