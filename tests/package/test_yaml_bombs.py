"""YAML alias bombs and oversized manifests are refused before they cost anything.

A manifest of well under 1 KB whose anchors and aliases nest nine deep
expands to 9**9 (387 million) scalars: loading it whole would take minutes
and gigabytes, and its canonical form would be a database row of hundreds of
megabytes.  Manifests and pipeline specs refuse aliases while parsing, and
the registry refuses canonical manifests over ``limits.max_manifest_bytes``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sciserve import _yaml
from sciserve.config import Settings
from sciserve.errors import InvalidInput, ManifestError, NotFound
from sciserve.package.manifest import load_manifest, parse_manifest_text
from sciserve.package.validate import check_package
from sciserve.registry.registry import Registry
from sciserve.streams.spec import load_spec

from helpers.packages import make_onnx_package
from helpers.server import run_cli

#: Parsing and refusing must take well under this (s), on a loaded machine.
_QUICK = 2.0


def alias_bomb(depth: int = 9, width: int = 9) -> str:
    """``runtime_options`` lines that expand to ``width ** depth`` scalars."""
    lines = ["runtime_options:", f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, depth):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"  l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def bombed_package(root: Path, depth: int = 9) -> Path:
    make_onnx_package(root)
    manifest = root / "sciserve.yaml"
    manifest.write_text(manifest.read_text() + alias_bomb(depth))
    return root


@pytest.fixture(params=["libyaml", "pure Python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of parsing: with libyaml, and without it (PyYAML built without)."""
    if request.param == "pure Python":
        monkeypatch.setattr(_yaml, "_FAST", None)
    return str(request.param)


def test_the_bomb_is_small() -> None:
    assert len(alias_bomb().encode()) < 1024


def test_validate_refuses_an_alias_bomb_quickly(tmp_path: Path, parser: str) -> None:
    root = bombed_package(tmp_path / "pkg")
    started = time.monotonic()
    problems = check_package(root)
    assert time.monotonic() - started < _QUICK
    assert len(problems) == 1, problems
    assert "alias" in problems[0].message
    assert problems[0].severity == "error"
    # The problem says where the first anchor is, so a person can find it.
    assert problems[0].path.startswith("line ")


def test_any_alias_is_refused_even_a_harmless_one(parser: str) -> None:
    text = "name: &n linear\ndescription: *n\n"
    with pytest.raises(ManifestError, match="alias") as caught:
        parse_manifest_text(text)
    assert caught.value.problems[0].path == "line 1, column 7"


def test_both_parsers_read_a_manifest_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (make_onnx_package(tmp_path / "pkg") / "sciserve.yaml").read_text()
    fast = _yaml.load(text, what="a manifest")
    monkeypatch.setattr(_yaml, "_FAST", None)
    assert _yaml.load(text, what="a manifest") == fast


def test_publish_refuses_an_alias_bomb_quickly_and_stores_nothing(
    tmp_path: Path, settings: Settings
) -> None:
    root = bombed_package(tmp_path / "pkg")
    with Registry(settings) as reg:
        started = time.monotonic()
        with pytest.raises(ManifestError, match="alias"):
            reg.publish(root)
        assert time.monotonic() - started < _QUICK
        with pytest.raises(NotFound):
            reg.resolve("linear:1.0.0")


def test_cli_validate_exits_2_on_an_alias_bomb(tmp_path: Path) -> None:
    root = bombed_package(tmp_path / "pkg")
    done = run_cli(tmp_path / "home", "validate", str(root), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "alias" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_canonical_manifest_over_the_limit_is_not_stored(tmp_path: Path) -> None:
    # YAML writes '"' as one byte where the canonical JSON needs two, so the
    # file passes the file-size check and only the canonical form is too big.
    limit = 6000
    root = make_onnx_package(tmp_path / "pkg", extra={"description": '"' * 3000})
    assert (root / "sciserve.yaml").stat().st_size < limit
    assert len(load_manifest(root).canonical_bytes()) > limit
    settings = Settings.load(tmp_path / "home", environ={}, limits={"max_manifest_bytes": limit})
    with Registry(settings) as reg:
        with pytest.raises(ManifestError, match="canonical manifest is"):
            reg.publish(root)
        with pytest.raises(NotFound):
            reg.resolve("linear:1.0.0")


def test_pipeline_specs_refuse_aliases_quickly(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: bomb\n" + alias_bomb().replace("runtime_options", "extra"))
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="alias"):
        load_spec(spec)
    assert time.monotonic() - started < _QUICK
