"""Names that would make a served name or a version selector mean two things.

* a model name with a dot in namespace ``default`` (its served name would
  also be that of ``namespace.name``);
* a version named ``latest`` / ``production`` or like an alias of the model,
  and an alias named like one of its versions (a server's
  ``/versions/{x}`` takes either).

Publishing and tagging refuse them; registries that hold them from older
releases (written by :mod:`helpers.legacy`) get them reported by
:meth:`Registry.check_names`, renamed by :meth:`Registry.rename_model`, and
an alias wins over a version of the same name in the registry and in a
server alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sciserve.config import ServingConfig
from sciserve.errors import Conflict, InvalidInput, ManifestError, NotFound
from sciserve.package.validate import check_package
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService
from sciserve.serving.types import InferenceRequest, InferInput

from helpers.legacy import insert_legacy_alias, insert_legacy_version
from helpers.packages import expected_linear

MakePackage = Callable[..., Path]


def test_served_names_are_one_to_one() -> None:
    from sciserve.package.reference import parse_served_name, served_name, served_name_problem

    pairs = [
        ("default", "m"),
        ("beta", "secret"),
        ("beta", "secret.v2"),
        ("beta", "m"),
        ("beta-2", "x.y.z"),
        ("default", "beta-secret"),
    ]
    served = [served_name(ns, name) for ns, name in pairs]
    assert len(set(served)) == len(pairs)
    assert [parse_served_name(s) for s in served] == pairs
    assert served_name_problem("default", "beta.secret") is not None
    assert all(served_name_problem(ns, name) is None for ns, name in pairs)
    # A served name no model can have names nothing.
    for nothing in ("Beta.secret", "beta.", ".x", "", "beta..x"):
        assert parse_served_name(nothing) is None, nothing


def test_a_dotted_name_in_default_is_refused(registry: Registry, onnx_package: MakePackage) -> None:
    package = onnx_package(name="beta.secret")
    problems = [p for p in check_package(package) if p.path == "name"]
    assert len(problems) == 1 and "--namespace beta" in problems[0].message
    with pytest.raises(InvalidInput, match=r"may not contain '\.'.*beta/secret|beta-secret"):
        registry.publish(package)
    with pytest.raises(NotFound):
        registry.resolve("default/beta.secret")
    # Elsewhere dots are fine: the namespace ends at the first dot of a served name.
    info = registry.publish(onnx_package(name="secret.v2", namespace="beta")).version
    assert (info.namespace, info.name) == ("beta", "secret.v2")


@pytest.mark.parametrize("version", ["production", "latest"])
def test_a_version_named_like_an_alias_every_model_has_is_refused(
    registry: Registry, onnx_package: MakePackage, version: str
) -> None:
    package = onnx_package(version=version)
    assert [p.path for p in check_package(package) if p.severity == "error"] == ["version"]
    with pytest.raises(InvalidInput, match="alias"):
        registry.publish(package)


def test_versions_and_aliases_never_share_a_name(
    registry: Registry, onnx_package: MakePackage
) -> None:
    registry.publish(onnx_package(version="1.0.0"))
    registry.publish(onnx_package(version="stable", scale=2.0))
    registry.tag("linear:1.0.0", "candidate")
    with pytest.raises(Conflict, match="version 'stable'"):
        registry.tag("linear:1.0.0", "stable")
    with pytest.raises(Conflict, match="alias 'candidate'"):
        registry.publish(onnx_package(version="candidate", scale=3.0))
    assert registry.resolve("linear@candidate").version == "1.0.0"
    assert registry.resolve("linear:stable").version == "stable"


async def test_an_alias_means_the_same_in_the_registry_and_the_server(
    sqlite_registry: Registry, onnx_package: MakePackage
) -> None:
    """An older registry whose version ``production`` is not what ``@production`` names."""
    reg = sqlite_registry
    reg.publish(onnx_package(version="1.0.0"))
    insert_legacy_version(reg.settings, onnx_package(version="production", scale=2.0))
    reg.publish(onnx_package(version="3.0.0", scale=3.0))
    reg.tag("linear:1.0.0", "production")  # always an alias, whatever versions exist
    insert_legacy_version(reg.settings, onnx_package(version="beta", scale=4.0))
    insert_legacy_alias(reg.settings, "default", "linear", "beta", "3.0.0")

    assert reg.resolve("linear").version == "1.0.0"
    assert reg.resolve("linear@production").version == "1.0.0"
    service = InferenceService(reg, ServingConfig(poll_interval=60))
    await service.start()
    try:
        x = np.ones((1, 4), np.float32)
        for selector, version, scale in (
            (None, "1.0.0", 1.0),
            ("production", "1.0.0", 1.0),
            ("beta", "3.0.0", 3.0),
            ("latest", "3.0.0", 3.0),
            ("1.0.0", "1.0.0", 1.0),
        ):
            # Twice: the second answer comes from the version now loaded.
            for _ in range(2):
                request = InferenceRequest(
                    "linear", selector, None, [InferInput("x", "FP32", x.shape, x)]
                )
                response = await service.infer(request)
                assert response.model_version == version, selector
                want = expected_linear(x, scale=scale)
                np.testing.assert_allclose(response.outputs[0].data, want)
    finally:
        await service.stop()
    assert reg.resolve_selector("default", "linear", "production").version == "1.0.0"
    assert reg.resolve_selector("default", "linear", "beta").version == "3.0.0"
    assert reg.resolve_selector("default", "linear", "latest").version == "3.0.0"
    with pytest.raises(NotFound, match="no version or alias"):
        reg.resolve_selector("default", "linear", "nope")
    reg.tag("linear:1.0.0", "beta")  # an alias that clashed already can still be moved
    reg.tag("linear:3.0.0", "beta")
    subjects = {issue.subject for issue in reg.check_names()}
    assert subjects == {"default/linear:production", "default/linear:beta"}


def test_check_names_reports_and_rename_fixes_a_legacy_name(
    registry: Registry, onnx_package: MakePackage
) -> None:
    registry.publish(onnx_package(name="secret", namespace="beta"))
    insert_legacy_version(registry.settings, onnx_package(name="beta.secret"))
    insert_legacy_version(registry.settings, onnx_package(name="beta.secret", version="2.0.0"))
    insert_legacy_version(registry.settings, onnx_package(name="x.y"))
    registry.tag("default/beta.secret:1.0.0", "stable")
    before = {v.version: v for v in registry.versions("default/beta.secret")}
    issues = {issue.subject: issue for issue in registry.check_names()}
    assert set(issues) == {"default/beta.secret", "default/x.y"}
    assert "beta/secret" in issues["default/beta.secret"].problem
    assert "sciserve models rename default/beta.secret" in issues["default/beta.secret"].hint

    with pytest.raises(InvalidInput, match="may not contain"):
        registry.rename_model("default", "beta.secret", "other.name")
    registry.publish(onnx_package(name="taken"))
    with pytest.raises(Conflict, match="already exists"):
        registry.rename_model("default", "beta.secret", "taken")
    with pytest.raises(NotFound):
        registry.rename_model("default", "nothing", "other")
    renamed = registry.rename_model("default", "beta.secret", "beta-secret", actor="local:ops")
    assert {v.version for v in renamed} == {"1.0.0", "2.0.0"}
    for v in renamed:
        assert (v.namespace, v.name) == ("default", "beta-secret")
        assert v.digest != before[v.version].digest
        assert v.manifest.files == before[v.version].manifest.files
    assert registry.resolve("beta-secret@stable").version == "1.0.0"
    with pytest.raises(NotFound):
        registry.resolve("default/beta.secret")
    assert all(r.ok for r in registry.verify("beta-secret:2.0.0"))
    event = registry.events(1)[0]
    assert (event["action"], event["subject"], event["actor"]) == (
        "model.rename",
        "default/beta.secret",
        "local:ops",
    )
    assert event["detail"]["to"] == "default/beta-secret"
    assert [i.subject for i in registry.check_names()] == ["default/x.y"]


def test_a_renamed_package_still_publishes_nowhere_else(
    registry: Registry, onnx_package: MakePackage
) -> None:
    """Re-publishing what an older release accepted is refused like a new publish."""
    package = onnx_package(name="alpha.x")
    insert_legacy_version(registry.settings, package)
    with pytest.raises((InvalidInput, ManifestError), match="may not contain"):
        registry.publish(package)
