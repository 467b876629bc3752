"""The CLI against a remote server behaves exactly as against a local registry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sciserve.access._db import engine_of
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


def test_an_admin_manages_tokens_through_the_server(
    onnx_package: MakePackage,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "server-home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(onnx_package())
        store = TokenStore(registry)
        admin_record, admin = store.create("lead", {}, admin=True)
        _, reader = store.create("reader", {"default": ["read"]})
        _, outsider = store.create("outsider", {"elsewhere": ["read"]})
    running = start_server(home, "--auth")
    url = f"http://{running.http}"

    def cli(*args: str, code: int = 0, token: str = admin) -> str:
        monkeypatch.setenv("SCISERVE_TOKEN", token)
        rc = main(["--home", str(tmp_path / "client"), "--server", url, *args])
        out, err = capsys.readouterr()
        assert rc == code, (args, out, err)
        assert token not in out + err
        return out + err

    try:
        args = ["--subject", "alice", "--scope", "default:infer", "--expires-in", "30d"]
        args += ["--label", "broker", "--rate", "5"]
        created = json.loads(cli("--json", "token", "create", *args))
        alice = created["token"]
        assert created["subject"] == "alice" and created["scopes"] == {"default": ["infer"]}
        assert created["expires_at"] is not None and created["limit"]["rate"] == 5.0
        assert created["created_by"] == admin_record.token_id
        # The new token works at once; the secret is never listed again.
        assert "default/linear" in cli("models", "list", token=alice)
        listed = cli("--json", "token", "list")
        records = {t["token_id"]: t for t in json.loads(listed)}
        assert records[created["token_id"]]["label"] == "broker"
        assert alice[17:] not in listed and "hash" not in listed
        with (
            Registry(Settings.load(home, environ={})) as registry,
            engine_of(registry).connect() as conn,
        ):
            hashes = [row[0] for row in conn.exec_driver_sql("SELECT secret_hash FROM tokens")]
        assert hashes and not any(h in listed for h in hashes)
        # Human output: the secret once on stdout, the details on stderr.
        printed = cli("token", "create", "--subject", "bob", "--scope", "default:read")
        assert printed.count("ssv_") == 1

        revoked = json.loads(cli("--json", "token", "revoke", created["token_id"]))
        assert revoked["state"] == "revoked"
        assert json.loads(cli("--json", "models", "list", token=alice, code=9))["type"] == (
            "Unauthenticated"
        )
        events = json.loads(cli("--json", "audit", "--limit", "10"))
        events = [e for e in events if e["action"].startswith("token.")]
        assert [e["action"] for e in events][:3] == ["token.revoke", "token.create", "token.create"]
        events = events[:3]
        assert {e["actor"] for e in events} == {admin_record.token_id}

        # Only an admin may: the reader is refused, before anything changes.
        for args in (("token", "list"), ("token", "create", "--subject", "x", "--admin")):
            assert "admin scope" in cli("--json", *args, token=reader, code=6)
        assert len(json.loads(cli("--json", "token", "list"))) == 5
        missing = json.loads(cli("--json", "token", "revoke", "nosuchtoken1", code=3))
        assert missing["type"] == "NotFound"

        # An outsider sees no model, and is told so accurately.
        assert "no models visible to this token" in cli("models", "list", token=outsider)
        assert "publish one" not in cli("models", "list", token=outsider)
    finally:
        stop_server(running.proc)


def test_token_requests_with_bad_fields_are_refused_with_400(
    tmp_path: Path,
) -> None:
    home = tmp_path / "server-home"
    with Registry(Settings.load(home, environ={})) as registry:
        _, admin = TokenStore(registry).create("lead", {}, admin=True)
    running = start_server(home, "--auth")
    headers = {"Authorization": f"Bearer {admin}"}
    tokens = f"http://{running.http}/v2/sciserve/registry/tokens"
    try:
        for body in (
            {},
            {"subject": 5, "admin": True},
            {"subject": "x"},  # no scope at all
            {"subject": "x", "scopes": {"default": "read"}},
            {"subject": "x", "scopes": {"default": ["fly"]}},
            {"subject": "x", "admin": True, "priority": "urgent"},
            {"subject": "x", "admin": True, "expires_in": 1e300},
            {"subject": "x", "admin": True, "expires_in": -1},
            {"subject": "x", "admin": True, "limit": {"rate": -1}},
            {"subject": "x", "admin": True, "limit": "fast"},
            {"subject": "x", "admin": True, "secret": "mine"},
        ):
            response = httpx.post(tokens, json=body, headers=headers)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["type"] in ("InvalidInput",), response.text
    finally:
        stop_server(running.proc)


def test_a_server_without_authentication_does_not_mint_tokens(server: Running) -> None:
    response = httpx.post(
        f"http://{server.http}/v2/sciserve/registry/tokens",
        json={"subject": "x", "admin": True},
    )
    assert response.status_code == 403
    assert "without authentication" in response.json()["error"]
    assert httpx.get(f"http://{server.http}/v2/sciserve/registry/tokens").status_code == 403


def test_a_promotion_gate_holds_through_the_server_and_the_remote_cli(
    onnx_package: MakePackage,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "server-home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(onnx_package(version="1.0.0"))
        registry.publish(onnx_package(version="2.0.0", scale=2.0))
        store = TokenStore(registry)
        _, admin = store.create("lead", {"default": ["admin"]})
        _, publisher = store.create("releaser", {"default": ["publish"]})
    running = start_server(home, "--auth")
    url = f"http://{running.http}"

    def cli(token: str, *args: str, code: int = 0) -> Any:
        monkeypatch.setenv("SCISERVE_TOKEN", token)
        rc = main(["--home", str(tmp_path / "client"), "--server", url, "--json", *args])
        out, err = capsys.readouterr()
        assert rc == code, (args, out, err)
        assert token not in out + err
        return json.loads(out)

    record = {
        "version": "2.0.0",
        "dataset": "lightcurves",
        "dataset_version": "1.0",
        "dataset_digest": "sha256:" + "d" * 64,
        "metrics": {"weighted_log_loss": 1.4},
    }
    evaluations = f"{url}/v2/sciserve/registry/models/default/linear/evaluations"
    try:
        require = ["--require", "lightcurves:weighted_log_loss <= 0.9"]
        # Only the namespace's admin sets a policy or writes evidence for it.
        assert cli(publisher, "policy", "set", "linear", *require, code=6)["type"] == (
            "PermissionDenied"
        )
        policy = cli(admin, "policy", "set", "linear", *require)["policies"][0]
        assert policy["requirements"][0]["text"] == "default/lightcurves:weighted_log_loss <= 0.9"
        assert cli(publisher, "policy", "show", "linear")["policies"] == [policy]
        forged = httpx.post(
            evaluations, json=record, headers={"Authorization": f"Bearer {publisher}"}
        )
        assert forged.status_code == 403

        refused = cli(publisher, "tag", "linear:2.0.0", "production", code=4)
        assert refused["type"] == "PolicyViolation"
        assert refused["failures"][0]["record_id"] is None

        stored = httpx.post(evaluations, json=record, headers={"Authorization": f"Bearer {admin}"})
        assert stored.status_code == 201, stored.text
        over_http = httpx.put(
            f"{url}/v2/sciserve/registry/models/default/linear/aliases/production",
            json={"version": "2.0.0"},
            headers={"Authorization": f"Bearer {publisher}"},
        )
        assert over_http.status_code == 409
        assert over_http.json()["failures"] == [
            {
                "requirement": "default/lightcurves:weighted_log_loss <= 0.9",
                "metric": "weighted_log_loss",
                "value": 1.4,
                "threshold": 0.9,
                "record_id": stored.json()["record_id"],
            }
        ]
        # Forcing is the admin's call: a publisher may not, an admin may.
        assert cli(publisher, "tag", "linear:2.0.0", "production", "--force", code=6)["type"] == (
            "PermissionDenied"
        )
        passing = {**record, "metrics": {"weighted_log_loss": 0.5}}
        httpx.post(evaluations, json=passing, headers={"Authorization": f"Bearer {admin}"})
        listed = cli(publisher, "evaluations", "linear:2.0.0")["evaluations"]
        assert [e["metrics"]["weighted_log_loss"] for e in listed] == [0.5, 1.4]
        assert "production" in cli(publisher, "tag", "linear:2.0.0", "production")["aliases"]
        board = cli(publisher, "leaderboard", "lightcurves", "--metric", "weighted_log_loss")
        assert [(e["model"], e["value"]) for e in board["entries"]] == [
            ("default/linear:2.0.0", 0.5)
        ]

        assert "production" in cli(admin, "tag", "linear:1.0.0", "production", "--force")["aliases"]
        cli(admin, "policy", "clear", "linear")
        assert cli(publisher, "policy", "show", "linear")["policies"] == []
    finally:
        stop_server(running.proc)
    with Registry(Settings.load(home, environ={})) as registry:
        tags = [e for e in registry.events() if e["action"] == "tag"]
    assert [e["detail"].get("forced", False) for e in tags][::-1] == [False, True]
