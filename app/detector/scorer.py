"""What scores a batch: one name for the ``SCORER`` setting and for the detector's scoring paths.

Kept in a module of its own, importing nothing heavy, so the settings can name it without loading numba or
scikit-learn.
"""

from __future__ import annotations

from enum import StrEnum


class Scorer(StrEnum):
    """All give the same flags and scores; they differ in speed (docs/benchmarks.md)."""

    auto = "auto"
    """numba when it is installed, else numpy."""
    numba = "numba"
    """The compiled forest walked by numba kernels: the fast path."""
    numpy = "numpy"
    """The compiled forest walked level by level in NumPy: the fallback without numba."""
    sklearn = "sklearn"
    """scikit-learn's own ``decision_function``: the reference, and the baseline of the benchmark."""

    def resolved(self) -> Scorer:
        """``auto`` made concrete (numba if installed, else numpy); refuses numba where it is not installed."""
        from app.detector import forest_jit  # noqa: PLC0415 - numba is imported only once a model scores

        if self is Scorer.auto:
            return Scorer.numba if forest_jit.AVAILABLE else Scorer.numpy
        if self is Scorer.numba and not forest_jit.AVAILABLE:
            raise ValueError("SCORER=numba but numba is not installed; use auto, numpy or sklearn")
        return self
