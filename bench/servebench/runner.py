"""The measurement matrix: every server x protocol x concurrency x batch cell.

A cell is a warm-up followed by ``runs`` timed runs; its result is the
median of each metric over the runs.  One server runs at a time, and the
load generator shares the machine's cores with it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import onnxruntime as ort

from .cpu import CpuMeter
from .h2load import GrpcRequest, answer_bytes, run_h2load
from .inproc import run_inprocess
from .payloads import BodyFiles, Payloads
from .procs import ChildFailed
from .results import Median, Run, median_of
from .servers import GRPC, HTTP_BINARY, HTTP_JSON, Endpoint
from .verify import WrongAnswer, check_grpc, check_http_binary, check_http_json, infer_url
from .wrk import WrkRequest, run_wrk

__all__ = [
    "INPROCESS",
    "Cell",
    "CellResult",
    "LoadTools",
    "Options",
    "measure_inprocess",
    "measure_server",
    "metered",
]

#: The pseudo-protocol of the in-process ONNX Runtime ceiling.
INPROCESS = "in-process"


@dataclass(frozen=True)
class LoadTools:
    """The load generators' executables: wrk for HTTP/1.1, h2load for gRPC."""

    wrk: str
    h2load: str


@dataclass(frozen=True)
class Options:
    """How long and how often each cell is measured, and with how much client."""

    duration: float
    runs: int
    warmup: float
    concurrencies: tuple[int, ...]
    batches: tuple[int, ...]
    wrk_threads: int = 1


@dataclass(frozen=True)
class Cell:
    server: str
    protocol: str
    concurrency: int
    batch: int


@dataclass(frozen=True)
class CellResult:
    """The runs of one cell and their median, or why the cell has no numbers."""

    cell: Cell
    runs: tuple[Run, ...] = ()
    error: str | None = None

    @property
    def median(self) -> Median | None:
        return median_of(self.runs) if self.runs and self.error is None else None

    def to_dict(self) -> dict[str, Any]:
        median = self.median
        return {
            "server": self.cell.server,
            "protocol": self.cell.protocol,
            "concurrency": self.cell.concurrency,
            "batch": self.cell.batch,
            "runs": [r.to_dict() for r in self.runs],
            "median": median.to_dict() if median else None,
            "error": self.error,
        }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _describe(result: CellResult) -> str:
    c = result.cell
    head = f"  {c.server:<18} {c.protocol:<11} c={c.concurrency:<3} b={c.batch:<3}"
    median = result.median
    if median is None:
        return f"{head} FAILED: {result.error}"
    errors = f"  ({median.errors} errors)" if median.errors else ""
    cpu = ""
    if median.server_cpu_percent is not None and median.client_cpu_percent is not None:
        cpu = f"  server {median.server_cpu_percent:4.0f} % CPU"
        if median.main_cpu_percent is not None and c.protocol != INPROCESS:
            cpu += f" (main {median.main_cpu_percent:.0f} %)"
        if c.protocol != INPROCESS:
            cpu += f", client {median.client_cpu_percent:3.0f} %"
    return (
        f"{head} {median.rows_per_s:>11,.0f} rows/s  p50 {median.p50_ms:7.2f} ms"
        f"  p99 {median.p99_ms:7.2f} ms{cpu}{errors}"
    )


def _wrk_request(
    protocol: str, endpoint: Endpoint, payloads: Payloads, files: BodyFiles
) -> WrkRequest:
    if protocol == HTTP_BINARY:
        return WrkRequest(
            url=infer_url(endpoint.http),
            body=files.binary,
            content_type="application/octet-stream",
            header_length=payloads.http_binary_header_length,
            batch=payloads.batch,
        )
    return WrkRequest(
        url=infer_url(endpoint.http),
        body=files.json,
        content_type="application/json",
        header_length=None,
        batch=payloads.batch,
    )


def metered(server_pid: int | None, run: Callable[[], Run]) -> Run:
    """``run()`` with the CPU of the server's process tree and of the load generator
    (the harness's children it waits for) during it; unmetered without a PID."""
    if server_pid is None:
        return run()
    meter = CpuMeter(server_pid)
    result = run()
    return replace(result, cpu=meter.stop())


def _wrk_cell(
    wrk: str, request: WrkRequest, concurrency: int, options: Options, pid: int | None
) -> tuple[Run, ...]:
    # The warm-up is a wrk run of its own whose numbers are dropped.
    run_wrk(wrk, request, concurrency, options.warmup, options.wrk_threads)
    return tuple(
        metered(
            pid, lambda: run_wrk(wrk, request, concurrency, options.duration, options.wrk_threads)
        )
        for _ in range(options.runs)
    )


def _grpc_cell(
    h2load: str, request: GrpcRequest, concurrency: int, options: Options, pid: int | None
) -> tuple[Run, ...]:
    # Each run is an h2load run of its own, with its own uncounted warm-up; its CPU
    # is metered over the whole h2load run, warm-up (under the same load) included.
    return tuple(
        metered(
            pid, lambda: run_h2load(h2load, request, concurrency, options.duration, options.warmup)
        )
        for _ in range(options.runs)
    )


def _verify(
    server: str, protocol: str, endpoint: Endpoint, payloads: Mapping[int, Payloads]
) -> None:
    checks: dict[str, Callable[[str, str, Payloads], None]] = {
        HTTP_BINARY: check_http_binary,
        HTTP_JSON: check_http_json,
        GRPC: check_grpc,
    }
    address = endpoint.grpc if protocol == GRPC else endpoint.http
    for batch_payloads in payloads.values():
        checks[protocol](server, address, batch_payloads)


def measure_server(
    server: str,
    protocols: tuple[str, ...],
    endpoint: Endpoint,
    payloads: Mapping[int, Payloads],
    bodies: Mapping[int, BodyFiles],
    options: Options,
    tools: LoadTools,
    cells: Sequence[tuple[int, int]] | None = None,
) -> list[CellResult]:
    """Verify, then measure, every cell of one running server: ``cells``
    (concurrency, batch), or by default the options' concurrency x batch matrix."""
    if cells is None:
        cells = [(c, b) for c in options.concurrencies for b in options.batches]
    results: list[CellResult] = []
    for protocol in protocols:
        try:
            _verify(server, protocol, endpoint, payloads)
        except WrongAnswer as exc:
            _say(f"  {server} {protocol}: wrong answer, not measured: {exc}")
            results += [
                CellResult(Cell(server, protocol, c, b), error=f"verification failed: {exc}")
                for c, b in cells
            ]
            continue
        for concurrency, batch in cells:
            cell = Cell(server, protocol, concurrency, batch)
            files = bodies[batch]
            try:
                if protocol == GRPC:
                    size = answer_bytes(endpoint.grpc, files.grpc)
                    request = GrpcRequest(endpoint.grpc, files.grpc, size, batch)
                    runs = _grpc_cell(tools.h2load, request, concurrency, options, endpoint.pid)
                else:
                    runs = _wrk_cell(
                        tools.wrk,
                        _wrk_request(protocol, endpoint, payloads[batch], files),
                        concurrency,
                        options,
                        endpoint.pid,
                    )
                result = CellResult(cell, runs)
            except (ChildFailed, ValueError, KeyError) as exc:
                result = CellResult(cell, error=str(exc).splitlines()[0])
            _say(_describe(result))
            results.append(result)
    return results


def measure_inprocess(
    session: ort.InferenceSession, payloads: Mapping[int, Payloads], options: Options
) -> list[CellResult]:
    """Measure the in-process ONNX Runtime ceiling for every concurrency x batch."""
    results = []
    for concurrency in options.concurrencies:
        for batch in options.batches:
            # The server is this process; metered over the warm-up and all the windows.
            meter = CpuMeter(None)
            runs = run_inprocess(
                session,
                payloads[batch].inputs,
                concurrency,
                options.warmup,
                options.duration,
                options.runs,
            )
            cpu = meter.stop()
            runs = [replace(run, cpu=cpu) for run in runs]
            result = CellResult(Cell("onnxruntime", INPROCESS, concurrency, batch), tuple(runs))
            _say(_describe(result))
            results.append(result)
    return results
