"""What one timed run measured, and the median over a cell's runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Median", "Run", "median_of", "run_from_latencies"]


@dataclass(frozen=True)
class Run:
    """One timed window: completed requests, failures and latency percentiles."""

    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    batch: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.batch

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "requests_per_s": self.requests_per_s,
            "rows_per_s": self.rows_per_s,
        }


@dataclass(frozen=True)
class Median:
    """Each metric's median over the runs of a cell (taken metric by metric)."""

    rows_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_from_latencies(latencies_us: np.ndarray, errors: int, duration_s: float, batch: int) -> Run:
    """Summarise the latencies (microseconds) of the requests completed in a window."""
    if latencies_us.size:
        p50, p99 = np.percentile(latencies_us, [50, 99])
    else:
        p50 = p99 = float("nan")
    return Run(
        requests=int(latencies_us.size),
        errors=errors,
        duration_s=duration_s,
        p50_ms=float(p50) / 1000.0,
        p99_ms=float(p99) / 1000.0,
        batch=batch,
    )


def median_of(runs: Sequence[Run]) -> Median:
    """The median of rows/s, p50 and p99 over ``runs``; errors are summed."""
    if not runs:
        raise ValueError("no runs to summarise")
    return Median(
        rows_per_s=statistics.median(r.rows_per_s for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
    )
