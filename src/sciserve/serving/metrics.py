"""Prometheus metrics of one server instance (never the global registry)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .batcher import BatchTiming

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class _ModelSeries:
    """One model version's labelled series, looked up once: ``labels()`` validates
    and locks on every call, which is measurable per request."""

    succeeded: Counter
    failed: Counter
    request_seconds: Histogram
    rows: Counter
    batch_size: Histogram
    compute_seconds: Histogram
    queue_seconds: Histogram


class ServerMetrics:
    """Request, latency and batch metrics, labelled by model and version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._by_model: dict[tuple[str, str], _ModelSeries] = {}
        labels = ("model", "version")
        self.requests = Counter(
            "sciserve_inference_requests",
            "Inference requests handled",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.rows = Counter(
            "sciserve_inference_rows",
            "Rows (batch elements) inferred",
            labels,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "sciserve_request_duration_seconds",
            "Time from arrival to answer in the core",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "sciserve_queue_duration_seconds",
            "Time requests wait for a batch",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "sciserve_compute_duration_seconds",
            "Time one batch takes to compute",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sciserve_batch_size",
            "Rows per executed batch",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "sciserve_inference_errors",
            "Inference requests that failed, by error type",
            (*labels, "error"),
            registry=self.registry,
        )
        #: The error classes seen, by the name their series carry.
        self._error_types: dict[str, type[BaseException]] = {}
        self.ready = Gauge(
            "sciserve_model_ready",
            "1 when the model version is ready",
            labels,
            registry=self.registry,
        )

    def _series(self, model: str, version: str) -> _ModelSeries:
        key = (model, version)
        series = self._by_model.get(key)
        if series is None:
            series = self._by_model[key] = _ModelSeries(
                succeeded=self.requests.labels(model, version, "success"),
                failed=self.requests.labels(model, version, "failure"),
                request_seconds=self.request_seconds.labels(model, version),
                rows=self.rows.labels(model, version),
                batch_size=self.batch_size.labels(model, version),
                compute_seconds=self.compute_seconds.labels(model, version),
                queue_seconds=self.queue_seconds.labels(model, version),
            )
        return series

    def observe_batch(self, model: str, version: str, timing: BatchTiming) -> None:
        series = self._series(model, version)
        series.batch_size.observe(timing.rows)
        series.rows.inc(timing.rows)
        compute = (
            timing.compute_input_ns + timing.compute_infer_ns + timing.compute_output_ns
        ) / 1e9
        series.compute_seconds.observe(compute)
        for ns in timing.queue_ns:
            series.queue_seconds.observe(ns / 1e9)

    def observe_request(self, model: str, version: str, ok: bool, seconds: float) -> None:
        series = self._series(model, version)
        if ok:
            series.succeeded.inc()
            series.request_seconds.observe(seconds)
        else:
            series.failed.inc()

    def latency_buckets(self, model: str) -> list[tuple[float, float]]:
        """The request-latency histogram of ``model`` (every version), cumulative:
        ``(upper bound in seconds, requests at most that long)``, the last bound ``inf``."""
        totals: dict[float, float] = {}
        for metric in self.request_seconds.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("model") == model:
                    bound = float(sample.labels["le"])
                    totals[bound] = totals.get(bound, 0.0) + sample.value
        return sorted(totals.items())

    def observe_error(self, model: str, version: str, error: type[BaseException]) -> None:
        """Count a failed request of ``model`` by the class of its error."""
        self._error_types.setdefault(error.__name__, error)
        self.errors.labels(model, version, error.__name__).inc()

    def error_counts(self, model: str) -> list[tuple[type[BaseException], float]]:
        """Failed requests of ``model`` (every version) per error class, most first."""
        totals: dict[str, float] = {}
        for metric in self.errors.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("model") == model:
                    name = sample.labels["error"]
                    totals[name] = totals.get(name, 0.0) + sample.value
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
        return [(self._error_types[name], count) for name, count in ranked]
