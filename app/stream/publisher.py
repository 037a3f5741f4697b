"""Publishing a batch's results to JetStream and knowing when the server has stored every one of them.

The client's own ``publish_async`` keeps a future, a semaphore slot and a random token per message, which made
publishing most of the consumer's time (one result per reading). Here every message of a batch carries the same
reply subject, one subscription counts the server's acknowledgements as they arrive, and the batch waits for its
count once. An acknowledgement is a small JSON document: ``"duplicate": true`` marks a result the stream already
had (a redelivered reading), an ``"error"`` or an empty status message a refusal, which fails the batch.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class PublishRefusedError(RuntimeError):
    """The server refused a message of the batch (no stream for its subject, a limit, a wrong stream)."""


@dataclass
class Batch:
    """The messages of one batch: how many were sent, how many the server acknowledged, and how."""

    reply: str
    sent: int = 0
    acknowledged: int = 0
    duplicates: int = 0
    refusals: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    sealed: bool = False

    def _settle(self) -> None:
        if self.sealed and self.acknowledged >= self.sent:
            self.done.set()


class AckedPublisher:
    """Publishes batches of messages to JetStream and waits for each batch's acknowledgements."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._prefix = ""
        self._ids = itertools.count()
        self._batches: dict[str, Batch] = {}
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._prefix = self._client.new_inbox()
        self._subscription = await self._client.subscribe(f"{self._prefix}.*", cb=self._on_ack)

    def batch(self) -> Batch:
        token = str(next(self._ids))
        batch = Batch(reply=f"{self._prefix}.{token}")
        self._batches[token] = batch
        return batch

    async def publish(self, batch: Batch, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        batch.sent += 1
        await self._client.publish(subject, payload, reply=batch.reply, headers=headers)

    async def wait(self, batch: Batch, timeout: float) -> Batch:
        """Block until the server acknowledged every message of ``batch``; ``PublishRefusedError`` if it refused
        one, ``TimeoutError`` after ``timeout`` (a server that died mid-batch never answers)."""
        batch.sealed = True
        batch._settle()
        try:
            await asyncio.wait_for(batch.done.wait(), timeout)
        finally:
            self._batches.pop(batch.reply.rsplit(".", 1)[1], None)
        if batch.refusals:
            raise PublishRefusedError(f"{len(batch.refusals)} results refused, e.g. {batch.refusals[0]}")
        return batch

    async def _on_ack(self, msg: Msg) -> None:
        batch = self._batches.get(msg.subject.rsplit(".", 1)[1])
        if batch is None:  # a late answer for a batch that gave up waiting
            return
        data = msg.data
        if not data or b'"error"' in data:
            status = (msg.headers or {}).get("Status", "") if msg.headers else ""
            batch.refusals.append(data.decode(errors="replace") or f"status {status or 'without a body'}")
        elif b'"duplicate"' in data:  # the server writes it as "duplicate": true, only when it is one
            batch.duplicates += 1
        batch.acknowledged += 1
        batch._settle()
