"""A server serves models only: a dataset in its registry is neither served nor servable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from sciserve.config import ServingConfig
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService

from helpers.datasets import make_dataset


async def test_a_dataset_is_not_served(
    sqlite_registry: Registry, onnx_package: Callable[..., Path], tmp_path: Path
) -> None:
    sqlite_registry.publish(onnx_package(name="linear"))
    sqlite_registry.publish(make_dataset(tmp_path / "ds", name="stars"))
    service = InferenceService(sqlite_registry, ServingConfig())
    await service.start()
    try:
        assert service.manager.served_names() == ["linear"]
    finally:
        await service.stop()


async def test_asking_to_serve_a_dataset_says_what_it_is(
    sqlite_registry: Registry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqlite_registry.publish(make_dataset(tmp_path / "ds", name="stars"))
    service = InferenceService(sqlite_registry, ServingConfig(models=("stars",)))
    with caplog.at_level(logging.ERROR, logger="sciserve.serving.manager"):
        await service.start()
    try:
        assert service.manager.served_names() == []
        assert "cannot serve stars: default/stars is a dataset, not a model" in caplog.text
    finally:
        await service.stop()
