"""The consumer's publisher (app.stream.publisher) against a real NATS server: a batch waits for exactly its
acknowledgements, tells duplicates apart, and fails on a refusal instead of waiting for it."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from app.stream.publisher import AckedPublisher, PublishRefusedError
from tests.stream.support import NatsServer, run

pytestmark = pytest.mark.slow


async def _publish(url: str, subjects: list[tuple[str, str]]) -> tuple[int, int]:
    client = await nats.connect(url)
    try:
        await client.jetstream().add_stream(StreamConfig(name="T", subjects=["t.>"], duplicate_window=60))
        publisher = AckedPublisher(client)
        await publisher.start()
        batch = publisher.batch()
        for subject, message_id in subjects:
            await publisher.publish(batch, subject, b"{}", {"Nats-Msg-Id": message_id})
        done = await publisher.wait(batch, 10.0)
        return done.acknowledged, done.duplicates
    finally:
        await client.close()


def test_a_batch_counts_its_acknowledgements_and_its_duplicates(tmp_path: Path):
    with NatsServer(tmp_path / "js") as server:
        messages = [(f"t.{n % 3}", f"id-{n}") for n in range(1_000)] + [("t.0", "id-7"), ("t.1", "id-8")]
        assert run(_publish(server.nats_url, messages)) == (1_002, 2)


def test_a_message_no_stream_takes_fails_the_batch(tmp_path: Path):
    with NatsServer(tmp_path / "js") as server, pytest.raises(PublishRefusedError, match="refused"):
        run(_publish(server.nats_url, [("t.0", "a"), ("elsewhere.0", "b")]))
