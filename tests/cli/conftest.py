from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import Cli


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """The command line over a fresh data directory ``tmp_path / "home"``."""
    return Cli(tmp_path / "home", capsys)
