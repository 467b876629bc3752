"""The monitor on the core request path, in-process, on a real registry and ONNX model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sciserve.config import MonitoringConfig, ServingConfig
from sciserve.errors import InvalidInput, Unavailable
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService
from sciserve.serving.types import InferenceRequest, InferInput


def _request(x: np.ndarray) -> InferenceRequest:
    return InferenceRequest(
        model_name="linear",
        model_version=None,
        id=None,
        inputs=[InferInput("x", "FP32", x.shape, x)],
    )


async def test_requests_feed_the_monitor_and_traffic_becomes_a_reference(
    sqlite_registry: Registry, onnx_package: Callable[..., Path]
) -> None:
    sqlite_registry.publish(onnx_package())
    service = InferenceService(
        sqlite_registry, ServingConfig(poll_interval=0.2), monitoring=MonitoringConfig(enabled=True)
    )
    await service.start()
    try:
        assert service.monitor is not None
        with pytest.raises(InvalidInput, match="no traffic"):
            await service.freeze_reference("linear")
        rng = np.random.default_rng(0)
        for _ in range(50):
            await service.infer(_request(rng.normal(size=(4, 4)).astype(np.float32)))
        assert await asyncio.to_thread(service.monitor.flush)
        status = await service.monitoring_status()
        [model] = status["models"]
        assert model["model"] == "linear" and model["state"] == "no_reference"
        frozen = await service.freeze_reference("linear")
        assert frozen == {"model": "linear", "version": "1.0.0", "source": "traffic", "rows": 200}
        [model] = (await service.monitoring_status())["models"]
        assert model["state"] == "warming_up"
        assert model["reference"]["rows"] == 200
    finally:
        await service.stop()


async def test_without_monitoring_the_routes_say_so(
    sqlite_registry: Registry, onnx_package: Callable[..., Path]
) -> None:
    sqlite_registry.publish(onnx_package())
    off = MonitoringConfig(enabled=False)
    service = InferenceService(sqlite_registry, ServingConfig(), monitoring=off)
    await service.start()
    try:
        assert service.monitor is None
        await service.infer(_request(np.zeros((1, 4), np.float32)))
        assert await service.monitoring_status() == {"enabled": False, "models": []}
        with pytest.raises(Unavailable):
            await service.freeze_reference("linear")
    finally:
        await service.stop()


async def test_on_an_event_loop_the_loop_folds_half_the_queue_at_once() -> None:
    from prometheus_client import CollectorRegistry

    from sciserve.monitoring import Monitor

    from helpers.traffic import Traffic, version_info

    registry = CollectorRegistry()
    labels = {"model": "clf", "version": "1.0.0"}
    # An hour between folds: only the half-full queue (32 requests) folds these.
    monitor = Monitor(MonitoringConfig(queue_size=64), registry, fold_interval=3600)
    monitor.start_on(asyncio.get_running_loop())
    try:
        info = version_info("sha256:" + "a" * 64)
        requests = Traffic(seed=13).requests(40)
        for inputs, outputs in requests[:31]:
            monitor.observe("clf", info, inputs, outputs)
        for _ in range(3):
            await asyncio.sleep(0)
        assert registry.get_sample_value("sciserve_monitor_rows_total", labels) is None
        monitor.observe("clf", info, *requests[31])
        for _ in range(3):  # the fold is the loop's next callback
            await asyncio.sleep(0)
        assert registry.get_sample_value("sciserve_monitor_rows_total", labels) == 32
        for inputs, outputs in requests[32:]:
            monitor.observe("clf", info, inputs, outputs)
        assert await asyncio.to_thread(monitor.flush)  # from off the loop, as the service does
        [status] = monitor.status()
        assert status["rows_seen"] == 40
    finally:
        await asyncio.to_thread(monitor.stop)


async def test_a_reference_frozen_right_after_traffic_holds_all_of_it(
    sqlite_registry: Registry, onnx_package: Callable[..., Path]
) -> None:
    """The monitor folds queued requests at intervals: freezing folds them first,
    so every request answered before the freeze is in the reference."""
    sqlite_registry.publish(onnx_package())
    service = InferenceService(
        sqlite_registry, ServingConfig(poll_interval=0.2), monitoring=MonitoringConfig(enabled=True)
    )
    assert service.monitor is not None
    service.monitor.fold_interval = 3600.0  # no fold on its own during the test
    await service.start()
    try:
        rng = np.random.default_rng(1)
        for _ in range(30):
            await service.infer(_request(rng.normal(size=(2, 4)).astype(np.float32)))
        frozen = await service.freeze_reference("linear")
        assert frozen["rows"] == 60
    finally:
        await service.stop()
