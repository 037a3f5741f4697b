"""A plain scoring server, the benchmark's point of comparison; GridWatch never serves with it.

This is how the workshop material writes the service: pydantic models for the request, one object per reading,
scikit-learn's ``decision_function``, a sync endpoint (so FastAPI runs it in its thread pool), FastAPI's default JSON
response. ``gridwatch bench`` runs it on the same model artifact as the real service, side by side.

Run: ``python -m app.tools.bench.baseline --model models/iso_forest.joblib --port 8100``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from app.detector.estimator import load_model


class Reading(BaseModel):
    voltage: float
    current: float
    frequency: float


class PredictRequest(BaseModel):
    readings: list[Reading]


def create_baseline_app(artifact: Path) -> FastAPI:
    estimator = load_model(artifact).estimator
    assert estimator is not None, "load_model always loads the estimator"
    app = FastAPI(title="GridWatch baseline (benchmark only)")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict[str, object]:
        X = np.array([[r.voltage, r.current, r.frequency] for r in request.readings])
        scores = -estimator.decision_function(X)
        predictions = [{"anomaly": bool(score > 0), "score": float(score)} for score in scores]
        return {
            "predictions": predictions,
            "anomalies": sum(p["anomaly"] for p in predictions),
            "total": len(predictions),
            "served_by": "baseline",
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(create_baseline_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
