"""gRPC load with h2load (nghttp2): closed loop, one prebuilt message per request.

gRPC is HTTP/2 with a 5-byte length prefix on each message and the call's
status in the trailers, so a C HTTP/2 load generator can drive any gRPC
server at little CPU cost, as wrk does for HTTP/1.1.  h2load only sees the
HTTP status, which is 200 for failed calls too; a call counts as successful
here only if its answer carried a message as long as the one the server
gave to the same request when it was checked, so failures are never
counted as throughput.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from .procs import ChildFailed, run_command
from .results import Run

__all__ = [
    "INSTALL_HINT",
    "GrpcRequest",
    "answer_bytes",
    "find_h2load",
    "h2load_version",
    "run_h2load",
]

INSTALL_HINT = (
    "h2load is needed for the gRPC load: sudo apt-get install -y nghttp2-client "
    "(or brew install nghttp2)"
)
METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: A gRPC message on the wire: compression flag and 4-byte length, then the message.
_PREFIX = 5


@dataclass(frozen=True)
class GrpcRequest:
    """What to send: the server's address, the framed message file, the answer size."""

    address: str
    body: Path
    #: Bytes of DATA in one successful answer (prefix included).
    answer_bytes: int
    batch: int

    @property
    def url(self) -> str:
        return f"http://{self.address}{METHOD}"


def find_h2load() -> str | None:
    """The path of the ``h2load`` executable, or ``None``."""
    return shutil.which("h2load")


def h2load_version(h2load: str) -> str:
    proc = subprocess.run([h2load, "--version"], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def answer_bytes(address: str, body: Path) -> int:
    """The DATA bytes of the server's answer to ``body`` (one call, which must succeed)."""
    message = body.read_bytes()[_PREFIX:]
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)
        try:
            answer = call(message, timeout=30.0)
        except grpc.RpcError as exc:
            raise ChildFailed(f"gRPC {exc.code()}: {exc.details()}") from exc
    return _PREFIX + len(answer)


def _field(out: str, label: str, index: int) -> int:
    """The ``index``-th number on the line of h2load's summary starting with ``label``."""
    for line in out.splitlines():
        if line.startswith(label):
            numbers = [w.strip("(),") for w in line.split()]
            values = [int(w) for w in numbers if w.isdigit()]
            return values[index]
    raise ChildFailed(f"h2load printed no {label!r} line:\n{out[-2000:]}")


def run_h2load(
    h2load: str, request: GrpcRequest, concurrency: int, duration: float, warmup: float
) -> Run:
    """``concurrency`` connections, one call in flight on each, for ``duration`` seconds
    after ``warmup`` seconds whose calls are not counted."""
    seconds = max(1, round(duration))
    with tempfile.TemporaryDirectory(prefix="h2load-") as scratch:
        log = Path(scratch) / "requests.log"
        argv = [
            h2load,
            "-c", str(concurrency), "-m", "1",
            "-D", str(seconds), f"--warm-up-time={max(1, round(warmup))}",
            "-H", "content-type: application/grpc",
            "-H", "te: trailers",
            "-d", str(request.body),
            f"--log-file={log}",
            request.url,
        ]  # fmt: skip
        out = run_command(argv, timeout=seconds + warmup + 60)
        # Per call: start (µs since the epoch), HTTP status, duration (µs).
        rows = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else None
    done = _field(out, "requests:", 2)
    data = _field(out, "traffic:", 2)
    ok = min(done, data // request.answer_bytes)
    latencies_us = rows[:, 2] if rows is not None else np.empty(0)
    if latencies_us.size:
        p50, p99 = (float(v) / 1000.0 for v in np.percentile(latencies_us, [50, 99]))
    else:
        p50 = p99 = float("nan")
    # Failed calls cannot be told apart in the log: the percentiles cover every call.
    return Run(ok, done - ok, float(seconds), p50, p99, request.batch)
