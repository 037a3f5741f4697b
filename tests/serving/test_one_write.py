"""A response's head and body leave in one write (``app.serving.edge.connections.OneWriteTransport``), and nothing
that is not the head is ever held back: the body, an interim ``100 Continue``, a head whose body never comes."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from app.serving.edge.connections import SMALL_BODY_BYTES, OneWriteTransport
from tests.support import ServerProcess

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    """A transport that keeps what is written to it, in the calls it was written with."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_the_head_is_written_with_the_first_body_chunk_and_later_chunks_alone() -> None:
    real = RecordingTransport()
    transport = OneWriteTransport(real)
    transport.holding = True
    transport.write(HEAD)
    assert real.writes == []
    transport.write(b"{}")
    transport.write(b"more")
    assert real.writes == [HEAD + b"{}", b"more"]
    assert transport.is_closing() is False  # everything else is the real transport's


def test_a_big_body_is_not_copied_behind_its_head() -> None:
    real = RecordingTransport()
    transport = OneWriteTransport(real)
    transport.holding = True
    transport.write(HEAD)
    big = b"x" * (SMALL_BODY_BYTES + 1)
    transport.write(big)
    assert real.writes == [HEAD, big]


def test_writes_outside_a_response_head_pass_at_once_and_a_held_head_is_written_before_closing() -> None:
    real = RecordingTransport()
    transport = OneWriteTransport(real)
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # uvicorn's interim answer: not a head being sent
    assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    transport.holding = True
    transport.write(HEAD)
    transport.close()  # the application failed after starting its answer: uvicorn closes the connection
    assert real.writes[1:] == [HEAD]
    assert real.closed


def _read_answer(connection: socket.socket) -> bytes:
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    return answer


@pytest.mark.slow
def test_a_real_server_answers_an_expect_100_continue_client_and_then_its_body(model_dir: Path) -> None:
    """The interim 100 is written at once (a client waits for it before sending the body), then the answer."""
    body = json.dumps({"readings": [{"voltage": 230.4, "current": 11.2, "frequency": 50.003}]}).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        "\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with (
        ServerProcess(env={"MODEL_DIR": str(model_dir), "TRAIN_IF_MISSING": "0"}) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection,
    ):
        connection.sendall(head)
        interim = connection.recv(65536)  # blocks until the server asks for the body
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.sendall(body)
        answer = _read_answer(connection)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 200 OK"
    payload = rest.partition(b"\r\n\r\n")[2]
    assert json.loads(payload)["total"] == 1
