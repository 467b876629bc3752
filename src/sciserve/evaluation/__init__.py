"""Evaluation of model outputs: metrics, comparisons, plots and reports.

Pure functions over numpy arrays, so the same numbers come from an
in-process run, a server or a batch job: :mod:`.metrics` (classification and
regression), :mod:`.result` (typed results with a stable JSON form),
:mod:`.digest` (the sha256 of a model's outputs), :mod:`.compare` (two
versions on the same rows, with bootstrap intervals), :mod:`.plots` and
:mod:`.report` (PNG/SVG figures and a self-contained HTML page; matplotlib
from the ``evaluate`` extra) and :mod:`.runner` (a loaded model run over
arrays in fixed batches, and the record of that evaluation) and
:mod:`.reproduce` (a re-run's outputs against the recorded ones).
"""

from __future__ import annotations

from .compare import Comparison, compare_classification, compare_regression
from .digest import predictions_sha256
from .metrics import classification_metrics, regression_metrics
from .result import ClassificationMetrics, RegressionMetrics, Task, to_dict, to_json
from .runner import EvaluationRecord, evaluate_arrays, record_from_dict

__all__ = [
    "ClassificationMetrics",
    "Comparison",
    "EvaluationRecord",
    "RegressionMetrics",
    "Task",
    "classification_metrics",
    "compare_classification",
    "compare_regression",
    "evaluate_arrays",
    "predictions_sha256",
    "record_from_dict",
    "regression_metrics",
    "to_dict",
    "to_json",
]
