"""The compiled kernels of the forest, chosen once at import: ahead of time if the extension module was built,
else just in time with numba, else none (``app.detector.forest`` then walks the trees in NumPy).

* **Ahead of time** (``app.detector._forest_aot``, built by ``python -m app.detector.forest_aot``; the container
  image and ``make sync`` build it): imports in a millisecond and loads neither numba nor LLVM, which keeps a
  serving worker about 150 MB smaller and its start free of compilation. Its functions hold the GIL, so
  ``path_length_sums`` scores big batches in slices, letting the event loop run between them.
* **Just in time** (``app.detector.forest_kernels`` with numba): ``nogil=True``, so a worker thread scores while
  the event loop serves. The machine code is cached (beside the source, in the user's cache folder, or in
  ``NUMBA_CACHE_DIR``) so later starts skip the ~2 s compilation; where none of those is writable, numba refuses
  ``cache=True`` and the kernels are compiled in memory at each start instead, which ``CACHED`` says.

Both come from the same source and give the same sums, bit for bit (``tests/detector/test_forest.py``), and the
same per-feature credits of ``local_diffi`` (``tests/detector/test_explain.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

CHAINS = 8
"""The kernels' unrolling, ``forest_kernels.CHAINS``, repeated here because the ahead-of-time path must not import
that module (it imports numba); a test holds the two equal."""
AOT_SLICE_ROWS = 256
"""Rows per call of an ahead-of-time kernel: about 1 ms of scoring, after which the GIL can change hands."""

Kernel = Callable[..., np.ndarray]


KERNEL_NAMES = ("trees_outer", "rows_outer", "local_diffi")
"""``forest_kernels.KERNELS`` and its ``EXPLAIN_KERNEL``, in that order (a test holds them equal)."""


def _ahead_of_time() -> tuple[Kernel, Kernel, Kernel] | None:
    try:  # built, not written: absent on a fresh checkout, and an extension module no type checker can read
        _forest_aot = importlib.import_module("app.detector._forest_aot")
    except ImportError:
        return None
    if not all(hasattr(_forest_aot, name) for name in KERNEL_NAMES):
        return None  # built before a kernel was added: `make sync` rebuilds it; until then, just in time
    return _forest_aot.trees_outer, _forest_aot.rows_outer, _forest_aot.local_diffi


def _just_in_time() -> tuple[Kernel, Kernel, Kernel, bool] | None:
    try:
        from numba import njit  # noqa: PLC0415
    except ImportError:
        return None
    from app.detector import forest_kernels  # noqa: PLC0415 - imports numba

    def compiled(cache: bool) -> list[Kernel]:
        return [njit(cache=cache, nogil=True)(getattr(forest_kernels, name)) for name in KERNEL_NAMES]

    try:
        trees_outer, rows_outer, local_diffi = compiled(cache=True)
    except RuntimeError:  # "cannot cache function ...: no locator available": nowhere writable to cache
        trees_outer, rows_outer, local_diffi = compiled(cache=False)
        return trees_outer, rows_outer, local_diffi, False
    return trees_outer, rows_outer, local_diffi, True


_AOT = _ahead_of_time()
_JIT = None if _AOT is not None else _just_in_time()
KIND = "ahead-of-time" if _AOT is not None else ("just-in-time" if _JIT is not None else None)
"""Which compiled kernels score: "ahead-of-time", "just-in-time", or None (NumPy)."""
AVAILABLE = KIND is not None
CACHED = _AOT is not None or (_JIT is not None and _JIT[3])
"""Whether starting again skips compilation: always for ahead-of-time kernels, for numba if its cache is writable."""


def _kernels() -> tuple[Kernel, Kernel, Kernel]:
    kernels = _AOT or _JIT
    if kernels is None:
        raise RuntimeError("no compiled kernels: numba is not installed and the ahead-of-time module was not built")
    return kernels[0], kernels[1], kernels[2]


def _in_slices(kernel: Kernel, rows: np.ndarray, *args: object) -> np.ndarray:
    """``kernel(rows, *args)``; for ahead-of-time kernels, which hold the GIL, in slices of AOT_SLICE_ROWS rows
    concatenated, so the event loop can run between them."""
    if _AOT is None or rows.shape[0] <= AOT_SLICE_ROWS:
        return kernel(rows, *args)
    return np.concatenate(
        [kernel(rows[start : start + AOT_SLICE_ROWS], *args) for start in range(0, rows.shape[0], AOT_SLICE_ROWS)]
    )


def path_length_sums(
    rows: np.ndarray,
    threshold: np.ndarray,
    meta: np.ndarray,
    leaf_value: np.ndarray,
    roots: np.ndarray,
    depth: int,
    feature_bits: int,
) -> np.ndarray:
    """Per row, the leaf values summed over the trees in order. ``rows`` is C-contiguous float32."""
    trees_outer, rows_outer, _ = _kernels()
    args = (threshold, meta, leaf_value, roots, depth, feature_bits, (1 << feature_bits) - 1)
    if rows.shape[0] < CHAINS:
        return rows_outer(rows, *args)
    return _in_slices(trees_outer, rows, *args)


def local_diffi(
    rows: np.ndarray,
    threshold: np.ndarray,
    meta: np.ndarray,
    leaf_value: np.ndarray,
    roots: np.ndarray,
    depth: int,
    feature_bits: int,
    n_features: int,
) -> np.ndarray:
    """Per row, the leaf values summed over the trees in order (column 0, equal to ``path_length_sums``) and each
    feature's isolation credit (columns 1 on), in one walk (``forest_kernels.local_diffi``)."""
    kernel = _kernels()[2]
    mask = (1 << feature_bits) - 1
    return _in_slices(kernel, rows, threshold, meta, leaf_value, roots, depth, feature_bits, mask, n_features)
