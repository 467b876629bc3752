"""What one timed run measured, and the median over a cell's runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .cpu import CpuUse

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
    #: CPU of the server's process tree and of the load generator during the run.
    cpu: CpuUse | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.batch

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["cpu"] = self.cpu.to_dict() if self.cpu is not None else None
        return {
            **fields,
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
    #: Cores' worth of CPU (CPU s / wall s) of the server's tree, of the load
    #: generator, and of both; ``None`` when the runs were not metered.
    server_cores: float | None = None
    client_cores: float | None = None
    cores_used: float | None = None
    #: Of ``server_cores``, the server's main process alone.
    main_cores: float | None = None

    @property
    def server_cpu_percent(self) -> float | None:
        """The server's CPU as ``top`` shows it: 100 % is one core."""
        return None if self.server_cores is None else 100.0 * self.server_cores

    @property
    def client_cpu_percent(self) -> float | None:
        return None if self.client_cores is None else 100.0 * self.client_cores

    @property
    def main_cpu_percent(self) -> float | None:
        return None if self.main_cores is None else 100.0 * self.main_cores

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "server_cpu_percent": self.server_cpu_percent,
            "client_cpu_percent": self.client_cpu_percent,
            "main_cpu_percent": self.main_cpu_percent,
        }


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
    """The median of rows/s, p50, p99 and CPU over ``runs``; errors are summed."""
    if not runs:
        raise ValueError("no runs to summarise")
    metered = [r.cpu for r in runs if r.cpu is not None]
    # Only runs that all carry a CPU reading have a CPU median.
    cpu = metered if len(metered) == len(runs) else []
    return Median(
        rows_per_s=statistics.median(r.rows_per_s for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
        server_cores=statistics.median(c.server_cores for c in cpu) if cpu else None,
        client_cores=statistics.median(c.client_cores for c in cpu) if cpu else None,
        cores_used=statistics.median(c.cores_used for c in cpu) if cpu else None,
        main_cores=_median_or_none([c.main_cores for c in cpu]),
    )


def _median_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known and len(known) == len(values) else None
