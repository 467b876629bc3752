"""The HTML report is self-contained, escapes everything and embeds real images."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sciserve.evaluation import classification_metrics, regression_metrics
from sciserve.evaluation.compare import compare_classification
from sciserve.evaluation.plots import write_classification_plots, write_regression_plots
from sciserve.evaluation.report import ReportInput, render_report, write_report

EVIL = '<script>alert("x")</script>'
NAMES = ["SNIa", "SNII", f"AGN{EVIL}"]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in {"src", "href", "action", "srcset"}]


@pytest.fixture
def labelled() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)

    def probs(strength: float) -> np.ndarray:
        p = np.exp(rng.normal(size=(y.size, 3)) + strength * np.eye(3)[y])
        return p / p.sum(axis=1, keepdims=True)

    return np.array(NAMES)[y], probs(1.0), probs(2.0)


def test_report_is_self_contained_and_escaped(tmp_path: Path, labelled) -> None:
    y, a, b = labelled
    metrics = classification_metrics(y, b, classes=NAMES)
    plots = write_classification_plots(tmp_path / "plots", y, b, metrics, classes=NAMES)
    comparison = compare_classification(
        y, a, b, classes=NAMES, ids=[f"alert-{i}{EVIL}" for i in range(y.size)], n_bootstrap=50
    )
    path = write_report(
        tmp_path / "out",
        ReportInput(
            title=f"Evaluation of lc{EVIL}",
            model=f"examples/lc-classifier{EVIL}:2.0.0",
            model_digest="sha256:" + "ab" * 32,
            dataset="examples/lightcurves:1.0.0",
            split="test",
            metrics=metrics,
            plots=plots,
            comparison=comparison,
            baseline=f"examples/lc-classifier{EVIL}:1.0.0",
            record={"seed": 0, "note": EVIL},
        ),
    )
    html = path.read_text()
    parser = _Tags()
    parser.feed(html)
    # No script at all: every <script> in a name arrived as text.
    assert "script" not in parser.tags
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    # Nothing loaded from anywhere: every URL is a data URI.
    assert parser.urls and all(u.startswith("data:image/") for u in parser.urls)
    assert "link" not in parser.tags
    assert not re.search(r"url\(|@import", html)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    # The embedded PNGs are the plots.
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) == 3
    for data in pngs:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.size == (640, 480)
    assert base64.b64decode(pngs[0]) == plots[0].png.read_bytes()
    # The tables carry the numbers.
    assert f"{metrics.accuracy:.4g}" in html
    assert "changed class" in html and "weighted_log_loss" in html
    assert comparison.n_changed > 50
    assert f"{comparison.n_changed} row(s) changed class\n(the first 50 listed)" in html
    assert html.count("alert-") == 50


def test_regression_report_without_plots(tmp_path: Path) -> None:
    true = np.linspace(1, 2, 100)
    pred = true * 1.02
    metrics = regression_metrics(true, pred, bins=4)
    html = render_report(ReportInput(title="photo-z", model="pz:1", metrics=metrics))
    assert "Per bin of the true value" in html
    assert html.count("<tr>") >= 4 + 1 + 5
    assert "<img" not in html
    plots = write_regression_plots(tmp_path, true, pred, metrics)
    with_plots = render_report(
        ReportInput(title="photo-z", model="pz:1", metrics=metrics, plots=plots)
    )
    assert with_plots.count("data:image/png;base64,") == 1
    assert with_plots.count("data:image/svg+xml;base64,") == 1
