"""A self-contained HTML evaluation report: one file, nothing fetched.

Plots are embedded as ``data:`` URIs (PNG to show, SVG to download), the
style sheet is inline, there is no script, and a Content-Security-Policy
allows nothing else, so the page opens offline, from an e-mail attachment
or a dashboard, and cannot be made to load anything.  Every text (model,
dataset and class names come from whoever published them) goes through
Jinja2's autoescaping.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .compare import Comparison
from .plots import PlotFiles
from .result import ClassificationMetrics, RegressionMetrics, to_json

__all__ = ["ReportInput", "render_report", "write_report"]

#: Our own constant, so written as is (escaping would turn its quotes into entities).
#: Changed rows listed in a report, at most (the comparison may hold more).
MAX_CHANGED_SHOWN = 50

_CSP = Markup("default-src 'none'; img-src data:; style-src 'unsafe-inline'")

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ r.title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.85rem; }
pre { background: #f6f6f6; padding: 1rem; overflow-x: auto; }
figure { display: inline-block; margin: 0 1rem 1rem 0; }
img { max-width: 100%; border: 1px solid #eee; }
.good { color: #1a7f37; } .bad { color: #b42318; }
</style>
</head>
<body>
<h1>{{ r.title }}</h1>
<table>
<tr><th>model</th><td><code>{{ r.model }}</code></td></tr>
{% if r.model_digest %}
<tr><th>model digest</th><td><code>{{ r.model_digest }}</code></td></tr>
{% endif %}
{% if r.dataset %}<tr><th>dataset</th><td><code>{{ r.dataset }}</code></td></tr>{% endif %}
{% if r.dataset_digest %}
<tr><th>dataset digest</th><td><code>{{ r.dataset_digest }}</code></td></tr>
{% endif %}
{% if r.split %}<tr><th>split</th><td>{{ r.split }}</td></tr>{% endif %}
<tr><th>rows</th><td>{{ m.n }}</td></tr>
</table>

<h2>Metrics</h2>
<table>
<tr><th>metric</th><th>value</th></tr>
{% for name, value in m.scalars().items() %}
<tr><td>{{ name }}</td><td>{{ fmt(value) }}</td></tr>
{% endfor %}
</table>

{% if classification %}
<h2>Per class</h2>
<table>
<tr><th>class</th><th>support</th><th>precision</th><th>recall</th><th>F1</th><th>ROC-AUC</th>
<th>weight</th></tr>
{% for row in m.per_class %}
<tr><td>{{ row.name }}</td><td>{{ row.support }}</td><td>{{ fmt(row.precision) }}</td>
<td>{{ fmt(row.recall) }}</td><td>{{ fmt(row.f1) }}</td><td>{{ fmt(row.roc_auc) }}</td>
<td>{{ fmt(m.class_weights[loop.index0]) }}</td></tr>
{% endfor %}
</table>

<h2>Confusion matrix</h2>
<p>Rows: true class; columns: predicted class.</p>
<table>
<tr><th></th>{% for name in m.classes %}<th>{{ name }}</th>{% endfor %}</tr>
{% for row in m.confusion_matrix %}
<tr><th>{{ m.classes[loop.index0] }}</th>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% else %}
<h2>Per bin of the true value</h2>
<table>
<tr><th>bin</th><th>rows</th><th>MAE</th><th>RMSE</th><th>bias</th><th>resolution &sigma;</th>
<th>68 % half-width</th></tr>
{% for b in m.bins %}
<tr><td>[{{ fmt(b.lower) }}, {{ fmt(b.upper) }})</td><td>{{ b.count }}</td><td>{{ fmt(b.mae) }}</td>
<td>{{ fmt(b.rmse) }}</td><td>{{ fmt(b.bias) }}</td>
<td>{{ fmt(b.resolution.sigma if b.resolution else None) }}</td>
<td>{{ fmt(b.resolution.half_width_68 if b.resolution else None) }}</td></tr>
{% endfor %}
</table>
{% endif %}

{% if c %}
<h2>Compared with <code>{{ r.baseline }}</code></h2>
<p>Delta = this model &minus; baseline; {{ (c.confidence * 100) | round(1) }} % bootstrap interval
from {{ c.n_bootstrap }} resamples (seed {{ c.seed }}).</p>
<table>
<tr><th>metric</th><th>baseline</th><th>this model</th><th>delta</th><th>interval</th></tr>
{% for d in c.deltas %}
<tr><td>{{ d.metric }}</td><td>{{ fmt(d.a) }}</td><td>{{ fmt(d.b) }}</td><td>{{ fmt(d.delta) }}</td>
<td>{% if d.low is not none %}[{{ fmt(d.low) }}, {{ fmt(d.high) }}]
{%- else %}&ndash;{% endif %}</td></tr>
{% endfor %}
</table>
{% if c.classes %}
{% set listed = c.changed[:max_changed] %}
<p>{{ c.n_changed }} row(s) changed class{% if listed | length < c.n_changed %}
(the first {{ listed | length }} listed){% endif %}.</p>
{% if listed %}
<table>
<tr><th>row</th><th>id</th><th>true</th><th>baseline</th><th>this model</th></tr>
{% for row in listed %}
<tr><td>{{ row.index }}</td><td>{{ row.id }}</td><td>{{ row.truth }}</td><td>{{ row.a }}</td>
<td>{{ row.b }}</td></tr>
{% endfor %}
</table>
{% endif %}
{% endif %}
{% endif %}

{% if images %}
<h2>Plots</h2>
{% for img in images %}
<figure>
<img src="data:image/png;base64,{{ img.png }}" alt="{{ img.name }}" width="640" height="480">
<figcaption>{{ img.name }} ·
<a download="{{ img.name }}.svg" href="data:image/svg+xml;base64,{{ img.svg }}">SVG</a></figcaption>
</figure>
{% endfor %}
{% endif %}

{% if record %}
<h2>Record</h2>
<pre>{{ record }}</pre>
{% endif %}
</body>
</html>
"""


@dataclass(frozen=True)
class ReportInput:
    """What a report shows: the evaluated model and data, its metrics, and
    optionally plots, a comparison with a baseline version and the
    evaluation record (shown as JSON)."""

    title: str
    model: str
    metrics: ClassificationMetrics | RegressionMetrics
    model_digest: str = ""
    dataset: str = ""
    dataset_digest: str = ""
    split: str = ""
    plots: Sequence[PlotFiles] = ()
    comparison: Comparison | None = None
    baseline: str = ""
    record: Mapping[str, Any] | None = field(default=None)


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


_ENV = jinja2.Environment(
    autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)
_COMPILED = _ENV.from_string(_TEMPLATE)


def render_report(report: ReportInput) -> str:
    """The report as one HTML document."""
    images = [{"name": p.name, "png": _b64(p.png), "svg": _b64(p.svg)} for p in report.plots]
    record = to_json(report.record, indent=2) if report.record is not None else ""
    return _COMPILED.render(
        r=report,
        m=report.metrics,
        c=report.comparison,
        classification=isinstance(report.metrics, ClassificationMetrics),
        images=images,
        record=record,
        fmt=_fmt,
        csp=_CSP,
        max_changed=MAX_CHANGED_SHOWN,
    )


def write_report(directory: str | Path, report: ReportInput) -> Path:
    """Write the report as ``<directory>/report.html`` and return its path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(render_report(report), encoding="utf-8")
    return path
