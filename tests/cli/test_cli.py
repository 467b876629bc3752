"""The command line, run in-process through ``sciserve.cli.main`` and as a subprocess."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import Cli
from helpers.packages import linear_onnx

MakePackage = Callable[..., Path]


def test_init_validate_publish_list_card_tag_pull(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "work"
    src.mkdir()
    linear_onnx(src / "model.onnx", np.ones((4, 3), np.float32), np.zeros(3, np.float32))
    (src / "CITATION.cff").write_text(
        "cff-version: 1.2.0\ntitle: Linear\nmessage: cite it\nauthors:\n  - name: A\n"
    )
    out = cli.json(
        "init",
        str(src / "model.onnx"),
        "--name",
        "lin",
        "--version",
        "1.0.0",
        "--out",
        str(tmp_path / "pkg"),
    )
    assert isinstance(out, dict)
    # No licence yet: init says what to fix, validate fails with the field path.
    assert any(p["path"] == "license" for p in out["problems"])
    assert "license: a licence is required" in cli("validate", str(tmp_path / "pkg"), code=2)
    cli(
        "init",
        str(src / "model.onnx"),
        "--name",
        "lin",
        "--version",
        "1.0.0",
        "--out",
        str(tmp_path / "pkg"),
        "--update",  # the manifest exists: refresh it, adding what is given
        "--license",
        "MIT",
        "--description",
        "linear",
        "--author",
        "Ada Lovelace,0000-0002-1825-0097,Analytical Engines",
    )
    manifest = (tmp_path / "pkg" / "sciserve.yaml").read_text()
    assert "name: x" in manifest and "CITATION.cff" in manifest  # ONNX signature read
    assert "ready to publish" in cli("validate", str(tmp_path / "pkg"))
    published = cli.json("publish", str(tmp_path / "pkg"))
    assert isinstance(published, dict) and published["created"] is True
    assert cli.json("publish", str(tmp_path / "pkg"))["created"] is False  # type: ignore[index]
    listing = cli.json("models", "list")
    assert [m["ref"] for m in listing] == ["default/lin:1.0.0"]  # type: ignore[union-attr]
    card = cli("models", "card", "lin", "--format", "raw")
    assert "Ada Lovelace" in card and "https://orcid.org/0000-0002-1825-0097" in card
    jsonld = json.loads(cli("models", "card", "lin", "--format", "jsonld"))
    assert "@context" in jsonld
    assert cli.json("tag", "lin:1.0.0", "production")["aliases"] == [  # type: ignore[index]
        "latest",
        "production",
    ]
    pulled = cli.json("pull", "lin@production", "--dest", str(tmp_path / "pulled"))
    assert Path(pulled["path"]).joinpath("model.onnx").is_file()  # type: ignore[index]
    assert "ok" in cli("verify")
    assert "ok" in cli("verify", str(tmp_path / "pulled"))


def test_errors_map_to_exit_codes(cli: Cli, tmp_path: Path, onnx_package: MakePackage) -> None:
    cli("publish", str(onnx_package()))
    assert "no model default/nope" in cli("models", "show", "nope", code=3)
    assert "not a model reference" in cli("models", "show", "a b", code=2)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "sciserve.yaml").write_bytes(b"\xff\xfe not yaml: [")
    assert "manifest" in cli("publish", str(bad), code=2)
    assert "immutable" in cli("publish", str(onnx_package(scale=9.0)), code=4)
    payload = cli.json("publish", str(onnx_package(scale=9.0)), code=4)
    assert isinstance(payload, dict) and payload["type"] == "VersionConflict"
    assert "No such command" in cli("frobnicate", code=2)


def test_bad_serve_options_are_named_before_anything_starts(cli: Cli) -> None:
    out = cli("serve", "--instances", "0", "--poll-interval", "-1", code=1)
    assert "--instances: Input should be greater than 0" in out
    assert "--poll-interval: Input should be greater than 0" in out
    out = cli("serve", "--instances", "2", "--realtime-instances", "2", code=1)
    assert "realtime_instances (2) must be less than instances (2)" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("option", ["--http-port", "--grpc-port", "--metrics-port"])
def test_a_port_in_use_is_named_not_a_traceback(cli: Cli, option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "0", option: str(port)}
        out = cli("serve", *(part for pair in ports.items() for part in pair), code=1)
    assert f"cannot listen on 127.0.0.1:{port}" in out
    assert f"pick another {option}" in out
    assert "Traceback" not in out


def test_namespace_commands(cli: Cli) -> None:
    cli("namespace", "create", "astro")
    assert "astro" in cli("namespace", "list")
    assert "trusted=true" in cli("namespace", "trust", "astro")
    assert "already exists" in cli("namespace", "create", "astro", code=4)
    assert "not a valid namespace" in cli("namespace", "create", "Bad Name", code=2)


def test_python_dash_m_and_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sciserve", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    for command in (
        "init",
        "validate",
        "publish",
        "models",
        "tag",
        "pull",
        "verify",
        "yank",
        "export",
        "import",
        "namespace",
        "up",
    ):
        assert command in done.stdout


def test_up_publishes_and_runs_the_examples(cli: Cli) -> None:
    first = cli.json("up", "--no-serve")
    assert isinstance(first, dict)
    assert sorted(first["added"]) == [
        "examples/lc-classifier-gbm:1.0.0",
        "examples/lc-classifier:1.0.0",
    ]
    rows = first["prediction"]["rows"]
    models = first["prediction"]["models"]
    assert len(models) == 2 and len(rows) == 5
    # The examples are real classifiers: most fresh objects are classified right.
    hits = sum(row[m] == row["truth"] for row in rows for m in models)
    assert hits >= 7
    again = cli.json("up", "--no-serve")
    assert again["added"] == []  # type: ignore[index]
    card = cli("models", "card", "examples/lc-classifier", "--format", "raw")
    assert "accuracy" in card and "CC-BY-4.0" in card


def test_local_changes_are_audited_with_the_os_user(cli: Cli, onnx_package: MakePackage) -> None:
    user = f"local:{pwd.getpwuid(os.getuid()).pw_name}"
    cli("namespace", "create", "astro")
    cli("namespace", "trust", "astro")
    cli("namespace", "distrust", "astro")
    cli("publish", str(onnx_package()))
    cli("tag", "linear:1.0.0", "production")
    cli("untag", "linear", "production")
    cli("yank", "linear:1.0.0", "--reason", "superseded")
    cli("unyank", "linear:1.0.0")
    events = cli.json("audit", "--limit", "20")
    assert isinstance(events, list)
    actions = [e["action"] for e in reversed(events)]
    assert actions == [
        "namespace.create",
        "namespace.trust",
        "namespace.distrust",
        "namespace.create",  # default, by the first publish
        "publish",
        "tag",
        "untag",
        "yank",
        "unyank",
    ]
    assert {e["actor"] for e in events} == {user}
