"""The token pepper: created once with owner-only permissions, then reused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sciserve.access.pepper import PEPPER_BYTES, load_pepper, pepper_path
from sciserve.config import Settings
from sciserve.errors import ConfigError


def test_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "token-pepper"
    first = load_pepper(path)
    assert len(first) == PEPPER_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_pepper(path) == first
    assert load_pepper(tmp_path / "other") != first


def test_missing_without_create_and_too_short(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no token pepper"):
        load_pepper(tmp_path / "absent", create=False)
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        load_pepper(short)


def test_location_from_settings(tmp_path: Path) -> None:
    assert pepper_path(Settings.load(tmp_path, environ={})) == tmp_path / "token-pepper"
    env = {"SCISERVE_ACCESS_TOKEN_PEPPER_FILE": str(tmp_path / "shared" / "pepper")}
    assert pepper_path(Settings.load(tmp_path, environ=env)) == tmp_path / "shared" / "pepper"
