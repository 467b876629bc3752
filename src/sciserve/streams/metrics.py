"""Watching running pipelines: Prometheus metrics and status files.

Each pipeline worker keeps its own :class:`PipelineMetrics` (its own
Prometheus registry, never the global one), which it may serve on
``127.0.0.1:<metrics-port>``, and rewrites a *status file*
``<home>/streams/<name>.<pid>.json`` about once a second.  The status files
are what ``sciserve stream status`` reads and how ``sciserve stream stop``
finds the workers of a pipeline on this host.

A worker killed with ``kill -9`` leaves its last status file behind;
:func:`read_statuses` reports it as *stale* once its process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "RECENT_DEAD_LETTERS",
    "STATUS_DIR",
    "PipelineMetrics",
    "State",
    "WorkerStatus",
    "process_identity",
    "read_statuses",
    "serve_metrics",
    "signal_workers",
    "status_path",
    "write_status",
]

#: Directory under the data directory that holds the status files.
STATUS_DIR = "streams"

State = Literal["starting", "running", "draining", "stopped", "failed"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: Latencies kept for the quantiles in the status file: enough for a stable
#: p99, bounded so a long run does not grow.
_RECENT = 8192
#: Newest dead letters a status file shows (stage, cause, reason), and the
#: longest reason kept: the dead-letter sink has the whole record.
RECENT_DEAD_LETTERS = 10
_MAX_REASON = 500


class PipelineMetrics:
    """Counters, gauges and histograms of one pipeline worker.

    The Prometheus objects live in :attr:`registry`; :attr:`totals` mirrors
    the counters as plain integers for the status file.  The latency
    quantiles of :meth:`snapshot` are over the last ``keep_latencies`` alerts.
    """

    def __init__(self, pipeline: str, *, keep_latencies: int = _RECENT) -> None:
        self.pipeline = pipeline
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("pipeline",)
        self._consumed = Counter(
            "sciserve_stream_alerts_consumed",
            "Messages fetched from the source",
            labels,
            registry=self.registry,
        )
        self._annotated = Counter(
            "sciserve_stream_alerts_annotated",
            "Alerts annotated by every model and committed",
            labels,
            registry=self.registry,
        )
        self._published = Counter(
            "sciserve_stream_annotations_published",
            "Annotations that passed the filter and went to the topic sinks",
            labels,
            registry=self.registry,
        )
        self._stored = Counter(
            "sciserve_stream_annotations_stored",
            "Annotations written to the result store, by outcome: new; duplicate (already "
            "stored, a re-delivery); conflicting (another alert with an alert id already "
            "annotated, not stored)",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self._dead = Counter(
            "sciserve_stream_alerts_dead_lettered",
            "Messages sent to the dead-letter sink, by the stage that failed",
            (*labels, "stage"),
            registry=self.registry,
        )
        self._lag = Gauge(
            "sciserve_stream_consumer_lag",
            "Messages in the source not yet committed by this consumer",
            labels,
            registry=self.registry,
        )
        self._latency = Histogram(
            "sciserve_stream_end_to_end_seconds",
            "From the broker timestamp of an alert to its annotation being committed",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batch = Histogram(
            "sciserve_stream_batch_size",
            "Messages per processed batch",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._stage = Histogram(
            "sciserve_stream_stage_seconds",
            "Time one batch spends in each stage",
            (*labels, "stage"),
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        # Children made now, so every series is exported (at zero) from the
        # start rather than appearing with its first event.
        series: tuple[Counter | Gauge | Histogram, ...] = (
            self._consumed,
            self._annotated,
            self._published,
            self._lag,
            self._latency,
            self._batch,
        )
        for metric in series:
            metric.labels(pipeline)
        for stage in ("decode", "features", "model"):
            self._dead.labels(pipeline, stage)
        for outcome in ("new", "duplicate", "conflicting"):
            self._stored.labels(pipeline, outcome)
        self.totals: dict[str, int] = {
            "consumed": 0,
            "annotated": 0,
            "published": 0,
            "stored": 0,
            "already_stored": 0,
            "conflicting": 0,
            "dead_lettered": 0,
            "batches": 0,
        }
        self.stage_seconds: dict[str, float] = {}
        self.dead_by_stage: dict[str, int] = {}
        self._recent_dead: deque[dict[str, Any]] = deque(maxlen=RECENT_DEAD_LETTERS)
        self.lag: int | None = None
        self._recent: deque[float] = deque(maxlen=keep_latencies)
        # The status writer reads while the pipeline loop writes.
        self._lock = threading.Lock()

    def consumed(self, n: int) -> None:
        self._consumed.labels(self.pipeline).inc(n)
        self._batch.labels(self.pipeline).observe(n)
        with self._lock:
            self.totals["consumed"] += n
            self.totals["batches"] += 1

    def annotated(self, n: int) -> None:
        self._annotated.labels(self.pipeline).inc(n)
        with self._lock:
            self.totals["annotated"] += n

    def published(self, n: int) -> None:
        self._published.labels(self.pipeline).inc(n)
        with self._lock:
            self.totals["published"] += n

    def stored(self, new: int, duplicate: int = 0, conflicting: int = 0) -> None:
        """Count annotations the result store took (``new``), already held
        (``duplicate``), or held for another alert of the same id (``conflicting``)."""
        for outcome, n in (("new", new), ("duplicate", duplicate), ("conflicting", conflicting)):
            if n:
                self._stored.labels(self.pipeline, outcome).inc(n)
        with self._lock:
            self.totals["stored"] += new
            self.totals["already_stored"] += duplicate
            self.totals["conflicting"] += conflicting

    def dead_lettered(
        self,
        stage: str,
        n: int = 1,
        *,
        error: str | None = None,
        reason: str | None = None,
        alert_id: int | None = None,
    ) -> None:
        """Count ``n`` dead letters of ``stage``; with an ``error`` (the short
        cause), remember it among the newest, with its ``reason``."""
        self._dead.labels(self.pipeline, stage).inc(n)
        with self._lock:
            self.totals["dead_lettered"] += n
            self.dead_by_stage[stage] = self.dead_by_stage.get(stage, 0) + n
            if error is not None:
                self._recent_dead.append(
                    {
                        "at": datetime.now(UTC).isoformat(),
                        "stage": stage,
                        "error": error,
                        "reason": (reason or "")[:_MAX_REASON],
                        "alert_id": alert_id,
                    }
                )

    def set_lag(self, lag: int | None) -> None:
        if lag is not None:
            self._lag.labels(self.pipeline).set(lag)
        with self._lock:
            self.lag = lag

    def stage(self, name: str, seconds: float) -> None:
        """Record that one batch spent ``seconds`` in stage ``name``."""
        self._stage.labels(self.pipeline, name).observe(seconds)
        with self._lock:
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + seconds

    def latency(self, seconds: float) -> None:
        """Record the end-to-end latency of one alert."""
        self._latency.labels(self.pipeline).observe(seconds)
        with self._lock:
            self._recent.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        """Counters, lag, stage times and recent latency quantiles as plain data."""
        with self._lock:
            recent = sorted(self._recent)
            data: dict[str, Any] = {
                **self.totals,
                "lag": self.lag,
                "stage_seconds": {k: round(v, 6) for k, v in self.stage_seconds.items()},
                "dead_letters_by_stage": dict(self.dead_by_stage),
                # Newest first, as the dashboard's streams page lists them.
                "recent_dead_letters": list(reversed(self._recent_dead)),
            }
        data["latency_p50"] = _quantile(recent, 0.50)
        data["latency_p99"] = _quantile(recent, 0.99)
        return data


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    return round(ordered[index], 6)


def serve_metrics(registry: CollectorRegistry, port: int) -> WSGIServer:
    """Serve ``registry`` at ``http://127.0.0.1:<port>/metrics`` from a thread.

    Call ``shutdown()`` and ``server_close()`` on the result to stop it.
    """
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server


# -- status files ------------------------------------------------------------


@dataclass(frozen=True)
class WorkerStatus:
    """What one worker last wrote about itself."""

    path: Path
    name: str
    pid: int
    host: str
    state: str
    data: dict[str, Any]
    #: The worker is gone without having stopped cleanly (e.g. ``kill -9``).
    stale: bool

    @property
    def live(self) -> bool:
        """Running (or draining) on this host right now."""
        return not self.stale and self.state not in ("stopped", "failed")


def status_path(home: Path, name: str, pid: int) -> Path:
    """``<home>/streams/<name>.<pid>.json``."""
    return home / STATUS_DIR / f"{name}.{pid}.json"


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Replace the status file at ``path`` atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(temporary, path)


def process_identity() -> dict[str, Any]:
    """How a status file names its writer: pid, host and process start time."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}


def read_statuses(home: Path, name: str | None = None) -> list[WorkerStatus]:
    """The status files under ``home`` (of pipeline ``name``), by name and pid."""
    directory = home / STATUS_DIR
    found: list[WorkerStatus] = []
    if not directory.is_dir():
        return found
    host = socket.gethostname()
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # removed or replaced under us; the next call sees it
        if not isinstance(data, dict) or (name is not None and data.get("name") != name):
            continue
        pid = data.get("pid")
        if not isinstance(pid, int) or not isinstance(data.get("name"), str):
            continue
        state = str(data.get("state", "unknown"))
        gone = data.get("host") == host and not _alive(pid, data.get("started"))
        found.append(
            WorkerStatus(
                path=path,
                name=data["name"],
                pid=pid,
                host=str(data.get("host", "")),
                state=state,
                data=data,
                stale=gone and state not in ("stopped", "failed"),
            )
        )
    return sorted(found, key=lambda s: (s.name, s.pid))


def signal_workers(home: Path, name: str, signum: int = signal.SIGTERM) -> list[WorkerStatus]:
    """Send ``signum`` to the live workers of pipeline ``name`` on this host.

    Returns the workers signalled.  Workers on other hosts are left alone:
    their status files are visible on a shared home, their processes are not.
    """
    host = socket.gethostname()
    signalled = []
    for status in read_statuses(home, name):
        if status.live and status.host == host:
            with contextlib.suppress(ProcessLookupError):
                os.kill(status.pid, signum)
                signalled.append(status)
    return signalled


def _alive(pid: int, started: Any) -> bool:
    """Whether ``pid`` is still the process that wrote the status file.

    The start time guards against a recycled pid: without it ``stream stop``
    could signal an unrelated process after a worker was killed.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _start_time(pid)
    return started is None or now is None or now == started


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), where known."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the
    # fields after its closing parenthesis are plain numbers.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None
