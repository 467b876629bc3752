"""The measurement matrix: every server x protocol x concurrency x batch cell.

A cell is a warm-up followed by ``runs`` timed runs; its result is the
median of each metric over the runs.  One server runs at a time, and the
load generator shares the machine's cores with it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

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
    head = f"  {c.server:<9} {c.protocol:<11} c={c.concurrency:<3} b={c.batch:<3}"
    median = result.median
    if median is None:
        return f"{head} FAILED: {result.error}"
    errors = f"  ({median.errors} errors)" if median.errors else ""
    return (
        f"{head} {median.rows_per_s:>11,.0f} rows/s  p50 {median.p50_ms:7.2f} ms"
        f"  p99 {median.p99_ms:7.2f} ms{errors}"
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


def _wrk_cell(wrk: str, request: WrkRequest, concurrency: int, options: Options) -> tuple[Run, ...]:
    # The warm-up is a wrk run of its own whose numbers are dropped.
    run_wrk(wrk, request, concurrency, options.warmup, options.wrk_threads)
    return tuple(
        run_wrk(wrk, request, concurrency, options.duration, options.wrk_threads)
        for _ in range(options.runs)
    )


def _grpc_cell(
    h2load: str, request: GrpcRequest, concurrency: int, options: Options
) -> tuple[Run, ...]:
    # Each run is an h2load run of its own, with its own uncounted warm-up.
    return tuple(
        run_h2load(h2load, request, concurrency, options.duration, options.warmup)
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
) -> list[CellResult]:
    """Verify, then measure, every cell of one running server."""
    results: list[CellResult] = []
    for protocol in protocols:
        try:
            _verify(server, protocol, endpoint, payloads)
        except WrongAnswer as exc:
            _say(f"  {server} {protocol}: wrong answer, not measured: {exc}")
            results += [
                CellResult(Cell(server, protocol, c, b), error=f"verification failed: {exc}")
                for c in options.concurrencies
                for b in options.batches
            ]
            continue
        for concurrency in options.concurrencies:
            for batch in options.batches:
                cell = Cell(server, protocol, concurrency, batch)
                files = bodies[batch]
                try:
                    if protocol == GRPC:
                        size = answer_bytes(endpoint.grpc, files.grpc)
                        request = GrpcRequest(endpoint.grpc, files.grpc, size, batch)
                        runs = _grpc_cell(tools.h2load, request, concurrency, options)
                    else:
                        runs = _wrk_cell(
                            tools.wrk,
                            _wrk_request(protocol, endpoint, payloads[batch], files),
                            concurrency,
                            options,
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
            runs = run_inprocess(
                session,
                payloads[batch].inputs,
                concurrency,
                options.warmup,
                options.duration,
                options.runs,
            )
            result = CellResult(Cell("onnxruntime", INPROCESS, concurrency, batch), tuple(runs))
            _say(_describe(result))
            results.append(result)
    return results
