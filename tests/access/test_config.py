"""AccessConfig: safe defaults, the [access] table of sciserve.toml, environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciserve.config import AccessConfig, RateLimit, Settings
from sciserve.errors import ConfigError


def test_defaults_are_safe(tmp_path: Path) -> None:
    access = Settings.load(tmp_path, environ={}).access
    assert access == AccessConfig()
    assert access.enabled is False
    assert access.issuers == ()
    assert access.default_rate.rate is not None and access.default_rate.concurrency is not None


def test_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "sciserve.toml").write_text(
        "[access]\n"
        "token_cache_ttl = 1.5\n"
        "default_rate = { rate = 5.0, burst = 10, concurrency = 2 }\n"
        "[[access.issuers]]\n"
        'issuer = "https://iam.example"\n'
        'jwks_url = "https://iam.example/jwks"\n'
        'group_map = { "/cms" = "cms" }\n'
        'scope_map = { "compute.create" = ["infer", "read"] }\n'
    )
    access = Settings.load(tmp_path, environ={}).access
    assert access.enabled is False
    assert access.token_cache_ttl == 1.5
    assert access.default_rate == RateLimit(rate=5.0, burst=10, concurrency=2)
    [issuer] = access.issuers
    assert issuer.group_map == {"/cms": "cms"}
    assert issuer.scope_map == {"compute.create": ("infer", "read")}
    enabled = Settings.load(tmp_path, environ={"SCISERVE_ACCESS_ENABLED": "true"}).access
    assert enabled.enabled is True and enabled.token_cache_ttl == 1.5


def test_bad_access_settings_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "sciserve.toml").write_text('[access]\nscope_map = 1\nenabled = "maybe"\n')
    with pytest.raises(ConfigError, match="access"):
        Settings.load(tmp_path, environ={})
    (tmp_path / "sciserve.toml").write_text(
        '[[access.issuers]]\nissuer = "x"\njwks_url = "https://x"\nalgorithms = ["HS256"]\n'
    )
    with pytest.raises(ConfigError, match="unsupported algorithms"):
        Settings.load(tmp_path, environ={})
