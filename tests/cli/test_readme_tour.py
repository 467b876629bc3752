"""The README's two commands and its tour, run as a newcomer would.

``make run`` is ``.venv/bin/sciserve --home ./.sciserve up``; the tour is then
typed into a fresh shell beside it.  Here a checkout is a temporary
directory with a ``.venv/bin/sciserve`` console script, ``up`` serves on
free ports in a subprocess, and the tour's commands are read from the
README itself and run by bash with an environment holding no sciserve
settings — only ``localhost:8000`` becomes the port the server got.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.server import stop_server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _tour() -> tuple[list[str], str]:
    """The commands of the tour's console block (continuations joined), and its Python."""
    section = README.read_text().split("\n## A tour\n", 1)[1].split("\n## ", 1)[0]
    console = re.search(r"```console\n(.*?)```", section, re.S)
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert console is not None and python is not None, "the tour lost its code blocks"
    commands: list[str] = []
    current: str | None = None
    for line in console.group(1).splitlines():
        if current is not None:
            current += "\n" + line
        elif line.startswith("$ "):
            current = line[2:]
        else:  # output shown in the README
            continue
        if not current.endswith("\\"):
            commands.append(current)
            current = None
    return commands, python.group(1)


def _fresh_environment(tmp_path: Path) -> dict[str, str]:
    """A new login's environment: no SCISERVE_* settings, no virtual environment."""
    env = {
        "PATH": os.defpath,
        "HOME": str(tmp_path / "user"),
        "LANG": "C.UTF-8",
    }
    # The package under test is importable here only through PYTHONPATH
    # when it is not installed (in a clone it is, by make).
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _console_script(path: Path) -> None:
    """What pip writes as ``.venv/bin/sciserve``."""
    path.parent.mkdir(parents=True)
    path.write_text(
        f"#!{sys.executable}\nimport sys\nfrom sciserve.cli import main\nsys.exit(main())\n"
    )
    path.chmod(0o755)


def _read_until(lines: queue.Queue[str], proc: subprocess.Popen[str], end: str) -> list[str]:
    """stdout lines of ``proc`` up to and including the first containing ``end``."""
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"sciserve up exited: {''.join(seen)}{err}") from None
            continue
        seen.append(line)
        if end in line:
            return seen
    raise AssertionError(f"sciserve up printed no {end!r}: {''.join(seen)}")


def _run(script: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-x", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_readme_tour_runs_as_written_beside_make_run(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    program = checkout / ".venv" / "bin" / "sciserve"
    _console_script(program)
    env = _fresh_environment(tmp_path)
    # make run ARGS="--http-port 0 --grpc-port 0 --metrics-port 0"
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    up = subprocess.Popen(
        [".venv/bin/sciserve", "--home", str(checkout / ".sciserve"), "up", *ports],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        printed = _read_until(lines, up, "sciserve serving")
        banner = re.search(r"http=(\S+)", printed[-1])
        assert banner is not None
        http = banner.group(1)
        printed += _read_until(lines, up, "curl ")
        output = "".join(printed)
        # Short: a summary, not every card.
        assert len(printed) < 30 and "## " not in output, output
        assert "examples.lc-classifier" in output

        # What up suggests works in a fresh shell ...
        suggested = [line.strip() for line in printed[printed.index(_next(printed)) + 1 :]]
        setup = f"export SCISERVE_HOME={checkout}/.sciserve PATH={checkout}/.venv/bin:$PATH"
        assert suggested[0] == setup
        assert "examples/lc-classifier" in _run("\n".join(suggested), checkout, env)

        # ... and so does the README's tour, whose first line is that one.
        commands, python = _tour()
        assert commands[0].split("#")[0].strip().replace("$PWD", str(checkout)) == setup
        script = "\n".join(commands).replace("localhost:8000", http)
        check = python + "\nassert probabilities.shape == (2, 5), probabilities.shape\n"
        script += f"\n{sys.executable} -c {_quote(check)}\n"
        out = _run(script, checkout, env)
    finally:
        assert stop_server(up) == 0
    assert '"name":"examples.lc-classifier"' in out.replace(" ", "")
    assert (checkout / "my-model" / "sciserve.yaml").is_file()
    assert "default/lc-classifier" in out  # listed from the read-only export


def _next(printed: list[str]) -> str:
    return next(line for line in printed if line.startswith("next,"))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_make_run_passes_args_and_installs_only_when_the_dependencies_change(
    tmp_path: Path,
) -> None:
    if shutil.which("make") is None:
        pytest.fail("make is one of the README's two commands: install it")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    stamp = venv / ".installed-run"
    stamp.touch()
    later = (ROOT / "pyproject.toml").stat().st_mtime + 60
    os.utime(stamp, (later, later))

    def dry_run() -> list[str]:
        done = subprocess.run(
            ["make", "-n", "-C", str(ROOT), "run", f"VENV={venv}", "ARGS=--http-port 0"],
            capture_output=True,
            text=True,
            check=True,
        )
        return [line for line in done.stdout.splitlines() if not line.startswith("make")]

    assert dry_run() == [f"{venv}/bin/sciserve --home {ROOT}/.sciserve up --http-port 0"]
    os.utime(stamp, (later - 120, later - 120))  # pyproject.toml changed since
    assert any("pip install" in line for line in dry_run())
