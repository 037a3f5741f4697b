"""The columns of recorded readings: the one definition the data files, the simulator's exports and the training
reader share, so a file ``gridwatch simulate --format csv`` writes is one ``gridwatch train --data`` reads."""

from __future__ import annotations

from app import FEATURES

TIMESTAMP = "timestamp"
"""When the reading was taken (ISO 8601); kept in exports, never a model input."""
LABEL = "is_anomaly"
"""Ground truth, optional: true/false, 1/0, yes/no. Its true rows are left out of training and used to evaluate."""
KIND = "anomaly_kind"
"""Which kind of anomaly a labelled row is, optional; reported by the evaluation, never a model input."""
COLUMNS: tuple[str, ...] = (TIMESTAMP, *FEATURES, LABEL, KIND)
"""Every column of a recorded export, in the order the files are written."""
