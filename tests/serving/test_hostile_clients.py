"""Bodies a hostile or careless client sends, against a real server: each gets a clear 4xx naming the problem, and
the service counts exactly what the client saw."""

from __future__ import annotations

import gzip
import json

import httpx2
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.slow

READINGS = {"readings": [{"voltage": 230.1, "current": 10.4, "frequency": 50.01}]}
TEXT = json.dumps(READINGS)

CASES = [
    ("application/json", {}, TEXT.encode(), 200, ""),
    ("application/evil+json", {}, TEXT.encode(), 415, "Content-Type must be application/json"),
    ("application/json; charset=utf-16", {}, TEXT.encode("utf-16"), 415, "must be UTF-8"),
    ("application/json", {}, TEXT.encode("utf-16"), 422, "not UTF-8"),
    ("application/json", {}, TEXT.encode("utf-32"), 422, "not UTF-8"),
    ("application/json", {}, b"\xef\xbb\xbf" + TEXT.encode(), 422, "byte-order mark"),
    ("application/json", {"Content-Encoding": "gzip"}, gzip.compress(TEXT.encode()), 415, "Content-Encoding 'gzip'"),
    ("application/json; charset=UTF-8", {}, TEXT.encode(), 200, ""),
]


def requests_total(url: str, status: int) -> float:
    text = httpx2.get(f"{url}/metrics").text
    prefix = f'requests_total{{method="POST",path="/predict",status="{status}"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_only_uncompressed_utf8_json_is_read_and_every_answer_is_counted_as_sent(server: ServerProcess):
    before = {status: requests_total(server.url, status) for status in (200, 415, 422)}
    seen = dict.fromkeys(before, 0)
    for content_type, headers, body, status, message in CASES:
        answer = httpx2.post(f"{server.url}/predict", content=body, headers={"Content-Type": content_type, **headers})
        assert answer.status_code == status, (content_type, headers, answer.text)
        assert message in answer.text
        seen[status] += 1
    assert {status: requests_total(server.url, status) - before[status] for status in before} == seen
