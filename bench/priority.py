"""Priority benchmark: realtime requests stay fast while batch-class load overloads the server.

    .venv/bin/python bench/priority.py            # about a minute
    .venv/bin/python bench/priority.py --quick    # shorter windows, for a smoke test
    .venv/bin/python bench/priority.py --http-frontends 2   # through 2 HTTP front-end processes

One model (the seeded FP32 MLP 64 -> 256 -> 256 -> 10 of ``bench/serve.py``,
one ONNX Runtime intra-op thread) is served by a real ``sciserve serve
--auth`` process on 127.0.0.1, with two API tokens: one of priority class
``batch``, one of class ``realtime``.  The benchmark measures, in order:

1. the compute time of one batch of 64 rows (ONNX Runtime in this process,
   median of repeated runs, before the server starts);
2. the capacity: rows/s at saturation, closed loop, batch-64 requests with
   the ``batch`` token;
3. the unloaded realtime latency: batch-1 requests with the ``realtime``
   token alone, open loop at ``--realtime-rate`` requests/s;
4. both at once: ``batch``-class batch-64 requests open loop at
   ``--overload`` times the capacity, from several processes, plus the same
   light realtime load.  503 and 429 answers to batch requests are rejected
   load, not errors.

Targets: realtime p99 under load <= unloaded p99 + one max-batch compute
time; batch throughput under load >= 80 % of capacity.  Every client is a
separate process speaking HTTP/1.1 over raw sockets with prebuilt request
bytes (the OIP binary tensor extension), so each request costs the client a
few tens of microseconds; still, client and server share the machine's
cores.  Latencies of open-loop requests count from the moment the request
was due, so a late send is charged to the latency, not hidden.  Results go
to ``bench/results/priority-<UTC time>.json``.  The server's CPU is that of its
whole process tree (the front ends too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from servebench.cpu import tree_cpu_seconds
from servebench.inproc import open_session
from servebench.machine import machine_info
from servebench.model import (
    HIDDEN,
    IN_FEATURES,
    INPUT_NAME,
    MAX_BATCH,
    MODEL_NAME,
    write_model,
)
from servebench.model import write_package as write_bench_package
from servebench.payloads import make_payloads
from servebench.procs import run_command
from servebench.servers import NO_HTTP_FRONTENDS

BENCH_DIR = Path(__file__).resolve().parent
BANNER = re.compile(rb"http=(\S+) grpc=(\S+) metrics=(\S+)")
#: Answers that mean "not now" (queue full, over quota): rejected load.
REJECTED = (503, 429)
#: Quotas are not what is measured here: every caller may send as much as it likes.
SETTINGS = """\
[access]
default_rate = { rate = 1000000000.0, burst = 1000000000 }
namespace_rate = { rate = 1000000000.0, burst = 1000000000 }
"""
console = Console(width=132)


# -- the server --------------------------------------------------------------------


@dataclass(frozen=True)
class Tokens:
    batch: str
    realtime: str


def prepare(home: Path, work: Path, seed: int, hidden: int) -> Tokens:
    """Publish the MLP package into a new registry at ``home`` and mint the two tokens."""
    from sciserve.access.tokens import TokenStore
    from sciserve.config import Settings
    from sciserve.registry.registry import Registry

    home.mkdir(parents=True)
    (home / "sciserve.toml").write_text(SETTINGS)
    model = write_model(work / "model.onnx", seed, hidden)
    package = write_bench_package(work / "package", model, hidden=hidden)
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(package)
        store = TokenStore(registry)
        scopes = {"default": ["infer", "read"]}
        _, batch = store.create("bench-batch", scopes, priority="batch")
        _, realtime = store.create("bench-realtime", scopes, priority="realtime")
    return Tokens(batch, realtime)


@dataclass(frozen=True)
class Running:
    http: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the server's processes (front ends included) have used so far."""
        return tree_cpu_seconds(self.pid)[0]


def serve_command() -> list[str]:
    """How this benchmark starts sciserve: the interpreter running it, as a module."""
    return [sys.executable, "-m", "sciserve"]


def frontend_args(http_frontends: int | None, help_text: str) -> list[str]:
    """``serve`` arguments for ``http_frontends`` HTTP front ends (``None``: serve's
    default); raises ``LookupError`` when this sciserve has no such option."""
    if http_frontends is None:
        return []
    if "--http-frontends" in help_text:
        return ["--http-frontends", str(http_frontends)]
    if http_frontends == 0:
        return []  # no front ends is what a sciserve without the option does
    raise LookupError(NO_HTTP_FRONTENDS)


@contextlib.contextmanager
def running_server(home: Path, log: Path, extra: Sequence[str] = ()) -> Iterator[Running]:
    """``sciserve serve --auth`` on 127.0.0.1, stopped by its PID when done."""
    command = [
        *serve_command(), "--home", str(home), "serve", "--auth",
        "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
        "--intra-op-threads", "1", *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCISERVE_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while (match := BANNER.search(log.read_bytes())) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        http = match.group(1).decode()
        while True:
            ready = f"http://{http}/v2/health/ready"
            with contextlib.suppress(OSError), urllib.request.urlopen(ready) as answer:
                if answer.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server never became ready")
            time.sleep(0.1)
        yield Running(http, proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- the clients (each runs in its own process) ------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one client process does between ``start`` and ``end`` (monotonic seconds)."""

    address: str
    request: bytes
    start: float
    end: float
    #: Requests/s, open loop; 0 means closed loop over ``connections``.
    rate: float
    connections: int
    #: Most connections an open-loop client may open (its requests in flight).
    max_connections: int = 2048


@dataclass
class Outcome:
    """Per request: when it was due, when it completed (monotonic s), HTTP status
    (0: connection failed); plus requests the client could not even send."""

    due: list[float]
    done: list[float]
    status: list[int]
    unsent: int = 0
    #: CPU time this client process used, and over how long a run.
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


def http_request(address: str, token: str, rows: int, seed: int) -> bytes:
    """A complete, prebuilt HTTP/1.1 inference request of ``rows`` rows."""
    inputs = np.random.default_rng(seed).normal(size=(rows, IN_FEATURES)).astype(np.float32)
    payload = make_payloads(inputs, np.zeros((rows, 1), np.float32))
    head = (
        f"POST /v2/models/{MODEL_NAME}/infer HTTP/1.1\r\n"
        f"Host: {address}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {payload.http_binary_header_length}\r\n"
        f"Content-Length: {len(payload.http_binary)}\r\n\r\n"
    )
    return head.encode() + payload.http_binary


_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close\r\n", re.IGNORECASE)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """Send one request, read the whole answer; return its status and whether the
    connection stays open (a server refusing work before reading the body, as the
    HTTP front ends do, answers ``Connection: close``)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    match = _LENGTH.search(head)
    await reader.readexactly(int(match.group(1)) if match else 0)
    return int(head[9:12]), _CLOSE.search(head) is None


async def _connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _closed_loop(plan: Plan) -> Outcome:
    out = Outcome([], [], [])

    async def client() -> None:
        reader, writer = await _connect(plan.address)
        try:
            while (due := time.monotonic()) < plan.end:
                status, keep_alive = await _exchange(reader, writer, plan.request)
                out.due.append(due)
                out.done.append(time.monotonic())
                out.status.append(status)
                if not keep_alive:
                    writer.close()
                    reader, writer = await _connect(plan.address)
        finally:
            writer.close()

    await asyncio.sleep(max(0.0, plan.start - time.monotonic()))
    await asyncio.gather(*(client() for _ in range(plan.connections)))
    return out


#: The server closes keep-alive connections idle for 5 s (uvicorn's default):
#: older idle connections are replaced rather than reused.
_STALE_AFTER = 4.0


async def _open_loop(plan: Plan) -> Outcome:
    out = Outcome([], [], [])
    now = time.monotonic()
    idle: list[tuple[Any, Any, float]] = [
        (*await _connect(plan.address), now) for _ in range(plan.connections)
    ]
    opened = len(idle)
    pending: set[asyncio.Task[None]] = set()

    async def send(due: float, connection: tuple[Any, Any, float] | None) -> None:
        nonlocal opened
        status, keep_alive = 0, False
        writer = None
        try:
            if connection is None or time.monotonic() - connection[2] > _STALE_AFTER:
                if connection is not None:
                    connection[1].close()
                connection = (*await _connect(plan.address), 0.0)
            reader, writer, _ = connection
            status, keep_alive = await _exchange(reader, writer, plan.request)
        except (OSError, asyncio.IncompleteReadError):
            pass
        out.due.append(due)
        done = time.monotonic()
        out.done.append(done)
        out.status.append(status)
        if keep_alive and writer is not None:
            idle.append((reader, writer, done))
        else:
            # Closed (by either side): a later request opens a connection of its own.
            if writer is not None:
                writer.close()
            opened -= 1

    interval = 1.0 / plan.rate
    due = plan.start
    await asyncio.sleep(max(0.0, plan.start - time.monotonic()))
    while due < plan.end:
        now = time.monotonic()
        if now < due:
            await asyncio.sleep(due - now)
        # Everything due by now goes out now: the schedule never slips.
        while due <= time.monotonic() and due < plan.end:
            if idle:
                connection = idle.pop()
            elif opened < plan.max_connections:
                connection, opened = None, opened + 1
            else:
                out.unsent += 1
                due += interval
                continue
            task = asyncio.get_running_loop().create_task(send(due, connection))
            pending.add(task)
            task.add_done_callback(pending.discard)
            due += interval
    if pending:
        await asyncio.wait(pending, timeout=60)
    for _, writer, _ in idle:
        writer.close()
    return out


def run_client(plan: Plan) -> Outcome:
    """Entry point of a client process."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    cpu = time.process_time()
    with asyncio.Runner(loop_factory=factory) as runner:
        outcome = runner.run(_open_loop(plan) if plan.rate > 0 else _closed_loop(plan))
    outcome.cpu_seconds = time.process_time() - cpu
    outcome.wall_seconds = time.monotonic() - plan.start
    return outcome


@dataclass(frozen=True)
class Phase:
    outcomes: list[Outcome]
    #: Cores' worth of CPU the server used inside the window, and the clients overall.
    server_cores: float
    client_cores: float


def run_phase(server: Running, plans: Sequence[Plan], begin: float, end: float) -> Phase:
    """Run every plan in its own process, all at once, watching the server's CPU."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(plans), mp_context=context) as pool:
        futures = [pool.submit(run_client, plan) for plan in plans]
        time.sleep(max(0.0, begin - time.monotonic()))
        cpu = server.cpu_seconds()
        time.sleep(max(0.0, end - time.monotonic()))
        server_cores = (server.cpu_seconds() - cpu) / (end - begin)
        outcomes = [f.result() for f in futures]
    client_cores = sum(o.cpu_seconds / o.wall_seconds for o in outcomes if o.wall_seconds > 0)
    console.print(f"  server {server_cores:.2f} cores, clients {client_cores:.2f} cores")
    return Phase(outcomes, server_cores, client_cores)


# -- numbers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """What completed inside [start, end): counts, rows/s and latency percentiles (ms)."""

    seconds: float
    ok: int
    rejected: int
    errors: int
    unsent: int
    rows_per_s: float
    #: Requests answered per second, and sent (by their due time) per second.
    requests_per_s: float
    sent_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    server_cores: float
    client_cores: float
    #: Every answer inside the window by HTTP status ("0": no answer, connection lost).
    statuses: dict[str, int]


def window(phase: Phase, start: float, end: float, rows: int, clients: slice) -> Window:
    """The numbers of the clients ``clients`` of ``phase``, between ``start`` and ``end``."""
    outcomes = phase.outcomes[clients]
    due = np.concatenate([np.asarray(o.due) for o in outcomes])
    done = np.concatenate([np.asarray(o.done) for o in outcomes])
    status = np.concatenate([np.asarray(o.status, dtype=np.int64) for o in outcomes])
    inside = (done >= start) & (done < end)
    ok = inside & (status == 200)
    rejected = inside & np.isin(status, REJECTED)
    latency_ms = (done[ok] - due[ok]) * 1000.0
    seconds = end - start
    return Window(
        seconds=seconds,
        ok=int(ok.sum()),
        rejected=int(rejected.sum()),
        errors=int((inside & ~ok & ~rejected).sum()),
        unsent=sum(o.unsent for o in outcomes),
        rows_per_s=float(ok.sum()) * rows / seconds,
        requests_per_s=float(inside.sum()) / seconds,
        sent_per_s=float(((due >= start) & (due < end)).sum()) / seconds,
        p50_ms=float(np.percentile(latency_ms, 50)) if latency_ms.size else None,
        p99_ms=float(np.percentile(latency_ms, 99)) if latency_ms.size else None,
        server_cores=phase.server_cores,
        client_cores=phase.client_cores,
        statuses={str(k): int(v) for k, v in Counter(status[inside].tolist()).items()},
    )


def server_batch_compute_ms(http: str, token: str) -> float:
    """Mean compute time of the batches of ``MAX_BATCH`` rows the server has run so far."""
    request = urllib.request.Request(
        f"http://{http}/v2/models/{MODEL_NAME}/stats",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request) as answer:
        stats = json.load(answer)["model_stats"][0]
    for entry in stats["batch_stats"]:
        if entry["batch_size"] == MAX_BATCH:
            infer = entry["compute_infer"]
            return float(infer["ns"]) / max(1, int(infer["count"])) / 1e6
    raise RuntimeError(f"the server ran no batch of {MAX_BATCH} rows")


def batch_compute_ms(model: Path, repeats: int) -> float:
    """Median time ONNX Runtime (1 thread) takes for one batch of ``MAX_BATCH`` rows."""
    session = open_session(model, intra_op_threads=1)
    x = np.random.default_rng(1).normal(size=(MAX_BATCH, IN_FEATURES)).astype(np.float32)
    for _ in range(20):
        session.run(None, {INPUT_NAME: x})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000.0


# -- the run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    warmup: float
    capacity_seconds: float
    duration: float
    overload: float
    realtime_rate: float
    batch_processes: int
    capacity_connections: int
    seed: int
    hidden: int
    instances: int
    realtime_instances: int
    max_inline_compute: float | None
    #: HTTP front-end processes of the server; ``None``: serve's own default.
    http_frontends: int | None = None


def measure(server: Running, tokens: Tokens, options: Options) -> tuple[dict[str, Window], float]:
    """Capacity, unloaded realtime latency, and both under overload; and the mean
    compute time of a max-size batch as the server measured it at capacity."""
    http = server.http
    batch_request = http_request(http, tokens.batch, MAX_BATCH, options.seed)
    realtime_request = http_request(http, tokens.realtime, 1, options.seed + 1)
    lead = 3.0  # seconds for the client processes to start and connect
    every = slice(None)
    results: dict[str, Window] = {}

    console.print("capacity: closed loop, batch 64, batch class")
    start = time.monotonic() + lead
    begin, end = start + options.warmup, start + options.warmup + options.capacity_seconds
    per_process = max(1, options.capacity_connections // options.batch_processes)
    plans = [
        Plan(http, batch_request, start, end, rate=0, connections=per_process)
        for _ in range(options.batch_processes)
    ]
    phase = run_phase(server, plans, begin, end)
    results["capacity"] = window(phase, begin, end, MAX_BATCH, every)
    capacity_rps = results["capacity"].rows_per_s / MAX_BATCH
    server_ms = server_batch_compute_ms(http, tokens.batch)
    console.print(f"  one batch of {MAX_BATCH} rows in the server: {server_ms:.3f} ms of compute")

    console.print(f"unloaded realtime: {options.realtime_rate:g} req/s, batch 1, realtime class")
    start = time.monotonic() + lead
    begin, end = start + options.warmup, start + options.warmup + options.duration
    realtime = Plan(http, realtime_request, start, end, rate=options.realtime_rate, connections=4)
    phase = run_phase(server, [realtime], begin, end)
    results["realtime_alone"] = window(phase, begin, end, 1, every)

    offered = options.overload * capacity_rps
    console.print(
        f"under load: batch class at {offered:.0f} req/s ({options.overload:g} x capacity) "
        f"from {options.batch_processes} processes, plus the realtime load"
    )
    start = time.monotonic() + lead
    begin, end = start + options.warmup, start + options.warmup + options.duration
    rate = offered / options.batch_processes
    batch_plans = [
        Plan(http, batch_request, start, end, rate=rate, connections=min(256, int(rate / 4) + 1))
        for _ in range(options.batch_processes)
    ]
    realtime = Plan(http, realtime_request, start, end, rate=options.realtime_rate, connections=4)
    phase = run_phase(server, [*batch_plans, realtime], begin, end)
    results["batch_under_load"] = window(phase, begin, end, MAX_BATCH, slice(None, -1))
    results["realtime_under_load"] = window(phase, begin, end, 1, slice(-1, None))
    # The clients kept to their schedule if they sent (nearly) what was asked of them.
    sent = results["batch_under_load"].sent_per_s
    console.print(f"  batch clients sent {sent:.0f} req/s of the {offered:.0f} asked")
    return results, server_ms


def verdicts(results: dict[str, Window], compute_ms: float) -> list[dict[str, Any]]:
    alone, loaded = results["realtime_alone"], results["realtime_under_load"]
    capacity = results["capacity"].rows_per_s
    bound_ms = (alone.p99_ms or 0.0) + compute_ms
    latency_ok = (
        loaded.p99_ms is not None and loaded.p99_ms <= bound_ms and loaded.errors == 0
    ) and loaded.rejected == 0
    throughput = results["batch_under_load"].rows_per_s
    return [
        {
            "target": "realtime p99 under load <= unloaded p99 + one max-batch compute",
            "value_ms": loaded.p99_ms,
            "bound_ms": bound_ms,
            "pass": latency_ok,
        },
        {
            "target": "batch throughput under load >= 80 % of capacity",
            "value_rows_per_s": throughput,
            "bound_rows_per_s": 0.8 * capacity,
            "pass": throughput >= 0.8 * capacity,
        },
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(
    results: dict[str, Window],
    targets: list[dict[str, Any]],
    compute_ms: float,
    http_frontends: int | None = None,
) -> None:
    fronts = "" if http_frontends is None else f", {http_frontends} HTTP front end(s)"
    table = Table(title=f"sciserve priority classes (HTTP, binary tensors{fronts})")
    columns = ("phase", "ok", "rejected", "errors", "unsent", "rows/s", "req/s", "p50 ms",
               "p99 ms", "server cores", "client cores")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "phase" else "right")
    for name, w in results.items():
        table.add_row(
            name,
            str(w.ok),
            str(w.rejected),
            str(w.errors),
            str(w.unsent),
            f"{w.rows_per_s:,.0f}",
            f"{w.requests_per_s:,.1f}",
            _ms(w.p50_ms),
            _ms(w.p99_ms),
            f"{w.server_cores:.2f}",
            f"{w.client_cores:.2f}",
        )
    console.print(table)
    console.print(f"one batch of {MAX_BATCH} rows: {compute_ms:.3f} ms of compute (in-process)")
    for target in targets:
        mark = "[green]PASS[/]" if target["pass"] else "[red]FAIL[/]"
        value = target.get("value_ms", target.get("value_rows_per_s"))
        bound = target.get("bound_ms", target.get("bound_rows_per_s"))
        console.print(f"{mark} {target['target']}: {value:,.2f} vs {bound:,.2f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke test")
    parser.add_argument("--duration", type=float, help="seconds measured per latency phase")
    parser.add_argument("--overload", type=float, default=2.0, help="batch load / capacity")
    parser.add_argument("--realtime-rate", type=float, default=20.0, help="realtime requests/s")
    parser.add_argument("--batch-processes", type=int, default=2, help="batch client processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument(
        "--hidden", type=int, default=HIDDEN, help="units per hidden layer of the MLP"
    )
    parser.add_argument("--instances", type=int, default=1, help="model instances (serve)")
    parser.add_argument(
        "--realtime-instances",
        type=int,
        default=0,
        help="of --instances, how many take only realtime requests (serve)",
    )
    parser.add_argument(
        "--max-inline-compute", type=float, help="passed to serve (default: serve's own)"
    )
    parser.add_argument(
        "--http-frontends",
        type=int,
        metavar="N",
        help="HTTP front-end processes, passed to serve (default: serve's own)",
    )
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.http_frontends is not None and args.http_frontends < 0:
        console.print("[red]--http-frontends: use 0 (no front end) or more[/]")
        return 2
    options = Options(
        warmup=1.0 if args.quick else 2.0,
        capacity_seconds=2.0 if args.quick else 5.0,
        duration=args.duration or (4.0 if args.quick else 15.0),
        overload=args.overload,
        realtime_rate=args.realtime_rate,
        batch_processes=args.batch_processes,
        capacity_connections=16,
        seed=args.seed,
        hidden=args.hidden,
        instances=args.instances,
        realtime_instances=args.realtime_instances,
        max_inline_compute=args.max_inline_compute,
        http_frontends=args.http_frontends,
    )
    try:
        help_text = run_command([*serve_command(), "serve", "--help"], timeout=60)
        fronts = frontend_args(options.http_frontends, help_text)
    except LookupError as exc:
        # Said, not crashed on: this sciserve predates the HTTP front ends.
        console.print(f"[yellow]n/a: {exc}[/]", highlight=False)
        return 2
    with tempfile.TemporaryDirectory(prefix="sciserve-priority-") as scratch:
        work = Path(scratch)
        tokens = prepare(work / "home", work, options.seed, options.hidden)
        compute_ms = batch_compute_ms(work / "model.onnx", repeats=300)
        extra = ["--instances", str(options.instances)]
        extra += ["--realtime-instances", str(options.realtime_instances)]
        if options.max_inline_compute is not None:
            extra += ["--max-inline-compute", str(options.max_inline_compute)]
        extra += fronts
        with running_server(work / "home", work / "server.log", extra) as server:
            results, server_ms = measure(server, tokens, options)
    targets = verdicts(results, compute_ms)
    render(results, targets, compute_ms, options.http_frontends)
    info = machine_info("not used")
    info["client"] = {"kind": "raw HTTP/1.1 sockets, asyncio + uvloop, one process per client"}
    notes = [
        f"Client and server share this machine's {os.cpu_count()} cores: the server (event loop "
        f"+ one ONNX Runtime thread) runs beside {options.batch_processes} batch client "
        "process(es) and one realtime client process; nothing is pinned.",
        "Server cores: CPU s / wall s of the server's process and all its descendants "
        "(gRPC and HTTP front ends included).",
        "Open-loop latencies count from when a request was due, not when it was sent.",
        "Quotas are set out of the way (10^9 requests/s): only the batcher's priority classes "
        "and its bounded queue decide.",
    ]
    document = {
        "benchmark": "priority",
        "when": datetime.now(UTC).isoformat(),
        "options": asdict(options),
        "max_batch_compute_ms": compute_ms,
        "server_max_batch_compute_ms": server_ms,
        "results": {name: asdict(w) for name, w in results.items()},
        "targets": targets,
        "machine": info,
        "notes": notes,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output_dir / f"priority-{stamp}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    for note in notes:
        console.print(f"[dim]{note}[/]")
    console.print(f"results: {path}")
    return 0 if all(t["pass"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
