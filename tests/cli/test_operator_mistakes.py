"""Operator mistakes and leftovers: clear refusals, nothing created or written by accident.

* Commands that only read never create a registry: a mistyped database URL
  or data directory is reported, not silently given a fresh empty database.
* Database URLs of unknown schemes or unsupported databases are refused
  with exit 2 and a message that says what is accepted.
* ``--read-only import`` refuses before it writes anything.
* Serving beyond loopback without authentication is "not permitted" (6).
* Files that killed publishers left in the store's ``tmp/`` are removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sciserve.config import Settings
from sciserve.registry.registry import ORPHAN_TEMP_AGE, Registry

from helpers.cli import Cli

MakePackage = Callable[..., Path]


READ_COMMANDS = [
    ("models", "list"),
    ("models", "show", "lin"),
    ("models", "card", "lin"),
    ("verify",),
    ("pull", "lin", "--dest", "PULLED"),
    ("export", "lin", "--out", "EXPORTED"),
    ("namespace", "list"),
    ("token", "list"),
    ("usage",),
    ("audit",),
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_read_commands_do_not_create_a_registry(
    cli: Cli, tmp_path: Path, command: tuple[str, ...]
) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    args = [
        a.replace("PULLED", str(tmp_path / "p")).replace("EXPORTED", str(tmp_path / "e.tar"))
        for a in command
    ]
    out = cli("--database-url", f"sqlite:///{missing}", *args, code=3)
    assert f"no registry at {missing}" in out
    assert "sciserve publish" in out and "sciserve up" in out
    assert "Traceback" not in out
    assert not (tmp_path / "nonexistent").exists()
    assert not cli.home.exists()  # the data directory is not made either
    # The default registry of a fresh data directory is no different.
    out = cli(*args, code=3)
    assert "no registry at" in out and not cli.home.exists()


def test_a_mistyped_database_url_in_the_environment_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    done = subprocess.run(
        [sys.executable, "-m", "sciserve", "models", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "SCISERVE_HOME": str(tmp_path / "home"),
            "SCISERVE_DATABASE_URL": f"sqlite:///{missing}",
        },
    )
    assert done.returncode == 3, done.stderr
    assert f"no registry at {missing}" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "nonexistent").exists()


def test_read_commands_see_a_registry_once_one_is_published(
    cli: Cli, onnx_package: MakePackage
) -> None:
    cli("models", "list", code=3)
    cli("publish", str(onnx_package(name="lin")))
    assert "default/lin" in cli("models", "list")


def test_a_database_without_a_registry_is_reported_not_filled(cli: Cli, postgres_url: str) -> None:
    out = cli("--database-url", postgres_url, "models", "list", code=3)
    assert "no registry in postgresql" in out and "sciserve publish" in out
    cli("--database-url", postgres_url, "namespace", "create", "astro")  # writes create it
    assert "astro" in cli("--database-url", postgres_url, "namespace", "list")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("foo://bar/x", "unsupported database 'foo'"),
        ("mysql://user:s3cret@db.example.org/reg", "unsupported database 'mysql'"),
        ("mysql+pymysql://user@db.example.org/reg", "unsupported database 'mysql'"),
        ("sqlite+aiosqlite:///x.db", "unsupported SQLite driver"),
        ("postgresql+nosuchdriver://u@127.0.0.1/x", "unsupported database driver"),
        ("not a url", "not a database URL"),
        ("sqlite://", "needs a SQLite file"),
    ],
)
def test_unsupported_database_urls_are_named(
    cli: Cli, url: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths land here, should anything be made
    for command in (("models", "list"), ("namespace", "create", "astro")):
        out = cli("--database-url", url, *command, code=2)
        assert message in out, out
        assert "Traceback" not in out
        assert "sciserve[postgres]" not in out  # not the hint for another database
        assert "s3cret" not in out
    assert list(tmp_path.iterdir()) == []


def test_read_only_import_refuses_before_writing(
    cli: Cli, tmp_path: Path, onnx_package: MakePackage
) -> None:
    cli("publish", str(onnx_package(name="lin")))
    archive = tmp_path / "export.tar.gz"
    cli("export", "lin", "--out", str(archive))
    # The receiving registry is itself an export opened read-only, as on CVMFS.
    target = tmp_path / "target"
    cli("export", "lin", "--out", str(target))
    # Any entry created in (or removed from) the data directory moves its mtime.
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    before = sorted(p.name for p in target.iterdir())
    for source in (archive, target):
        out = cli("--home", str(target), "--read-only", "import", str(source), code=6)
        assert "read-only" in out
    assert target.stat().st_mtime_ns == 1_000_000_000
    assert sorted(p.name for p in target.iterdir()) == before


def test_serving_beyond_loopback_without_auth_is_not_permitted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # fmt: off
    done = subprocess.run(
        [sys.executable, "-m", "sciserve", "--home", str(home), "serve", "--host", "0.0.0.0",
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    # fmt: on
    assert done.returncode == 6, done.stderr
    assert "without authentication" in done.stderr and "Traceback" not in done.stderr


def _leftover(store_tmp: Path, name: str, age: float) -> Path:
    """A temp file like the ones a publisher killed mid-upload leaves, ``age`` s old."""
    store_tmp.mkdir(parents=True, exist_ok=True)
    path = store_tmp / name
    path.write_bytes(b"half an upload")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_publish_removes_what_killed_publishers_left(
    cli: Cli, tmp_path: Path, onnx_package: MakePackage
) -> None:
    cli("publish", str(onnx_package(name="first")))
    store_tmp = cli.home / "artifacts" / "tmp"
    stale = _leftover(store_tmp, "put-0123456789abcdef.part", ORPHAN_TEMP_AGE + 60)
    # A concurrent publisher's upload in progress: written moments ago.
    live = _leftover(store_tmp, "put-fedcba9876543210.part", 5)
    out = json.loads(cli("--json", "publish", str(onnx_package(name="second"))))
    assert out["created"]
    assert not stale.exists()
    assert live.exists()


def test_opening_a_registry_for_writing_removes_old_leftovers(tmp_path: Path) -> None:
    settings = Settings.load(tmp_path / "home", environ={})
    with Registry(settings):
        pass
    store_tmp = tmp_path / "home" / "artifacts" / "tmp"
    stale = _leftover(store_tmp, "put-0000000000000000.part", ORPHAN_TEMP_AGE + 60)
    live = _leftover(store_tmp, "put-1111111111111111.part", ORPHAN_TEMP_AGE - 60)
    with Registry(settings, create=False):
        pass  # a reader leaves the store alone
    assert stale.exists()
    with Registry(settings):
        pass
    assert not stale.exists() and live.exists()


def _scratch_dir(home: Path, name: str, age: float) -> Path:
    """A publish's scratch directory (an unpacked archive), made ``age`` s ago."""
    path = home / "tmp" / name
    (path / "package").mkdir(parents=True)
    (path / "package" / "model.onnx").write_bytes(b"unpacked weights")
    (path / ".in-use").touch()
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_publish_removes_scratch_directories_of_killed_publishers(
    cli: Cli, onnx_package: MakePackage
) -> None:
    cli("publish", str(onnx_package(name="first")))
    old = ORPHAN_TEMP_AGE + 60
    orphan = _scratch_dir(cli.home, "unpack-killed", old)
    # What a server killed while receiving an upload left behind.
    upload = _scratch_dir(cli.home, "http-killed", old)
    # Not the registry's: left alone, however old.
    foreign = _scratch_dir(cli.home, "notes-kept", old)
    # A long publish still at work: as old, but its lock is held.
    busy = _scratch_dir(cli.home, "unpack-busy", old)
    fd = os.open(busy / ".in-use", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cli("publish", str(onnx_package(name="second")))
        assert not orphan.exists() and not upload.exists()
        assert (busy / "package" / "model.onnx").is_file()
        assert foreign.exists()
    finally:
        os.close(fd)
