"""Alerts reach a real HTTP receiver on 127.0.0.1, retried when it fails."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from sciserve.access._db import engine_of
from sciserve.config import MonitoringConfig
from sciserve.monitoring import Layout, Monitor, Reference, ReferenceStore, WebhookNotifier
from sciserve.registry.registry import Registry

from helpers.traffic import Traffic, classifier_manifest, version_info

TOKEN = "s3cret-webhook-token"
PATH_SECRET = "T0001-B0001-path-secret"


@dataclass
class Receiver:
    """Answers ``statuses`` in turn (then 200) and records every POST."""

    statuses: list[int]
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{len(self.received)} of {count} requests arrived"
                self.arrived.wait(remaining)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(statuses=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            with state.arrived:
                state.received.append((dict(self.headers), body))
                state.arrived.notify_all()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/{PATH_SECRET}?key={TOKEN}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _notifier(url: str, **kwargs: Any) -> WebhookNotifier:
    return WebhookNotifier(url, token=SecretStr(TOKEN), backoff=0.05, **kwargs)


def test_a_failing_receiver_is_retried_until_it_accepts(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [503, 500]
    notifier = _notifier(receiver.url, attempts=5)
    notifier.start()
    try:
        with caplog.at_level(logging.WARNING):
            assert notifier.notify({"kind": "drift", "model": "clf"})
            receiver.wait_for(3)
            deadline = time.monotonic() + 10
            while notifier.delivered == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        notifier.stop()
    assert notifier.delivered == 1 and notifier.failed == 0
    headers, body = receiver.received[2]
    assert json.loads(body) == {"kind": "drift", "model": "clf"}
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/json"
    # Two failures were logged, and neither the token nor the query was.
    assert "answered 503" in caplog.text and "answered 500" in caplog.text
    assert TOKEN not in caplog.text and PATH_SECRET not in caplog.text


def test_a_refusal_is_final_and_attempts_are_bounded(receiver: Receiver) -> None:
    receiver.statuses = [400, 503, 503, 503]
    notifier = _notifier(receiver.url, attempts=3)
    notifier.start()
    try:
        notifier.notify({"n": 1})  # 400: given up at once
        notifier.notify({"n": 2})  # 503 three times: given up after the third
        deadline = time.monotonic() + 10
        while notifier.failed < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        notifier.stop()
    assert notifier.failed == 2 and notifier.delivered == 0
    assert len(receiver.received) == 4


def test_an_unreachable_webhook_is_retried_then_dropped() -> None:
    notifier = _notifier("http://127.0.0.1:9/hook", attempts=3, timeout=1.0)
    notifier.start()
    try:
        notifier.notify({"n": 1})
        deadline = time.monotonic() + 10
        while notifier.failed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        notifier.stop()
    assert notifier.failed == 1


def test_notify_never_blocks_and_a_full_queue_drops_with_a_count() -> None:
    notifier = _notifier("http://127.0.0.1:9/hook", queue_size=2)  # never started
    started = time.perf_counter()
    results = [notifier.notify({"n": i}) for i in range(5)]
    assert time.perf_counter() - started < 0.5
    assert results == [True, True, False, False, False]
    assert notifier.dropped == 3


def test_shifted_traffic_through_the_monitor_reaches_the_webhook(
    receiver: Receiver, sqlite_registry: Registry
) -> None:
    receiver.statuses = [503]
    manifest = classifier_manifest()
    digest = "sha256:" + "c" * 64
    info = version_info(digest)
    store = ReferenceStore(engine_of(sqlite_registry))
    store.save(
        "clf",
        "1.0.0",
        digest,
        Reference.from_arrays(Layout(manifest), *Traffic(seed=1).batch(20_000)),
    )
    config = MonitoringConfig(
        webhook_url=receiver.url,
        webhook_token=SecretStr(TOKEN),
        webhook_backoff=0.05,
        dashboard_url="https://dash.example/",
        max_rows_per_second=0,  # every row, however slow the machine (see the budget test)
    )
    registry = CollectorRegistry()
    monitor = Monitor(config, registry, references=store)
    monitor.start()
    try:
        for inputs, outputs in Traffic(seed=2, shift=1.0).requests(8000):
            monitor.observe("clf", info, inputs, outputs)
            if len(receiver.received) >= 1:
                break
        assert monitor.flush()
        receiver.wait_for(2)
    finally:
        monitor.stop()
    alert = json.loads(receiver.received[1][1])
    assert alert["kind"] == "drift" and alert["state"] == "alerting"
    assert (alert["model"], alert["version"]) == ("clf", "1.0.0")
    assert alert["url"] == "https://dash.example/models/clf"
    assert alert["started_at"] is not None
    assert {b["name"] for b in alert["breaches"]} == {"mag"}
    assert alert["thresholds"]["ks"] == 0.1
    assert alert["window"]["window"] == 5000 and alert["window"]["rows_judged"] >= 2000
    assert set(alert["scores"]) == {"psi", "ks", "class_shift", "mean_shift"}
    assert (
        registry.get_sample_value("sciserve_monitor_alert", {"model": "clf", "version": "1.0.0"})
        == 1
    )
    assert (
        registry.get_sample_value("sciserve_monitor_webhook_alerts_total", {"outcome": "delivered"})
        == 1
    )
    [status] = monitor.status()
    assert status["state"] == "alerting" and status["reference"]["source"] == "dataset"


async def test_a_full_monitor_queue_drops_samples_and_counts_them() -> None:
    registry = CollectorRegistry()
    monitor = Monitor(MonitoringConfig(queue_size=3), registry)
    monitor.start_on(asyncio.get_running_loop())
    try:
        # The loop that folds is busy (this test does not yield to it): the
        # queue fills and what comes after is dropped, never waited for.
        for inputs, outputs in Traffic(seed=3).requests(10):
            monitor.observe("clf", version_info("sha256:" + "d" * 64), inputs, outputs)
    finally:
        monitor.stop()
    assert monitor.dropped == 7
    assert (
        registry.get_sample_value(
            "sciserve_monitor_dropped_samples_total", {"model": "clf", "version": "1.0.0"}
        )
        == 7
    )


def test_the_value_budget_drops_huge_requests() -> None:
    registry = CollectorRegistry()
    monitor = Monitor(MonitoringConfig(max_pending_values=1000), registry)
    inputs, outputs = Traffic(seed=4).batch(10_000)
    monitor.observe("clf", version_info("sha256:" + "e" * 64), inputs, outputs)
    assert monitor.dropped == 1


def test_sampling_hands_over_about_the_rate() -> None:
    registry = CollectorRegistry()
    # No row budget, which would lower the share further on a slow machine.
    monitor = Monitor(MonitoringConfig(sample_rate=0.1, max_rows_per_second=0), registry)
    monitor.start()
    try:
        for inputs, outputs in Traffic(seed=5).requests(5000):
            monitor.observe("clf", version_info("sha256:" + "f" * 64), inputs, outputs)
        assert monitor.flush()
    finally:
        monitor.stop()
    rows = registry.get_sample_value(
        "sciserve_monitor_rows_total", {"model": "clf", "version": "1.0.0"}
    )
    assert rows is not None and 350 < rows < 650
    assert monitor.dropped == 0


def test_versions_seen_least_recently_are_forgotten_beyond_the_cap() -> None:
    registry = CollectorRegistry()
    monitor = Monitor(MonitoringConfig(), registry, max_versions=2)
    monitor.start()
    try:
        for n in range(3):
            info = version_info(f"sha256:{n}" + "0" * 63)
            served = f"m{n}"
            for inputs, outputs in Traffic(seed=n).requests(500):
                monitor.observe(served, info, inputs, outputs)
            assert monitor.flush()
    finally:
        monitor.stop()
    assert [s["model"] for s in monitor.status()] == ["m1", "m2"]
    assert (
        registry.get_sample_value("sciserve_monitor_alert", {"model": "m0", "version": "1.0.0"})
        is None
    )
    assert (
        registry.get_sample_value("sciserve_monitor_alert", {"model": "m2", "version": "1.0.0"})
        == 0
    )


def test_with_no_loop_half_the_queue_is_folded_by_the_caller() -> None:
    registry = CollectorRegistry()
    monitor = Monitor(MonitoringConfig(queue_size=64), registry)
    labels = {"model": "clf", "version": "1.0.0"}
    info = version_info("sha256:" + "f" * 64)
    requests = Traffic(seed=13).requests(40)
    for inputs, outputs in requests[:31]:
        monitor.observe("clf", info, inputs, outputs)
    assert registry.get_sample_value("sciserve_monitor_rows_total", labels) is None
    monitor.observe("clf", info, *requests[31])
    assert registry.get_sample_value("sciserve_monitor_rows_total", labels) == 32
    for inputs, outputs in requests[32:]:
        monitor.observe("clf", info, inputs, outputs)
    assert monitor.flush()
    assert registry.get_sample_value("sciserve_monitor_rows_total", labels) == 40


def test_above_its_row_budget_the_monitor_takes_a_fair_share() -> None:
    """Past ``max_rows_per_second`` a random share of requests is taken,
    re-estimated at every fold from what was offered; when the traffic
    falls, every request is taken again."""
    now = [0.0]
    registry = CollectorRegistry()
    config = MonitoringConfig(max_rows_per_second=1000, queue_size=100_000)
    monitor = Monitor(config, registry, clock=lambda: now[0])
    labels = {"model": "clf", "version": "1.0.0"}
    info = version_info("sha256:" + "a" * 64)

    def offer(count: int, seed: int) -> float:
        before = registry.get_sample_value("sciserve_monitor_rows_total", labels) or 0
        for inputs, outputs in Traffic(seed=seed).requests(count):
            monitor.observe("clf", info, inputs, outputs)
        assert monitor.flush()
        return (registry.get_sample_value("sciserve_monitor_rows_total", labels) or 0) - before

    assert offer(5000, 20) == 5000  # no estimate yet: all of the first second
    now[0] = 1.0
    monitor.flush()  # a fold: 5,000 rows/s offered, 1,000 wanted
    taken = offer(5000, 21)
    assert 850 < taken < 1150  # binomial(5000, 0.2): 1,000 +- 28
    now[0] = 2.0
    monitor.flush()
    now[0] = 3.0
    taken = offer(500, 22)
    assert 50 < taken < 170  # still a fifth: the estimate is of the last second
    monitor.flush()  # 500 rows/s offered: under the budget
    assert offer(300, 23) == 300
    assert monitor.dropped == 0
