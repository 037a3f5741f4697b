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


EXPLAIN_KERNEL = "local_diffi"
EXPLAIN_SIGNATURE = "f8[:, ::1](f4[:, ::1], f4[::1], i4[::1], f8[::1], i4[::1], i8, i8, i8, i8)"
"""(rows, threshold, meta, leaf_value, roots, depth, shift, mask, n_features) -> per row, the path length sum (column
0, exactly ``trees_outer``'s) and each feature's isolation credit (columns 1 on)."""


def local_diffi(rows, threshold, meta, leaf_value, roots, depth, shift, mask, n_features):
    """Scores and explains in one walk. Local DIFFI's depth credit (Carletti et al., arXiv 2007.11117), given to
    the split that isolates: on each tree, the last split on a row's path (the cut that leaves it alone in its
    leaf) credits its feature with ``1/h - 1/depth``, ``h`` the depth of that leaf and ``depth`` the forest's
    deepest path, so a row isolated early (an anomaly) credits the feature that cut it off, and one walking to the
    bottom credits nothing. Local DIFFI proper credits every split on the path; on the simulator's faults that
    ranked the faulty feature first for only 30 to 60 % of current surges (they drag the voltage out of its training
    range too, and every early split on it then shares the credit), the isolating split for 100 % (docs/model.md,
    "Why was this reading flagged?").

    Walked as ``trees_outer`` walks: trees outer, eight rows at a time as independent chains, every walk padded to
    ``depth`` steps (a leaf's steps change nothing). The leaf values are added per row in tree order, as in
    ``trees_outer`` and ``rows_outer``, so column 0 equals their sums bit for bit: an explained batch is scored by
    this one walk, not walked twice (a separate walk for the credits made explaining cost 2.4 times the scoring)."""
    n = rows.shape[0]
    out = np.zeros((n, n_features + 1))
    floor = 1.0 / depth if depth > 0 else 0.0
    full = n - n % CHAINS
    for t in range(roots.shape[0]):
        root = roots[t]
        for s in range(0, full, CHAINS):
            a = b = c = d = e = f = g = k = root
            ha = hb = hc = hd = he = hf = hg = hk = 0
            la = lb = lc = ld = le = lf = lg = lk = 0
            for _ in range(depth):
                a, ha, la = _isolate(a, ha, la, rows, s, threshold, meta, shift, mask)
                b, hb, lb = _isolate(b, hb, lb, rows, s + 1, threshold, meta, shift, mask)
                c, hc, lc = _isolate(c, hc, lc, rows, s + 2, threshold, meta, shift, mask)
                d, hd, ld = _isolate(d, hd, ld, rows, s + 3, threshold, meta, shift, mask)
                e, he, le = _isolate(e, he, le, rows, s + 4, threshold, meta, shift, mask)
                f, hf, lf = _isolate(f, hf, lf, rows, s + 5, threshold, meta, shift, mask)
                g, hg, lg = _isolate(g, hg, lg, rows, s + 6, threshold, meta, shift, mask)
                k, hk, lk = _isolate(k, hk, lk, rows, s + 7, threshold, meta, shift, mask)
            _credit(out, s, leaf_value[a], ha, la, floor)
            _credit(out, s + 1, leaf_value[b], hb, lb, floor)
            _credit(out, s + 2, leaf_value[c], hc, lc, floor)
            _credit(out, s + 3, leaf_value[d], hd, ld, floor)
            _credit(out, s + 4, leaf_value[e], he, le, floor)
            _credit(out, s + 5, leaf_value[f], hf, lf, floor)
            _credit(out, s + 6, leaf_value[g], hg, lg, floor)
            _credit(out, s + 7, leaf_value[k], hk, lk, floor)
        for r in range(full, n):
            a = root
            ha = la = 0
            for _ in range(depth):
                a, ha, la = _isolate(a, ha, la, rows, r, threshold, meta, shift, mask)
            _credit(out, r, leaf_value[a], ha, la, floor)
    return out


@njit(inline="always")
def _isolate(node, h, last, rows, row, threshold, meta, shift, mask):
    """One step of a walk that also counts the splits taken and keeps the last one's feature: at a leaf (threshold
    +inf, pointing at itself) nothing changes, without a branch."""
    packed = meta[node]
    limit = threshold[node]
    feature = packed & mask
    split = limit != np.inf
    return (packed >> shift) + (rows[row, feature] > limit), h + split, feature if split else last


@njit(inline="always")
def _credit(out, row, leaf, h, last, floor):
    out[row, 0] += leaf
    if h > 0:
        out[row, last + 1] += 1.0 / h - floor
