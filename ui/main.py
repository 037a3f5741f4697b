"""GridWatch UI: stream simulated grid readings through the backend and watch what the detector sees.

Run with ``streamlit run ui/main.py`` (``gridwatch up`` does it for you); ``BACKEND_URL`` says where the API is
(default http://localhost:8000), ``STREAMLIT_SERVER_PORT`` where the page is served (default 8501).

This script only lays out the page and decides what runs when; the work is in small modules beside it:
``client`` (HTTP), ``live`` (the session's stream), ``window``, ``detection``, ``why`` (the explanations of the
flagged readings), ``traffic``, ``load``, ``charts``, ``views`` and ``stream_feed`` (the Stream view's NATS
subscription, ``NATS_URL``). Streaming is a ``st.fragment`` whose ``run_every`` is switched on and off through
session state: each tick scores one batch and redraws only the live view, so the page stays responsive and every
script run finishes (no ``sleep`` + ``st.rerun()`` loop).

``streamlit run`` puts this script's folder first on the import path, so the script must not be named after a
package the page imports: as ``app.py`` it would shadow the ``app`` package (the simulator). As ``main.py`` it
shadows nothing, and ``app`` and ``ui`` import from the installed project (the venv, the UI image).
"""

from __future__ import annotations

import streamlit as st

from ui import views
from ui.client import BackendClient
from ui.config import (
    ANOMALY_RATE,
    BATCH_SIZE,
    HEALTH_REFRESH_S,
    INTERVAL_S,
    LOAD_REQUESTS,
    LOAD_SECONDS,
    LOAD_THREADS,
    STREAM_REFRESH_S,
    WINDOW_READINGS,
    Range,
    api_key_from_env,
    backend_url_from_env,
    nats_url_from_env,
)
from ui.live import LiveSession, StreamSettings, anomaly_kind_options, refresh_backend, stream_tick
from ui.load import SustainedLoad, burst, concurrent_burst, load_payloads, make_sender
from ui.stream_feed import StreamFeed

SESSION_KEY = "gridwatch"
CLIENT_KEY = "gridwatch_client"
LOAD_REFRESH_S = 1.0


def live_session() -> LiveSession:
    if SESSION_KEY not in st.session_state:
        st.session_state[SESSION_KEY] = LiveSession()
    return st.session_state[SESSION_KEY]


def backend_client(url: str, new_connection_each_request: bool) -> BackendClient:
    """The session's client, kept across reruns so its keep-alive connections are reused; rebuilt on change."""
    client: BackendClient | None = st.session_state.get(CLIENT_KEY)
    wanted = (url.strip().rstrip("/"), new_connection_each_request)
    if client is None or (client.base_url, client.new_connection_each_request) != wanted:
        if client is not None:
            client.close()
        client = BackendClient(url, new_connection_each_request=new_connection_each_request, api_key=api_key_from_env())
        st.session_state[CLIENT_KEY] = client
    return client


def range_slider(
    label: str,
    bounds: Range,
    *,
    key: str,
    whole: bool = False,
    step: float | None = None,
    format: str | None = None,
    help: str | None = None,
) -> float:
    """A slider from the low to the high end of one of ``ui.config``'s ranges, starting at its default: the bounds
    are written once, there, where the load actions and the tests read them too.

    ``whole`` makes it an integer slider: Streamlit picks an int or a float widget from the values' type, and a
    ``Range`` is typed as floats. The other arguments default to ``st.slider``'s own.
    """
    if whole:
        low, high, default = int(bounds.low), int(bounds.high), int(bounds.default)
        return st.slider(
            label, low, high, default, step=None if step is None else int(step), format=format, key=key, help=help
        )
    return st.slider(label, bounds.low, bounds.high, bounds.default, step=step, format=format, key=key, help=help)


def sidebar() -> tuple[str, bool, StreamSettings]:
    with st.sidebar:
        st.header("Settings")
        url = st.text_input(
            "Backend URL",
            value=backend_url_from_env(),
            key="backend_url",
            help="Where the GridWatch API listens. Defaults to BACKEND_URL, else http://localhost:8000.",
        )
        new_connection = st.toggle(
            "New connection each request",
            key="new_connection",
            help="Disable keep-alive: every request opens a new TCP connection. A Kubernetes Service balances "
            "connections, not requests, so this is what spreads the UI's requests over all pods.",
        )
        st.subheader("Stream")
        batch_size = range_slider("Batch size", BATCH_SIZE, key="batch_size", whole=True)
        interval = range_slider(
            "Interval (s)", INTERVAL_S, key="interval_s", step=0.5, help="Time between two batches while streaming."
        )
        rate = range_slider(
            "Anomaly rate",
            ANOMALY_RATE,
            key="anomaly_rate",
            step=0.005,
            format="percent",
            help="Probability that a simulated reading is an injected anomaly.",
        )
        options = anomaly_kind_options()
        kinds = st.multiselect(
            "Anomaly kinds to inject",
            options,
            default=options,
            format_func=lambda kind: kind.replace("_", " "),
            key="anomaly_kinds",
        )
        window = range_slider(
            "Window (readings)",
            WINDOW_READINGS,
            key="window",
            whole=True,
            step=100,
            help="How many of the latest readings the charts show. Counters and statistics cover everything "
            "since the last reset.",
        )
        if rate > 0 and not kinds:
            st.caption("No kind selected: nothing will be injected.")
    settings = StreamSettings(
        batch_size=int(batch_size),
        interval_s=float(interval),
        anomaly_rate=float(rate),
        anomaly_kinds=tuple(kinds),
        window=int(window),
    )
    return url, bool(new_connection), settings


def toggle_streaming(live: LiveSession) -> None:
    live.streaming = not live.streaming


def actions(live: LiveSession, client: BackendClient, settings: StreamSettings) -> None:
    with st.container(horizontal=True, gap="small"):
        if st.button("Generate Batch", key="generate", type="primary", icon=":material/bolt:"):
            live.generate(client, settings)
        st.button(
            "Stop streaming" if live.streaming else "Start streaming",
            key="stream_toggle",
            icon=":material/stop_circle:" if live.streaming else ":material/play_circle:",
            on_click=views.guarded(toggle_streaming),
            args=(live,),
            help=f"Score one batch every {settings.interval_s:g} s until stopped.",
        )
        if st.button("Inject Extreme Reading", key="inject", icon=":material/warning:"):
            live.inject_extreme(client, settings)
        if st.button("Reset", key="reset", icon=":material/restart_alt:", help="Clear charts, counters, statistics."):
            live.reset()


def status_panel(client: BackendClient) -> None:
    live = live_session()
    refresh_backend(live.backend, client, max_age_s=HEALTH_REFRESH_S)
    views.render_status(live)


def live_panel(client: BackendClient, settings: StreamSettings) -> None:
    live = live_session()
    stream_tick(live, client, settings)
    live.window.resize(settings.window)  # a smaller window applies at once, not only with the next batch
    if live.last_error is not None and live.backend.error is None:  # else the status banner already says it
        st.error(f"**Last batch not scored.** {live.last_error.message}.", icon=":material/error:")
    views.render_counters(live)
    views.render_live_charts(live)
    views.render_why(live)


def toggle_sustained(live: LiveSession, client: BackendClient, settings: StreamSettings) -> None:
    if live.sustained_running:
        assert live.sustained is not None
        live.sustained.stop()
        return
    send = make_sender(client, _payloads(settings), live.traffic, source="sustained")
    live.load_report = None
    live.sustained = SustainedLoad(
        send, threads=int(st.session_state["load_threads"]), seconds=float(st.session_state["load_seconds"])
    ).start()


def _payloads(settings: StreamSettings) -> list[list[dict[str, object]]]:
    return load_payloads(
        settings.batch_size, anomaly_rate=settings.effective_anomaly_rate, anomaly_kinds=settings.anomaly_kinds
    )


def load_controls(live: LiveSession, client: BackendClient, settings: StreamSettings) -> None:
    st.subheader("Load and autoscaling")
    st.caption(
        "Send the backend more work than one stream does and watch it scale: the chart shows which instance "
        "(`served_by`) answered each request. With keep-alive, a Kubernetes Service keeps each connection on one "
        "pod; turn on *New connection each request* to spread requests over new pods as the HPA adds them. "
        f"Each request carries one batch of {settings.batch_size} readings; every action is bounded and stops "
        "by itself."
    )
    columns = st.columns(3)
    requests = columns[0].number_input(
        "Requests per burst",
        int(LOAD_REQUESTS.low),
        int(LOAD_REQUESTS.high),
        int(LOAD_REQUESTS.default),
        key="load_requests",
    )
    threads = columns[1].number_input(
        "Threads", int(LOAD_THREADS.low), int(LOAD_THREADS.high), int(LOAD_THREADS.default), key="load_threads"
    )
    columns[2].number_input(
        "Sustained for (s)",
        int(LOAD_SECONDS.low),
        int(LOAD_SECONDS.high),
        int(LOAD_SECONDS.default),
        key="load_seconds",
    )
    running = live.sustained_running
    with st.container(horizontal=True, gap="small"):
        if st.button("Burst Load", key="burst", icon=":material/bolt:", disabled=running):
            with st.spinner(f"Sending {requests} requests back to back..."):
                send = make_sender(client, _payloads(settings), live.traffic, source="burst")
                live.load_report = burst(send, int(requests))
        if st.button("Concurrent Burst", key="concurrent_burst", icon=":material/call_split:", disabled=running):
            with st.spinner(f"Sending {requests} requests from {threads} threads..."):
                send = make_sender(client, _payloads(settings), live.traffic, source="concurrent")
                live.load_report = concurrent_burst(send, int(requests), int(threads))
        st.button(
            "Stop sustained load" if running else "Sustained Concurrent Bursts",
            key="sustained_toggle",
            icon=":material/stop_circle:" if running else ":material/speed:",
            on_click=views.guarded(toggle_sustained),
            args=(live, client, settings),
            help="Threads send back to back for the chosen seconds, then stop by themselves.",
        )


def load_panel(ticking: bool) -> None:
    live = live_session()
    sustained = live.sustained
    if sustained is not None:
        report = sustained.report()
        if not report.running:
            live.load_report, live.sustained = report, None
        views.render_load_report(report, elapsed=sustained.elapsed_s, seconds=sustained.seconds)
    else:
        views.render_load_report(live.load_report)
    views.render_spread(live)
    if ticking and not live.sustained_running:
        st.rerun()  # the run ended: a full rerun turns this fragment's refresh off and flips the button back


def backend_panel() -> None:
    views.render_backend_details(live_session())


def release_feed(feed: StreamFeed) -> None:
    feed.stop(timeout=0)  # on Streamlit's server thread when a session ends: ask, never wait


@st.cache_resource(scope="session", max_entries=1, on_release=release_feed, show_spinner=False)
def session_feed(url: str) -> StreamFeed:
    """The session's subscription to ``url``, kept across reruns. A session-scoped resource because Streamlit
    releases those when the session ends (a closed tab), which session state would not: each visit would leave a
    connection and a thread behind. One entry: a new URL releases the previous subscription."""
    return StreamFeed(url).start()


def stream_feed(url: str, subscribed: bool) -> StreamFeed | None:
    """The session's subscription to the stream's results; released when switched off."""
    if not subscribed or not url.strip():
        session_feed.clear()
        return None
    return session_feed(url.strip())


def stream_controls() -> StreamFeed | None:
    st.subheader("Stream from the broker")
    st.caption(
        "What the stream consumers (`gridwatch stream`) publish: one result per reading on `grid.scored.>`, the "
        "flagged ones also on `grid.anomalies.>`, per feeder, live from the moment the view subscribes."
    )
    default_url, subscribe_now = nats_url_from_env()
    with st.container(horizontal=True, gap="small"):
        url = st.text_input("NATS URL", value=default_url, key="nats_url", help="Defaults to NATS_URL.")
        subscribed = st.toggle("Subscribe", value=subscribe_now, key="stream_subscribed")
    return stream_feed(url, subscribed)


def stream_panel(feed: StreamFeed) -> None:
    views.render_stream(feed.snapshot())


def main() -> None:
    url, new_connection, settings = sidebar()
    live = live_session()
    client = backend_client(url, new_connection)

    st.title(":material/electric_bolt: GridWatch")
    views.render_diagnostics(client.base_url)
    actions(live, client, settings)
    st.fragment(run_every=settings.interval_s if live.streaming else HEALTH_REFRESH_S)(views.guarded(status_panel))(
        client
    )
    st.fragment(run_every=settings.interval_s if live.streaming else None)(views.guarded(live_panel))(client, settings)

    st.divider()
    load_controls(live, client, settings)
    ticking = live.sustained_running
    st.fragment(run_every=LOAD_REFRESH_S if ticking else None)(views.guarded(load_panel))(ticking)

    st.divider()
    st.subheader("Backend and model")
    st.fragment(run_every=HEALTH_REFRESH_S)(views.guarded(backend_panel))()

    st.divider()
    feed = stream_controls()
    if feed is not None:
        st.fragment(run_every=STREAM_REFRESH_S)(views.guarded(stream_panel))(feed)


st.set_page_config(
    page_title="GridWatch", page_icon=":material/electric_bolt:", layout="wide", initial_sidebar_state="expanded"
)
# Belt and braces: every panel already turns errors into a short message (views.guarded); should one escape, the
# page still shows no traceback. The toolbar keeps only what a viewer needs (no "Deploy", no developer menu).
st.set_option("client.showErrorDetails", "none")
st.set_option("client.toolbarMode", "viewer")
views.guarded(main)()
