"""The serving worker's log handler: lines written on the event loop leave together once the loop has done the work at
hand; warnings, errors and lines from other threads leave at once; nothing is lost or reordered."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

from app.serving.telemetry.logs import LoopFlushedStreamHandler


class RecordingRaw(io.RawIOBase):
    """The bottom of a stream stack that keeps each ``write`` call it receives (a system call, for a file)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.calls.append(bytes(data))
        return len(data)

    def lines(self) -> list[str]:
        return b"".join(self.calls).decode().splitlines()


def handler_and_raw() -> tuple[logging.Logger, RecordingRaw]:
    raw = RecordingRaw()
    stream = io.TextIOWrapper(io.BufferedWriter(raw, buffer_size=64 * 1024), encoding="utf-8")
    handler = LoopFlushedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test.loop_flushed.{id(raw)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, raw


def test_lines_logged_on_the_loop_leave_in_one_write_once_the_loop_moves_on() -> None:
    logger, raw = handler_and_raw()

    async def answer_three_requests() -> tuple[list[bytes], list[str]]:
        for number in range(3):
            logger.info("request %d", number)
        before = list(raw.calls)
        after_flush = asyncio.get_running_loop().create_future()
        # Scheduled after the handler's flush callback, so it runs once the loop has flushed.
        asyncio.get_running_loop().call_soon(after_flush.set_result, None)
        await after_flush
        return before, raw.lines()

    before, after = asyncio.run(answer_three_requests())
    assert before == []  # nothing written while the requests were being answered
    assert after == ["INFO request 0", "INFO request 1", "INFO request 2"]
    assert len(raw.calls) == 1  # one write for the three lines


def test_warnings_and_lines_from_other_threads_leave_at_once() -> None:
    logger, raw = handler_and_raw()

    async def on_the_loop() -> list[str]:
        logger.info("first")
        logger.warning("something is wrong")  # flushes everything before it, in order
        return raw.lines()

    assert asyncio.run(on_the_loop()) == ["INFO first", "WARNING something is wrong"]

    thread = threading.Thread(target=logger.info, args=("from the model watcher",))
    thread.start()
    thread.join()
    assert raw.lines()[-1] == "INFO from the model watcher"  # no loop there to flush later: written at once
