"""The two kernels that walk a ``CompiledForest``, as Python source that numba compiles (see
``app.detector.forest`` for the layout and why it is exact).

They are compiled two ways from this one source: just in time in the process that scores
(``app.detector.forest_jit``, needs numba and LLVM at run time) or ahead of time into a small extension module
(``app.detector.forest_aot``, needs numba only to build; the container image ships it), which serving imports
without numba.

Two traversals, chosen by measurement (the figures and the variants that lost are in docs/performance.md):

* ``trees_outer``: every tree in turn, eight rows walking it together as eight independent chains held in
  registers. A tree (about 27 kB) stays in L1/L2 while all rows pass through it, and the CPU overlaps the eight
  chains' dependent loads.
* ``rows_outer``: for fewer than eight rows, each row walks eight trees at a time instead (the chains must come
  from somewhere).

Sums are added in tree order in both, so they equal scikit-learn's to the last bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

CHAINS = 8
"""Independent traversals interleaved per loop iteration (the unrolling below)."""
SIGNATURE = "f8[::1](f4[:, ::1], f4[::1], i4[::1], f8[::1], i4[::1], i8, i8, i8)"
"""(rows, threshold, meta, leaf_value, roots, depth, shift, mask) -> per-row sums; arrays C-contiguous."""
KERNELS = ("trees_outer", "rows_outer")


@njit(inline="always")
def _step(node, rows, row, threshold, meta, shift, mask):
    packed = meta[node]
    return (packed >> shift) + (rows[row, packed & mask] > threshold[node])


def trees_outer(rows, threshold, meta, leaf_value, roots, depth, shift, mask):
    n = rows.shape[0]
    out = np.zeros(n)
    full = n - n % CHAINS
    for t in range(roots.shape[0]):
        root = roots[t]
        for s in range(0, full, CHAINS):
            a = b = c = d = e = f = g = h = root
            for _ in range(depth):
                a = _step(a, rows, s, threshold, meta, shift, mask)
                b = _step(b, rows, s + 1, threshold, meta, shift, mask)
                c = _step(c, rows, s + 2, threshold, meta, shift, mask)
                d = _step(d, rows, s + 3, threshold, meta, shift, mask)
                e = _step(e, rows, s + 4, threshold, meta, shift, mask)
                f = _step(f, rows, s + 5, threshold, meta, shift, mask)
                g = _step(g, rows, s + 6, threshold, meta, shift, mask)
                h = _step(h, rows, s + 7, threshold, meta, shift, mask)
            out[s] += leaf_value[a]
            out[s + 1] += leaf_value[b]
            out[s + 2] += leaf_value[c]
            out[s + 3] += leaf_value[d]
            out[s + 4] += leaf_value[e]
            out[s + 5] += leaf_value[f]
            out[s + 6] += leaf_value[g]
            out[s + 7] += leaf_value[h]
        for r in range(full, n):
            a = root
            for _ in range(depth):
                a = _step(a, rows, r, threshold, meta, shift, mask)
            out[r] += leaf_value[a]
    return out


def rows_outer(rows, threshold, meta, leaf_value, roots, depth, shift, mask):
    n = rows.shape[0]
    out = np.zeros(n)
    trees = roots.shape[0]
    full = trees - trees % CHAINS
    for r in range(n):
        total = 0.0
        for t in range(0, full, CHAINS):
            a, b, c, d = roots[t], roots[t + 1], roots[t + 2], roots[t + 3]
            e, f, g, h = roots[t + 4], roots[t + 5], roots[t + 6], roots[t + 7]
            for _ in range(depth):
                a = _step(a, rows, r, threshold, meta, shift, mask)
                b = _step(b, rows, r, threshold, meta, shift, mask)
                c = _step(c, rows, r, threshold, meta, shift, mask)
                d = _step(d, rows, r, threshold, meta, shift, mask)
                e = _step(e, rows, r, threshold, meta, shift, mask)
                f = _step(f, rows, r, threshold, meta, shift, mask)
                g = _step(g, rows, r, threshold, meta, shift, mask)
                h = _step(h, rows, r, threshold, meta, shift, mask)
            total += leaf_value[a]
            total += leaf_value[b]
            total += leaf_value[c]
            total += leaf_value[d]
            total += leaf_value[e]
            total += leaf_value[f]
            total += leaf_value[g]
            total += leaf_value[h]
        for t in range(full, trees):
            a = roots[t]
            for _ in range(depth):
                a = _step(a, rows, r, threshold, meta, shift, mask)
            total += leaf_value[a]
        out[r] = total
    return out
