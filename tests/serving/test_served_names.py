"""The manager on a registry with names an older release accepted (see ``helpers.legacy``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from sciserve.config import ServingConfig
from sciserve.errors import NotFound
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService

from helpers.legacy import insert_legacy_version

MakePackage = Callable[..., Path]


async def test_models_whose_names_are_ambiguous_are_reported_once_and_not_served(
    sqlite_registry: Registry, onnx_package: MakePackage, caplog: pytest.LogCaptureFixture
) -> None:
    reg = sqlite_registry
    reg.publish(onnx_package(name="secret", namespace="beta"))
    insert_legacy_version(reg.settings, onnx_package(name="beta.secret", version="2.0.0"))
    insert_legacy_version(reg.settings, onnx_package(name="alpha.x"))
    service = InferenceService(reg, ServingConfig(poll_interval=60))
    with caplog.at_level(logging.WARNING, logger="sciserve.serving"):
        await service.start()
        try:
            await service.manager.refresh()  # every poll: reported once, still not served
            manager = service.manager
            assert manager.served_names() == ["beta.secret"]
            assert manager.identify("beta.secret") == ("beta", "secret")
            assert manager.identify("alpha.x") is None
            assert await manager.locate("alpha.x") is None
            assert (await service.model_config("beta.secret"))["sciserve"]["ref"] == (
                "beta/secret:1.0.0"
            )
            for call in (service.model_config("alpha.x"), service.load_model("alpha.x")):
                with pytest.raises(NotFound, match=r"^unknown model 'alpha.x'$"):
                    await call
        finally:
            await service.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    for ref in ("default/beta.secret", "default/alpha.x"):
        (line,) = [w for w in warnings if w.startswith(f"not serving {ref}:")]
        assert f"sciserve models rename {ref} NEW" in line and "check-names" in line


async def test_a_model_not_served_yet_is_found_in_the_registry_by_its_served_name(
    sqlite_registry: Registry, onnx_package: MakePackage
) -> None:
    reg = sqlite_registry
    reg.publish(onnx_package(name="m.v2", namespace="alpha"))
    reg.publish(onnx_package(name="other"))
    service = InferenceService(reg, ServingConfig(poll_interval=60, models=("default/other",)))
    await service.start()
    try:
        assert service.manager.identify("alpha.m.v2") is None
        assert await service.manager.locate("alpha.m.v2") == ("alpha", "m.v2")
        await service.load_model("alpha.m.v2")
        assert service.manager.identify("alpha.m.v2") == ("alpha", "m.v2")
    finally:
        await service.stop()
