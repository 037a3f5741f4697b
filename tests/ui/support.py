"""Helpers for the UI's tests: a predictable scoring route for the stub backend, the real UI as a process, and a
real backend with a model folder of its own.

``tests.support.StubBackend`` answers whatever a test scripts (errors, odd bodies, slow answers) over real HTTP and
records the connections it saw, so the client's error handling and keep-alive behaviour are tested on the wire. The
happy paths run against the real backend (``tests.support.ServerProcess``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tests.support import ROOT, Answer, HttpProcess, Route

UI_SCRIPT = ROOT / "ui" / "main.py"


STUB_CONTRIBUTIONS = {"voltage": 0.7, "current": 0.2, "frequency": 0.1}
"""The shares the stub's explanations give every flagged reading: voltage on top, as the stub flags on voltage."""


def stub_explanation(reading: dict[str, Any], flagged: bool) -> dict[str, Any]:
    """An explanation in the API's shape (docs/api.md): the stub's shares for a flagged reading, no credit at all
    otherwise, and the bands and EN 50160 limits of a 230 V / 50 Hz feeder."""
    bands = {"voltage": (230.0, 1.2, [227.5, 233.0]), "current": (10.7, 4.5, [5.6, 20.8]),
             "frequency": (50.0, 0.02, [49.95, 50.05])}  # fmt: skip
    limits = {"voltage": [207.0, 253.0], "current": None, "frequency": [49.5, 50.5]}
    features = []
    for name, (median, spread, band) in bands.items():
        value = float(reading.get(name, median))
        low_high = limits[name]
        features.append(
            {
                "name": name,
                "contribution": STUB_CONTRIBUTIONS[name] if flagged else 0.0,
                "value": value,
                "median": median,
                "spread": spread,
                "band": band,
                "z": (value - median) / spread,
                "limits": low_high,
                "outside_limits": None if low_high is None else not low_high[0] <= value <= low_high[1],
            }
        )
    return {"top_feature": "voltage" if flagged else None, "features": features}


def scoring_route(
    threshold_voltage: float = 300.0,
    served_by: str = "stub:1",
    model_version: str | None = "stub-v1",
    *,
    explain: bool = False,
) -> Route:
    """A /predict that flags readings above ``threshold_voltage`` volts: a predictable stand-in for the model.
    ``model_version=None`` answers as a backend from before hot swaps did, without the field; ``explain`` adds
    each prediction's ``stub_explanation`` (route it at ``/predict?explain=true``: the stub matches whole paths)."""

    def score(body: dict[str, Any] | None) -> Answer:
        readings = (body or {}).get("readings", [])
        predictions: list[dict[str, Any]] = [
            {"anomaly": r["voltage"] > threshold_voltage, "score": (r["voltage"] - threshold_voltage) / 100}
            for r in readings
        ]
        if explain:
            for reading, prediction in zip(readings, predictions, strict=True):
                prediction["explanation"] = stub_explanation(reading, prediction["anomaly"])
        answer = {
            "predictions": predictions,
            "anomalies": sum(p["anomaly"] for p in predictions),
            "total": len(predictions),
            "served_by": served_by,
        }
        if model_version is not None:
            answer["model_version"] = model_version
        return Answer(200, answer)

    return score


class StreamlitProcess(HttpProcess):
    """``streamlit run ui/main.py`` as a child process, configured only by environment variables.

    The port comes from ``STREAMLIT_SERVER_PORT`` (not ``--server.port``), so the test also proves the documented
    variable works; the backend from ``BACKEND_URL``; ``env`` adds more (``NATS_URL``).
    """

    def __init__(self, backend_url: str, **env: str) -> None:
        super().__init__(ready_path="/_stcore/health", log_name="ui")
        self.env = {
            **os.environ,
            "BACKEND_URL": backend_url,
            "STREAMLIT_SERVER_PORT": str(self.port),
            "STREAMLIT_SERVER_ADDRESS": "127.0.0.1",
            "STREAMLIT_SERVER_HEADLESS": "true",
            "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
            **env,
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "streamlit", "run", str(UI_SCRIPT)]
