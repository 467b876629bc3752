"""Evaluation plots as PNG and SVG files, with matplotlib.

Each figure is a :class:`matplotlib.figure.Figure` of its own, drawn on the
Agg canvas: ``pyplot`` and its global figure registry are never touched, so
plotting in a server thread neither leaks figures nor changes anyone's
backend.  matplotlib comes from the ``evaluate`` extra and is imported only
when a plot is drawn; without it the error names the extra.

Text from outside (class and model names) is shown literally: ``$`` would
otherwise start matplotlib's math mode, and very long names are cut.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DependencyMissing, MetricInputError
from .metrics import _Residuals, _Scored, roc_curve
from .result import ClassificationMetrics, RegressionMetrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PlotFiles",
    "confusion_figure",
    "figure_bytes",
    "metric_by_version_figure",
    "reliability_figure",
    "residual_figure",
    "roc_figure",
    "save_figure",
    "write_classification_plots",
    "write_regression_plots",
]

#: Figure size in inches and resolution: 640 by 480 pixels as PNG.
SIZE = (6.4, 4.8)
DPI = 100

#: Names longer than this are cut in plots (tables in the report show them whole).
_MAX_LABEL = 40

#: Above this many classes the confusion matrix is drawn without numbers in its cells.
_MAX_ANNOTATED = 20

#: Above this many rows the residual plot shows a 2-D histogram, not points.
_MAX_POINTS = 20_000


@dataclass(frozen=True)
class PlotFiles:
    """One plot written in both formats."""

    name: str
    png: Path
    svg: Path


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise DependencyMissing(
            'plots need matplotlib: install the extra with pip install "sciserve[evaluate]"'
        ) from exc
    return Figure


def _new_figure(**kwargs: Any) -> Figure:
    return _figure_class()(figsize=SIZE, dpi=DPI, layout="constrained", **kwargs)


def _label(text: str) -> str:
    """``text`` shown as written: math mode off, cut to a readable length."""
    cut = text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"
    return cut.replace("\\", "\\\\").replace("$", r"\$")


#: The formats a plot is written in.
FORMATS = ("png", "svg")


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """``figure`` as PNG or SVG bytes, as :func:`save_figure` writes them."""
    if fmt not in FORMATS:
        raise MetricInputError(f"plots are PNG or SVG, not {fmt[:20]!r}")
    buffer = io.BytesIO()
    if fmt == "png":
        figure.savefig(buffer, format="png", dpi=DPI)
    else:
        # The PNG of the same plot is the same bytes; the SVG carries no creation
        # date but matplotlib salts its element ids at random (fixing the salt
        # would mean changing global rcParams under other threads).
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def save_figure(figure: Figure, directory: str | Path, name: str) -> PlotFiles:
    """Write ``figure`` as ``<directory>/<name>.png`` and ``.svg``."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise MetricInputError(f"{name!r} is not a plain file name for a plot")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    png, svg = out / f"{name}.png", out / f"{name}.svg"
    png.write_bytes(figure_bytes(figure, "png"))
    svg.write_bytes(figure_bytes(figure, "svg"))
    return PlotFiles(name=name, png=png, svg=svg)


def roc_figure(
    y_true: Any,
    probabilities: Any,
    *,
    classes: Sequence[Any] | None = None,
    title: str = "ROC curves (one vs rest)",
) -> Figure:
    """One ROC curve per class with its AUC in the legend; a class without
    examples (or with nothing else) has no curve."""
    scored = _Scored(y_true, probabilities, classes)
    aucs = scored.auc()
    fig = _new_figure()
    ax = fig.add_subplot()
    for c, name in enumerate(scored.classes):
        positive = scored.y == c
        auc = aucs[c]
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(positive, scored.probs[:, c])
        ax.plot(fpr, tpr, label=f"{_label(name)} (AUC {auc:.3f})", linewidth=1.5)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(_label(title))
    ax.legend(loc="lower right", fontsize="small")
    return fig


def confusion_figure(
    metrics: ClassificationMetrics, *, normalise: bool = True, title: str = "Confusion matrix"
) -> Figure:
    """The confusion matrix as a heat map; with ``normalise`` each row
    (true class) sums to 1, so rare classes are as readable as common ones."""
    counts = np.asarray(metrics.confusion_matrix, dtype=np.float64)
    values = counts
    if normalise:
        rows = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = counts.shape[0]
    fig = _new_figure()
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    fig.colorbar(image, ax=ax, label="fraction of the true class" if normalise else "rows")
    names = [_label(n) for n in metrics.classes]
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(k), names, fontsize="small")
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(_label(title))
    if k <= _MAX_ANNOTATED:
        top = values.max() or 1.0
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}" if normalise else f"{int(counts[i, j])}"
                colour = "white" if values[i, j] > top / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize="x-small")
    return fig


def reliability_figure(
    metrics: ClassificationMetrics, *, title: str = "Reliability diagram"
) -> Figure:
    """Accuracy against confidence per calibration bin (above), with the
    diagonal of perfect calibration, and how many rows each bin holds (below)."""
    bins = metrics.calibration
    fig = _new_figure()
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    lower = np.array([b.lower for b in bins])
    width = np.array([b.upper - b.lower for b in bins])
    accuracy = np.array([b.accuracy if b.accuracy is not None else 0.0 for b in bins])
    confidence = np.array([b.confidence if b.confidence is not None else np.nan for b in bins])
    counts = np.array([b.count for b in bins])
    top.bar(lower, accuracy, width=width, align="edge", edgecolor="black", label="accuracy")
    full = counts > 0
    top.plot(
        confidence[full],
        accuracy[full],
        "o",
        color="darkorange",
        label="bin: mean confidence, accuracy",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="calibrated")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.set_title(_label(f"{title} (ECE {metrics.expected_calibration_error:.3f})"))
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(lower, counts, width=width, align="edge", color="grey")
    bottom.set(xlabel="confidence (highest probability)", ylabel="rows")
    return fig


def metric_by_version_figure(
    versions: Sequence[str], values: Sequence[float | None], *, metric: str
) -> Figure:
    """One metric across model versions, in the order given; a version
    without the metric leaves a gap."""
    if len(versions) != len(values):
        raise MetricInputError(f"{len(versions)} versions for {len(values)} values")
    if not versions:
        raise MetricInputError("no versions to plot")
    y = np.array([np.nan if v is None else float(v) for v in values])
    fig = _new_figure()
    ax = fig.add_subplot()
    x = np.arange(len(versions))
    ax.plot(x, y, marker="o", linewidth=1.5)
    ax.set_xticks(x, [_label(v) for v in versions], rotation=30, ha="right", fontsize="small")
    ax.set(xlabel="version", ylabel=_label(metric))
    ax.set_title(_label(f"{metric} by version"))
    ax.grid(alpha=0.3)
    return fig


def residual_figure(
    y_true: Any,
    y_pred: Any,
    *,
    metrics: RegressionMetrics | None = None,
    title: str = "Residual against true value",
) -> Figure:
    """``predicted - true`` against the true value: points (a 2-D histogram
    for many rows), zero, and each bin's bias with its RMSE as error bar."""
    found = _Residuals(y_true, y_pred)
    fig = _new_figure()
    ax = fig.add_subplot()
    if found.n > _MAX_POINTS:
        hist = ax.hexbin(found.true, found.residual, gridsize=60, bins="log", cmap="Greys")
        fig.colorbar(hist, ax=ax, label="rows (log)")
    else:
        ax.scatter(found.true, found.residual, s=4, alpha=0.4, color="steelblue", rasterized=True)
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    if metrics is not None:
        full = [b for b in metrics.bins if b.count and b.bias is not None]
        ax.errorbar(
            [(b.lower + b.upper) / 2 for b in full],
            [b.bias or 0.0 for b in full],
            yerr=[b.rmse or 0.0 for b in full],
            fmt="o",
            color="darkorange",
            capsize=3,
            label="bias ± RMSE per bin",
        )
        ax.legend(loc="upper right", fontsize="small")
    ax.set(xlabel="true value", ylabel="predicted - true")
    ax.set_title(_label(title))
    return fig


def write_classification_plots(
    directory: str | Path,
    y_true: Any,
    probabilities: Any,
    metrics: ClassificationMetrics,
    *,
    classes: Sequence[Any] | None = None,
) -> list[PlotFiles]:
    """ROC curves, confusion matrix and reliability diagram, as PNG and SVG."""
    figures = {
        "roc": roc_figure(y_true, probabilities, classes=classes),
        "confusion": confusion_figure(metrics),
        "reliability": reliability_figure(metrics),
    }
    return [save_figure(fig, directory, name) for name, fig in figures.items()]


def write_regression_plots(
    directory: str | Path, y_true: Any, y_pred: Any, metrics: RegressionMetrics
) -> list[PlotFiles]:
    """The residual plot, as PNG and SVG."""
    return [save_figure(residual_figure(y_true, y_pred, metrics=metrics), directory, "residuals")]
