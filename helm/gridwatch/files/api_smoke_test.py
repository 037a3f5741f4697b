"""helm test hook: the API is ready, and /predict flags an extreme reading while passing a normal one.

Runs inside the backend image (stdlib only) as a Pod of `helm test`; tests/deploy/test_chart_hooks.py and
tests/deploy/test_chart_security.py run this same file against a real local server. Configured by BACKEND_URL,
TEST_TIMEOUT_SECONDS and, when the chart's apiKey is on, API_KEY_FILE (the mounted Secret; API_KEY also works): the
test then sends the key in X-API-Key and also checks that /predict refuses a call without it (401).
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE_URL = os.environ["BACKEND_URL"].rstrip("/")
if not BASE_URL.startswith(("http://", "https://")):
    raise SystemExit(f"FAIL: BACKEND_URL must be an http(s) URL, got {BASE_URL!r}")
TIMEOUT_S = float(os.environ.get("TEST_TIMEOUT_SECONDS", "120"))
NORMAL = {"voltage": 231.2, "current": 12.5, "frequency": 50.01}
EXTREME = {"voltage": 410.0, "current": 200.0, "frequency": 45.0}


def api_key():
    """The key from API_KEY_FILE (read strictly: a configured but unreadable file fails the test), else API_KEY."""
    path = os.environ.get("API_KEY_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as handle:  # noqa: PTH123 (stdlib only, as in the image)
                key = handle.read().strip()
        except OSError as error:
            raise SystemExit(f"FAIL: API_KEY_FILE={path}: {error.strerror}") from None
        if not key:
            raise SystemExit(f"FAIL: API_KEY_FILE={path} is empty")
        return key
    return os.environ.get("API_KEY", "").strip() or None


KEY = api_key()


def request(path, body=None, key=KEY):
    """(status, parsed JSON body) of one call; HTTP errors are answers too, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["X-API-Key"] = key
    req = urllib.request.Request(BASE_URL + path, data=data, headers=headers)  # noqa: S310 (http(s) checked above)
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_until_ready():
    """Poll /health like a readiness probe until 200 or the deadline (a fresh pod may still be training)."""
    deadline = time.monotonic() + TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        try:
            status, body = request("/health")
            if status == 200:
                return body
            last = (status, body)
        except OSError as error:
            last = error
        time.sleep(2)
    raise SystemExit(f"FAIL: {BASE_URL}/health not ready after {TIMEOUT_S:.0f}s (last: {last!r})")


def main():
    health = wait_until_ready()
    print(f"ok: /health answered {health.get('status')} with model {health.get('model_version')}")
    if health.get("status") != "ok":
        return f"FAIL: /health status is {health.get('status')!r}"
    batch = {"readings": [NORMAL, EXTREME]}
    if KEY:
        status, answer = request("/predict", batch, key=None)
        if status != 401:
            return f"FAIL: /predict without X-API-Key answered {status}, expected 401: {answer!r}"
        print("ok: /predict without X-API-Key answered 401")
    status, answer = request("/predict", batch)
    if status == 401:
        hint = "the key sent is not the API's" if KEY else "the API requires a key: set the chart's apiKey values"
        return f"FAIL: /predict answered 401 ({hint}): {answer!r}"
    if status != 200:
        return f"FAIL: /predict answered {status}: {answer!r}"
    flags = [prediction["anomaly"] for prediction in answer["predictions"]]
    print(f"ok: /predict answered {flags} (served by {answer.get('served_by')})")
    if flags != [False, True] or answer.get("anomalies") != 1 or answer.get("total") != 2:
        return f"FAIL: expected the normal reading passed and the extreme one flagged, got {answer!r}"
    print(f"PASS: the API is ready and flags the extreme reading{' (with the API key)' if KEY else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
