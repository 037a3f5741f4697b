"""helm test hook: Prometheus scrapes the backend (an `up` target equal to 1) and has loaded the GridWatch rules.

Runs inside the backend image (stdlib only) as a Pod of `helm test` when kube-prometheus-stack is enabled;
tests/deploy/test_chart_hooks.py runs this same file against a real local Prometheus. Configured by PROMETHEUS_URL, JOB,
NAMESPACE (optional label filter), RULE_GROUPS (comma-separated group names that must be loaded; may be empty)
TEST_TIMEOUT_SECONDS and POLL_SECONDS. Waits: the operator needs a moment to pick up the ServiceMonitor, and
Prometheus to scrape it once.
"""

import json
import os
import sys
import time
import urllib.parse
import urllib.request

PROMETHEUS_URL = os.environ["PROMETHEUS_URL"].rstrip("/")
if not PROMETHEUS_URL.startswith(("http://", "https://")):
    raise SystemExit(f"FAIL: PROMETHEUS_URL must be an http(s) URL, got {PROMETHEUS_URL!r}")
JOB = os.environ["JOB"]
NAMESPACE = os.environ.get("NAMESPACE", "")
RULE_GROUPS = {name for name in os.environ.get("RULE_GROUPS", "").split(",") if name}
TIMEOUT_S = float(os.environ.get("TEST_TIMEOUT_SECONDS", "180"))
POLL_S = float(os.environ.get("POLL_SECONDS", "5"))


def api(path, **params):
    url = f"{PROMETHEUS_URL}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (http(s) checked above)
        body = json.loads(answer.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body!r}")
    return body["data"]


def up_query():
    selector = f'job="{JOB}"' + (f',namespace="{NAMESPACE}"' if NAMESPACE else "")
    return "up{" + selector + "}"


def check():
    """None when both conditions hold, else what is still missing."""
    series = api("query", query=up_query())["result"]
    up = [s["metric"].get("instance", "?") for s in series if s["value"][1] == "1"]
    if not up:
        return f"no target of {up_query()} is up yet (series: {series!r})"
    loaded = {group["name"] for group in api("rules")["groups"]}
    missing = RULE_GROUPS - loaded
    if missing:
        return f"rule groups not loaded yet: {sorted(missing)}"
    print(f"ok: {len(up)} target(s) up: {', '.join(sorted(up))}; rule groups loaded: {sorted(RULE_GROUPS)}")
    return None


def main():
    deadline = time.monotonic() + TIMEOUT_S
    problem = "not checked yet"
    while time.monotonic() < deadline:
        try:
            problem = check()
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            problem = f"{type(error).__name__}: {error}"
        if problem is None:
            print("PASS: Prometheus scrapes the backend")
            return 0
        time.sleep(POLL_S)
    return f"FAIL after {TIMEOUT_S:.0f}s: {problem}"


if __name__ == "__main__":
    sys.exit(main())
