"""Altair charts of the live view: signals with anomalies overlaid, score against the threshold, the confusion
matrix, and the spread of requests over backend instances.

One colour and marker per outcome across every chart (detected red dot, false alarm amber triangle, missed purple
cross), so a mark on the voltage chart, its dot on the score chart and its cell in the confusion matrix read as
the same thing. Times are shown in UTC, the simulator's clock.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from ui import why
from ui.detection import Outcome
from ui.traffic import FAILED

LINE_COLOUR = "#4c78a8"
THRESHOLD_COLOUR = "#e4572e"
OUTCOME_COLOURS = {
    Outcome.detected.value: "#e4572e",
    Outcome.false_alarm.value: "#f2a516",
    Outcome.missed.value: "#7b2cbf",
    Outcome.normal.value: "#c9d3de",
}
OUTCOME_SHAPES = {
    Outcome.detected.value: "circle",
    Outcome.false_alarm.value: "triangle-up",
    Outcome.missed.value: "cross",
    Outcome.normal.value: "circle",
}
MARKED = [Outcome.detected.value, Outcome.false_alarm.value, Outcome.missed.value]
"""Outcomes drawn as markers; normal readings are the line itself."""

SIGNALS = {
    "voltage": ("Voltage", "V"),
    "current": ("Current", "A"),
    "frequency": ("Frequency", "Hz"),
}

LayeredChart = alt.LayerChart | alt.FacetChart
"""What ``alt.layer(...).properties(...)`` is typed to return; these charts are always layers."""


def _outcome_colour(*, legend: bool) -> alt.Color:
    return alt.Color(
        "outcome:N",
        scale=alt.Scale(domain=MARKED, range=[OUTCOME_COLOURS[o] for o in MARKED]),
        legend=alt.Legend(title=None, orient="top", direction="horizontal") if legend else None,
    )


def _outcome_shape(*, legend: bool) -> alt.Shape:
    return alt.Shape(
        "outcome:N",
        scale=alt.Scale(domain=MARKED, range=[OUTCOME_SHAPES[o] for o in MARKED]),
        legend=alt.Legend(title=None, orient="top", direction="horizontal") if legend else None,
    )


def _time_axis() -> alt.X:
    return alt.X(
        "time:T",
        title=None,
        scale=alt.Scale(type="utc"),
        axis=alt.Axis(format="%H:%M", labelAngle=0, labelOverlap=True, tickCount=6),
    )


FEATURE_COLOURS = {"voltage": "#4c78a8", "current": "#f58518", "frequency": "#54a24b"}
"""One colour per feature in the why-panel's bars."""


def _time_tooltip(title: str) -> alt.Tooltip:
    """A reading's time to the second in UTC, as the why-panel names readings. A UTC time unit, not
    ``formatType="utc"``: Vega-Lite 5 has no such format type, and the tooltip showed NaN."""
    return alt.Tooltip("utcyearmonthdatehoursminutesseconds(time):T", title=title, format="%Y-%m-%d %H:%M:%S")


def _tooltip(column: str, unit: str, frame: pd.DataFrame) -> list[alt.Tooltip]:
    return [
        _time_tooltip("time (UTC)"),
        alt.Tooltip(f"{column}:Q", title=f"{column} ({unit})", format=".3f"),
        alt.Tooltip("score:Q", format=".3f"),
        alt.Tooltip("outcome:N"),
        alt.Tooltip("kind:N", title="injected kind"),
        alt.Tooltip("served_by:N", title="served by"),
        *_why_tooltip(frame, column),
    ]


def _why_fields(frame: pd.DataFrame, column: str | None) -> dict[str, str]:
    """Why the model flagged the reading, as tooltip fields (column -> title): the top feature and the three
    shares, and for a signal chart its signal's place against the training band, its robust z-score and its
    EN 50160 verdict (``ui.why``'s columns; none for a frame without them). Only these are sent to the browser."""
    if "top_feature" not in frame.columns:
        return {}
    fields = {"top_feature": "why: top feature"} | {why.share_column(f): f"{f} share" for f in why.FEATURES}
    if column is not None:
        fields |= {
            why.band_column(column): f"{column} vs training band",
            why.z_column(column): f"{column} z",
            why.limits_column(column): f"{column} EN 50160",
        }
    return fields


def _why_tooltip(frame: pd.DataFrame, column: str | None) -> list[alt.Tooltip]:
    return [alt.Tooltip(f"{field}:N", title=title) for field, title in _why_fields(frame, column).items()]


def signal_chart(frame: pd.DataFrame, column: str, *, legend: bool = False, height: int = 175) -> LayeredChart:
    """One signal over time as a line, with the readings that were anomalous or flagged as markers on it; a
    flagged marker's tooltip says why (``_why_tooltip``)."""
    title, unit = SIGNALS[column]
    data = frame[["time", column, "score", "outcome", "kind", "served_by", *_why_fields(frame, column)]]
    base = alt.Chart(data).encode(x=_time_axis())
    y = alt.Y(f"{column}:Q", title=f"{title} ({unit})", scale=alt.Scale(zero=False, nice=True))
    line = base.mark_line(color=LINE_COLOUR, strokeWidth=1.2, interpolate="monotone").encode(y=y)
    marks = (
        base.transform_filter(alt.FieldOneOfPredicate(field="outcome", oneOf=MARKED))
        .mark_point(filled=True, size=80, opacity=0.95, strokeWidth=2)
        .encode(
            y=y,
            color=_outcome_colour(legend=legend),
            shape=_outcome_shape(legend=legend),
            tooltip=_tooltip(column, unit, frame),
        )
    )
    return alt.layer(line, marks).properties(height=height)


def score_chart(frame: pd.DataFrame, *, threshold: float = 0.0, height: int = 220) -> LayeredChart:
    """The anomaly score of every reading against the model's threshold: above the line means flagged."""
    data = frame[["time", "score", "outcome", "kind", "served_by", *_why_fields(frame, None)]]
    base = alt.Chart(data).encode(x=_time_axis())
    y = alt.Y("score:Q", title="Anomaly score")
    normal = (
        base.transform_filter(alt.datum.outcome == Outcome.normal.value)
        .mark_circle(size=14, color=OUTCOME_COLOURS[Outcome.normal.value], opacity=0.9)
        .encode(y=y)
    )
    marked = (
        base.transform_filter(alt.FieldOneOfPredicate(field="outcome", oneOf=MARKED))
        .mark_point(filled=True, size=70, strokeWidth=2)
        .encode(
            y=y,
            color=_outcome_colour(legend=True),
            shape=_outcome_shape(legend=True),
            tooltip=[
                _time_tooltip("time (UTC)"),
                alt.Tooltip("score:Q", format=".3f"),
                alt.Tooltip("outcome:N"),
                alt.Tooltip("kind:N", title="injected kind"),
                *_why_tooltip(frame, None),
            ],
        )
    )
    rule_data = pd.DataFrame({"threshold": [threshold], "label": [f"threshold {threshold:g}"]})
    rule = (
        alt.Chart(rule_data)
        .mark_rule(color=THRESHOLD_COLOUR, strokeDash=[6, 4], strokeWidth=1.5)
        .encode(y="threshold:Q")
    )
    label = (
        alt.Chart(rule_data)
        .mark_text(align="right", baseline="bottom", dx=-4, dy=-3, color=THRESHOLD_COLOUR, fontSize=11)
        .encode(y="threshold:Q", x=alt.value("width"), text="label:N")
    )
    return alt.layer(normal, marked, rule, label).properties(height=height)


def contributions_chart(contributions: pd.DataFrame, *, height: int = 260) -> alt.Chart:
    """The last flagged readings side by side, each a bar of the three features' shares of the forest's credit
    (``ui.why.FlaggedLog.contributions_frame``), labelled by the reading's time as the signal charts show it."""
    return (
        alt.Chart(contributions)
        .mark_bar(size=18)  # one reading is one slim bar, not the chart's whole width
        .encode(
            x=alt.X(
                "reading:N", title="flagged reading (UTC)", sort=alt.SortField("time"), axis=alt.Axis(labelAngle=-45)
            ),
            y=alt.Y("contribution:Q", title="share of the credit", stack="zero", axis=alt.Axis(format="%")),
            color=alt.Color(
                "feature:N",
                scale=alt.Scale(domain=list(why.FEATURES), range=[FEATURE_COLOURS[f] for f in why.FEATURES]),
                legend=alt.Legend(title=None, orient="top", direction="horizontal"),
            ),
            order=alt.Order("feature:N"),
            tooltip=[
                _time_tooltip("time (UTC)"),
                alt.Tooltip("feature:N"),
                alt.Tooltip("contribution:Q", title="share", format=".0%"),
                alt.Tooltip("value:Q", format=".3f"),
                alt.Tooltip("z:Q", format="+.1f"),
                alt.Tooltip("top_feature:N", title="top feature"),
            ],
        )
        .properties(height=height)
    )


def confusion_chart(confusion: pd.DataFrame, *, height: int = 200) -> LayeredChart:
    """The 2x2 confusion matrix: rows the truth from the simulator, columns the backend's verdict."""
    base = alt.Chart(confusion).encode(
        x=alt.X("predicted:N", title="backend said", sort=["flagged", "not flagged"], axis=alt.Axis(labelAngle=0)),
        y=alt.Y("actual:N", title="simulator injected", sort=["anomaly", "normal"]),
    )
    cells = base.mark_rect(cornerRadius=4, stroke="white", strokeWidth=3).encode(
        color=alt.Color(
            "outcome:N",
            scale=alt.Scale(domain=list(OUTCOME_COLOURS), range=list(OUTCOME_COLOURS.values())),
            legend=None,
        ),
        tooltip=["actual:N", "predicted:N", "count:Q", "outcome:N"],
    )
    text = base.mark_text(fontSize=20, fontWeight="bold", color="white").encode(text="count:Q")
    caption = base.mark_text(fontSize=11, dy=18, color="white").encode(text="outcome:N")
    return alt.layer(cells, text, caption).properties(height=height)


INSTANCE_PALETTE = [
    "#4c78a8",
    "#72b7b2",
    "#54a24b",
    "#eeca3b",
    "#b279a2",
    "#ff9da6",
    "#9d755d",
    "#f58518",
    "#17becf",
    "#bcbd22",
]
FAILED_COLOUR = "#8a94a6"


def _instance_colour(names: list[str], *, legend: alt.Legend | None) -> alt.Color:
    """One colour per instance in a stable order, and grey for failed requests (nobody answered)."""
    instances = sorted(name for name in names if name != FAILED)
    domain = instances + ([FAILED] if FAILED in names else [])
    colours = [INSTANCE_PALETTE[i % len(INSTANCE_PALETTE)] for i in range(len(instances))]
    colours += [FAILED_COLOUR] if FAILED in names else []
    return alt.Color("served_by:N", title="served by", scale=alt.Scale(domain=domain, range=colours), legend=legend)


def spread_chart(traffic: pd.DataFrame, *, height: int = 220) -> alt.Chart:
    """Requests per second by the backend instance that answered them: new pods appear as new colours."""
    names = sorted(set(traffic["served_by"]))
    return (
        alt.Chart(traffic)
        .mark_bar()
        .encode(
            x=alt.X(
                "utcyearmonthdatehoursminutesseconds(time):T",
                title=None,
                axis=alt.Axis(format="%H:%M:%S", labelAngle=0, labelOverlap=True),
            ),
            y=alt.Y("count():Q", title="requests / s", stack="zero"),
            color=_instance_colour(names, legend=alt.Legend(orient="bottom", columns=2)),
            tooltip=[
                alt.Tooltip("utcyearmonthdatehoursminutesseconds(time):T", title="second (UTC)", format="%H:%M:%S"),
                alt.Tooltip("served_by:N", title="served by"),
                alt.Tooltip("count():Q", title="requests"),
            ],
        )
        .properties(height=height)
    )


def instances_chart(instances: dict[str, int], *, height: int = 220) -> alt.Chart:
    """Answers per instance, as horizontal bars, most first."""
    data = pd.DataFrame({"served_by": list(instances), "requests": list(instances.values())})
    return (
        alt.Chart(data)
        .mark_bar(cornerRadiusEnd=3)
        .encode(
            x=alt.X("requests:Q", title="answers"),
            y=alt.Y("served_by:N", title=None, sort="-x"),
            color=_instance_colour(list(instances), legend=None),
            tooltip=["served_by:N", "requests:Q"],
        )
        .properties(height=height)
    )


def latency_chart(traffic: pd.DataFrame, *, height: int = 160) -> alt.Chart:
    """Latency of the UI's recent successful requests, by what sent them."""
    data = traffic[traffic["ok"]]
    return (
        alt.Chart(data)
        .mark_circle(size=18, opacity=0.7)
        .encode(
            x=alt.X("time:T", title=None, scale=alt.Scale(type="utc"), axis=alt.Axis(format="%H:%M:%S")),
            y=alt.Y("latency_ms:Q", title="latency (ms)"),
            color=alt.Color("source:N", title=None, legend=alt.Legend(orient="top")),
            tooltip=[alt.Tooltip("latency_ms:Q", format=".1f"), "source:N", "served_by:N"],
        )
        .properties(height=height)
    )


def stream_chart(frame: pd.DataFrame, *, height: int = 260) -> LayeredChart:
    """The scores of the streamed results per feeder as they arrived, flagged readings as red dots."""
    data = frame[["time", "feeder", "sensor", "score", "anomaly", "model_version"]]
    base = alt.Chart(data).encode(x=_time_axis(), y=alt.Y("score:Q", title="Anomaly score"))
    lines = base.mark_line(strokeWidth=1, opacity=0.7).encode(
        color=alt.Color("feeder:N", legend=alt.Legend(title="feeder", orient="top", direction="horizontal"))
    )
    flagged = (
        base.transform_filter(alt.datum.anomaly)
        .mark_point(filled=True, size=70, color=OUTCOME_COLOURS[Outcome.detected.value])
        .encode(
            tooltip=[
                _time_tooltip("received (UTC)"),
                alt.Tooltip("feeder:N"),
                alt.Tooltip("sensor:N"),
                alt.Tooltip("score:Q", format=".3f"),
                alt.Tooltip("model_version:N", title="model"),
            ]
        )
    )
    return alt.layer(lines, flagged).properties(height=height)
