"""Latency summaries, one way for every load the project generates (``gridwatch load`` and the UI's load actions).

NumPy only, so the UI (which has no scikit-learn) imports it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def latency_summary(latencies_ms: Iterable[float], quantiles: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """``{"avg", "p<q>" for each quantile, "max"}`` in the unit given (milliseconds), or ``{}`` for no sample.

    Percentiles are NumPy's default (linear interpolation between the closest ranks).
    """
    values = np.fromiter(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return {}
    summary = {"avg": float(values.mean())}
    summary.update(zip((f"p{q}" for q in quantiles), map(float, np.percentile(values, quantiles)), strict=True))
    summary["max"] = float(values.max())
    return summary
