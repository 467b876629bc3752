"""The command line run in-process, as a test sees it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sciserve.cli import main


class Cli:
    """``sciserve --home HOME …`` in-process: checks the exit code (and that
    no traceback reached the user) and returns what was printed."""

    def __init__(self, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.home = home
        self.capsys = capsys

    def __call__(self, *args: str, code: int = 0) -> str:
        rc = main(["--home", str(self.home), *args])
        out, err = self.capsys.readouterr()
        assert rc == code, (args, rc, out, err)
        assert "Traceback" not in out + err
        return out + err

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self("--json", *args, code=code))
