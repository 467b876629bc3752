"""A stored evaluation record's plots and HTML report, drawn on demand.

What the REST API and the dashboard show for a record of ``sciserve
evaluate`` (:mod:`.registered`): the plots come from the record's metrics
(confusion matrix, reliability diagram) and, for ROC curves and residuals,
from its stored outputs and the labels of the recorded dataset version,
re-read and verified (its digest must be the recorded one).  Nothing is
cached: a record is immutable, so a client may cache what it gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import IntegrityError, NotFound
from ..registry.promotion import EvaluationInfo
from ..registry.registry import Registry
from . import plots, report
from .registered import load_outputs, open_split, record_of, stored_outputs
from .result import ClassificationMetrics, RegressionMetrics
from .runner import EvaluationRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PLOT_NAMES", "REPORT_CSP", "plot_bytes", "plot_names", "report_html"]

#: Every plot a record can have, by task.
PLOT_NAMES = {
    "classification": ("roc", "confusion", "reliability"),
    "regression": ("residuals",),
}

#: The report's own policy (also in its ``<meta>``), for the HTTP header:
#: nothing is loaded, nothing runs, no one frames it.
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class _Data:
    record: EvaluationRecord
    truth: npt.NDArray[Any] | None
    values: npt.NDArray[Any] | None


def _data(registry: Registry, info: EvaluationInfo, *, rows: bool) -> _Data:
    """The record, and with ``rows`` its outputs and labels (``None`` without stored outputs)."""
    record = record_of(info)
    kept = stored_outputs(info.record)
    if not rows or kept is None:
        return _Data(record, None, None)
    outputs = load_outputs(registry, kept)
    if record.output not in outputs:
        raise IntegrityError(f"the stored outputs of {info.record_id} lack {record.output!r}")
    split = open_split(registry, f"{info.dataset}:{info.dataset_version}", info.split)
    if split.info.digest != info.dataset_digest:
        raise IntegrityError(
            f"{split.info.ref} has digest {split.info.digest}; the record was of "
            f"{info.dataset_digest}"
        )
    values = outputs[record.output]
    truth = split.data.labels
    # The outputs are row for row the dataset's: anything else would pair rows wrongly.
    if values.shape[0] != truth.shape[0] or values.shape[0] != record.rows:
        raise IntegrityError(
            f"the stored outputs of {info.record_id} have {values.shape[0]} rows, the record "
            f"{record.rows} and the dataset split {truth.shape[0]}"
        )
    if isinstance(record.metrics, ClassificationMetrics):
        truth = truth.astype(str)
    return _Data(record, truth, values)


def plot_names(info: EvaluationInfo) -> tuple[str, ...]:
    """The plots of a record: those that need outputs only if they were stored."""
    record = record_of(info)
    if stored_outputs(info.record) is not None:
        return PLOT_NAMES[record.task.value]
    return ("confusion", "reliability") if record.task.value == "classification" else ()


def _figures(data: _Data) -> dict[str, Callable[[], Figure]]:
    metrics = data.record.metrics
    truth, values = data.truth, data.values
    found: dict[str, Callable[[], Figure]] = {}
    if isinstance(metrics, ClassificationMetrics):
        if truth is not None and values is not None:
            found["roc"] = lambda: plots.roc_figure(truth, values, classes=metrics.classes)
        found["confusion"] = lambda: plots.confusion_figure(metrics)
        found["reliability"] = lambda: plots.reliability_figure(metrics)
    elif isinstance(metrics, RegressionMetrics) and truth is not None and values is not None:
        found["residuals"] = lambda: plots.residual_figure(
            np.asarray(truth, np.float64), values, metrics=metrics
        )
    return found


def plot_bytes(registry: Registry, info: EvaluationInfo, name: str, fmt: str) -> bytes:
    """Plot ``name`` (see :func:`plot_names`) of a record as PNG or SVG."""
    if fmt not in plots.FORMATS:
        raise NotFound(f"no plot {name[:40]}.{fmt[:10]}: plots are .png or .svg")
    if name not in plot_names(info):
        raise NotFound(
            f"evaluation {info.record_id} has no plot {name[:40]!r}; it has "
            f"{', '.join(plot_names(info)) or 'none'}"
        )
    data = _data(registry, info, rows=name in ("roc", "residuals"))
    return plots.figure_bytes(_figures(data)[name](), fmt)


def report_html(registry: Registry, info: EvaluationInfo) -> str:
    """The self-contained HTML report of a record, with every plot it has."""
    data = _data(registry, info, rows=True)
    record = data.record
    with registry.scratch() as scratch:
        files = [
            plots.save_figure(make(), Path(scratch), name) for name, make in _figures(data).items()
        ]
        return report.render_report(
            report.ReportInput(
                title=f"{record.model} on {record.dataset} ({record.split})",
                model=record.model,
                metrics=record.metrics,
                model_digest=record.model_digest,
                dataset=record.dataset,
                dataset_digest=record.dataset_digest,
                split=record.split,
                plots=files,
                record={"record_id": info.record_id, **info.record},
            )
        )
