"""The side-by-side table, the ratio columns and the performance targets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from .results import Median
from .runner import INPROCESS, CellResult
from .servers import GRPC, HTTP_BINARY, HTTP_JSON

__all__ = ["Target", "evaluate_targets", "render_table", "render_targets"]

_PROTOCOL_ORDER = (INPROCESS, HTTP_BINARY, HTTP_JSON, GRPC)
_SERVER_ORDER = ("onnxruntime", "sciserve", "sciserve-monitored", "triton", "mlserver")
_LABELS = {
    "onnxruntime": "ORT in-process",
    "sciserve": "sciserve",
    "sciserve-monitored": "sciserve, monitoring on",
    "triton": "Triton/PyTriton",
    "mlserver": "MLServer",
}


_NAMES = {"triton": "Triton", "mlserver": "MLServer"}


class _Index:
    """Cell medians by (server, protocol, concurrency, batch)."""

    def __init__(self, results: Sequence[CellResult]) -> None:
        self._medians: dict[tuple[str, str, int, int], Median] = {}
        for result in results:
            median = result.median
            if median is not None:
                c = result.cell
                self._medians[(c.server, c.protocol, c.concurrency, c.batch)] = median

    def get(self, server: str, protocol: str, concurrency: int, batch: int) -> Median | None:
        if server == "onnxruntime":
            protocol = INPROCESS
        return self._medians.get((server, protocol, concurrency, batch))


def _ratio(a: Median | None, b: Median | None) -> float | None:
    if a is None or b is None or b.rows_per_s <= 0:
        return None
    return a.rows_per_s / b.rows_per_s


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _fmt_share(value: float | None) -> str:
    if value is None:
        return ""
    percent = 100 * value
    return f"{percent:.1f}%" if percent < 10 else f"{percent:.0f}%"


def _fmt_ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def render_table(results: Sequence[CellResult], console: Console) -> None:
    """Print one block per (concurrency, batch): the ceiling first, then each protocol."""
    index = _Index(results)
    table = Table(
        title="Median per cell; rows/s = requests/s x batch; "
        "sciserve/X = sciserve rows/s over X's; % of ORT = sciserve over the in-process ceiling",
    )
    for name in ("conc", "batch", "protocol", "server"):
        table.add_column(name, no_wrap=True)
    for name in ("rows/s", "p50 ms", "p99 ms", "sciserve/Triton", "sciserve/MLServer", "% of ORT"):
        table.add_column(name, justify="right", no_wrap=True)

    def order(r: CellResult) -> tuple[int, int, int, int]:
        c = r.cell
        return (
            c.concurrency,
            c.batch,
            _PROTOCOL_ORDER.index(c.protocol),
            _SERVER_ORDER.index(c.server) if c.server in _SERVER_ORDER else 99,
        )

    previous: tuple[int, int] | None = None
    for result in sorted(results, key=order):
        c = result.cell
        if previous is not None and previous != (c.concurrency, c.batch):
            table.add_section()
        previous = (c.concurrency, c.batch)
        median = result.median
        label = _LABELS.get(c.server, c.server)
        key = [str(c.concurrency), str(c.batch), c.protocol, label]
        if median is None:
            table.add_row(*key, "failed", "", "", "", "", "", style="red")
            continue
        ratios = ["", "", ""]
        if c.server == "sciserve":
            args = (c.protocol, c.concurrency, c.batch)
            ceiling = _ratio(median, index.get("onnxruntime", *args))
            ratios = [
                _fmt_ratio(_ratio(median, index.get("triton", *args))),
                _fmt_ratio(_ratio(median, index.get("mlserver", *args))),
                _fmt_share(ceiling),
            ]
        flag = f" ({median.errors} err)" if median.errors else ""
        table.add_row(
            *key,
            f"{median.rows_per_s:,.0f}{flag}",
            _fmt_ms(median.p50_ms),
            _fmt_ms(median.p99_ms),
            *ratios,
            style="bold" if c.server == "sciserve" else None,
        )
    console.print(table)


@dataclass(frozen=True)
class Target:
    """One of the serving targets, checked against this run's medians."""

    name: str
    status: Literal["PASS", "FAIL", "n/a"]
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _throughput_target(
    index: _Index, protocol: str, concurrency: int, batch: int, peer: str, factor: float
) -> Target:
    name = f"c={concurrency} b={batch} {protocol}: sciserve ≥ {factor:g}x {_NAMES[peer]} rows/s"
    ours = index.get("sciserve", protocol, concurrency, batch)
    theirs = index.get(peer, protocol, concurrency, batch)
    ratio = _ratio(ours, theirs)
    if ours is None or theirs is None or ratio is None:
        return Target(name, "n/a", "not measured in this run")
    detail = f"{ours.rows_per_s:,.0f} vs {theirs.rows_per_s:,.0f} rows/s = {ratio:.2f}x"
    ceiling = index.get("onnxruntime", INPROCESS, concurrency, batch)
    share = _ratio(ours, ceiling)
    if share is not None:
        detail += f"; sciserve at {_fmt_share(share)} of in-process ONNX Runtime"
    return Target(name, "PASS" if ratio >= factor else "FAIL", detail)


def _latency_target(index: _Index) -> Target:
    name = f"c=1 b=1 {HTTP_BINARY}: sciserve p50 < Triton p50"
    ours = index.get("sciserve", HTTP_BINARY, 1, 1)
    theirs = index.get("triton", HTTP_BINARY, 1, 1)
    if ours is None or theirs is None:
        return Target(name, "n/a", "not measured in this run")
    detail = f"{ours.p50_ms:.3f} ms vs {theirs.p50_ms:.3f} ms"
    return Target(name, "PASS" if ours.p50_ms < theirs.p50_ms else "FAIL", detail)


def _monitoring_target(index: _Index) -> Target:
    name = f"c=16 b=1 {HTTP_BINARY}: monitoring costs ≤ 5 % of sciserve's rows/s"
    ours = index.get("sciserve-monitored", HTTP_BINARY, 16, 1)
    bare = index.get("sciserve", HTTP_BINARY, 16, 1)
    ratio = _ratio(ours, bare)
    if ours is None or bare is None or ratio is None:
        return Target(name, "n/a", "not measured in this run")
    detail = (
        f"{ours.rows_per_s:,.0f} on vs {bare.rows_per_s:,.0f} rows/s off "
        f"= {100 * (1 - ratio):+.1f} % cost"
    )
    return Target(name, "PASS" if ratio >= 0.95 else "FAIL", detail)


def evaluate_targets(results: Sequence[CellResult]) -> list[Target]:
    """The targets of the serving work, PASS / FAIL / n/a (a cell missing)."""
    index = _Index(results)
    return [
        _throughput_target(index, HTTP_BINARY, 16, 1, "triton", 1.5),
        _throughput_target(index, HTTP_JSON, 16, 1, "mlserver", 2.0),
        _throughput_target(index, GRPC, 16, 1, "mlserver", 2.0),
        _throughput_target(index, HTTP_BINARY, 16, 64, "triton", 5.0),
        _latency_target(index),
        _monitoring_target(index),
    ]


def render_targets(targets: Sequence[Target], console: Console) -> None:
    """Print each target with its status and the numbers behind it."""
    styles = {"PASS": "green", "FAIL": "red", "n/a": "yellow"}
    for target in targets:
        console.print(
            f"[{styles[target.status]}]{target.status:<4}[/] {target.name}: {target.detail}",
            highlight=False,
        )
