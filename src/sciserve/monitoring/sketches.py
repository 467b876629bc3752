"""Streaming statistics of a model's traffic, in memory bounded by construction.

Each input feature keeps a KLL quantile sketch (Apache DataSketches) plus
its count, sum and sum of squares; each classifier output keeps its class
counts (argmax over the labels); every other output keeps the statistics of
its values (for the mean prediction).  Requests are never stored.  Values a
sketch cannot use (NaN, infinities, non-numeric tensors) are counted, not kept.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasketches import kll_floats_sketch

from ..errors import InvalidInput
from ..package.manifest import Manifest

__all__ = ["ClassCounts", "FeatureStats", "Layout", "LiveWindow", "Tensors", "WindowStats"]

#: A request's input and output tensors, by name.
Tensors = tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]

#: KLL accuracy parameter: about 1.3 % normalised rank error, a few KiB per sketch.
SKETCH_K = 200
#: Finite values beyond float32's range would become infinities in the sketch.
_F32_MAX = float(np.finfo(np.float32).max)


class FeatureStats:
    """Quantile sketch, count, mean and standard deviation of one stream of numbers."""

    __slots__ = ("ignored", "n", "sketch", "sum", "sumsq")

    def __init__(self, sketch: kll_floats_sketch | None = None) -> None:
        self.sketch = sketch if sketch is not None else kll_floats_sketch(SKETCH_K)
        self.n = 0
        self.sum = 0.0
        self.sumsq = 0.0
        #: Values left out: NaN and infinities.
        self.ignored = 0

    def update(self, values: np.ndarray) -> None:
        """Add ``values`` (any shape, any real dtype); non-finite values are only counted."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if flat.size == 0:
            return
        finite = np.isfinite(flat)
        if not finite.all():
            self.ignored += int(flat.size - np.count_nonzero(finite))
            flat = flat[finite]
            if flat.size == 0:
                return
        flat = np.clip(flat, -_F32_MAX, _F32_MAX)
        self.sketch.update(flat.astype(np.float32))
        self.n += int(flat.size)
        self.sum += float(flat.sum())
        self.sumsq += float(np.dot(flat, flat))

    @staticmethod
    def update_columns(columns: Sequence[FeatureStats], matrix: np.ndarray) -> None:
        """Add column ``i`` of ``matrix`` (``[rows, len(columns)]``) to ``columns[i]``.

        The same as updating each column on its own, in a handful of numpy
        calls for the whole matrix rather than a handful per column: the
        monitor's thread folds many requests of a model with dozens of
        features at once, and per-call overhead, not the sketches, was
        what it spent its time on.
        """
        if matrix.ndim != 2 or matrix.shape[1] != len(columns):
            raise ValueError(f"{matrix.shape} is not [rows, {len(columns)}]")
        if matrix.shape[0] == 0:
            return
        block = np.asarray(matrix)
        if block.dtype != np.float32:  # FP32 tensors (the usual) need no cast and no clip
            block = block.astype(np.float64, copy=False)
        if not np.isfinite(block).all():
            for i, stats in enumerate(columns):  # rare: keep the per-column bookkeeping
                stats.update(block[:, i])
            return
        if block.dtype != np.float32:
            block = np.clip(block, -_F32_MAX, _F32_MAX)
        # Sums in float64 whatever the tensor's type: they add up over a window.
        sums = block.sum(axis=0, dtype=np.float64)
        sumsqs = np.einsum("ij,ij->j", block, block, dtype=np.float64)
        # Column-major float32, so each sketch gets a contiguous row of it.
        by_column = np.ascontiguousarray(block.T, dtype=np.float32)
        rows = int(block.shape[0])
        for i, stats in enumerate(columns):
            stats.sketch.update(by_column[i])
            stats.n += rows
            stats.sum += float(sums[i])
            stats.sumsq += float(sumsqs[i])

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def std(self) -> float:
        if self.n < 2:
            return 0.0
        variance = (self.sumsq - self.sum * self.sum / self.n) / (self.n - 1)
        return float(np.sqrt(max(variance, 0.0)))

    def merged(self, other: FeatureStats) -> FeatureStats:
        out = FeatureStats(kll_floats_sketch.deserialize(self.sketch.serialize()))
        out.sketch.merge(other.sketch)
        out.n = self.n + other.n
        out.sum = self.sum + other.sum
        out.sumsq = self.sumsq + other.sumsq
        out.ignored = self.ignored + other.ignored
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "sum": self.sum,
            "sumsq": self.sumsq,
            "ignored": self.ignored,
            "sketch": base64.b64encode(self.sketch.serialize()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureStats:
        try:
            sketch = kll_floats_sketch.deserialize(base64.b64decode(data["sketch"]))
            out = cls(sketch)
            out.n = int(data["n"])
            out.sum = float(data["sum"])
            out.sumsq = float(data["sumsq"])
            out.ignored = int(data["ignored"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InvalidInput(f"malformed feature statistics: {exc}") from exc
        return out


class ClassCounts:
    """How often each class was the most probable one."""

    __slots__ = ("counts", "ignored", "labels")

    def __init__(self, labels: list[str]) -> None:
        self.labels = list(labels)
        self.counts = np.zeros(len(labels), dtype=np.int64)
        #: Rows left out: a non-finite score.
        self.ignored = 0

    def update(self, scores: np.ndarray) -> None:
        """Add rows of class scores (the last axis runs over the labels)."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.size == 0 or scores.shape[-1] != len(self.labels):
            self.ignored += int(scores.size // max(len(self.labels), 1))
            return
        rows = scores.reshape(-1, len(self.labels))
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            self.ignored += int(rows.shape[0] - np.count_nonzero(finite))
            rows = rows[finite]
        self.counts += np.bincount(rows.argmax(axis=1), minlength=len(self.labels))

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def mix(self) -> np.ndarray:
        """The share of each class (zeros when nothing was counted)."""
        total = self.counts.sum()
        return self.counts / total if total else np.zeros(len(self.labels))

    def merged(self, other: ClassCounts) -> ClassCounts:
        out = ClassCounts(self.labels)
        out.counts = self.counts + other.counts
        out.ignored = self.ignored + other.ignored
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "counts": self.counts.tolist(), "ignored": self.ignored}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassCounts:
        try:
            out = cls([str(label) for label in data["labels"]])
            counts = np.asarray(data["counts"], dtype=np.int64)
            if counts.shape != out.counts.shape or (counts < 0).any():
                raise ValueError("counts do not match the labels")
            out.counts = counts
            out.ignored = int(data["ignored"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed class counts: {exc}") from exc
        return out


@dataclass
class WindowStats:
    """The statistics of some rows of traffic (a live window, or a reference)."""

    rows: int = 0
    features: dict[str, FeatureStats] = field(default_factory=dict)
    classes: dict[str, ClassCounts] = field(default_factory=dict)
    predictions: dict[str, FeatureStats] = field(default_factory=dict)
    #: Rows of non-numeric tensors, and requests whose tensors did not fit the layout.
    skipped: int = 0

    def merged(self, other: WindowStats) -> WindowStats:
        def both(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
            return {k: a[k].merged(b[k]) if k in b else a[k] for k in a} | {
                k: v for k, v in b.items() if k not in a
            }

        return WindowStats(
            rows=self.rows + other.rows,
            features=both(self.features, other.features),
            classes=both(self.classes, other.classes),
            predictions=both(self.predictions, other.predictions),
            skipped=self.skipped + other.skipped,
        )

    @property
    def ignored(self) -> int:
        """Values and rows left out of the sketches (NaN, infinities, non-numeric)."""
        counted = [s.ignored for s in (*self.features.values(), *self.predictions.values())]
        return self.skipped + sum(counted) + sum(c.ignored for c in self.classes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "skipped": self.skipped,
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "classes": {k: v.to_dict() for k, v in self.classes.items()},
            "predictions": {k: v.to_dict() for k, v in self.predictions.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowStats:
        try:
            return cls(
                rows=int(data["rows"]),
                skipped=int(data["skipped"]),
                features={str(k): FeatureStats.from_dict(v) for k, v in data["features"].items()},
                classes={str(k): ClassCounts.from_dict(v) for k, v in data["classes"].items()},
                predictions={
                    str(k): FeatureStats.from_dict(v) for k, v in data["predictions"].items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"malformed window statistics: {exc}") from exc


@dataclass(frozen=True)
class _Tensor:
    name: str
    batch_dim: int | None
    #: Feature name of each column, or one pooled name for wide tensors.
    columns: tuple[str, ...]
    pooled: bool
    labels: tuple[str, ...] = ()


class Layout:
    """Which statistics a model's tensors feed, read from its manifest.

    An input of shape ``[B, F]`` gives F features (named by its
    ``feature_names``, else ``input[i]``); a scalar-per-row input gives one;
    an input with more than ``max_features`` values per row (an image) is
    pooled into one feature.  An output with ``labels`` feeds class counts;
    any other numeric output feeds the mean prediction.  ``BYTES`` tensors
    feed nothing: their rows are counted as skipped.
    """

    def __init__(self, manifest: Manifest, max_features: int = 64) -> None:
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []
        for spec in manifest.inputs:
            if spec.datatype == "BYTES":
                self.inputs.append(_Tensor(spec.name, manifest.batch_dim_of(spec), (), True))
                continue
            bdim = manifest.batch_dim_of(spec)
            row = [d for axis, d in enumerate(spec.shape) if axis != bdim]
            width = int(np.prod(row)) if row and all(d > 0 for d in row) else None
            if width is not None and width <= max_features and len(row) <= 1:
                names = (
                    spec.feature_names
                    if spec.feature_names and len(spec.feature_names) == width
                    else None
                )
                columns = tuple(
                    names or ([f"{spec.name}[{i}]" for i in range(width)] if row else [spec.name])
                )
                self.inputs.append(_Tensor(spec.name, bdim, columns, False))
            else:
                self.inputs.append(_Tensor(spec.name, bdim, (spec.name,), True))
        for spec in manifest.outputs:
            if spec.datatype == "BYTES":
                continue
            labels = tuple(spec.labels or ())
            self.outputs.append(
                _Tensor(spec.name, manifest.batch_dim_of(spec), (spec.name,), True, labels)
            )

    def empty(self) -> WindowStats:
        stats = WindowStats()
        for t in self.inputs:
            for column in t.columns:
                stats.features[column] = FeatureStats()
        for t in self.outputs:
            if t.labels:
                stats.classes[t.name] = ClassCounts(list(t.labels))
            else:
                stats.predictions[t.name] = FeatureStats()
        return stats

    def update(
        self,
        stats: WindowStats,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> int:
        """Add one request (or a batch of them) to ``stats``; return its rows."""
        return self.update_many(stats, [(inputs, outputs)])

    def update_many(self, stats: WindowStats, requests: Sequence[Tensors]) -> int:
        """Add many requests to ``stats`` at once; return their rows.

        The requests' rows are stacked per tensor first, so a sketch is
        updated once per call rather than once per request.
        """
        rows = 0
        for t in self.inputs:
            matrix = self._stacked(stats, [r[0].get(t.name) for r in requests], t)
            if matrix is None:
                continue
            rows = max(rows, matrix.shape[0])
            if not t.columns:  # BYTES
                stats.skipped += matrix.shape[0]
            elif t.pooled:
                stats.features[t.columns[0]].update(matrix)
            elif matrix.shape[1] != len(t.columns):
                stats.skipped += matrix.shape[0]
            else:
                features = stats.features
                FeatureStats.update_columns([features[c] for c in t.columns], matrix)
        for t in self.outputs:
            matrix = self._stacked(stats, [r[1].get(t.name) for r in requests], t)
            if matrix is None:
                continue
            if t.labels:
                stats.classes[t.name].update(matrix)
            else:
                stats.predictions[t.name].update(matrix)
        stats.rows += rows
        return rows

    @staticmethod
    def _stacked(
        stats: WindowStats, arrays: list[np.ndarray | None], tensor: _Tensor
    ) -> np.ndarray | None:
        """The rows of every array as one ``[rows, values per row]`` matrix.

        Arrays that are missing or not numeric, and arrays whose rows are
        wider or narrower than the first one's, are counted as skipped.
        """
        fast = _concatenated(arrays, tensor.batch_dim)
        if fast is not None:
            return fast
        matrices = []
        for array in arrays:
            matrix = _rows(array, tensor.batch_dim) if array is not None else None
            if matrix is None:
                if not tensor.columns and array is not None:  # BYTES: count its rows
                    matrices.append(np.empty((_row_count(array, tensor.batch_dim), 0)))
                else:
                    stats.skipped += 1
                continue
            if matrices and matrix.shape[1] != matrices[0].shape[1]:
                stats.skipped += matrix.shape[0]
                continue
            matrices.append(matrix)
        if not matrices:
            return None
        return matrices[0] if len(matrices) == 1 else np.concatenate(matrices)


def _concatenated(arrays: list[np.ndarray | None], batch_dim: int | None) -> np.ndarray | None:
    """The common case in one step: numeric arrays whose shapes differ only
    along the batch dimension, joined along it (``None`` otherwise)."""
    if batch_dim is None or not arrays:
        return None
    try:
        # A missing tensor (None) fails here too, as a 0-d array: no need to
        # look for it request by request first.
        # numpy checks the shapes in C; mixed numeric dtypes are promoted,
        # which is harmless since the sketches take float64 anyway.
        joined: np.ndarray = np.concatenate(arrays, axis=batch_dim)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None
    if joined.dtype.kind not in "biuf":
        return None
    return _rows(joined, batch_dim)


def _row_count(array: np.ndarray, batch_dim: int | None) -> int:
    shape = np.shape(array)
    if batch_dim is None or batch_dim >= len(shape):
        return 1
    return int(shape[batch_dim])


def _rows(array: np.ndarray, batch_dim: int | None) -> np.ndarray | None:
    """``array`` as ``[rows, values per row]``, or ``None`` if it is not numeric.

    Floats keep their type (FP32 tensors are sketched as they are); integers
    and booleans become float64.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        return None
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    if batch_dim is None or array.ndim == 0:
        return array.reshape(1, array.size)
    if batch_dim >= array.ndim:
        return None
    moved = np.moveaxis(array, batch_dim, 0)
    width = int(np.prod(moved.shape[1:]))  # not -1: an empty batch has no inferable width
    return moved.reshape(moved.shape[0], width)


class LiveWindow:
    """Recent traffic: a current window and the one before it.

    When the current window holds ``size`` rows it becomes the previous one
    and a new one starts, so drift is judged on between ``size`` and
    ``2 * size`` recent rows, and memory stays that of two windows.
    """

    def __init__(self, layout: Layout, size: int) -> None:
        self.layout = layout
        self.size = size
        self.current = layout.empty()
        self.previous: WindowStats | None = None
        #: Rows seen since the window started, over all rotations.
        self.total_rows = 0

    def observe(self, requests: Sequence[Tensors]) -> int:
        """Add requests to the current window; return their rows."""
        rows = self.layout.update_many(self.current, requests)
        self.total_rows += rows
        if self.current.rows >= self.size:
            self.previous = self.current
            self.current = self.layout.empty()
        return rows

    def windows(self) -> list[WindowStats]:
        """The windows drift is judged on (previous, if any, and current), unmerged."""
        return [self.current] if self.previous is None else [self.previous, self.current]

    def judged(self) -> WindowStats:
        """The statistics drift is judged on: previous and current windows together."""
        if self.previous is None:
            return self.current
        return self.previous.merged(self.current)
