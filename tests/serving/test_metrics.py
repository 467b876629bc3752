"""Per-server Prometheus metrics: the counts a scrape reads back."""

from __future__ import annotations

from sciserve.errors import InvalidInput, ModelNotReady
from sciserve.serving.batcher import BatchTiming
from sciserve.serving.metrics import ServerMetrics


def test_requests_and_batches_are_counted_per_model_version() -> None:
    metrics = ServerMetrics()
    for ok in (True, True, False):
        metrics.observe_request("m", "1", ok, 0.002)
    metrics.observe_request("m", "2", True, 0.004)
    timing = BatchTiming(
        rows=5, requests=2, queue_ns=[1000, 2000], compute_input_ns=0,
        compute_infer_ns=3000, compute_output_ns=0,
    )  # fmt: skip
    metrics.observe_batch("m", "1", timing)
    metrics.observe_batch("m", "1", timing)

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert (
        value("sciserve_inference_requests_total", model="m", version="1", outcome="success") == 2
    )
    assert (
        value("sciserve_inference_requests_total", model="m", version="1", outcome="failure") == 1
    )
    assert (
        value("sciserve_inference_requests_total", model="m", version="2", outcome="success") == 1
    )
    # A version that never failed still exports its failure series, at zero.
    assert (
        value("sciserve_inference_requests_total", model="m", version="2", outcome="failure") == 0
    )
    assert value("sciserve_request_duration_seconds_count", model="m", version="1") == 2
    assert value("sciserve_inference_rows_total", model="m", version="1") == 10
    assert value("sciserve_batch_size_sum", model="m", version="1") == 10
    assert value("sciserve_queue_duration_seconds_count", model="m", version="1") == 4
    assert value("sciserve_compute_duration_seconds_count", model="m", version="2") == 0


def test_two_servers_never_share_a_registry() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    first.observe_request("m", "1", True, 0.001)
    labels = {"model": "m", "version": "1", "outcome": "success"}
    assert first.registry.get_sample_value("sciserve_inference_requests_total", labels) == 1
    assert second.registry.get_sample_value("sciserve_inference_requests_total", labels) is None


def test_latency_buckets_and_errors_are_read_back_per_model() -> None:
    metrics = ServerMetrics()
    for seconds in (0.0002, 0.003, 0.003):
        metrics.observe_request("m", "1", True, seconds)
    metrics.observe_request("m", "2", True, 0.003)
    metrics.observe_request("other", "1", True, 7.0)
    buckets = dict(metrics.latency_buckets("m"))
    assert buckets[0.00025] == 1  # cumulative: at most 0.25 ms
    assert buckets[0.005] == 4  # both versions
    assert buckets[float("inf")] == 4  # not "other"'s slow request
    for error in (InvalidInput, InvalidInput, ModelNotReady):
        metrics.observe_error("m", "1", error)
    metrics.observe_error("m", "2", InvalidInput)
    assert metrics.error_counts("m") == [(InvalidInput, 3), (ModelNotReady, 1)]
    assert metrics.error_counts("other") == []
    sample = metrics.registry.get_sample_value(
        "sciserve_inference_errors_total", {"model": "m", "version": "1", "error": "InvalidInput"}
    )
    assert sample == 2
