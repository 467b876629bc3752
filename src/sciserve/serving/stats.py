"""Per model-version statistics in the shape of Triton's statistics extension."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from .batcher import BatchTiming

__all__ = ["ModelStats"]

_PHASES = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


class _Counter:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """Counters one model version accumulates while it serves."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.inference_count = 0  # rows
        self.execution_count = 0  # batches run
        self.last_inference_ms = 0
        self._phases = {p: _Counter() for p in _PHASES}
        self._batches: dict[int, dict[str, _Counter]] = defaultdict(
            lambda: {p: _Counter() for p in ("compute_input", "compute_infer", "compute_output")}
        )

    def observe_batch(self, timing: BatchTiming) -> None:
        self.execution_count += 1
        self.inference_count += timing.rows
        self.last_inference_ms = int(time.time() * 1000)
        for ns in timing.queue_ns:
            self._phases["queue"].add(ns)
        n = timing.requests
        # Every request in a batch is charged the batch's compute time, as Triton does.
        self._phases["compute_input"].add(timing.compute_input_ns * n, n)
        self._phases["compute_infer"].add(timing.compute_infer_ns * n, n)
        self._phases["compute_output"].add(timing.compute_output_ns * n, n)
        batch = self._batches[timing.rows]
        batch["compute_input"].add(timing.compute_input_ns)
        batch["compute_infer"].add(timing.compute_infer_ns)
        batch["compute_output"].add(timing.compute_output_ns)

    def observe_request(self, ok: bool, ns: int) -> None:
        self._phases["success" if ok else "fail"].add(ns)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {p: c.as_dict() for p, c in self._phases.items()},
            "batch_stats": [
                {"batch_size": size, **{k: c.as_dict() for k, c in counters.items()}}
                for size, counters in sorted(self._batches.items())
            ],
        }
