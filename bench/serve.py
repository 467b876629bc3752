"""Serving benchmark: sciserve against NVIDIA Triton, Seldon MLServer and in-process ONNX Runtime.

    python bench/serve.py --setup   # once: build the peer servers' venvs (the only download)
    python bench/serve.py           # every cell, 3 runs of 5 s each (about 20 minutes)
    python bench/serve.py --quick   # smoke test: fewer cells, 1 run of 2 s

Every server serves the same seeded FP32 MLP (64 → 256 → 256 → 10) with one
ONNX Runtime intra-op thread and dynamic batching up to 64 rows, on
127.0.0.1, one server at a time.  Each cell (server x protocol x
concurrency x batch) gets a warm-up, then the timed runs; the table shows
the median of each metric, with the CPU the server's processes and the load
generator used.  A scaling row runs sciserve on HTTP-binary at concurrency
16, batch 1 and 64, with 0, 1 and 2 HTTP front-end processes.  Results and
machine details go to ``bench/results/serve-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import onnxruntime as ort
from rich.console import Console
from servebench.h2load import INSTALL_HINT as H2LOAD_HINT
from servebench.h2load import find_h2load, h2load_version
from servebench.inproc import open_session
from servebench.machine import machine_info
from servebench.model import IN_FEATURES, INPUT_NAME, OUTPUT_NAME, write_model
from servebench.payloads import BodyFiles, Payloads, make_payloads
from servebench.procs import ChildFailed
from servebench.report import (
    BASELINE_P50_MS,
    evaluate_targets,
    render_scaling,
    render_table,
    render_targets,
    scaling_rows,
)
from servebench.runner import CellResult, LoadTools, Options, measure_inprocess, measure_server
from servebench.servers import (
    MLSERVER_MAX_BATCH_TIME,
    SCALING_FRONTENDS,
    SERVERS,
    ServerSpec,
    scaling_key,
    server_specs,
)
from servebench.venvs import setup_peers
from servebench.wrk import INSTALL_HINT, find_wrk, wrk_version

BENCH_DIR = Path(__file__).resolve().parent
ALL_SERVERS = (*(spec.key for spec in SERVERS), "onnxruntime")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("use positive integers, e.g. 1,16,64")
    return values


def _frontends(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes") from exc
    if value < 0:
        raise argparse.ArgumentTypeError("use 0 (no front end) or more")
    return value


def _server_list(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = sorted(set(names) - set(ALL_SERVERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown server(s) {unknown}; pick from {ALL_SERVERS}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    parser.add_argument("--setup", action="store_true", help="create the peer venvs and exit")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s, 1 run, fewer cells")
    parser.add_argument("--duration", type=float, help="seconds per timed run (default 5)")
    parser.add_argument("--runs", type=int, help="timed runs per cell (default 3)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per cell (default 2)")
    parser.add_argument("--concurrency", type=_int_list, help="default 1,16,64")
    parser.add_argument("--batch", type=_int_list, help="default 1,64")
    parser.add_argument(
        "--servers", type=_server_list, default=ALL_SERVERS, help=f"default {','.join(ALL_SERVERS)}"
    )
    parser.add_argument(
        "--http-frontends",
        type=_frontends,
        metavar="N",
        help="HTTP front-end processes of the 'sciserve' contenders (default: serve's own); "
        "the scaling row (sciserve-fe0,1,2) sets its own",
    )
    parser.add_argument(
        "--baseline-p50-ms",
        type=float,
        default=BASELINE_P50_MS,
        help="sciserve's HTTP-binary c=1 b=1 p50 to compare with "
        f"(default {BASELINE_P50_MS} ms, the run published before the front ends)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results")
    return parser.parse_args(argv)


def _options(args: argparse.Namespace) -> Options:
    quick = args.quick
    return Options(
        duration=args.duration or (2.0 if quick else 5.0),
        runs=args.runs or (1 if quick else 3),
        warmup=args.warmup if args.warmup is not None else (1.0 if quick else 2.0),
        concurrencies=args.concurrency or ((1, 16) if quick else (1, 16, 64)),
        batches=args.batch or (1, 64),
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM / SIGHUP take the Ctrl-C path, so every `finally` stops its server.
    raise KeyboardInterrupt


def _cells(spec: ServerSpec, args: argparse.Namespace) -> list[tuple[int, int]] | None:
    """The cells of a contender with cells of its own (the scaling row), narrowed
    to an explicit --concurrency / --batch; ``None``: the run's matrix."""
    if spec.cells is None:
        return None
    return [
        (c, b)
        for c, b in spec.cells
        if (args.concurrency is None or c in args.concurrency)
        and (args.batch is None or b in args.batch)
    ]


def _notes(options: Options, cores: int | None, specs: Sequence[ServerSpec]) -> list[str]:
    notes = [
        f"Client and server share this machine's {cores} cores: wrk ({options.wrk_threads} "
        "thread, HTTP) or h2load (one thread, gRPC) runs beside the server; nothing is "
        "pinned, one server runs at a time.",
        f"Each cell: {options.warmup:g} s warm-up, then {options.runs} run(s) of "
        f"{options.duration:g} s; each metric is the median over the runs.",
        "All servers: the same model.onnx, ONNX Runtime with 1 intra-op thread, batches of up "
        "to 64 rows formed on the server.",
        "CPU: the server's process and every descendant (front ends, Triton's tritonserver "
        "and backend stubs, MLServer's workers), from /proc at the start and end of each "
        "timed run; the client is wrk or h2load (h2load's own warm-up, under the same load, "
        "included); in-process ORT is the benchmark's own process over warm-up and runs. "
        "100 % = one core; cores = server + client CPU s / wall s.",
    ]
    if any(spec.cells is not None for spec in specs):
        notes.append(
            "Scaling row: sciserve, HTTP-binary, c=16, b=1 and 64, started with "
            f"--http-frontends {', '.join(str(n) for n in SCALING_FRONTENDS)} (front-end "
            "processes relaying to the serving process)."
        )
    notes += [spec.note for spec in specs if spec.note]
    notes.append(
        f"MLServer's adaptive batcher waits up to {MLSERVER_MAX_BATCH_TIME * 1000:g} ms for a "
        "batch to fill (it does not batch with a zero wait)."
    )
    return notes


def _prepare(
    work: Path, batches: Sequence[int], seed: int
) -> tuple[Path, ort.InferenceSession, dict[int, Payloads], dict[int, BodyFiles]]:
    model = write_model(work / "model.onnx", seed)
    session = open_session(model)
    rng = np.random.default_rng(seed + 1)
    payloads: dict[int, Payloads] = {}
    for batch in batches:
        inputs = rng.standard_normal((batch, IN_FEATURES), dtype=np.float32)
        (expected,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
        payloads[batch] = make_payloads(inputs, expected)
    bodies = {batch: p.write(work / "bodies") for batch, p in payloads.items()}
    return model, session, payloads, bodies


def _run(
    args: argparse.Namespace, options: Options, tools: LoadTools, console: Console
) -> tuple[list[CellResult], dict[str, Any], bool]:
    """Measure every selected server; return the cells, per-server facts, and interrupted."""
    results: list[CellResult] = []
    servers: dict[str, Any] = {}
    specs = [spec for spec in server_specs(args.http_frontends) if spec.key in args.servers]
    cells = {spec.key: _cells(spec, args) for spec in specs}
    # The batch sizes of the matrix and of the cells of the contenders' own.
    batches = sorted({*options.batches, *(b for own in cells.values() if own for _, b in own)})
    with tempfile.TemporaryDirectory(prefix="sciserve-bench-") as tmp:
        work = Path(tmp)
        model, session, payloads, bodies = _prepare(work, batches, args.seed)
        try:
            for spec in specs:
                own = cells[spec.key]
                if own is not None and not own:
                    console.print(
                        f"[yellow]skipping {spec.label}: none of its cells "
                        f"{spec.cells} is in --concurrency x --batch[/]",
                        highlight=False,
                    )
                    continue
                reason = spec.missing()
                if reason:
                    console.print(f"[yellow]skipping {spec.label}: {reason}[/]")
                    servers[spec.key] = {"label": spec.label, "error": reason}
                    continue
                console.print(f"starting {spec.label} …")
                try:
                    with spec.launch(work, model) as endpoint:
                        console.print(
                            f"{endpoint.version} ready: http={endpoint.http} grpc={endpoint.grpc}",
                            highlight=False,
                        )
                        servers[spec.key] = {
                            "label": spec.label,
                            "version": endpoint.version,
                            "protocols": list(spec.protocols),
                            **endpoint.details,
                        }
                        results += measure_server(
                            spec.key,
                            spec.protocols,
                            endpoint,
                            payloads,
                            bodies,
                            options,
                            tools,
                            own,
                        )
                except ChildFailed as exc:
                    console.print(f"[red]{spec.label} failed:[/] {exc}", highlight=False)
                    servers[spec.key] = {"label": spec.label, "error": str(exc)}
            if "onnxruntime" in args.servers:
                console.print("in-process ONNX Runtime …")
                results += measure_inprocess(session, payloads, options)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: servers stopped, reporting what was measured[/]")
            return results, servers, True
    return results, servers, False


def _json_safe(value: Any) -> Any:
    """NaN (a percentile of no requests) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A wide table even when the output goes to a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 180)
    if args.setup:
        setup_peers()
        return 0
    wrk, h2load = find_wrk(), find_h2load()
    if wrk is None or h2load is None:
        for tool, hint in ((wrk, INSTALL_HINT), (h2load, H2LOAD_HINT)):
            if tool is None:
                console.print(f"[red]{hint}[/]")
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    options = _options(args)
    started = datetime.now(UTC)

    results, servers, interrupted = _run(args, options, LoadTools(wrk, h2load), console)

    machine = machine_info(wrk_version(wrk), h2load_version(h2load))
    specs = [spec for spec in server_specs(args.http_frontends) if spec.key in args.servers]
    notes = _notes(options, machine["usable_cores"], specs)
    console.print()
    render_table(results, console)
    # The scaling contenders of this run that could not be measured, and why.
    unavailable = {
        key: str(servers[key]["error"])
        for key in (scaling_key(n) for n in SCALING_FRONTENDS)
        if "error" in servers.get(key, {})
    }
    scaling = [row for row in scaling_rows(results, unavailable) if row["server"] in args.servers]
    render_scaling(scaling, console)
    for note in notes:
        console.print(f"• {note}", highlight=False)
    console.print()
    console.print(
        f"c=1 b=1 latency baseline: {args.baseline_p50_ms:g} ms"
        + (
            " (the run published before the front ends; --baseline-p50-ms to change)"
            if args.baseline_p50_ms == BASELINE_P50_MS
            else " (--baseline-p50-ms)"
        ),
        highlight=False,
    )
    targets = evaluate_targets(results, args.baseline_p50_ms)
    render_targets(targets, console)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"serve-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    document = {
        "benchmark": "serve",
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "interrupted": interrupted,
        "options": {
            "quick": args.quick,
            "duration_s": options.duration,
            "runs": options.runs,
            "warmup_s": options.warmup,
            "concurrency": list(options.concurrencies),
            "batch": list(options.batches),
            "wrk_threads": options.wrk_threads,
            "seed": args.seed,
            "servers": list(args.servers),
            "http_frontends": args.http_frontends,
            "baseline_p50_ms": args.baseline_p50_ms,
        },
        "model": "MLP 64-256-256-10 FP32 (ONNX opset 17), seeded weights",
        "machine": machine,
        "servers": servers,
        "cells": [r.to_dict() for r in results],
        "scaling": scaling,
        "targets": [t.to_dict() for t in targets],
        "notes": notes,
    }
    path.write_text(json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n")
    console.print(f"\nresults: {path}", highlight=False)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
