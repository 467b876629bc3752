"""Ratios and targets from cell medians."""

from __future__ import annotations

import io

from rich.console import Console
from servebench.report import evaluate_targets, render_table
from servebench.results import Run
from servebench.runner import INPROCESS, Cell, CellResult


def _cell(server: str, protocol: str, c: int, b: int, rps: float, p50: float) -> CellResult:
    run = Run(requests=int(rps), errors=0, duration_s=1.0, p50_ms=p50, p99_ms=2 * p50, batch=b)
    return CellResult(Cell(server, protocol, c, b), (run,))


def test_targets_pass_fail_and_not_measured() -> None:
    results = [
        _cell("sciserve", "http-binary", 16, 1, 3000, 1.0),
        _cell("triton", "http-binary", 16, 1, 1000, 2.0),  # 3x ≥ 1.5x: PASS
        _cell("sciserve", "http-json", 16, 1, 1500, 1.0),
        _cell("mlserver", "http-json", 16, 1, 1000, 1.0),  # 1.5x < 2x: FAIL
        _cell("sciserve", "http-binary", 1, 1, 10, 0.5),
        _cell("triton", "http-binary", 1, 1, 10, 0.4),  # slower p50: FAIL
        _cell("sciserve", "http-binary", 16, 64, 600, 1.0),
        _cell("triton", "http-binary", 16, 64, 100, 1.0),
        _cell("onnxruntime", INPROCESS, 16, 64, 1200, 0.1),
    ]
    by_name = {t.name: t for t in evaluate_targets(results)}
    statuses = [t.status for t in by_name.values()]
    # gRPC and sciserve with monitoring were not measured.
    assert statuses == ["PASS", "FAIL", "n/a", "PASS", "FAIL", "n/a"]
    batch64 = next(t for t in by_name.values() if "b=64" in t.name)
    assert "6.00x" in batch64.detail
    assert "50% of in-process" in batch64.detail


def test_the_monitoring_target_compares_sciserve_with_itself_without_it() -> None:
    within = [
        _cell("sciserve-monitored", "http-binary", 16, 1, 9600, 1.0),
        _cell("sciserve", "http-binary", 16, 1, 10000, 1.0),
    ]
    over = [
        _cell("sciserve-monitored", "http-binary", 16, 1, 9400, 1.0),
        _cell("sciserve", "http-binary", 16, 1, 10000, 1.0),
    ]
    passed, failed = (
        next(t for t in evaluate_targets(cells) if "monitoring" in t.name)
        for cells in (within, over)
    )
    assert passed.status == "PASS"
    assert "+4.0 % cost" in passed.detail
    assert failed.status == "FAIL"
    assert "+6.0 % cost" in failed.detail


def test_a_failed_cell_counts_as_not_measured() -> None:
    results = [
        CellResult(Cell("sciserve", "grpc", 16, 1), error="boom"),
        _cell("mlserver", "grpc", 16, 1, 1000, 1.0),
    ]
    grpc = next(t for t in evaluate_targets(results) if "grpc" in t.name)
    assert grpc.status == "n/a"


def test_the_table_shows_ratios_on_sciserve_rows() -> None:
    results = [
        _cell("sciserve", "grpc", 16, 1, 2000, 1.0),
        _cell("triton", "grpc", 16, 1, 500, 1.0),
        _cell("mlserver", "grpc", 16, 1, 1000, 1.0),
        _cell("onnxruntime", INPROCESS, 16, 1, 8000, 0.1),
        CellResult(Cell("triton", "http-json", 16, 1), error="wrong answer"),
    ]
    out = io.StringIO()
    render_table(results, Console(file=out, width=200))
    text = out.getvalue()
    sciserve_row = next(line for line in text.splitlines() if "│ sciserve" in line)
    assert "4.00x" in sciserve_row
    assert "2.00x" in sciserve_row
    assert "25%" in sciserve_row
    assert "failed" in text
