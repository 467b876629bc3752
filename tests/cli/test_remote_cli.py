"""The CLI against a remote server behaves exactly as against a local registry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sciserve.access.tokens import TokenStore
from sciserve.cli import main
from sciserve.config import Settings
from sciserve.registry.registry import Registry

from helpers.server import Running, start_server, stop_server

MakePackage = Callable[..., Path]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    home = tmp_path / "server-home"
    with Registry(Settings.load(home, environ={})):
        pass
    running = start_server(home)
    try:
        yield running
    finally:
        stop_server(running.proc)


def test_publish_tag_pull_through_the_server(
    server: Running,
    onnx_package: MakePackage,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://{server.http}"

    def cli(*args: str, code: int = 0) -> object:
        rc = main(["--home", str(tmp_path / "client"), "--server", url, "--json", *args])
        out, err = capsys.readouterr()
        assert rc == code, (args, out, err)
        return json.loads(out)

    published = cli("publish", str(onnx_package()))
    assert isinstance(published, dict) and published["created"] is True
    conflict = cli("publish", str(onnx_package(scale=5.0)), code=4)
    assert isinstance(conflict, dict) and conflict["type"] == "VersionConflict"
    assert cli("tag", "linear:1.0.0", "production")["aliases"] == [  # type: ignore[index]
        "latest",
        "production",
    ]
    listing = cli("models", "list")
    assert [m["ref"] for m in listing] == ["default/linear:1.0.0"]  # type: ignore[union-attr]
    pulled = cli("pull", "linear@production", "--dest", str(tmp_path / "pulled"))
    assert Path(pulled["path"], "model.onnx").is_file()  # type: ignore[index]
    assert cli("verify", "linear")[0]["ok"] is True  # type: ignore[index]
    assert cli("yank", "linear:1.0.0", "--reason", "x", code=4)["type"] == "Conflict"  # type: ignore[index]
    missing = cli("models", "show", "nothing", code=3)
    assert isinstance(missing, dict) and missing["type"] == "NotFound"
    # Admin commands refuse to run remotely rather than do something else.
    refused = cli("namespace", "list", code=2)
    assert isinstance(refused, dict) and "directly" in refused["error"]
    # The server's own registry holds what the remote CLI published.
    with Registry(Settings.load(server.home, environ={})) as reg:
        assert reg.resolve("linear").aliases == ("latest", "production")


def test_the_cli_sends_the_configured_token(
    onnx_package: MakePackage,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "server-home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(onnx_package())
        _, reader = TokenStore(registry).create("remote-reader", {"default": ["read"]})
    running = start_server(home, "--auth")
    url = f"http://{running.http}"

    def cli(*args: str, code: int = 0) -> Any:
        rc = main(["--home", str(tmp_path / "client"), "--server", url, "--json", *args])
        out, err = capsys.readouterr()
        assert rc == code, (args, out, err)
        assert reader not in out + err
        return json.loads(out)

    try:
        monkeypatch.delenv("SCISERVE_TOKEN", raising=False)
        refused = cli("models", "list", code=9)
        assert refused["type"] == "Unauthenticated"
        monkeypatch.setenv("SCISERVE_TOKEN", reader)
        assert [m["ref"] for m in cli("models", "list")] == ["default/linear:1.0.0"]
        assert cli("models", "show", "linear")["resolved"]["ref"] == "default/linear:1.0.0"
        denied = cli("tag", "linear:1.0.0", "production", code=6)  # read scope only
        assert denied["type"] == "PermissionDenied"
        monkeypatch.setenv("SCISERVE_TOKEN", reader + "x")
        assert cli("models", "list", code=9)["type"] == "Unauthenticated"
    finally:
        stop_server(running.proc)
