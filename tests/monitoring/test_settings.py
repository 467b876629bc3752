"""``[monitoring]`` in ``sciserve.toml``: the documented example, and mistakes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sciserve.config import Settings
from sciserve.errors import ConfigError

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_example_loads(tmp_path: Path) -> None:
    text = README.read_text()
    block = re.search(r"```toml\n(\[monitoring\]\n.*?)```", text, re.S)
    assert block is not None
    (tmp_path / "sciserve.toml").write_text(block.group(1))
    settings = Settings.load(tmp_path, environ={})
    monitoring = settings.monitoring
    assert monitoring.enabled and monitoring.window == 5000
    assert monitoring.max_rows_per_second == 200
    assert monitoring.thresholds_for("examples.lc-classifier").ks == 0.15
    assert monitoring.thresholds_for("examples.lc-classifier").psi == 0.25
    assert monitoring.thresholds_for("other").ks == 0.1
    assert monitoring.webhook_url == "https://alerts.example/hook"
    assert monitoring.gates == {"examples.lc-classifier": {"auc": ">=0.85"}}
    assert monitoring.max_age_days == 365


@pytest.mark.parametrize(
    "body",
    [
        '[monitoring]\nwebhook_url = "file:///etc/passwd"\n',
        "[monitoring]\nsample_rate = 2\n",
        "[monitoring]\nmax_rows_per_second = -1\n",
        "[monitoring]\nwindow = 0\n",
        "[monitoring]\nthresholds = { ks = 5 }\n",
        "[monitoring]\nunknown = 1\n",
        '[monitoring.models.m]\npsi = "high"\n',
        '[monitoring.gates.m]\nauc = "0.85"\n',
        '[monitoring.gates.m]\nauc = ">=nan"\n',
        "[monitoring.gates.m]\nauc = 0.85\n",
    ],
)
def test_mistakes_are_config_errors(tmp_path: Path, body: str) -> None:
    (tmp_path / "sciserve.toml").write_text(body)
    with pytest.raises(ConfigError):
        Settings.load(tmp_path, environ={})


def test_the_webhook_token_never_shows(tmp_path: Path) -> None:
    (tmp_path / "sciserve.toml").write_text('[monitoring]\nwebhook_token = "hunter2"\n')
    settings = Settings.load(tmp_path, environ={})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.monitoring)
