"""The Stream view's feed against a real NATS server: results per feeder, anomalies, bounded memory, bad messages
counted and skipped, an unreachable server reported, and a stop that ends its thread."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.stream.support import NatsServer, run
from ui.stream_feed import FeedSnapshot, StreamFeed, parse_result

DEADLINE_S = 30.0


def poll(feed: StreamFeed, condition: Callable[[FeedSnapshot], bool], what: str) -> FeedSnapshot:
    """The feed's first snapshot that meets ``condition``, polled until a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    snapshot = feed.snapshot()
    while time.monotonic() < deadline:
        snapshot = feed.snapshot()
        if condition(snapshot):
            return snapshot
        time.sleep(0.05)  # poll interval, not synchronisation: the loop waits for the condition itself
    raise AssertionError(f"{what}: not true after {DEADLINE_S}s (last: {snapshot})")


def result(sequence: int, *, anomaly: bool = False, score: float = 0.1) -> bytes:
    return json.dumps(
        {"sequence": sequence, "index": 0, "timestamp": f"2026-12-04T00:00:{sequence % 60:02d}Z", "anomaly": anomaly,
         "score": score, "model_version": "abc123", "sensor": "x", "sensor_id": None}
    ).encode()  # fmt: skip


async def publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    client = await nats.connect(url)
    try:
        for subject, body in messages:
            await client.publish(subject, body)
        await client.flush()
    finally:
        await client.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "store") as nats_server:
        yield nats_server


@pytest.fixture
def feed_of(server: NatsServer) -> Iterator[Callable[..., StreamFeed]]:
    feeds: list[StreamFeed] = []

    def start(**options: Any) -> StreamFeed:
        feed = StreamFeed(server.nats_url, **options).start()
        feeds.append(feed)
        poll(feed, lambda s: s.connected, "the feed is subscribed")
        return feed

    yield start
    for feed in feeds:
        feed.stop()


def test_results_land_in_their_feeders_window_and_anomalies_in_the_list(server: NatsServer, feed_of):
    feed = feed_of()
    messages = [(f"grid.scored.f{i % 2}.s{i % 3}", result(i, anomaly=i == 4, score=0.9 if i == 4 else 0.1))
                for i in range(10)]  # fmt: skip
    messages.append(("grid.anomalies.f0.s1", result(4, anomaly=True, score=0.9)))
    run(publish(server.nats_url, messages))
    snapshot = poll(feed, lambda s: s.received == 10 and len(s.anomalies) == 1, "ten results and one anomaly")
    assert sorted(snapshot.feeders) == ["f0", "f1"]
    assert [r.sequence for r in snapshot.feeders["f0"]] == [0, 2, 4, 6, 8], "in arrival order"
    assert {r.sensor for r in snapshot.feeders["f1"]} == {"s0", "s1", "s2"}
    (flagged,) = snapshot.anomalies
    assert (flagged.feeder, flagged.sensor, flagged.score, flagged.model_version) == ("f0", "s1", 0.9, "abc123")
    assert [r.anomaly for r in snapshot.feeders["f0"]] == [False, False, True, False, False]
    assert snapshot.malformed == 0
    assert snapshot.error is None


def test_memory_is_bounded_per_feeder_and_in_feeders(server: NatsServer, feed_of):
    feed = feed_of(per_feeder=5, max_feeders=2)
    messages = [(f"grid.scored.f{i % 3}.s0", result(i)) for i in range(30)]
    run(publish(server.nats_url, messages))
    snapshot = poll(feed, lambda s: s.received == 30, "every result counted")
    assert sorted(snapshot.feeders) == ["f0", "f1"], "a third feeder is counted, not kept"
    assert [r.sequence for r in snapshot.feeders["f0"]] == [15, 18, 21, 24, 27], "the latest five"
    assert all(len(window) == 5 for window in snapshot.feeders.values())


def test_a_message_it_cannot_read_is_counted_and_skipped(server: NatsServer, feed_of):
    feed = feed_of()
    run(publish(server.nats_url, [
        ("grid.scored.f0.s0", b"not json"),
        ("grid.scored.f0.s0", b'{"anomaly": "yes", "score": 1}'),
        ("grid.anomalies.f0.s0", b"[1, 2]"),
        ("grid.scored.f0.s0", result(1)),
    ]))  # fmt: skip
    snapshot = poll(feed, lambda s: s.received == 1 and s.malformed == 3, "three refused, one kept")
    assert [r.sequence for r in snapshot.feeders["f0"]] == [1]
    assert feed.running, "a bad message never ends the feed"


def test_an_unreachable_server_is_reported_and_stop_ends_the_thread():
    from app.tools.processes import free_port

    feed = StreamFeed(f"nats://127.0.0.1:{free_port()}").start()
    snapshot = poll(feed, lambda s: s.error is not None and "NATS" in s.error, "the error is reported")
    assert not snapshot.connected
    feed.stop()
    assert not feed.running


def test_a_stop_right_after_start_is_not_lost():
    """Streamlit may release a feed the moment it was made (a URL changed twice, a session gone): the stop must
    end the thread even when it comes before the thread has set up its loop."""
    from app.tools.processes import free_port

    feeds = [StreamFeed(f"nats://127.0.0.1:{free_port()}").start() for _ in range(20)]
    for feed in feeds:
        feed.stop()
    assert [feed.running for feed in feeds] == [False] * 20


def test_stop_without_waiting_still_ends_the_thread():
    from app.tools.processes import free_port

    feed = StreamFeed(f"nats://127.0.0.1:{free_port()}").start()
    feed.stop(timeout=0)
    poll(feed, lambda _: not feed.running, "the thread ends after a stop that did not wait")


def test_parse_result_refuses_what_is_not_a_result():
    assert parse_result("grid.scored.f1.s2", result(3), 1.0).feeder == "f1"
    refused = [
        ("grid.scored", result(1), "not a result subject"),
        ("grid.scored.f1.s2", b'"text"', "a JSON object"),
        ("grid.scored.f1", b"{}", "a boolean anomaly"),
    ]
    for subject, body, reason in refused:
        with pytest.raises(ValueError, match=reason):
            parse_result(subject, body, 1.0)
