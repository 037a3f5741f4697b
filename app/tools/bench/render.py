"""The benchmark's results, rendered once: ``sections`` turns a result into titled tables and sentences, and the two
outputs only lay them out, as Markdown for docs/benchmarks.md (``render_markdown``) or as tables in the terminal
(``print_bench``), so both always show the same figures with the same words."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table as RichTable

from app.tools.bench.live_profile import LiveProfile
from app.tools.bench.request_profile import RequestProfile
from app.tools.bench.results import BASELINE, GRIDWATCH, WARM_UP_SHARE, BenchResult, HttpRow, ScorerRow
from app.tools.bench.server_probes import READY_POLL_S

if TYPE_CHECKING:
    from app.tools.bench.stream import StreamResult


@dataclass(frozen=True)
class Table:
    """One table: its columns, which are right-aligned (figures), and its rows of ready-made cells."""

    columns: Sequence[str]
    right: Sequence[bool]
    rows: list[Sequence[str]]
    caption: str | None = None
    """A sentence shown above the table (a section's second table)."""
    code_column: bool = False
    """The first column holds code names (shown as code in Markdown)."""


@dataclass(frozen=True)
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Sentences after the tables."""


def sections(result: BenchResult) -> list[Section]:
    """Every part of the result that was measured, in the order both outputs show them."""
    found = [_scorer_section(result.scorer)]
    if result.http:
        found.append(_http_section(result.http, result.config, result.scorer))
    if result.live_profile:
        found.append(_live_profile_section(result.live_profile, result.config))
    if result.request_path:
        found.append(_request_path_section(result.request_path))
    if result.stream:
        found.append(_stream_section(result.stream))
    return found


def render_markdown(result: BenchResult, command: str) -> str:
    """docs/benchmarks.md: the machine, the scorer, both servers side by side, the live profile, the in-process one."""
    lines = _header_markdown(result, command)
    for section in sections(result):
        lines += _section_markdown(section)
    return "\n".join(lines) + "\n"


def print_bench(result: BenchResult, console: Console | None = None) -> None:
    """The same sections as tables in the terminal."""
    console = console or Console(highlight=False)
    for section in sections(result):
        for paragraph in section.paragraphs:
            console.print(f"[dim]{paragraph}[/]" if section.tables else paragraph)
        for number, table in enumerate(section.tables):
            title = section.title if number == 0 else table.caption
            rich = RichTable(title=title)
            for column, right in zip(table.columns, table.right, strict=True):
                rich.add_column(column, justify="right" if right else "left")
            for row in table.rows:
                rich.add_row(*row)
            console.print(rich)
        for note in section.notes:
            console.print(note)


# --- laying a section out as Markdown ---------------------------------------------------------------------------


def _section_markdown(section: Section) -> list[str]:
    lines = ["", f"## {section.title}", ""]
    for number, paragraph in enumerate(section.paragraphs):
        lines += ([""] if number else []) + [paragraph]
    if section.tables and section.paragraphs:
        lines.append("")
    for number, table in enumerate(section.tables):
        if number:
            lines.append("")
        if table.caption:
            lines += [table.caption, ""]
        lines += _table_markdown(table)
    if section.notes:
        lines += ["", *section.notes]
    return lines


def _table_markdown(table: Table) -> list[str]:
    lines = [f"| {' | '.join(table.columns)} |".replace("|  |", "| |"), f"|{''.join(_rule(r) for r in table.right)}"]
    for row in table.rows:
        cells = [f"`{row[0]}`" if table.code_column else row[0], *row[1:]]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def _rule(right: bool) -> str:
    return " ---: |" if right else " --- |"


def _header_markdown(result: BenchResult, command: str) -> list[str]:
    machine, model = result.machine, result.model
    return [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {machine['date']}. Re-run it to measure your own machine; the numbers below",
        "come from one run on the machine described here and are not asserted by any test.",
        "",
        f"* Machine: {machine['cpu']}, {machine['cpus']} CPUs, load average at start "
        f"{', '.join(map(str, machine['load_average_at_start']))}",
        f"* Software: Python {machine['python']}, NumPy {machine['numpy']}, scikit-learn {machine['scikit-learn']}"
        + (f", numba {machine['numba']}" if "numba" in machine else "")
        + f"; forest kernels: {machine.get('kernels', 'unknown')}",
        f"* Model {model['version']}: {model['trees']} trees, max_samples {model['max_samples']}, "
        f"{model['nodes']:,} nodes, depth {model['max_depth']}, artifact {model['artifact_mb']} MB",
    ]


# --- the sections -----------------------------------------------------------------------------------------------


def _scorer_section(rows: list[ScorerRow]) -> Section:
    columns = (
        "batch",
        "scikit-learn",
        "compiled, numba",
        "compiled, NumPy",
        "numba speed-up",
        "NumPy speed-up",
        "numba rows/s",
        "scored + explained",
        "explain cost",
    )
    cells = [
        (
            f"{row.batch:,}",
            f"{row.sklearn_ms:.3f} ms",
            f"{row.numba_ms:.4f} ms" if row.numba_ms is not None else "n/a",
            f"{row.numpy_ms:.3f} ms",
            f"{row.speedup_numba:,.1f}x" if row.speedup_numba is not None else "n/a",
            f"{row.speedup_numpy:,.1f}x",
            f"{row.rows_per_s.get('numba', 0):,.0f}" if row.numba_ms else "n/a",
            f"{row.explained_ms:.4f} ms" if row.explained_ms is not None else "n/a",
            f"{row.explain_cost:.2f}x" if row.explain_cost is not None else "n/a",
        )
        for row in rows
    ]
    return Section(
        "Scorer (same process, median time per call)", tables=[Table(columns, [True] * len(columns), list(cells))]
    )


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _mb(value: float | None) -> str:
    return f"{value:,.0f} MB" if value is not None else "n/a"


def _seconds(value: float | None, starts: Sequence[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} s ({', '.join(f'{start:.2f}' for start in starts)})"


def http_comparison(rows: list[HttpRow], config: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(figure, one cell per server): the side-by-side comparison of the servers."""
    connections, batch = config["connections"], config["batch_size"]
    rate = f"{config['fixed_rps']:.0f} requests/s"
    figures: list[tuple[str, Callable[[HttpRow], str]]] = [
        (f"rows/s, {connections} connections", lambda r: f"{r.max_rows_per_s:,.0f}"),
        (f"requests/s of {batch} readings, {connections} connections", lambda r: f"{r.max_requests_per_s:,.1f}"),
        (f"p50, {connections} connections", lambda r: _ms(r.max_p50_ms)),
        (f"p99, {connections} connections", lambda r: _ms(r.max_p99_ms)),
        ("p50, one connection", lambda r: _ms(r.single_p50_ms)),
        ("p99, one connection", lambda r: _ms(r.single_p99_ms)),
        ("resident memory after serving (VmRSS)", lambda r: _mb(r.rss_mb)),
        ("peak resident memory (VmHWM)", lambda r: _mb(r.peak_rss_mb)),
        ("ready time: median (each start)", lambda r: _seconds(r.ready_s, r.ready_starts_s)),
        ("ready time, fresh pod (empty numba cache)", lambda r: _seconds(r.fresh_ready_s, r.fresh_ready_starts_s)),
        (f"at {rate} (open loop): achieved", lambda r: f"{r.fixed_achieved_rps:.1f}"),
        (f"at {rate}: p50", lambda r: _ms(r.fixed_p50_ms)),
        (f"at {rate}: p99", lambda r: _ms(r.fixed_p99_ms)),
        (f"at {rate}: failed, never sent", lambda r: f"{r.fixed_failed}, {r.fixed_unsent}"),
    ]
    return [(name, [cell(row) for row in rows]) for name, cell in figures]


def rows_ratio(rows: list[HttpRow]) -> str | None:
    """The one line comparing GridWatch's rows/s with the baseline's, or None if either is missing."""
    by_name = {row.server: row for row in rows}
    gridwatch, baseline = by_name.get(GRIDWATCH), by_name.get(BASELINE)
    if gridwatch is None or baseline is None or not baseline.max_rows_per_s:
        return None
    ratio = gridwatch.max_rows_per_s / baseline.max_rows_per_s
    return (
        f"GridWatch serves {ratio:.1f}x the rows/s of the baseline ({gridwatch.max_rows_per_s:,.0f} against "
        f"{baseline.max_rows_per_s:,.0f}, tool: {gridwatch.tool})."
    )


def scorer_share(rows: list[HttpRow], scorer: list[ScorerRow], batch_size: int) -> str | None:
    """The line giving GridWatch's HTTP rows/s as a share of its own compiled scorer's, in process, at the same batch
    size in the same run (what is left to the request path); None without both figures."""
    gridwatch = next((row for row in rows if row.server == GRIDWATCH), None)
    scored = next((row for row in scorer if row.batch == batch_size and row.numba_ms), None)
    if gridwatch is None or scored is None or scored.numba_ms is None:
        return None
    in_process = batch_size / scored.numba_ms * 1000
    return (
        f"Over HTTP GridWatch serves {gridwatch.max_rows_per_s / in_process:.1%} of its own scorer's rows/s "
        f"({gridwatch.max_rows_per_s:,.0f} against {in_process:,.0f} scored in process, batches of {batch_size}, "
        "the same run and CPU)."
    )


def _http_section(rows: list[HttpRow], config: dict[str, Any], scorer: list[ScorerRow]) -> Section:
    method = (
        "GridWatch runs as `gridwatch serve` starts for a user: LOG_LEVEL info with its JSON access log (to a file "
        "here), tracing off, metrics on, one worker (WORKERS=1), the model above already trained. The baseline runs "
        "as `app/tools/bench/baseline.py` is written (uvicorn at log level warning, so no access log). Closed loop: "
        f"{config['connections']} connections, then one, sending batches of {config['batch_size']} back to back for "
        f"{config['http_duration']:.0f} s each, the first after {config['http_duration'] * WARM_UP_SHARE:g} s of "
        "the same load, unmeasured (wrk, or `gridwatch load` without it). Memory: `/proc/<pid>/status` "
        "of the serving process right after the throughput run. Ready time: from starting the process to its first "
        f"`/health` 200, probed every {READY_POLL_S * 1000:.0f} ms (the resolution); a fresh pod starts with an "
        "empty `NUMBA_CACHE_DIR`, so it compiles the kernels. Open loop: a fixed rate from `gridwatch load`, "
        "latency counted from the scheduled send time."
    )
    table = Table(
        ("", *(row.server for row in rows)),
        (False, *([True] * len(rows))),
        [(name, *cells) for name, cells in http_comparison(rows, config)],
    )
    notes = [note for note in (scorer_share(rows, scorer, config["batch_size"]), rows_ratio(rows)) if note]
    return Section(
        "HTTP at the defaults (one worker pinned to one CPU, the load on the other CPUs)", [method], [table], notes
    )


def _live_profile_section(profile: LiveProfile, config: dict[str, Any]) -> Section:
    title = "Where the live server spends its time (py-spy, under load)"
    if not profile.available:
        return Section(title, [f"No live profile on this run: {profile.reason}."])
    method = (
        f"py-spy sampled the GridWatch worker's event-loop thread {profile.rate_hz} times a second for "
        f"{profile.seconds} s ({profile.mode} mode) while {config['connections']} connections kept it busy "
        f"({profile.load_requests_per_s:,.1f} requests/s meanwhile; py-spy pauses the process for each sample "
        f"in blocking mode). {profile.rounds:,} samples, {profile.errors} failed, {profile.incomplete_stacks} "
        "incomplete. Each sample goes to the innermost stage on its stack (`app/tools/bench/live_profile.py`); "
        "idle is the share in which the thread was waiting in the selector."
    )
    stages = Table(
        ("stage", "samples", "share"),
        (False, True, True),
        [(stage.stage, f"{stage.samples:,}", f"{stage.share:.1%}") for stage in profile.stages],
    )
    hottest = Table(
        ("function", "share"),
        (False, True),
        [(hot.stage, f"{hot.share:.1%}") for hot in profile.hottest],
        caption="Hottest functions (the thread was in them, not below them):",
        code_column=True,
    )
    return Section(title, [method], [stages, hottest])


def _request_path_section(profile: RequestProfile) -> Section:
    method = (
        f"{profile.requests:,} requests driven through the ASGI application in one thread, without sockets or "
        f"uvicorn (`app.tools.bench.request_profile`): {profile.unprofiled_us_per_request:,.0f} us per request "
        f"without the profiler, {profile.profiled_us_per_request:,.0f} us with it. cProfile slows Python code more "
        "than the compiled scorer, so read the shares, not the absolute times."
    )
    table = Table(
        ("stage", "us per request (profiled)", "share"),
        (False, True, True),
        [(stage.stage, f"{stage.us_per_request:,.1f}", f"{stage.share:.0%}") for stage in profile.stages],
    )
    return Section(
        f"Where one /predict of {profile.rows} readings spends its time (cProfile, in process)", [method], [table]
    )


def _stream_section(stream: StreamResult) -> Section:
    method = (
        "One `gridwatch stream` process at its defaults but `STREAM_BATCH`, pinned to the first CPU; a real NATS "
        "server (JetStream on a temporary store) and the publisher on the others. Each reading is its own message, "
        "as a device publishes it, and gets its own result message. Drain: a backlog published before the consumer "
        "starts, then scored by it alone, timed between the first and the last result the results stream stored "
        "(the consumer's own speed). Live: a backlog published as fast as possible while the consumer runs, timed "
        "from the first publish until every reading has its result (the publisher shares its CPU with the server "
        "and can be the limit). Beside them, the in-process scorer on batches of the same size. The measuring "
        "process keeps Python's cyclic garbage collector off while it measures: its own pauses, with 100,000 "
        "publish futures alive, would otherwise count as the consumer's latency."
    )
    table = Table(
        ("STREAM_BATCH", "readings", "drain readings/s", "live readings/s", "live seconds", "scorer readings/s",
         "drain share of the scorer"),
        (True, True, True, True, True, True, True),
        [
            (f"{row.batch:,}", f"{row.readings:,}", f"{row.drain_readings_per_s:,.0f}", f"{row.readings_per_s:,.0f}",
             f"{row.seconds:.2f}", f"{row.scorer_readings_per_s:,.0f}", f"{row.share_of_scorer:.1%}")
            for row in stream.throughput
        ],
    )  # fmt: skip
    notes = []
    if stream.latency is not None:
        latency = stream.latency
        notes.append(
            f"Latency at {latency.rate:,.0f} readings/s for {latency.seconds:.0f} s (default batch), from each "
            f"reading's publish to its result reaching a subscriber of `grid.scored.>`: p50 {latency.p50_ms:,.1f} "
            f"ms, p99 {latency.p99_ms:,.1f} ms, max {latency.max_ms:,.1f} ms ({latency.received:,} results)."
        )
    return Section("Stream: readings end to end through NATS JetStream", [method], [table], notes)
