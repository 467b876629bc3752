"""``sciserve models check-names`` and ``sciserve models rename`` on a registry an
older release left with names publishing refuses today."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciserve.config import Settings
from sciserve.registry.registry import Registry

from helpers.cli import Cli
from helpers.legacy import insert_legacy_alias, insert_legacy_version
from helpers.packages import make_onnx_package


def _legacy_home(cli: Cli, work: Path) -> None:
    cli("publish", str(make_onnx_package(work / "beta", name="secret", namespace="beta")))
    for name, version in (("beta.secret", "1.0.0"), ("beta.secret", "2.0.0"), ("m", "1.0.0")):
        package = make_onnx_package(work / f"{name}-{version}", name=name, version=version)
        insert_legacy_version(cli.home, package)
    package = make_onnx_package(work / "m-production", name="m", version="production", scale=2)
    insert_legacy_version(cli.home, package)
    insert_legacy_alias(cli.home, "default", "m", "production", "1.0.0")


def test_check_names_lists_each_problem_with_its_fix(cli: Cli, tmp_path: Path) -> None:
    assert "every model and version name is fine" in cli("models", "check-names")
    _legacy_home(cli, tmp_path)
    issues = cli.json("models", "check-names", code=4)
    assert isinstance(issues, list)
    by_subject = {i["subject"]: i for i in issues}
    assert set(by_subject) == {"default/beta.secret", "default/m:production"}
    assert "beta/secret" in by_subject["default/beta.secret"]["problem"]
    assert by_subject["default/beta.secret"]["hint"].startswith(
        "sciserve models rename default/beta.secret beta-secret"
    )
    text = cli("models", "check-names", code=4)
    assert "default/beta.secret: not served" in text and "fix: sciserve models rename" in text


def test_rename_fixes_a_name_and_is_audited(cli: Cli, tmp_path: Path) -> None:
    _legacy_home(cli, tmp_path)
    cli("tag", "default/beta.secret:2.0.0", "stable")
    renamed = cli.json("models", "rename", "default/beta.secret", "beta-secret")
    assert isinstance(renamed, list)
    assert {(v["namespace"], v["name"], v["version"]) for v in renamed} == {
        ("default", "beta-secret", "1.0.0"),
        ("default", "beta-secret", "2.0.0"),
    }
    assert "stable" in next(v["aliases"] for v in renamed if v["version"] == "2.0.0")
    cli("pull", "beta-secret@stable", "--dest", str(tmp_path / "pulled"))
    assert "beta-secret" in (tmp_path / "pulled" / "sciserve.yaml").read_text()
    cli("models", "show", "default/beta.secret", code=3)
    remaining = cli.json("models", "check-names", code=4)
    assert isinstance(remaining, list)
    assert [i["subject"] for i in remaining] == ["default/m:production"]
    with Registry(Settings.load(cli.home, environ={})) as reg:
        event = reg.events(1)[0]
    assert event["action"] == "model.rename" and event["subject"] == "default/beta.secret"
    assert str(event["actor"]).startswith("local:")
    assert set(event["detail"]["digests"]) == {"1.0.0", "2.0.0"}


def test_rename_refuses_what_it_cannot_do(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _legacy_home(cli, tmp_path)
    assert "may not contain '.'" in cli("models", "rename", "default/beta.secret", "x.y", code=2)
    assert "already exists" in cli("models", "rename", "default/beta.secret", "m", code=4)
    assert "no model" in cli("models", "rename", "default/ghost", "ghost2", code=3)
    assert "NAMESPACE/NAME" in cli("models", "rename", "beta.secret:1.0.0", "b", code=2)
    assert "not a valid model name" in cli("models", "rename", "default/m", "m/2", code=2)
    monkeypatch.setenv("SCISERVE_URL", "http://127.0.0.1:9")
    assert "directly" in cli("models", "rename", "default/beta.secret", "b", code=2)
    assert "directly" in cli("models", "check-names", code=2)


def test_publish_and_validate_explain_the_rule(cli: Cli, tmp_path: Path) -> None:
    package = make_onnx_package(tmp_path / "dotted", name="beta.secret", version="production")
    out = cli("validate", str(package), code=2)
    assert "name: model names in namespace 'default' may not contain '.'" in out
    assert "--namespace beta" in out
    assert "version: 'production' is an alias" in out
    assert "--namespace beta" in cli("publish", str(package), code=2)
