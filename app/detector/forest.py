"""A fitted IsolationForest compiled into flat arrays, scored without scikit-learn's per-tree Python loop.

scikit-learn scores a batch by visiting its trees one at a time from Python and joblib (``tree.apply`` per
tree), which costs ~10 ms even for a single reading. ``CompiledForest`` packs all trees into a few arrays and
walks them in a compiled kernel (``app.detector.forest_jit``, numba) or, where numba is missing, level by level
in NumPy.
scikit-learn stays the trainer and the reference: the tests compare both paths with it on 100,000 rows.

**Layout.** Each tree is renumbered breadth-first, so the two children of a node are adjacent: the next node is
``left + (x > threshold)`` and no right-child array is needed. A node is 8 bytes: a float32 threshold and an int32
``meta = left << feature_bits | feature``; the default model's 340,000 nodes take 2.7 MB instead of 9.5 MB. All trees
are padded to the same depth: a leaf points to itself with a threshold of +inf, so every row takes exactly
``max_depth`` steps per tree and the kernel has no "is this a leaf?" branch. (The default model's trees are nearly
full: about 14 of at most 14 steps are real.)

**Exactness.** The result equals scikit-learn's ``decision_function`` bit for bit, because every step is
reproduced rather than approximated:

* Inputs are cast to float32, as scikit-learn's tree code does before comparing them with the float64 thresholds.
* A float64 threshold ``t`` is stored as ``t32``, the largest float32 not above ``t``. For any float32 ``x``,
  ``x > t`` holds exactly when ``x > t32``: if ``x > t`` then ``x > t >= t32``; if ``x > t32`` then ``x`` is a float32
  above the largest float32 ``<= t``, so ``x > t``. A value exactly on a threshold therefore goes left (``<=``), as
  in scikit-learn.
* Each leaf stores ``depth + c(n_leaf) - 1.0``, computed with the same operations in the same order as
  scikit-learn's ``_parallel_compute_tree_depths`` (``c`` is its ``_average_path_length``).
* The per-row sum runs over the trees in scikit-learn's order starting from 0.0, so it rounds identically, and
  the final ``2 ** (-depths / denominator)`` and the offset use the same NumPy operations as scikit-learn.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.detector import forest_jit
from app.detector.scorer import Scorer

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

NPZ_FORMAT_VERSION = 1
"""Bumped whenever the packed layout changes, so an old file is rebuilt from the estimator instead of misread."""
LEAF = -1  # scikit-learn's TREE_LEAF marker in children_left


DEFAULT_SCORER = Scorer.auto.resolved()
"""How ``CompiledForest`` walks its trees unless told otherwise."""


def _breadth_first(children_left: np.ndarray, children_right: np.ndarray) -> np.ndarray:
    """Old node ids in breadth-first order, children of each node next to each other (left, right)."""
    levels = []
    level = np.zeros(1, dtype=np.int64)
    while level.size:
        levels.append(level)
        internal = level[children_left[level] != LEAF]
        level = np.column_stack([children_left[internal], children_right[internal]]).ravel()
    return np.concatenate(levels)


def _round_down_to_float32(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 value (see the module docstring for why this is exact)."""
    rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


@dataclass(frozen=True)
class CompiledForest:
    """The packed trees of one IsolationForest; immutable, safe to share between threads."""

    threshold: np.ndarray
    """float32 per node: go right when ``x > threshold`` (+inf at leaves, so a leaf never moves)."""
    meta: np.ndarray
    """int32 per node: ``left_child << feature_bits | feature``; the right child is ``left_child + 1``."""
    leaf_value: np.ndarray
    """float64 per node: ``depth + c(n_samples) - 1.0`` at leaves, what a row reaching the leaf adds."""
    roots: np.ndarray
    """int32 per tree: index of the tree's root node."""
    max_depth: int
    feature_bits: int
    denominator: float
    """``n_trees * c(max_samples)``, scikit-learn's normaliser of the summed path lengths."""
    offset: float
    """``offset_`` of the fitted forest: the decision function is ``score_samples - offset``."""
    features: tuple[str, ...]
    """Names of the input columns, in the order the forest was trained on them."""

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.threshold.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.threshold.nbytes + self.meta.nbytes + self.leaf_value.nbytes + self.roots.nbytes)

    def same_trees(self, other: CompiledForest) -> bool:
        """Whether ``other`` scores exactly like this forest: the same nodes, constants and column names."""
        arrays = ("threshold", "meta", "leaf_value", "roots")
        scalars = ("max_depth", "feature_bits", "denominator", "offset", "features")
        return all(np.array_equal(getattr(self, a), getattr(other, a)) for a in arrays) and all(
            getattr(self, s) == getattr(other, s) for s in scalars
        )

    @classmethod
    def from_sklearn(cls, forest: IsolationForest, features: Sequence[str]) -> CompiledForest:
        """Pack the fitted ``forest``'s trees, in its own order; ``features`` names its input columns."""
        from sklearn.ensemble._iforest import _average_path_length  # noqa: PLC0415 - only to compile a forest

        n_features = int(forest.n_features_in_)
        if n_features != len(features):
            raise ValueError(f"the forest was fitted on {n_features} features, {len(features)} names were given")
        feature_bits = max(1, (n_features - 1).bit_length())
        remap_features = forest._max_features != n_features  # scikit-learn then scores X[:, estimator_features]
        thresholds, metas, values, roots = [], [], [], []
        max_depth = 0
        base = 0
        for estimator, columns, path_lengths, average_lengths in zip(
            forest.estimators_,
            forest.estimators_features_,
            forest._decision_path_lengths,
            forest._average_path_length_per_tree,
            strict=True,
        ):
            tree = estimator.tree_
            order = _breadth_first(tree.children_left, tree.children_right)
            new_id = np.empty(tree.node_count, dtype=np.int64)
            new_id[order] = np.arange(tree.node_count)
            is_leaf = tree.children_left[order] == LEAF
            left = np.where(is_leaf, np.arange(tree.node_count), new_id[tree.children_left[order]]) + base
            feature = np.where(is_leaf, 0, tree.feature[order])
            if remap_features:
                feature = np.where(is_leaf, 0, np.asarray(columns)[feature])
            thresholds.append(np.where(is_leaf, np.inf, tree.threshold[order]))
            metas.append((left << feature_bits) | feature)
            # The same expression, in the same order, as scikit-learn's _parallel_compute_tree_depths.
            leaf_values = path_lengths + average_lengths - 1.0
            values.append(np.where(is_leaf, leaf_values[order], 0.0))
            roots.append(base)
            max_depth = max(max_depth, int(tree.max_depth))
            base += tree.node_count
        if (base << feature_bits) > np.iinfo(np.int32).max:
            raise ValueError(f"forest of {base} nodes is too large to pack into 32-bit node records")
        denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])[0]
        return cls(
            threshold=_round_down_to_float32(np.concatenate(thresholds)),
            meta=np.concatenate(metas).astype(np.int32),
            leaf_value=np.concatenate(values).astype(np.float64),
            roots=np.asarray(roots, dtype=np.int32),
            max_depth=max_depth,
            feature_bits=feature_bits,
            denominator=float(denominator),
            offset=float(forest.offset_),
            features=tuple(features),
        )

    def to_npz(self) -> bytes:
        """The forest as an uncompressed ``.npz`` (plain NumPy arrays, no pickle): what serving loads, without
        scikit-learn, in milliseconds."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format_version=np.array(NPZ_FORMAT_VERSION),
            threshold=self.threshold,
            meta=self.meta,
            leaf_value=self.leaf_value,
            roots=self.roots,
            max_depth=np.array(self.max_depth),
            feature_bits=np.array(self.feature_bits),
            denominator=np.array(self.denominator),
            offset=np.array(self.offset),
            features=np.array(self.features),
        )
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> CompiledForest:
        """Read ``to_npz``'s bytes back, checking that every array is what the kernels expect (dtype, shape, node
        indices inside the forest); raises ``ValueError`` naming the first problem. Never unpickles."""
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            found = int(arrays["format_version"])
            if found != NPZ_FORMAT_VERSION:
                raise ValueError(f"forest format {found}, this version of GridWatch reads {NPZ_FORMAT_VERSION}")
            forest = cls(
                threshold=_array(arrays, "threshold", np.float32),
                meta=_array(arrays, "meta", np.int32),
                leaf_value=_array(arrays, "leaf_value", np.float64),
                roots=_array(arrays, "roots", np.int32),
                max_depth=int(arrays["max_depth"]),
                feature_bits=int(arrays["feature_bits"]),
                denominator=float(arrays["denominator"]),
                offset=float(arrays["offset"]),
                features=tuple(str(name) for name in arrays["features"]),
            )
        forest._check()
        return forest

    def _check(self) -> None:
        """Refuse arrays a kernel would read out of bounds with: they would crash or score garbage, not fail."""
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"the feature names {list(self.features)} are empty or name a column twice")
        nodes = self.n_nodes
        if not (self.meta.shape == self.leaf_value.shape == (nodes,)) or nodes == 0:
            raise ValueError("node arrays differ in length")
        left = self.meta.astype(np.int64) >> self.feature_bits
        columns = self.meta & ((1 << self.feature_bits) - 1)
        # A leaf points at itself with a threshold of +inf, so it never takes its "right child" left + 1.
        right = np.where(np.isposinf(self.threshold), left, left + 1)
        if self.meta.min() < 0 or right.max() >= nodes or columns.max() >= self.n_features:
            raise ValueError("a node points outside the forest or at a feature it does not have")
        if self.roots.size == 0 or self.roots.min() < 0 or self.roots.max() >= nodes:
            raise ValueError("a tree root lies outside the forest")
        if not 0 <= self.max_depth < 64:
            raise ValueError(f"max_depth {self.max_depth} is out of range")

    def path_length_sums(self, X: np.ndarray, scorer: Scorer = DEFAULT_SCORER) -> np.ndarray:
        """Per row, the sum over trees of the leaf values, in tree order (scikit-learn's ``depths``)."""
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an (n, {self.n_features}) array, got shape {X.shape}")
        with np.errstate(over="ignore"):  # beyond float32's range becomes +-inf, exactly as in scikit-learn
            rows = np.ascontiguousarray(X, dtype=np.float32)  # the cast scikit-learn's trees make
        if scorer is Scorer.numba:
            if not forest_jit.AVAILABLE:
                raise RuntimeError("numba is not installed; use the numpy scorer")
            return forest_jit.path_length_sums(
                rows, self.threshold, self.meta, self.leaf_value, self.roots, self.max_depth, self.feature_bits
            )
        if scorer is not Scorer.numpy:
            raise ValueError(f"the compiled forest walks its trees with numba or numpy, not {scorer.value}")
        return self._path_length_sums_numpy(rows)

    def _path_length_sums_numpy(self, rows: np.ndarray) -> np.ndarray:
        """Level by level over all (row, tree) pairs at once: the fallback where numba is not available."""
        n_rows = rows.shape[0]
        nodes = np.broadcast_to(self.roots.astype(np.int64), (n_rows, self.n_trees)).copy()
        row_index = np.arange(n_rows)[:, None]
        mask = (1 << self.feature_bits) - 1
        for _ in range(self.max_depth):
            meta = self.meta[nodes]
            nodes = (meta >> self.feature_bits) + (rows[row_index, meta & mask] > self.threshold[nodes])
        values = self.leaf_value[nodes]
        depths = np.zeros(n_rows)
        for tree in range(self.n_trees):  # sequential, in tree order, so rounding matches scikit-learn
            depths += values[:, tree]
        return depths

    def isolate(self, X: np.ndarray, scorer: Scorer = DEFAULT_SCORER) -> tuple[np.ndarray, np.ndarray]:
        """In one walk, per row: the leaf values summed over the trees (equal to ``path_length_sums``, bit for bit)
        and, per feature, the depth credit of the splits that isolated the row (``forest_kernels.local_diffi``; not
        normalised). Rows are cast to float32 as for scoring, so each takes exactly the path that scores it."""
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an (n, {self.n_features}) array, got shape {X.shape}")
        with np.errstate(over="ignore"):
            rows = np.ascontiguousarray(X, dtype=np.float32)
        if scorer is Scorer.numba:
            if not forest_jit.AVAILABLE:
                raise RuntimeError("numba is not installed; use the numpy scorer")
            both = forest_jit.local_diffi(
                rows,
                self.threshold,
                self.meta,
                self.leaf_value,
                self.roots,
                self.max_depth,
                self.feature_bits,
                self.n_features,
            )
            return both[:, 0].copy(), both[:, 1:].copy()
        if scorer is not Scorer.numpy:
            raise ValueError(f"the compiled forest explains with numba or numpy, not {scorer.value}")
        return self._isolate_numpy(rows)

    def _isolate_numpy(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level by level over all (row, tree) pairs, as ``_path_length_sums_numpy``: where numba is missing."""
        n_rows = rows.shape[0]
        nodes = np.broadcast_to(self.roots.astype(np.int64), (n_rows, self.n_trees)).copy()
        row_index = np.arange(n_rows)[:, None]
        mask = (1 << self.feature_bits) - 1
        depth = np.zeros((n_rows, self.n_trees), dtype=np.int64)
        last = np.zeros((n_rows, self.n_trees), dtype=np.int64)  # the feature of the last split on each path
        for _ in range(self.max_depth):
            meta = self.meta[nodes]
            internal = np.isfinite(self.threshold[nodes])
            feature = meta & mask
            last = np.where(internal, feature, last)
            depth += internal
            nodes = (meta >> self.feature_bits) + (rows[row_index, feature] > self.threshold[nodes])
        floor = 1.0 / self.max_depth if self.max_depth > 0 else 0.0
        weight = np.where(depth > 0, 1.0 / np.maximum(depth, 1) - floor, 0.0)
        values = self.leaf_value[nodes]
        sums = np.zeros(n_rows)
        credits = np.zeros((n_rows, self.n_features))
        for tree in range(self.n_trees):  # tree order, as the kernels add them
            sums += values[:, tree]
            credits[np.arange(n_rows), last[:, tree]] += weight[:, tree]
        return sums, credits

    def score_samples(self, X: np.ndarray, scorer: Scorer = DEFAULT_SCORER) -> np.ndarray:
        """Equal to ``IsolationForest.score_samples`` (lower is more abnormal)."""
        return self.scores_from_sums(self.path_length_sums(X, scorer))

    def scores_from_sums(self, depths: np.ndarray) -> np.ndarray:
        """``score_samples`` from the summed path lengths, with scikit-learn's operations in its order."""
        denominator = self.denominator
        scores = 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0))
        return -scores

    def decision_function(self, X: np.ndarray, scorer: Scorer = DEFAULT_SCORER) -> np.ndarray:
        """Equal to ``IsolationForest.decision_function`` (negative means outlier)."""
        return self.score_samples(X, scorer) - self.offset


def _array(arrays: np.lib.npyio.NpzFile, name: str, dtype: type[np.generic]) -> np.ndarray:
    """One named 1-D array of exactly ``dtype`` (the kernels are compiled for it), contiguous."""
    array = arrays[name]
    if array.dtype != dtype or array.ndim != 1:
        raise ValueError(f"{name} is {array.dtype}{list(array.shape)}, expected a 1-D {np.dtype(dtype)} array")
    return np.ascontiguousarray(array)
