"""Runs, percentiles and the median of a cell."""

from __future__ import annotations

import math

import numpy as np
import pytest
from servebench.results import Run, median_of, run_from_latencies


def test_a_run_summarises_latencies_in_milliseconds() -> None:
    latencies_us = np.arange(1, 101, dtype=np.float64) * 1000.0  # 1 … 100 ms
    run = run_from_latencies(latencies_us, errors=2, duration_s=4.0, batch=64)
    assert run.requests == 100
    assert run.errors == 2
    assert run.p50_ms == pytest.approx(50.5)
    assert run.p99_ms == pytest.approx(99.01)
    assert run.requests_per_s == pytest.approx(25.0)
    assert run.rows_per_s == pytest.approx(25.0 * 64)
    assert run.to_dict()["rows_per_s"] == pytest.approx(1600.0)


def test_a_run_without_requests_has_no_percentiles() -> None:
    run = run_from_latencies(np.array([], dtype=np.float64), errors=5, duration_s=1.0, batch=1)
    assert run.requests == 0
    assert math.isnan(run.p50_ms)
    assert run.rows_per_s == 0.0


def _run(rps: float, p50: float, p99: float, errors: int = 0) -> Run:
    return Run(requests=int(rps), errors=errors, duration_s=1.0, p50_ms=p50, p99_ms=p99, batch=2)


def test_the_median_is_taken_metric_by_metric() -> None:
    runs = [_run(100, 3.0, 9.0), _run(300, 1.0, 30.0, errors=1), _run(200, 2.0, 10.0)]
    median = median_of(runs)
    assert median.rows_per_s == 400.0  # 200 requests/s x batch 2
    assert median.p50_ms == 2.0
    assert median.p99_ms == 10.0
    assert median.errors == 1


def test_no_runs_have_no_median() -> None:
    with pytest.raises(ValueError, match="no runs"):
        median_of([])
