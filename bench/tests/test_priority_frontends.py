"""priority.py's --http-frontends: passed to serve when it has the option, n/a when not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from priority import frontend_args, serve_command
from servebench.procs import run_command
from servebench.servers import NO_HTTP_FRONTENDS

_WITH = "  --grpc-frontends INTEGER\n  --http-frontends INTEGER  HTTP front ends\n"
_WITHOUT = "  --grpc-frontends INTEGER  gRPC front ends\n"


def test_nothing_is_passed_without_the_option() -> None:
    assert frontend_args(None, _WITH) == []
    assert frontend_args(None, _WITHOUT) == []


def test_the_count_is_passed_when_serve_has_the_option() -> None:
    assert frontend_args(2, _WITH) == ["--http-frontends", "2"]
    # 0 is said too: no front ends, whatever serve's default.
    assert frontend_args(0, _WITH) == ["--http-frontends", "0"]


def test_no_front_end_works_with_a_sciserve_that_has_none() -> None:
    assert frontend_args(0, _WITHOUT) == []


def test_front_ends_on_a_sciserve_without_them_are_not_available() -> None:
    with pytest.raises(LookupError, match=NO_HTTP_FRONTENDS):
        frontend_args(1, _WITHOUT)


def test_this_sciserve_answers_as_its_help_says() -> None:
    help_text = run_command([*serve_command(), "serve", "--help"], timeout=120)
    assert "--http-port" in help_text
    if "--http-frontends" in help_text:
        assert frontend_args(1, help_text) == ["--http-frontends", "1"]
    else:
        with pytest.raises(LookupError):
            frontend_args(1, help_text)


def test_a_negative_count_is_refused_before_anything_starts(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "priority.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--http-frontends", "-1", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 2
    assert "use 0 (no front end) or more" in proc.stdout
    assert not any(tmp_path.iterdir())
