"""HTTP load with wrk: closed loop, keep-alive connections, prebuilt body."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import ChildFailed, run_command
from .results import Run

__all__ = ["INSTALL_HINT", "WrkRequest", "find_wrk", "run_wrk", "wrk_version"]

INSTALL_HINT = "wrk is needed for the HTTP load: sudo apt-get install -y wrk (or brew install wrk)"

_SCRIPT = Path(__file__).resolve().parent.parent / "wrk" / "oip.lua"
_RESULT = re.compile(r"^WRK_RESULT (\{.*\})$", re.MULTILINE)


@dataclass(frozen=True)
class WrkRequest:
    """What to POST: a body file, its content type and the binary header length."""

    url: str
    body: Path
    content_type: str
    header_length: int | None
    batch: int


def find_wrk() -> str | None:
    """The path of the ``wrk`` executable, or ``None``."""
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    """The first line wrk prints about itself."""
    # wrk prints its version with the usage text and exits non-zero.
    proc = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def run_wrk(
    wrk: str, request: WrkRequest, connections: int, duration: float, threads: int = 1
) -> Run:
    """Load ``request.url`` with ``connections`` connections for ``duration`` seconds."""
    threads = max(1, min(threads, connections))
    seconds = max(1, round(duration))
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(_SCRIPT),
        request.url,
        "--",
        str(request.body),
        request.content_type,
        "" if request.header_length is None else str(request.header_length),
    ]
    out = run_command(argv, timeout=seconds + 30)
    match = _RESULT.search(out)
    if match is None:
        raise ChildFailed(f"wrk printed no result:\n{out[-2000:]}")
    data = json.loads(match.group(1))
    errors = sum(int(v) for v in data["errors"].values())
    # wrk counts non-2xx answers as completed requests; only successes count here.
    ok = int(data["requests"]) - int(data["errors"]["status"])
    return Run(
        requests=max(ok, 0),
        errors=errors,
        duration_s=int(data["duration_us"]) / 1e6,
        p50_ms=int(data["p50_us"]) / 1000.0,
        p99_ms=int(data["p99_us"]) / 1000.0,
        batch=request.batch,
    )
