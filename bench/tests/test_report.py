"""Ratios and targets from cell medians."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from servebench.cpu import CpuUse
from servebench.report import (
    BASELINE_P50_MS,
    Target,
    evaluate_targets,
    render_scaling,
    render_table,
    render_targets,
    scaling_rows,
)
from servebench.results import Run
from servebench.runner import INPROCESS, Cell, CellResult


def _cell(
    server: str,
    protocol: str,
    c: int,
    b: int,
    rps: float,
    p50: float,
    cpu: CpuUse | None = None,
) -> CellResult:
    run = Run(
        requests=int(rps), errors=0, duration_s=1.0, p50_ms=p50, p99_ms=2 * p50, batch=b, cpu=cpu
    )
    return CellResult(Cell(server, protocol, c, b), (run,))


def _target(targets: list[Target], *words: str) -> Target:
    (found,) = (t for t in targets if all(w in t.name for w in words))
    return found


def _text(render: object, *args: object) -> str:
    out = io.StringIO()
    render(*args, Console(file=out, width=250))  # type: ignore[operator]
    return out.getvalue()


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
    # gRPC and sciserve with monitoring were not measured; then the front-end
    # targets: 3x ≥ 2.5x Triton, 50 % ≥ 40 % of ORT, p50 0.5 ms > 0.19 + 0.1 ms.
    assert statuses == ["PASS", "FAIL", "n/a", "PASS", "FAIL", "n/a", "PASS", "PASS", "FAIL"]
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


@pytest.mark.parametrize(("ours", "status"), [(2400, "FAIL"), (2500, "PASS"), (2600, "PASS")])
def test_the_front_end_throughput_target_is_2_5x_triton(ours: int, status: str) -> None:
    results = [
        _cell("sciserve", "http-binary", 16, 1, ours, 1.0),
        _cell("triton", "http-binary", 16, 1, 1000, 1.0),
    ]
    target = _target(evaluate_targets(results), "2.5x Triton")
    assert target.name.startswith("c=16 b=1 http-binary")
    assert target.status == status


@pytest.mark.parametrize(("ours", "status"), [(390, "FAIL"), (400, "PASS"), (410, "PASS")])
def test_the_batch_64_target_is_40_percent_of_in_process_ort(ours: int, status: str) -> None:
    results = [
        _cell("sciserve", "http-binary", 16, 64, ours, 1.0),
        _cell("onnxruntime", INPROCESS, 16, 64, 1000, 0.1),
    ]
    target = _target(evaluate_targets(results), "40 % of in-process")
    assert target.name.startswith("c=16 b=64 http-binary")
    assert target.status == status
    assert f"{ours * 64:,} vs 64,000 rows/s" in target.detail


def test_the_batch_64_target_without_the_ceiling_is_not_measured() -> None:
    results = [_cell("sciserve", "http-binary", 16, 64, 400, 1.0)]
    assert _target(evaluate_targets(results), "40 %").status == "n/a"


def test_the_latency_target_compares_with_the_baseline_plus_a_tenth_of_a_ms() -> None:
    assert BASELINE_P50_MS == 0.19
    on_time = [_cell("sciserve", "http-binary", 1, 1, 1000, 0.29)]
    late = [_cell("sciserve", "http-binary", 1, 1, 1000, 0.2901)]
    passed = _target(evaluate_targets(on_time), "baseline")
    failed = _target(evaluate_targets(late), "baseline")
    assert "baseline 0.19 ms + 0.1 ms = 0.29 ms" in passed.name
    assert passed.status == "PASS"
    assert "+0.100 ms on the baseline" in passed.detail
    assert failed.status == "FAIL"
    # A baseline of one's own (--baseline-p50-ms) moves the bound and is named.
    own = _target(evaluate_targets(late, baseline_p50_ms=0.25), "baseline")
    assert "baseline 0.25 ms" in own.name
    assert own.status == "PASS"
    assert _target(evaluate_targets([]), "baseline").status == "n/a"


def test_the_targets_print_with_their_numbers() -> None:
    results = [
        _cell("sciserve", "http-binary", 16, 1, 3000, 1.0),
        _cell("triton", "http-binary", 16, 1, 1000, 1.0),
    ]
    text = _text(render_targets, evaluate_targets(results))
    assert "PASS c=16 b=1 http-binary: sciserve ≥ 2.5x Triton rows/s: 3,000 vs 1,000" in text
    assert "n/a  c=1 b=1 http-binary: sciserve p50 ≤ baseline 0.19 ms" in text


def test_the_table_shows_the_cpu_of_server_and_client() -> None:
    cpu = CpuUse(wall_s=2.0, server_cpu_s=2.3, client_cpu_s=0.9, server_processes=3)
    inproc = CpuUse(wall_s=2.0, server_cpu_s=3.9, client_cpu_s=0.0, server_processes=1)
    results = [
        _cell("sciserve", "http-binary", 16, 1, 2000, 1.0, cpu),
        _cell("onnxruntime", INPROCESS, 16, 1, 8000, 0.1, inproc),
    ]
    text = _text(render_table, results)
    assert "srv CPU %" in text
    row = next(line for line in text.splitlines() if "│ sciserve" in line)
    cells = [c.strip() for c in row.split("│")]
    assert cells[8:11] == ["115", "45", "1.60"]  # 2.3/2 s, 0.9/2 s, both
    ort = next(line for line in text.splitlines() if "ORT in-process" in line)
    assert [c.strip() for c in ort.split("│")][8:11] == ["195", "", "1.95"]


def _scaling_results(fe2_error: bool = False) -> list[CellResult]:
    def cpu(server: float) -> CpuUse:
        return CpuUse(
            wall_s=1.0,
            server_cpu_s=server,
            client_cpu_s=0.5,
            server_processes=1,
            main_cpu_s=min(server, 0.98),
        )

    results = [
        _cell("sciserve-fe0", "http-binary", 16, 1, 4000, 1.0, cpu(1.1)),
        _cell("sciserve-fe0", "http-binary", 16, 64, 2000, 5.0, cpu(1.1)),
        _cell("sciserve-fe1", "http-binary", 16, 1, 6000, 1.0, cpu(1.5)),
        _cell("sciserve-fe1", "http-binary", 16, 64, 3000, 5.0, cpu(1.4)),
        _cell("triton", "http-binary", 16, 1, 2000, 1.0),
        _cell("onnxruntime", INPROCESS, 16, 64, 8000, 0.1),
    ]
    if not fe2_error:
        results.append(_cell("sciserve-fe2", "http-binary", 16, 1, 8000, 1.0, cpu(1.8)))
    return results


def test_the_scaling_row_compares_each_front_end_count_with_none() -> None:
    rows = scaling_rows(_scaling_results(), {})
    assert [r["http_frontends"] for r in rows] == [0, 1, 2]
    fe1_b1, fe1_b64 = rows[1]["cells"]
    assert fe1_b1["vs_no_frontends"] == pytest.approx(1.5)
    assert fe1_b1["vs_triton"] == pytest.approx(3.0)
    assert fe1_b1["server_cpu_percent"] == pytest.approx(150.0)
    assert fe1_b64["share_of_ort"] == pytest.approx(3000 / 8000)
    assert rows[2]["cells"][1]["rows_per_s"] is None  # fe2 b64 not measured
    text = _text(render_scaling, rows)
    line = next(t for t in text.splitlines() if [c.strip() for c in t.split("│")][1:2] == ["1"])
    assert "6,000" in line
    assert "150 (98)" in line  # all the server's processes (its main process)
    assert "1.50x" in line
    assert "3.00x" in line
    assert "38%" in line  # 3,000 of 8,000 rows/s


def test_the_scaling_row_says_why_a_front_end_count_is_not_available() -> None:
    unavailable = {"sciserve-fe1": "this sciserve has no --http-frontends"}
    rows = scaling_rows(_scaling_results(fe2_error=True), unavailable)
    assert rows[1]["unavailable"] == "this sciserve has no --http-frontends"
    text = _text(render_scaling, rows)
    assert "n/a: this sciserve has no --http-frontends" in text


def test_no_scaling_table_when_no_front_end_count_was_selected() -> None:
    rows = scaling_rows([_cell("sciserve", "http-binary", 16, 1, 1000, 1.0)], {})
    assert _text(render_scaling, rows) == ""
