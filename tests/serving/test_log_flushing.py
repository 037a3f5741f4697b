"""The serving worker's log handler: lines logged on the event loop are formatted and leave together once the loop has
done the work at hand; warnings, errors and lines from other threads leave at once; nothing is lost or reordered."""

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


class CountingFormatter(logging.Formatter):
    """Counts its calls; a record whose message is "unformattable" fails, as a broken record would."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(message)s")
        self.calls = 0

    def format(self, record: logging.LogRecord) -> str:
        self.calls += 1
        if record.msg == "unformattable":
            raise ValueError("cannot format this record")
        return super().format(record)


def handler_and_raw() -> tuple[logging.Logger, RecordingRaw]:
    raw = RecordingRaw()
    stream = io.TextIOWrapper(io.BufferedWriter(raw, buffer_size=64 * 1024), encoding="utf-8")
    handler = LoopFlushedStreamHandler(stream)
    handler.setFormatter(CountingFormatter())
    logger = logging.getLogger(f"test.loop_flushed.{id(raw)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, raw


def formatter_of(logger: logging.Logger) -> CountingFormatter:
    formatter = logger.handlers[0].formatter
    assert isinstance(formatter, CountingFormatter)
    return formatter


async def loop_moved_on() -> None:
    """Returns once the callbacks scheduled before it (the handler's flush) have run."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


def test_lines_logged_on_the_loop_leave_in_one_write_once_the_loop_moves_on() -> None:
    logger, raw = handler_and_raw()

    async def answer_three_requests() -> tuple[list[bytes], list[str]]:
        for number in range(3):
            logger.info("request %d", number)
        before = list(raw.calls)
        await loop_moved_on()
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


def test_lines_on_the_loop_are_formatted_when_the_loop_moves_on_not_during_the_request() -> None:
    logger, raw = handler_and_raw()
    formatter = formatter_of(logger)

    async def answer_three_requests() -> tuple[int, int]:
        for number in range(3):
            logger.info("request %d", number)
        during = formatter.calls
        await loop_moved_on()
        return during, formatter.calls

    assert asyncio.run(answer_three_requests()) == (0, 3)
    assert raw.lines() == ["INFO request 0", "INFO request 1", "INFO request 2"]


def test_a_line_from_another_thread_follows_the_lines_kept_before_it() -> None:
    logger, raw = handler_and_raw()

    async def request_then_watcher() -> list[str]:
        logger.info("request answered")
        thread = threading.Thread(target=logger.info, args=("new model version found",))
        thread.start()
        thread.join()  # the loop has not moved on: the request's line is still kept
        return raw.lines()

    assert asyncio.run(request_then_watcher()) == ["INFO request answered", "INFO new model version found"]


def test_flush_writes_the_kept_lines_as_logging_shutdown_does_at_exit() -> None:
    logger, raw = handler_and_raw()

    async def request_then_flush() -> list[str]:
        logger.info("last request")
        logger.handlers[0].flush()  # what logging.shutdown() calls for every handler
        return raw.lines()

    assert asyncio.run(request_then_flush()) == ["INFO last request"]


def test_a_record_that_cannot_be_formatted_is_reported_and_the_others_are_written(monkeypatch) -> None:
    logger, raw = handler_and_raw()
    handler = logger.handlers[0]
    reported: list[str] = []
    monkeypatch.setattr(handler, "handleError", lambda record: reported.append(record.msg))

    async def three_requests() -> None:
        logger.info("before")
        logger.info("unformattable")
        logger.info("after")
        await loop_moved_on()

    asyncio.run(three_requests())
    assert reported == ["unformattable"]
    assert raw.lines() == ["INFO before", "INFO after"]


def test_lines_a_stopped_loop_kept_leave_with_the_next_loop_s_lines() -> None:
    logger, raw = handler_and_raw()
    old = asyncio.new_event_loop()

    async def log_and_stop() -> None:
        logger.info("before the restart")
        asyncio.get_running_loop().stop()  # the loop stops at the end of this iteration, before its flush

    old.run_until_complete(log_and_stop())
    old.close()
    assert raw.lines() == []

    async def after_restart() -> None:
        logger.info("after the restart")
        await loop_moved_on()

    asyncio.run(after_restart())
    assert raw.lines() == ["INFO before the restart", "INFO after the restart"]
