"""helm test hook: the API is ready, and /predict flags an extreme reading while passing a normal one.

Runs inside the backend image (stdlib only) as a Pod of `helm test`; tests/test_helm_hooks.py runs this same file
against a real local server. Configured by BACKEND_URL and TEST_TIMEOUT_SECONDS.
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


def request(path, body=None):
    """(status, parsed JSON body) of one call; HTTP errors are answers too, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
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
    status, answer = request("/predict", {"readings": [NORMAL, EXTREME]})
    if status != 200:
        return f"FAIL: /predict answered {status}: {answer!r}"
    flags = [prediction["anomaly"] for prediction in answer["predictions"]]
    print(f"ok: /predict answered {flags} (served by {answer.get('served_by')})")
    if flags != [False, True] or answer.get("anomalies") != 1 or answer.get("total") != 2:
        return f"FAIL: expected the normal reading passed and the extreme one flagged, got {answer!r}"
    print("PASS: the API is ready and flags the extreme reading")
    return 0


if __name__ == "__main__":
    sys.exit(main())
