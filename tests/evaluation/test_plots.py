"""Plots are real images: Pillow opens them, they have the promised size
and they are not blank; SVGs are well-formed; no pyplot state is left."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sciserve.errors import DependencyMissing, MetricInputError
from sciserve.evaluation import classification_metrics, plots, regression_metrics

NAMES = ["SNIa", "SNII", "$AGN$", "<script>alert(1)</script>"]


@pytest.fixture
def labelled() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(NAMES), 400)
    logits = rng.normal(size=(y.size, len(NAMES))) + 2 * np.eye(len(NAMES))[y]
    p = np.exp(logits)
    return np.array(NAMES)[y], p / p.sum(axis=1, keepdims=True)


def _check_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (640, 480)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    # A blank canvas has one grey level; a plot has lines, text and fills.
    assert pixels.std() > 10
    assert (pixels < 128).mean() > 0.005


def _check_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert len(list(root.iter())) > 50
    assert "<dc:date>" not in path.read_text()


def test_classification_plots_are_real_images(tmp_path: Path, labelled) -> None:
    y, p = labelled
    metrics = classification_metrics(y, p, classes=NAMES)
    written = plots.write_classification_plots(tmp_path / "out", y, p, metrics, classes=NAMES)
    assert [w.name for w in written] == ["roc", "confusion", "reliability"]
    for files in written:
        _check_png(files.png)
        _check_svg(files.svg)


def test_the_same_plot_gives_the_same_png(tmp_path: Path, labelled) -> None:
    y, p = labelled
    metrics = classification_metrics(y, p, classes=NAMES)
    one = plots.save_figure(plots.confusion_figure(metrics), tmp_path, "one")
    two = plots.save_figure(plots.confusion_figure(metrics), tmp_path, "two")
    assert one.png.read_bytes() == two.png.read_bytes()


def test_a_blank_figure_fails_the_check(tmp_path: Path) -> None:
    # The check above can fail: an empty figure is caught by it.
    empty = plots._new_figure()
    files = plots.save_figure(empty, tmp_path, "empty")
    with pytest.raises(AssertionError):
        _check_png(files.png)


def test_metric_by_version_and_residual_plots(tmp_path: Path) -> None:
    fig = plots.metric_by_version_figure(
        ["1.0.0", "1.1.0", "2.0.0", "2.1.0"], [0.91, None, 0.85, 0.8], metric="weighted_log_loss"
    )
    _check_png(plots.save_figure(fig, tmp_path, "by-version").png)
    rng = np.random.default_rng(1)
    true = rng.uniform(0.1, 3, 800)
    pred = true + rng.normal(0, 0.1, true.size)
    written = plots.write_regression_plots(tmp_path, true, pred, regression_metrics(true, pred))
    _check_png(written[0].png)
    _check_svg(written[0].svg)
    # Many rows: a 2-D histogram instead of points.
    big = rng.uniform(0.1, 3, plots._MAX_POINTS + 1)
    fig = plots.residual_figure(big, big * 1.05)
    _check_png(plots.save_figure(fig, tmp_path, "hexbin").png)


def test_a_large_evaluation_gives_small_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200_000)
    p = rng.dirichlet([1, 1, 1], y.size) * 0.5 + np.eye(3)[y] * 0.5
    files = plots.save_figure(plots.roc_figure(y, p), tmp_path, "roc")
    _check_png(files.png)
    # matplotlib simplifies the curves' paths: 200 000 rows stay a small SVG.
    assert files.svg.stat().st_size < 2_000_000


def test_plotting_leaves_no_pyplot_state(tmp_path: Path, labelled) -> None:
    y, p = labelled
    before = set(sys.modules)
    pyplot = sys.modules.get("matplotlib.pyplot")
    figures = pyplot.get_fignums() if pyplot is not None else []
    plots.save_figure(plots.roc_figure(y, p, classes=NAMES), tmp_path, "roc")
    assert "matplotlib.pyplot" not in set(sys.modules) - before
    if pyplot is not None:  # imported by someone else: no figure of ours in it
        assert pyplot.get_fignums() == figures


def test_bad_plot_input_is_refused(tmp_path: Path, labelled) -> None:
    y, p = labelled
    with pytest.raises(MetricInputError, match="versions"):
        plots.metric_by_version_figure(["1"], [0.1, 0.2], metric="m")
    with pytest.raises(MetricInputError, match="no versions"):
        plots.metric_by_version_figure([], [], metric="m")
    with pytest.raises(MetricInputError, match="file name"):
        plots.save_figure(plots.roc_figure(y, p, classes=NAMES), tmp_path, "../escape")
    with pytest.raises(MetricInputError, match="NaN"):
        plots.roc_figure(y, np.full_like(p, np.nan), classes=NAMES)


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch, labelled) -> None:
    y, p = labelled
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(DependencyMissing, match=r"sciserve\[evaluate\]"):
        plots.roc_figure(y, p, classes=NAMES)
