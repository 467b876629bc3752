"""Settings precedence: flags > environment > sciserve.toml > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciserve.config import Settings
from sciserve.errors import ConfigError


def test_defaults_live_under_home(tmp_path: Path) -> None:
    s = Settings.load(tmp_path, environ={})
    assert s.database_url == f"sqlite:///{tmp_path / 'registry.db'}"
    assert s.store_url == str(tmp_path / "artifacts")
    assert s.package_cache == tmp_path / "cache"


def test_precedence(tmp_path: Path) -> None:
    (tmp_path / "sciserve.toml").write_text(
        'database_url = "sqlite:///from-file.db"\nstore_url = "/from/file"\n'
    )
    env = {"SCISERVE_STORE_URL": "/from/env", "SCISERVE_HOME": "/ignored/when/given"}
    s = Settings.load(tmp_path, environ=env)
    assert s.database_url == "sqlite:///from-file.db"
    assert s.store_url == "/from/env"
    s = Settings.load(tmp_path, environ=env, store_url="/from/flag", database_url=None)
    assert s.store_url == "/from/flag"
    assert s.database_url == "sqlite:///from-file.db"
    assert Settings.load(None, environ={"SCISERVE_HOME": str(tmp_path)}).home == tmp_path


def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "sciserve.toml").write_text("database_url = [")
    with pytest.raises(ConfigError, match=r"sciserve\.toml"):
        Settings.load(tmp_path, environ={})
    (tmp_path / "sciserve.toml").write_text("unknown_key = 1\n")
    with pytest.raises(ConfigError, match="unknown_key"):
        Settings.load(tmp_path, environ={})


def test_the_token_comes_from_the_environment_and_never_shows(tmp_path: Path) -> None:
    secret = "ssv_0123456789abcdef.not-a-real-secret"
    settings = Settings.load(tmp_path, environ={"SCISERVE_TOKEN": secret})
    assert settings.auth_headers() == {"Authorization": f"Bearer {secret}"}
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    assert Settings.load(tmp_path, environ={}).auth_headers() == {}
