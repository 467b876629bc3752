"""The side-by-side table, the ratio and CPU columns, the scaling row and the targets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from .results import Median
from .runner import INPROCESS, CellResult
from .servers import (
    GRPC,
    HTTP_BINARY,
    HTTP_JSON,
    SCALING_CELLS,
    SCALING_FRONTENDS,
    scaling_key,
)

__all__ = [
    "BASELINE_P50_MS",
    "P50_SLACK_MS",
    "Target",
    "evaluate_targets",
    "render_scaling",
    "render_table",
    "render_targets",
    "scaling_rows",
]

#: sciserve's HTTP-binary p50 at concurrency 1, batch 1 in the run published
#: before the HTTP front ends (2026-12-05): the latency target's baseline.
BASELINE_P50_MS = 0.19
#: How much slower than the baseline that p50 may be.
P50_SLACK_MS = 0.1

_SCALING_KEYS = tuple(scaling_key(n) for n in SCALING_FRONTENDS)
_PROTOCOL_ORDER = (INPROCESS, HTTP_BINARY, HTTP_JSON, GRPC)
_SERVER_ORDER = (
    "onnxruntime",
    "sciserve",
    "sciserve-monitored",
    *_SCALING_KEYS,
    "triton",
    "mlserver",
)
_LABELS = {
    "onnxruntime": "ORT in-process",
    "sciserve": "sciserve",
    "sciserve-monitored": "sciserve, monitoring on",
    **{scaling_key(n): f"sciserve, {n} HTTP FE" for n in SCALING_FRONTENDS},
    "triton": "Triton/PyTriton",
    "mlserver": "MLServer",
}
#: Rows that get the ratio columns: sciserve as measured, and its scaling row.
_RATIO_SERVERS = ("sciserve", *_SCALING_KEYS)


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


def _fmt_percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _fmt_cpu(total: float | None, main: float | None) -> str:
    if total is None:
        return ""
    return f"{total:.0f}" if main is None else f"{total:.0f} ({main:.0f})"


def _fmt_cores(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def render_table(results: Sequence[CellResult], console: Console) -> None:
    """Print one block per (concurrency, batch): the ceiling first, then each protocol."""
    index = _Index(results)
    table = Table(
        title="Median per cell; rows/s = requests/s x batch; "
        "sciserve/X = sciserve rows/s over X's; % of ORT = sciserve over the in-process ceiling; "
        "srv CPU % = the server's processes (100 % = one core), cli = wrk/h2load, "
        "cores = both, CPU s / wall s",
    )
    for name in ("conc", "batch", "protocol", "server"):
        table.add_column(name, no_wrap=True)
    for name in (
        "rows/s",
        "p50 ms",
        "p99 ms",
        "srv CPU %",
        "cli CPU %",
        "cores",
        "sciserve/Triton",
        "sciserve/MLServer",
        "% of ORT",
    ):
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
            table.add_row(*key, "failed", *([""] * 8), style="red")
            continue
        ratios = ["", "", ""]
        if c.server in _RATIO_SERVERS:
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
            _fmt_percent(median.server_cpu_percent),
            "" if c.protocol == INPROCESS else _fmt_percent(median.client_cpu_percent),
            _fmt_cores(median.cores_used),
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


def _ceiling_target(index: _Index, concurrency: int, batch: int, share: float) -> Target:
    name = (
        f"c={concurrency} b={batch} {HTTP_BINARY}: sciserve ≥ {100 * share:g} % of "
        "in-process ONNX Runtime (1 thread) rows/s"
    )
    ours = index.get("sciserve", HTTP_BINARY, concurrency, batch)
    ceiling = index.get("onnxruntime", INPROCESS, concurrency, batch)
    ratio = _ratio(ours, ceiling)
    if ours is None or ceiling is None or ratio is None:
        return Target(name, "n/a", "not measured in this run")
    detail = f"{ours.rows_per_s:,.0f} vs {ceiling.rows_per_s:,.0f} rows/s = {_fmt_share(ratio)}"
    return Target(name, "PASS" if ratio >= share else "FAIL", detail)


def _baseline_latency_target(index: _Index, baseline_ms: float, slack_ms: float) -> Target:
    bound = baseline_ms + slack_ms
    name = (
        f"c=1 b=1 {HTTP_BINARY}: sciserve p50 ≤ baseline {baseline_ms:g} ms "
        f"+ {slack_ms:g} ms = {bound:.3g} ms"
    )
    ours = index.get("sciserve", HTTP_BINARY, 1, 1)
    if ours is None or math.isnan(ours.p50_ms):
        return Target(name, "n/a", "not measured in this run")
    detail = f"{ours.p50_ms:.3f} ms ({ours.p50_ms - baseline_ms:+.3f} ms on the baseline)"
    return Target(name, "PASS" if ours.p50_ms <= bound else "FAIL", detail)


def evaluate_targets(
    results: Sequence[CellResult], baseline_p50_ms: float = BASELINE_P50_MS
) -> list[Target]:
    """The targets, PASS / FAIL / n/a (a cell missing): the serving work's first, then
    those of using every core (HTTP front ends), whose latency target compares
    sciserve's c=1 b=1 p50 with ``baseline_p50_ms``."""
    index = _Index(results)
    return [
        _throughput_target(index, HTTP_BINARY, 16, 1, "triton", 1.5),
        _throughput_target(index, HTTP_JSON, 16, 1, "mlserver", 2.0),
        _throughput_target(index, GRPC, 16, 1, "mlserver", 2.0),
        _throughput_target(index, HTTP_BINARY, 16, 64, "triton", 5.0),
        _latency_target(index),
        _monitoring_target(index),
        _throughput_target(index, HTTP_BINARY, 16, 1, "triton", 2.5),
        _ceiling_target(index, 16, 64, 0.40),
        _baseline_latency_target(index, baseline_p50_ms, P50_SLACK_MS),
    ]


def scaling_rows(
    results: Sequence[CellResult], unavailable: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The scaling row, one entry per front-end count: each cell's rows/s, p50,
    server CPU and rows/s relative to no front end, or why it was not measured."""
    index = _Index(results)
    rows: list[dict[str, Any]] = []
    for n in SCALING_FRONTENDS:
        key = scaling_key(n)
        row: dict[str, Any] = {"server": key, "http_frontends": n, "cells": []}
        if key in unavailable:
            row["unavailable"] = unavailable[key]
        for concurrency, batch in SCALING_CELLS:
            median = index.get(key, HTTP_BINARY, concurrency, batch)
            none = index.get(scaling_key(0), HTTP_BINARY, concurrency, batch)
            triton = index.get("triton", HTTP_BINARY, concurrency, batch)
            ceiling = index.get("onnxruntime", INPROCESS, concurrency, batch)
            row["cells"].append(
                {
                    "concurrency": concurrency,
                    "batch": batch,
                    "rows_per_s": median.rows_per_s if median else None,
                    "p50_ms": median.p50_ms if median else None,
                    "server_cpu_percent": median.server_cpu_percent if median else None,
                    "main_cpu_percent": median.main_cpu_percent if median else None,
                    "cores_used": median.cores_used if median else None,
                    "vs_no_frontends": _ratio(median, none),
                    "vs_triton": _ratio(median, triton),
                    "share_of_ort": _ratio(median, ceiling),
                }
            )
        rows.append(row)
    return rows


def render_scaling(rows: Sequence[Mapping[str, Any]], console: Console) -> None:
    """The scaling row as a small table: one line per front-end count."""
    # The front-end counts selected in this run: measured, or said why not.
    rows = [
        row
        for row in rows
        if "unavailable" in row or any(c["rows_per_s"] is not None for c in row["cells"])
    ]
    if not rows:
        return
    concurrencies = sorted({c for c, _ in SCALING_CELLS})
    table = Table(
        title=f"Scaling, {HTTP_BINARY}, c={','.join(map(str, concurrencies))}: sciserve with "
        "N HTTP front-end processes; vs 0 = rows/s over no front end, "
        "CPU % = the server's processes (its main process alone)"
    )
    table.add_column("front ends", justify="right", no_wrap=True)
    for _, batch in SCALING_CELLS:
        for name in ("rows/s", "CPU %", "vs 0", "/Triton", "% ORT"):
            table.add_column(f"b={batch} {name}", justify="right", no_wrap=True)
    reasons = []
    for row in rows:
        if "unavailable" in row:
            table.add_row(str(row["http_frontends"]), "n/a", *([""] * (5 * len(SCALING_CELLS) - 1)))
            reasons.append(f"{row['http_frontends']} front end(s): n/a: {row['unavailable']}")
            continue
        values = []
        for cell in row["cells"]:
            rate = cell["rows_per_s"]
            values += [
                "" if rate is None else f"{rate:,.0f}",
                _fmt_cpu(cell["server_cpu_percent"], cell["main_cpu_percent"]),
                _fmt_ratio(cell["vs_no_frontends"]),
                _fmt_ratio(cell["vs_triton"]),
                _fmt_share(cell["share_of_ort"]),
            ]
        table.add_row(str(row["http_frontends"]), *values)
    console.print(table)
    for reason in reasons:
        console.print(f"  {reason}", highlight=False)


def render_targets(targets: Sequence[Target], console: Console) -> None:
    """Print each target with its status and the numbers behind it."""
    styles = {"PASS": "green", "FAIL": "red", "n/a": "yellow"}
    for target in targets:
        console.print(
            f"[{styles[target.status]}]{target.status:<4}[/] {target.name}: {target.detail}",
            highlight=False,
        )
