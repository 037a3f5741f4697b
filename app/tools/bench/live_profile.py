"""Where the real GridWatch server spends its time while it serves, sampled from outside with py-spy.

``app.tools.bench.request_profile`` profiles the application in process, without sockets or uvicorn, under cProfile
(which slows Python code more than native code). This module samples the live server process instead: py-spy reads
the Python stack of the event loop's thread ``RATE_HZ`` times a second while the benchmark's load keeps it busy, and
each sample is given to one stage:

1. a stage of the request path, if one of its functions is on the stack (the innermost such function wins, so the
   scoring inside ``BatchScorer.score`` counts as scoring and the rest of ``BatchScorer.score`` as metrics and drift);
   the functions are the project's own, imported here, so renaming one breaks this import instead of silently
   emptying a stage; the logging functions stand for the access log, the only thing that logs per request;
2. else "event loop": the stack ends in the loop's ``run`` with no Python frame above it, i.e. uvloop's C code
   (socket reads and writes, callbacks' bookkeeping), which py-spy cannot see into without ``--native`` (that
   slowed the server about ninefold);
3. else the innermost frame of either uvicorn (the HTTP server: httptools' callbacks, sending the answer) or the
   web framework (FastAPI, Starlette and this project's middleware), whichever is deeper;
4. else "other" (anything else on that thread).

Samples in which py-spy found the thread not running (blocked in the selector's ``epoll_wait``) are not recorded
(no ``--idle``); they are the "idle" row: the sampling rounds py-spy counted minus the thread's recorded samples.

py-spy stops the process for each sample by default; ``--nonblocking`` reads it while it runs, which slows it less
but yields stacks torn mid-update: on Python 3.11 with uvloop a quarter to a third of the rounds failed and two
thirds of the rest lacked their outer frames (``incomplete_stacks`` counts those), which misplaces them (the access
log's share fell from 9% to 3%). Blocking is the default here: the profile has a load run of its own, so its pauses
(the server served a tenth to a sixth less meanwhile) never touch the throughput figures.

Attaching needs ptrace permission on the server (root with CAP_SYS_PTRACE, or ``kernel.yama.ptrace_scope`` 0 for
the same user); when it is refused the profile says why instead of failing the benchmark.
"""

from __future__ import annotations

import asyncio
import logging
import re
import selectors
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import fastapi
import starlette
import uvicorn
from pythonjsonlogger.core import BaseJsonFormatter

import app.serving
from app.scoring.batch import BatchScorer
from app.tools.bench.request_profile import RECORD_STAGE, STAGES
from app.tools.bench.wrk import wrk_seconds

RATE_HZ = 250
LOAD_MARGIN_S = 1.0
"""The load starts before py-spy attaches and runs this much longer than the sampling, so it covers all of it."""
HOTTEST = 10
"""Functions listed by the time the thread spent in them (not below them)."""
PY_SPY_TIMEOUT_MARGIN_S = 60.0

LOGGING_STAGE = "access log (logging)"
EVENT_LOOP_STAGE = "event loop (uvloop's C code)"
SERVER_STAGE = "HTTP server (uvicorn, httptools)"
FRAMEWORK_STAGE = "framework, middleware"
OTHER_STAGE = "other"
IDLE_STAGE = "idle (waiting in the selector)"

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_THREAD = re.compile(r"^thread \((?P<id>0x[0-9a-fA-F]+|\d+)\)(?::\s*(?P<name>.*))?$")
_COUNTS = re.compile(r"Samples: (\d+) Errors: (\d+)")
_ENTRY_FRAMES = frozenset({"<module>", "_run_module_as_main"})


@dataclass(frozen=True)
class Frame:
    name: str
    file: str
    line: int

    @classmethod
    def parse(cls, text: str) -> Frame:
        """One frame of py-spy's collapsed output: ``name (file:line)``."""
        match = _FRAME.match(text)
        if match is None:
            return cls(text, "", 0)
        return cls(match["name"], match["file"], int(match["line"] or 0))

    @property
    def label(self) -> str:
        return f"{self.name} ({self.file})"


@dataclass(frozen=True)
class FunctionMatcher:
    """Recognises the frames of one Python function: its name, its file, and a line inside its code."""

    qualname: str
    name: str
    filename: str
    first_line: int
    last_line: int

    @classmethod
    def of(cls, function: Callable[..., Any]) -> FunctionMatcher:
        code = function.__code__
        lines = [line for _, _, line in code.co_lines() if line is not None] + [code.co_firstlineno]
        return cls(code.co_qualname, code.co_name, code.co_filename, min(lines), max(lines))

    def matches(self, frame: Frame) -> bool:
        named = frame.name == self.qualname or frame.name.rsplit(".", 1)[-1] == self.name
        return (
            named
            and _same_file(frame.file, self.filename)
            and (frame.line == 0 or self.first_line <= frame.line <= self.last_line)
        )


@dataclass(frozen=True)
class PackageMatcher:
    """Recognises the frames of any module of one package (py-spy prints paths relative to ``sys.path``)."""

    path: str

    @classmethod
    def of(cls, package: ModuleType) -> PackageMatcher:
        return cls(package.__name__.replace(".", "/"))

    def matches(self, frame: Frame) -> bool:
        return frame.file.startswith(self.path + "/") or f"/{self.path}/" in frame.file


def _same_file(shown: str, filename: str) -> bool:
    """py-spy shortens ``/venv/lib/python3.11/site-packages/x/y.py`` to ``x/y.py``: a suffix at a ``/``."""
    return bool(shown) and (filename == shown or filename.endswith("/" + shown))


REQUEST_STAGES: dict[str, list[FunctionMatcher]] = {
    **{stage: [FunctionMatcher.of(function) for function in functions] for stage, functions in STAGES.items()},
    RECORD_STAGE: [FunctionMatcher.of(BatchScorer.score)],
    LOGGING_STAGE: [
        FunctionMatcher.of(function)
        for function in (
            logging.Logger._log,
            logging.Handler.handle,
            logging.StreamHandler.emit,
            BaseJsonFormatter.format,
        )
    ],
}
"""Stage -> the functions whose presence on the stack puts a sample in it; the innermost one on a stack wins."""
EVENT_LOOP_RUN = [
    FunctionMatcher.of(function)
    for function in (
        asyncio.Runner.run,
        asyncio.BaseEventLoop.run_forever,
        asyncio.BaseEventLoop.run_until_complete,
        asyncio.BaseEventLoop._run_once,  # type: ignore[attr-defined]  # private, but where the loop spends its time
        selectors.DefaultSelector.select,
    )
]
"""The loop's own frames: a sample whose innermost frame is one of them is in the loop's C code (uvloop)."""
SERVER_PACKAGES = [PackageMatcher.of(uvicorn)]
FRAMEWORK_PACKAGES = [PackageMatcher.of(package) for package in (fastapi, starlette, app.serving)]
STAGE_ORDER = [
    *REQUEST_STAGES,
    FRAMEWORK_STAGE,
    SERVER_STAGE,
    EVENT_LOOP_STAGE,
    OTHER_STAGE,
    IDLE_STAGE,
]
"""The rows of the table, in the order a request meets them, then what is not a request's own work."""


@dataclass(frozen=True)
class Sample:
    thread: str
    frames: tuple[Frame, ...]
    """Outermost first, as py-spy writes them."""
    count: int


def parse_collapsed(text: str) -> list[Sample]:
    """py-spy's ``--format raw`` (Brendan Gregg's collapsed stacks): ``thread;frame;frame... count`` per line."""
    samples = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        thread = parts[0] if _THREAD.match(parts[0]) else ""
        frames = parts[1:] if thread else parts
        samples.append(Sample(thread, tuple(map(Frame.parse, frames)), int(count)))
    return samples


def is_loop_thread(thread: str, pid: int) -> bool:
    """The thread that runs uvicorn's event loop: the main thread (on Linux its id is the process id)."""
    match = _THREAD.match(thread)
    if match is None:
        return not thread  # py-spy without --threads: one unnamed stack per sample
    return match["id"] == str(pid) or (match["name"] or "").strip() == "MainThread"


def _innermost_stage(frames: Sequence[Frame], stages: dict[str, list[FunctionMatcher]]) -> str | None:
    for frame in reversed(frames):
        for stage, matchers in stages.items():
            if any(matcher.matches(frame) for matcher in matchers):
                return stage
    return None


def _innermost_package(frames: Sequence[Frame]) -> str | None:
    for frame in reversed(frames):
        if any(matcher.matches(frame) for matcher in FRAMEWORK_PACKAGES):
            return FRAMEWORK_STAGE
        if any(matcher.matches(frame) for matcher in SERVER_PACKAGES):
            return SERVER_STAGE
    return None


def classify(frames: Sequence[Frame]) -> str:
    """The stage one sample of the event loop's thread belongs to (see the module's docstring for the rules)."""
    if stage := _innermost_stage(frames, REQUEST_STAGES):
        return stage
    if frames and any(matcher.matches(frames[-1]) for matcher in EVENT_LOOP_RUN):
        return EVENT_LOOP_STAGE
    return _innermost_package(frames) or OTHER_STAGE


@dataclass(frozen=True)
class StageShare:
    stage: str
    samples: int
    share: float
    """Of all the sampling rounds (so the idle row and the stages add up to 1)."""


@dataclass(frozen=True)
class LiveProfile:
    available: bool
    reason: str | None = None
    """Why there is no profile (py-spy missing, ptrace refused...), when ``available`` is false."""
    pid: int | None = None
    mode: str = "blocking"
    rate_hz: int = RATE_HZ
    seconds: int = 0
    rounds: int = 0
    """Sampling rounds py-spy completed: the denominator of every share."""
    errors: int = 0
    """Rounds in which py-spy could not read the stacks (frequent with --nonblocking)."""
    busy_samples: int = 0
    """Rounds in which the event loop's thread was running (the rest it was idle)."""
    incomplete_stacks: int = 0
    """Busy samples whose stack does not reach the program's entry frame (torn by --nonblocking)."""
    other_thread_samples: int = 0
    """Busy samples of other threads (the table covers the event loop's thread only)."""
    load_requests_per_s: float | None = None
    """What the load achieved while the profile ran (py-spy's pauses slow the server in blocking mode)."""
    stages: list[StageShare] = field(default_factory=list)
    hottest: list[StageShare] = field(default_factory=list)
    """The functions the thread was in (not below) most often: the leaves of the stacks."""


def unavailable(reason: str) -> LiveProfile:
    return LiveProfile(available=False, reason=reason)


def summarise(samples: Iterable[Sample], pid: int, rounds: int) -> dict[str, Any]:
    """Stage shares, the hottest functions and the sample counts of the event loop's thread."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    busy = incomplete = other_threads = 0
    for sample in samples:
        if not is_loop_thread(sample.thread, pid):
            other_threads += sample.count
            continue
        busy += sample.count
        stages[classify(sample.frames)] += sample.count
        if sample.frames:
            leaves[sample.frames[-1].label] += sample.count
        if not sample.frames or sample.frames[0].name not in _ENTRY_FRAMES:
            incomplete += sample.count
    rounds = max(rounds, busy)
    stages[IDLE_STAGE] = rounds - busy

    def share(count: int) -> float:
        return round(count / rounds, 4) if rounds else 0.0

    return {
        "rounds": rounds,
        "busy_samples": busy,
        "incomplete_stacks": incomplete,
        "other_thread_samples": other_threads,
        "stages": [StageShare(stage, stages[stage], share(stages[stage])) for stage in STAGE_ORDER],
        "hottest": [StageShare(label, count, share(count)) for label, count in leaves.most_common(HOTTEST)],
    }


def find_py_spy() -> str | None:
    """py-spy on PATH, or beside this Python (the virtualenv's bin, when the venv is not activated)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


class ProfileUnavailableError(RuntimeError):
    """py-spy ran but produced no profile; the message says why in py-spy's words."""


def record(py_spy: str, pid: int, seconds: int, output: Path, *, nonblocking: bool) -> tuple[int, int]:
    """Sample ``pid`` for ``seconds`` into ``output`` (collapsed stacks); returns py-spy's (rounds, errors)."""
    command = [
        py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(RATE_HZ),
        "--format", "raw", "--output", str(output), "--threads",
    ]  # fmt: skip
    if nonblocking:
        command.append("--nonblocking")
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=seconds + PY_SPY_TIMEOUT_MARGIN_S
        )
    except subprocess.TimeoutExpired:
        raise ProfileUnavailableError(f"py-spy did not finish within {seconds + PY_SPY_TIMEOUT_MARGIN_S:g}s") from None
    said = f"{result.stdout}\n{result.stderr}"
    if result.returncode != 0 or not output.exists():
        # Its first line says why ("Permission Denied: ...", "Error: Failed to get process executable name..."),
        # a Rust backtrace may follow.
        lines = [line.strip() for line in said.splitlines() if line.strip() and not line.startswith("py-spy>")]
        raise ProfileUnavailableError(
            f"py-spy could not sample pid {pid} (exit {result.returncode}): {lines[0] if lines else 'no output'}"
        )
    counts = _COUNTS.search(said)
    return (int(counts[1]), int(counts[2])) if counts else (seconds * RATE_HZ, 0)


def profile_under_load(
    pid: int,
    duration: float,
    load: Callable[[float], float],
    workdir: Path,
    *,
    nonblocking: bool = False,
) -> LiveProfile:
    """Profile ``pid`` for ``duration`` seconds while ``load(seconds)`` (returning the requests/s it achieved)
    keeps it busy; never raises for a missing py-spy or a refused attach, the profile says why instead."""
    py_spy = find_py_spy()
    if py_spy is None:
        return unavailable("py-spy is not installed (it is in the dev dependency group: uv sync --all-extras)")
    seconds = wrk_seconds(duration)
    output = workdir / f"py-spy-{pid}.txt"
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-load") as pool:
        running = pool.submit(load, seconds + LOAD_MARGIN_S)
        try:
            rounds, errors = record(py_spy, pid, seconds, output, nonblocking=nonblocking)
        except ProfileUnavailableError as error:
            running.result()
            return unavailable(str(error))
        achieved = running.result()
    summary = summarise(parse_collapsed(output.read_text()), pid, rounds)
    return LiveProfile(
        available=True,
        pid=pid,
        mode="nonblocking" if nonblocking else "blocking",
        seconds=seconds,
        errors=errors,
        load_requests_per_s=round(achieved, 1),
        **summary,
    )
