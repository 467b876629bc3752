"""``sciserve token|usage|audit``, run in-process against real registries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import sciserve.cli
from sciserve.access.identity import Identity
from sciserve.access.tokens import TokenStore
from sciserve.access.usage import USAGE_COLUMNS, UsageStore
from sciserve.cli import _access, main
from sciserve.config import Settings
from sciserve.errors import Unauthenticated
from sciserve.registry.registry import Registry

TOKEN_RE = re.compile(r"ssv_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{43}")


def _ensure_registered() -> None:
    # The access commands join the CLI through ``_access.register``; add them
    # here too while the top-level app does not (yet) call it.
    names = {g.name for g in sciserve.cli.app.registered_groups}
    if "token" not in names:
        _access.register(sciserve.cli.app)


class Cli:
    def __init__(self, home: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.home = home
        self.database_url = database_url
        self.capsys = capsys

    def __call__(self, *args: str, code: int = 0) -> str:
        rc = main(["--home", str(self.home), "--database-url", self.database_url, *args])
        out, err = self.capsys.readouterr()
        assert rc == code, (args, rc, out, err)
        return out + err

    def json(self, *args: str) -> object:
        return json.loads(self("--json", *args))

    def registry(self) -> Registry:
        return Registry(Settings.load(self.home, environ={}, database_url=self.database_url))


@pytest.fixture
def cli(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    _ensure_registered()
    return Cli(tmp_path / "home", database_url, capsys)


def test_create_prints_the_token_once_and_list_never(cli: Cli) -> None:
    out = cli(
        "token",
        "create",
        "--subject",
        "alice",
        "--scope",
        "ztf:read,infer",
        "--scope",
        "*:read",
        "--priority",
        "realtime",
        "--expires-in",
        "30d",
        "--label",
        "alert broker",
    )
    [raw] = TOKEN_RE.findall(out)
    assert out.count(raw) == 1
    token_id = raw[4:16]
    secret = raw[17:]
    with cli.registry() as reg:
        identity = TokenStore(reg).verify(raw)
    assert identity.subject == "alice" and identity.allows("infer", "ztf")
    assert identity.allows("read", "cms") and not identity.allows("infer", "cms")

    listed = cli("token", "list")
    assert token_id in listed and "alice" in listed
    assert secret not in listed and "ssv_" not in listed
    entries = cli.json("token", "list")
    assert isinstance(entries, list)
    [entry] = entries
    assert entry["token_id"] == token_id and entry["label"] == "alert broker"
    assert entry["scopes"] == {"*": ["read"], "ztf": ["infer", "read"]}
    assert entry["priority"] == "realtime" and entry["state"] == "active"
    assert entry["expires_at"] is not None
    assert secret not in json.dumps(entry) and "hash" not in json.dumps(entry)


def test_json_create_admin_and_revoke(cli: Cli) -> None:
    created = cli.json("token", "create", "--admin", "--subject", "ops")
    assert isinstance(created, dict)
    raw, token_id = created["token"], created["token_id"]
    assert TOKEN_RE.fullmatch(raw) and created["admin"] is True
    revoked = cli.json("token", "revoke", token_id)
    assert isinstance(revoked, dict) and revoked["state"] == "revoked"
    with cli.registry() as reg, pytest.raises(Unauthenticated):
        TokenStore(reg).verify(raw)
    events = cli.json("audit", "--limit", "2")
    assert isinstance(events, list)
    assert [e["action"] for e in events] == ["token.revoke", "token.create"]
    assert all(e["actor"].startswith("local:") for e in events)
    assert raw[17:] not in cli("audit")


def test_create_errors(cli: Cli) -> None:
    assert "at least one scope" in cli("token", "create", "--subject", "x", code=2)
    assert "NAMESPACE:SCOPE" in cli("token", "create", "--subject", "x", "--scope", "ztf", code=2)
    assert "unknown scope" in cli(
        "token", "create", "--subject", "x", "--scope", "ztf:write", code=2
    )
    assert "duration" in cli(
        "token", "create", "--subject", "x", "--scope", "ztf:read", "--expires-in", "soon", code=2
    )
    assert "no token" in cli("token", "revoke", "nosuchtoken1", code=3)
    assert "no tokens yet" in cli("token", "list")


def test_rate_limit_options(cli: Cli) -> None:
    created = cli.json(
        "token",
        "create",
        "--subject",
        "bulk",
        "--scope",
        "ztf:infer",
        "--priority",
        "batch",
        "--rate",
        "2",
        "--burst",
        "4",
        "--concurrency",
        "1",
    )
    assert isinstance(created, dict)
    assert created["limit"] == {"rate": 2.0, "burst": 4, "concurrency": 1}


def test_usage_table_json_and_csv(cli: Cli) -> None:
    cli.registry().close()  # an empty registry: "usage" reads, it does not create one
    assert "no usage" in cli("usage")
    with cli.registry() as reg:
        usage = UsageStore(reg)
        usage.record(
            Identity("alice", "token", "ALICEALICE12"), "ztf", "clf", rows=9, compute_seconds=0.5
        )
        usage.flush()
    text = cli("usage")
    assert "ALICEALICE12" in text and "clf" in text
    rows = cli.json("usage", "--since", "1d")
    assert isinstance(rows, list)
    [row] = rows
    assert (row["requests"], row["rows"], row["compute_seconds"]) == (1, 9, 0.5)
    csv_text = cli("usage", "--csv")
    header, line = csv_text.strip().splitlines()
    assert header == ",".join(USAGE_COLUMNS)
    assert line.startswith("ztf,ALICEALICE12,alice,clf,1,9,0.5,")


def test_tables_fold_long_cells_instead_of_cutting_them(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    long_scopes = ("lsst-transients-working-group:infer,publish,read", "ztf-bright-survey:read")
    created = cli.json(
        "token", "create", "--subject", "service-account-of-the-alert-broker",
        "--label", "the alert broker of the collaboration", "--expires-in", "30d",
        *(arg for scope in long_scopes for arg in ("--scope", scope)),
    )  # fmt: skip
    assert isinstance(created, dict)
    short = cli.json("token", "create", "--subject", "bob", "--scope", "x:read")
    assert isinstance(short, dict)
    with cli.registry() as reg:
        usage = UsageStore(reg)
        identity = Identity("service-account-of-the-alert-broker", "token", created["token_id"])
        usage.record(identity, "lsst-transients-working-group", "a-long-model-name", rows=1)
        usage.flush()
    for command in (("token", "list"), ("audit",), ("usage",)):
        text = cli(*command)
        assert "…" not in text, text
        assert all(len(line) <= 80 for line in text.splitlines()), text
        assert created["token_id"] in text, text
    listed = cli("token", "list")
    assert short["token_id"] in listed and "x:read" in listed
    # Folded cells keep every character: read the scopes column back.
    lines = listed.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    start = lines[rule - 1].index("scopes")
    column = "".join(line[start:].split("  ")[0] for line in lines[rule + 1 :])
    assert "".join(long_scopes) in column.replace(" ", ""), column
