"""Evaluation results: typed, immutable, and JSON with a stable key order.

A result is what an evaluation record stores and what a report, a
leaderboard or a promotion gate reads, so its JSON form is part of the
contract: keys appear in the order the fields are declared here, floats are
written in Python's shortest round-trip form, and a metric that is not
defined (the ROC-AUC of a class with no examples) is ``null``, never NaN.
Two evaluations of the same predictions therefore serialise to the same
bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BinMetrics",
    "CalibrationBin",
    "ClassMetrics",
    "ClassificationMetrics",
    "RegressionMetrics",
    "Resolution",
    "Task",
    "metrics_from_dict",
    "to_dict",
    "to_json",
]


class Task(enum.StrEnum):
    """What a model's outputs are evaluated as."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"


@dataclass(frozen=True)
class ClassMetrics:
    """One class's row: its support (true examples) and one-vs-rest scores.

    Precision, recall and F1 are 0 where undefined (no predictions of the
    class, or no examples of it); ``roc_auc`` is ``None`` where it is
    undefined (the class has no examples, or nothing else does).
    """

    name: str
    support: int
    precision: float
    recall: float
    f1: float
    roc_auc: float | None


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of the reliability diagram: confidences in ``(lower, upper]``
    (the first bin also holds ``0``), how many, their mean confidence and
    the fraction of them classified correctly (``None`` for an empty bin)."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class ClassificationMetrics:
    """Every classification metric of one model on one set of labelled rows.

    ``confusion_matrix[i][j]`` counts rows of true class ``i`` predicted as
    class ``j`` (the column of the highest probability; ties go to the first).
    """

    n: int
    classes: tuple[str, ...]
    accuracy: float
    balanced_accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    roc_auc_macro: float | None
    log_loss: float
    weighted_log_loss: float
    class_weights: tuple[float, ...]
    expected_calibration_error: float
    per_class: tuple[ClassMetrics, ...]
    confusion_matrix: tuple[tuple[int, ...], ...]
    calibration: tuple[CalibrationBin, ...]

    task = Task.CLASSIFICATION

    def scalars(self) -> dict[str, float | None]:
        """The headline numbers, by name: what leaderboards rank and gates test."""
        return {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "roc_auc_macro": self.roc_auc_macro,
            "log_loss": self.log_loss,
            "weighted_log_loss": self.weighted_log_loss,
            "expected_calibration_error": self.expected_calibration_error,
        }


@dataclass(frozen=True)
class Resolution:
    """Spread of the relative residual ``(predicted - true) / true``:
    its standard deviation and the half-width of its central 68.27 % interval
    (the 15.87th to 84.13th percentile), which outliers do not inflate."""

    sigma: float
    half_width_68: float


@dataclass(frozen=True)
class BinMetrics:
    """Regression metrics of the rows whose true value is in ``[lower, upper)``
    (the last bin also holds ``upper``); ``None`` where the bin is empty, and
    ``resolution`` ``None`` where a true value in it is 0."""

    lower: float
    upper: float
    count: int
    mae: float | None
    rmse: float | None
    bias: float | None
    resolution: Resolution | None


@dataclass(frozen=True)
class RegressionMetrics:
    """Every regression metric of one model on one set of rows.

    ``bias`` is the mean of ``predicted - true``; ``resolution`` is ``None``
    when a true value is 0 (the relative residual is undefined).
    """

    n: int
    mae: float
    rmse: float
    bias: float
    resolution: Resolution | None
    bins: tuple[BinMetrics, ...]

    task = Task.REGRESSION

    def scalars(self) -> dict[str, float | None]:
        """The headline numbers, by name: what leaderboards rank and gates test."""
        return {
            "mae": self.mae,
            "rmse": self.rmse,
            "bias": self.bias,
            "resolution_sigma": None if self.resolution is None else self.resolution.sigma,
            "resolution_68": None if self.resolution is None else self.resolution.half_width_68,
        }


Metrics = ClassificationMetrics | RegressionMetrics


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        task = getattr(type(value), "task", None)
        if isinstance(task, Task):
            out["task"] = task.value
        for field in dataclasses.fields(value):
            out[field.name] = _plain(getattr(value, field.name))
        return out
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        # A non-finite number in a record is a bug upstream, not a value to store.
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value!r} in an evaluation result")
        return float(value)
    raise TypeError(f"{type(value).__name__} is not part of an evaluation result")


def to_dict(value: Any) -> Any:
    """A result (or any dataclass of this package) as plain JSON-ready data,
    keys in field order; a metrics object starts with its ``task``."""
    return _plain(value)


def to_json(value: Any, *, indent: int | None = None) -> str:
    """The JSON text of :func:`to_dict`, the same bytes for the same result."""
    return json.dumps(
        to_dict(value),
        indent=indent,
        separators=(",", ": ") if indent is not None else (",", ":"),
        allow_nan=False,
        ensure_ascii=False,
    )


def _resolution(data: Any) -> Resolution | None:
    return None if data is None else Resolution(**data)


def metrics_from_dict(data: dict[str, Any]) -> Metrics:
    """Read back what :func:`to_dict` wrote for a metrics object."""
    body = {k: v for k, v in data.items() if k != "task"}
    task = Task(str(data.get("task")))
    if task is Task.CLASSIFICATION:
        return ClassificationMetrics(
            **{
                **body,
                "classes": tuple(body["classes"]),
                "class_weights": tuple(body["class_weights"]),
                "per_class": tuple(ClassMetrics(**row) for row in body["per_class"]),
                "confusion_matrix": tuple(tuple(row) for row in body["confusion_matrix"]),
                "calibration": tuple(CalibrationBin(**b) for b in body["calibration"]),
            }
        )
    return RegressionMetrics(
        **{
            **body,
            "resolution": _resolution(body["resolution"]),
            "bins": tuple(
                BinMetrics(**{**b, "resolution": _resolution(b["resolution"])})
                for b in body["bins"]
            ),
        }
    )
